"""The generator interface, the response cap and the response cache shared by every model.

A generator answers chat conversations, one seed per conversation (sampling at the model's
temperature, 1.0 by default). :meth:`Generator.stream` yields answers as they finish (one at a
time over an API, one batch at a time locally) so the caller can store each at once: a worker
killed mid-chunk loses at most what was in flight. Answers are cached in the store's
``judge_cache`` table under sha256(model, full prompt, sampling, seed) — the key the judges use —
so asking the same seeded question twice costs nothing.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import AsyncIterator, Awaitable, Callable

from workers.generation.config import ModelConfig
from workers.judges.prompts import cache_key
from workers.llm.client import ChatResult

_WORD = re.compile(r"\S+")
Keep = Callable[[list[tuple[int, ChatResult]]], Awaitable[None]]


def cap_words(text: str, max_words: int) -> str:
    """``text`` cut after its ``max_words``-th whitespace-separated word (layout kept before it)."""
    for i, m in enumerate(_WORD.finditer(text)):
        if i + 1 == max_words:
            return text[: m.end()].strip()
    return text.strip()


class Generator(ABC):
    def __init__(self, config: ModelConfig, store=None):
        self.config = config
        self.store = store
        self.calls = 0  # model calls made (cache hits excluded)

    @property
    def name(self) -> str:
        return self.config.name

    def sampling(self) -> dict:
        return {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens, "kind": "generate"}

    @abstractmethod
    def _stream(self, conversations: list[list[dict]], seeds: list[int],
                keep: Keep) -> AsyncIterator[list[tuple[int, ChatResult]]]:
        """Yield (index, result) groups as they finish; every index exactly once. Every successful
        answer is passed to ``keep`` (caps it, caches it) before it is yielded; an API model awaits ``keep``
        while the answer's concurrency slot is still held, so a killed worker loses at most
        ``concurrency`` requests' answers."""

    async def stream(self, conversations: list[list[dict]], seeds: list[int]) -> AsyncIterator[list[tuple[int, ChatResult]]]:
        """Cached answers first (``attempts`` = 0), then fresh ones as they finish, capped to
        ``max_words`` words; fresh answers are put in the cache before they are yielded."""
        keys = [cache_key(self.config.model, c, self.sampling(), s) for c, s in zip(conversations, seeds)]
        hits = await self.store.cache_get(keys) if self.store is not None else {}
        cached = [(i, ChatResult(h["text"], h.get("tokens_in", 0), h.get("tokens_out", 0), 0.0, attempts=0))
                  for i, k in enumerate(keys) if (h := hits.get(k)) is not None]
        if cached:
            yield cached
        todo = [i for i, k in enumerate(keys) if k not in hits]
        if not todo:
            return

        async def keep(group: list[tuple[int, ChatResult]]) -> None:
            for _, r in group:
                if r.text is not None:
                    r.text = cap_words(r.text, self.config.max_words)
            fresh = {keys[todo[j]]: {"text": r.text, "tokens_in": r.tokens_in, "tokens_out": r.tokens_out}
                     for j, r in group if r.error is None and r.text is not None}
            if self.store is not None and fresh:
                await self.store.cache_put(self.name, fresh)

        async for group in self._stream([conversations[i] for i in todo], [seeds[i] for i in todo], keep):
            self.calls += sum(r.attempts for _, r in group)
            yield [(todo[j], r) for j, r in group]

    async def generate(self, conversations: list[list[dict]], seeds: list[int]) -> list[ChatResult]:
        """Every answer, in order (convenience over :meth:`stream`)."""
        out: list[ChatResult | None] = [None] * len(conversations)
        async for group in self.stream(conversations, seeds):
            for i, r in group:
                out[i] = r
        return out  # type: ignore[return-value]

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass
