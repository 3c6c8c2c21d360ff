"""The judge interface and the machinery shared by LLM judges: shuffling, merging, cache, repair."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from schemas.messages import Ranking
from schemas.taxonomy import Value
from workers.judges.config import JudgeConfig
from workers.judges.parsing import ParseError, parse_ranking, parse_ranking_upstream
from workers.judges.prompts import build_messages, cache_key, repair_message


class Judge(ABC):
    """Ranks windows of texts for one value. ``rank_windows`` is the batched async entry point."""

    def __init__(self, config: JudgeConfig):
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @abstractmethod
    async def rank_shown(self, value: Value, windows: list[list[str]]) -> list[Ranking]:
        """Rank each window exactly in the order given (positions are what the judge saw)."""

    async def rank_windows(self, value: Value, windows: list[list[str]],
                           seeds: list[int | None] | None = None) -> list[Ranking]:
        """Rank windows; a seed shuffles that window's presentation order (recorded, reproducible).

        The returned order always refers to positions in the caller's ``windows``. With
        ``both_orders`` the reversed presentation is asked too and the two merged by mean rank.
        """
        seeds = seeds or [None] * len(windows)
        perms = [None if s is None else np.random.default_rng(s).permutation(len(w)) for w, s in zip(windows, seeds)]
        shown = [w if p is None else [w[i] for i in p] for w, p in zip(windows, perms)]
        if self.config.both_orders:
            fwd, rev = await asyncio.gather(self.rank_shown(value, shown),
                                            self.rank_shown(value, [s[::-1] for s in shown]))
            out = [_merge(f, r, len(s)) for f, r, s in zip(fwd, rev, shown)]
        else:
            out = await self.rank_shown(value, shown)
        # an unshuffled window's answer already refers to the caller's positions
        return [r if r.order is None or p is None else r.model_copy(update={"order": [int(p[i]) for i in r.order]})
                for r, p in zip(out, perms)]

    def rank(self, value: Value, texts: list[str], seed: int | None = None) -> Ranking:
        """Synchronous convenience for one window."""
        return asyncio.run(self.rank_windows(value, [texts], [seed]))[0]

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        pass


def _merge(fwd: Ranking, rev: Ranking, k: int) -> Ranking:
    """Merge a forward and a reversed-presentation ranking by mean rank (ties: forward order)."""
    if fwd.order is None or rev.order is None:
        return fwd if rev.order is None else rev.model_copy(update={"order": [k - 1 - p for p in rev.order]})
    rank = np.empty(k)
    rank[fwd.order] = np.arange(k)
    rank_rev = np.empty(k)
    rank_rev[[k - 1 - p for p in rev.order]] = np.arange(k)
    merged = np.lexsort((rank, rank + rank_rev)).tolist()
    return fwd.model_copy(update={
        "order": merged, "raw": fwd.raw + "\n---reversed---\n" + rev.raw,
        "tokens_in": fwd.tokens_in + rev.tokens_in, "tokens_out": fwd.tokens_out + rev.tokens_out,
        "attempts": fwd.attempts + rev.attempts, "latency_s": max(fwd.latency_s, rev.latency_s),
        "cached": fwd.cached and rev.cached})


@dataclass
class Completion:
    text: str | None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    error: str | None = None  # transport failure after retries; never cached


class LLMJudge(Judge):
    """A judge that prompts a chat model. Subclasses implement :meth:`complete`.

    Responses are cached in PostgreSQL by (model, full prompt, sampling, seed) when a store is
    given, so a rerun of the same windows makes no model calls at all.
    """

    def __init__(self, config: JudgeConfig, store=None):
        super().__init__(config)
        self.store = store

    def sampling(self, k: int) -> dict:
        return {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}

    @abstractmethod
    async def complete(self, conversations: list[list[dict]], k: int) -> list[Completion]:
        """One completion per conversation, in order; failures are returned, not raised."""

    async def _cached_complete(self, conversations: list[list[dict]], k: int) -> tuple[list[Completion], list[str]]:
        sampling = self.sampling(k)
        keys = [cache_key(self.config.model, c, sampling, None) for c in conversations]
        hits = await self.store.cache_get(keys) if self.store is not None else {}
        out: list[Completion | None] = [None] * len(conversations)
        for i, key in enumerate(keys):
            if key in hits:
                h = hits[key]
                out[i] = Completion(h["text"], h.get("tokens_in", 0), h.get("tokens_out", 0), 0.0, attempts=0)
        todo = [i for i, c in enumerate(out) if c is None]
        if todo:
            fresh = await self.complete([conversations[i] for i in todo], k)
            new = {}
            for i, comp in zip(todo, fresh):
                out[i] = comp
                if comp.error is None and comp.text is not None:
                    new[keys[i]] = {"text": comp.text, "tokens_in": comp.tokens_in, "tokens_out": comp.tokens_out}
            if self.store is not None and new:
                await self.store.cache_put(self.name, new)
        return out, [k_.hex() for k_ in keys]  # type: ignore[return-value]

    async def rank_shown(self, value: Value, windows: list[list[str]]) -> list[Ranking]:
        if not windows:
            return []
        t0 = time.monotonic()
        results: list[Ranking | None] = [None] * len(windows)
        convs = [build_messages(value, w, one_shot=self.config.one_shot, system=self.config.system_prompt)
                 for w in windows]
        parse = parse_ranking_upstream if self.config.parse == "upstream" else parse_ranking
        # group by k: the structured-output schema depends on it
        by_k: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_k.setdefault(len(w), []).append(i)
        for k, idx in by_k.items():
            comps, keys = await self._cached_complete([convs[i] for i in idx], k)
            repair_idx, repair_convs = [], []
            for i, comp, key in zip(idx, comps, keys):
                r = _to_ranking(comp, key, k, parse)
                results[i] = r
                if r.order is None and comp.error is None and self.config.repair:
                    repair_idx.append(i)
                    repair_convs.append(convs[i] + [{"role": "assistant", "content": comp.text or ""},
                                                    repair_message(k)])
            if repair_idx:
                comps2, keys2 = await self._cached_complete(repair_convs, k)
                for i, comp, key in zip(repair_idx, comps2, keys2):
                    first = results[i]
                    r = _to_ranking(comp, key, k, parse)
                    results[i] = r.model_copy(update={
                        "raw": (first.raw or "") + "\n---repair---\n" + (comp.text or ""),
                        "attempts": first.attempts + r.attempts,
                        "tokens_in": first.tokens_in + r.tokens_in,
                        "tokens_out": first.tokens_out + r.tokens_out,
                        "failure": None if r.order is not None else f"unparseable after repair: {r.failure}"})
        elapsed = time.monotonic() - t0
        return [r if r.latency_s else r.model_copy(update={"latency_s": elapsed}) for r in results]  # type: ignore[union-attr]


def _to_ranking(comp: Completion, key: str, k: int, parse=parse_ranking) -> Ranking:
    base = dict(raw=comp.text or "", prompt_hash=key, tokens_in=comp.tokens_in, tokens_out=comp.tokens_out,
                latency_s=comp.latency_s, attempts=comp.attempts, cached=comp.attempts == 0)
    if comp.error is not None:
        return Ranking(order=None, failure=comp.error, **base)
    try:
        return Ranking(order=parse(comp.text or "", k), **base)
    except ParseError as exc:
        return Ranking(order=None, failure=str(exc), **base)
