"""Generation over an OpenAI-compatible chat API, through the client the judges use."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from workers.generation.base import Generator, Keep
from workers.generation.config import ModelConfig
from workers.llm.client import ChatClient, ChatResult


class APIGenerator(Generator):
    def __init__(self, config: ModelConfig, store=None):
        super().__init__(config, store)
        self.client = ChatClient(config)

    async def _stream(self, conversations: list[list[dict]], seeds: list[int],
                      keep: Keep) -> AsyncIterator[list[tuple[int, ChatResult]]]:
        async def one(i: int) -> tuple[int, ChatResult]:
            r = await self.client.chat(conversations[i], self.config.temperature, self.config.max_tokens, seeds[i],
                                       on_answer=lambda ans: keep([(i, ans)]))
            return i, r

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(conversations))]
        try:
            for fut in asyncio.as_completed(tasks):
                yield [await fut]
        finally:
            for t in tasks:
                t.cancel()

    async def aclose(self) -> None:
        await self.client.aclose()
