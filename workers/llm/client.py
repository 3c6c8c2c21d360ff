"""One OpenAI-compatible ``/v1/chat/completions`` client for every LLM caller (judges, generators).

One ``aiohttp.ClientSession`` per client, a concurrency semaphore, requests- and tokens-per-minute
buckets (:mod:`workers.llm.rate_limit`), and retries with exponential backoff and full jitter on
408/409/429/5xx, timeouts, connection errors and unreadable (non-JSON) bodies; ``Retry-After`` is
honoured. Other 4xx answers are final. When the caller passes a JSON schema, structured output
(``response_format``) is used where the server accepts it: ``auto`` tries OpenAI's ``json_schema``
form, then the ``json_object`` + ``schema`` form of llama-cpp-python's server, then free text, and
remembers the first form the server took for the rest of the client's life. Until then one request
at a time carries a schema (the others wait for its verdict), so a refusing server costs one
refused request per form, not one per question of the first concurrent batch.

The client reads its settings from an :class:`workers.llm.endpoint.Endpoint` (``name``, ``model``,
``base_url``, ``api_key()``, ``concurrency``, ``requests_per_minute``, ``tokens_per_minute``,
``max_attempts``) with a ``timeout_s`` and, optionally, ``structured``: a judge and a generation
model configured in the same file talk to servers the same way.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import aiohttp

from workers.llm.rate_limit import TokenBucket

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
FORMAT_LADDERS = {"auto": ["json_schema", "json_object", None], "json_schema": ["json_schema"],
                  "json_object": ["json_object"], "off": [None]}


class FinalError(Exception):
    """A failure that another attempt cannot fix (4xx other than 408/409/429)."""


class RetryableError(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


@dataclass
class ChatResult:
    """One completion: its text, token usage, wall time over all attempts, attempts made, and
    ``error`` (the transport failure after the last attempt; ``text`` is None then)."""

    text: str | None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    error: str | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, retry_after: float | None) -> float:
    """Full-jitter exponential backoff, ``U(0, min(cap, base·2^(attempt-1)))``; Retry-After is a floor."""
    delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
    return max(delay, retry_after) if retry_after is not None else delay


class ChatClient:
    """Async chat-completions client with limits, retries and the structured-output ladder."""

    def __init__(self, config):
        if not config.base_url:
            raise ValueError(f"{config.name!r}: kind 'api' needs base_url")
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._key = config.api_key()  # read once from the environment; never logged
        self._session: aiohttp.ClientSession | None = None
        self._sem: asyncio.Semaphore | None = None
        self._rpm = TokenBucket(config.requests_per_minute)
        self._tpm = TokenBucket(config.tokens_per_minute)
        self._formats = list(FORMAT_LADDERS[getattr(config, "structured", "off")])
        # Until the server has given a verdict on the form (an answer, or a refusal that leaves one
        # form), one request at a time finds out: the others wait for it instead of each stepping
        # down the ladder on its own. Any other failure (a timeout, a 5xx, a 401) says nothing
        # about the form, so the others stop waiting and go concurrently, each stepping down on
        # a refusal as before (a slow or broken server is not also made serial).
        self._probe_over = len(self._formats) < 2
        self._probe: asyncio.Lock | None = None
        self.calls = 0  # HTTP requests sent, for accounting and tests

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Content-Type": "application/json"}
            if self._key:
                headers["Authorization"] = f"Bearer {self._key}"
            timeout = aiohttp.ClientTimeout(total=self.config.timeout_s, connect=min(10.0, self.config.timeout_s))
            connector = aiohttp.TCPConnector(limit=self.config.concurrency)
            self._session = aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector)
            self._sem = asyncio.Semaphore(self.config.concurrency)
            self._probe = asyncio.Lock()
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    @property
    def structured_format(self) -> str | None:
        """The response_format used with a schema (None: free text)."""
        return self._formats[0]

    def _body(self, messages: list[dict], temperature: float, max_tokens: int, seed: int | None,
              schema: dict | None, fmt: str | None, schema_name: str = "answer") -> dict:
        body = {"model": self.config.model, "messages": messages, "temperature": temperature,
                "max_tokens": max_tokens}
        if seed is not None:
            body["seed"] = int(seed)
        if schema is not None and fmt == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": schema_name, "strict": True, "schema": schema}}
        elif schema is not None and fmt == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    def _format_rejected(self, fmt: str | None, message: str) -> bool:
        """Step down the structured-output ladder when the server refused this form."""
        if fmt is None or "response_format" not in message.lower():
            return False
        if fmt not in self._formats:
            return True  # a concurrent request already stepped past this form
        if len(self._formats) < 2:
            return False  # a fixed form the server refuses: nothing to fall back to
        self._formats.remove(fmt)
        self._probe_over = len(self._formats) < 2  # one form left: nothing more to find out
        return True

    async def chat_many(self, conversations: list[list[dict]], temperature: float, max_tokens: int,
                        seeds: list[int | None] | None = None, schema: dict | None = None,
                        schema_name: str = "answer") -> list[ChatResult]:
        """One result per conversation, in order (sent concurrently up to the limits)."""
        seeds = seeds or [None] * len(conversations)
        return list(await asyncio.gather(*(self.chat(c, temperature, max_tokens, s, schema, schema_name)
                                           for c, s in zip(conversations, seeds))))

    async def chat(self, messages: list[dict], temperature: float, max_tokens: int, seed: int | None = None,
                   schema: dict | None = None, schema_name: str = "answer",
                   on_answer: Callable[[ChatResult], Awaitable[None]] | None = None) -> ChatResult:
        """One completion; failures after the last attempt are returned (``error``), not raised.

        ``on_answer`` is awaited on a successful answer while its concurrency slot is still held,
        so a caller that makes answers durable there never has more than ``concurrency`` requests
        whose answers a killed process would lose (the next request starts only after it)."""
        self._ensure_session()
        est_tokens = sum(len(m["content"]) for m in messages) / 4 + max_tokens
        t0 = time.monotonic()
        attempt = 0
        last = "no attempt"
        while attempt < self.config.max_attempts:
            attempt += 1
            await self._rpm.acquire(1)
            await self._tpm.acquire(est_tokens)
            probe = self._probe if schema is not None and not self._probe_over else None
            if probe is not None:
                await probe.acquire()
                if self._probe_over:  # settled while this request waited
                    probe.release()
                    probe = None
            fmt = self._formats[0] if schema is not None else None
            try:
                async with self._sem:  # type: ignore[union-attr]
                    text, tin, tout = await self._post(self._body(messages, temperature, max_tokens, seed, schema, fmt,
                                                               schema_name))
                    if schema is not None:
                        self._probe_over = True  # the server took this form
                    result = ChatResult(text, tin, tout, time.monotonic() - t0, attempt)
                    if on_answer is not None:
                        await on_answer(result)
                self._tpm.refund(est_tokens - (tin + tout))
                return result
            except FinalError as exc:
                if self._format_rejected(fmt, str(exc)):
                    attempt -= 1  # not the request's fault: ask again in the next form
                    continue
                self._probe_over = True  # no verdict on the form: stop making the others wait
                return ChatResult(None, 0, 0, time.monotonic() - t0, attempt, error=str(exc))
            except RetryableError as exc:
                if self._format_rejected(fmt, str(exc)):
                    attempt -= 1
                    continue
                self._probe_over = True
                if probe is not None:  # the others need not wait out this request's backoff
                    probe.release()
                    probe = None
                last = str(exc)
                if attempt < self.config.max_attempts:
                    await asyncio.sleep(backoff_delay(attempt, exc.retry_after))
            finally:
                if probe is not None:
                    probe.release()
        return ChatResult(None, 0, 0, time.monotonic() - t0, attempt, error=f"gave up after {attempt} attempts: {last}")

    async def _post(self, body: dict) -> tuple[str, int, int]:
        session = self._ensure_session()
        self.calls += 1
        try:
            async with session.post(self.url, json=body) as resp:
                raw = await resp.text()
                if resp.status in RETRY_STATUS:
                    raise RetryableError(f"http {resp.status}: {raw[:300]}", parse_retry_after(resp.headers.get("Retry-After")))
                if resp.status >= 400:
                    raise FinalError(f"http {resp.status}: {raw[:300]}")
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise RetryableError("timeout") from None
        except aiohttp.ClientError as exc:
            raise RetryableError(f"connection error: {type(exc).__name__}") from None
        try:
            data = json.loads(raw)
            choice = data["choices"][0]["message"]
            text = choice.get("content") or ""
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise RetryableError(f"malformed response body: {raw[:120]!r}") from None
        return text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
