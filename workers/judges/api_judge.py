"""Judge over an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp server, OpenAI...).

The transport (session, concurrency, rate limits, retries with backoff, the structured-output
ladder) is the shared :class:`workers.llm.client.ChatClient`, the same client the steering
generators use; this class only asks it for rankings (with the ranking JSON schema).
"""

from __future__ import annotations

from workers.judges.base import Completion, LLMJudge
from workers.judges.config import JudgeConfig
from workers.judges.prompts import ranking_schema
from workers.llm.client import ChatClient


class APIJudge(LLMJudge):
    def __init__(self, config: JudgeConfig, store=None):
        if not config.base_url:
            raise ValueError(f"judge {config.name!r}: kind 'api' needs base_url")
        super().__init__(config, store)
        self.client = ChatClient(config)

    @property
    def calls(self) -> int:
        """HTTP requests sent, for accounting and tests."""
        return self.client.calls

    @property
    def structured_format(self) -> str | None:
        """The response_format in use (None: free text)."""
        return self.client.structured_format

    async def aclose(self) -> None:
        await self.client.aclose()

    async def complete(self, conversations: list[list[dict]], k: int) -> list[Completion]:
        results = await self.client.chat_many(conversations, self.config.temperature, self.config.max_tokens,
                                              schema=ranking_schema(k), schema_name="ranking")
        return [Completion(r.text, r.tokens_in, r.tokens_out, r.latency_s, r.attempts, error=r.error) for r in results]
