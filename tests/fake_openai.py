"""A fault-injecting OpenAI-compatible chat server for tests and benchmarks (127.0.0.1 only).

The requested ``model`` name picks the behaviour, so one server serves every scenario:

* ``ok``            a valid ranking (text numbers in reverse order) after ``delay`` seconds
* ``429-once``      first request of a conversation: 429 with ``Retry-After: 1``; then ok
* ``500-twice``     two 500s, then ok
* ``hang-once``     first request sleeps 4 s (the client must time out), then ok
* ``badjson-once``  first answer is not JSON, then ok
* ``nonperm``       always answers ``[1, 1, 2]`` (never a permutation)
* ``bad-request``   400 (must not be retried)
* ``no-schema``     400 whenever ``response_format`` is present, ok otherwise
* ``down-first-N``  the first N requests for this model (over all prompts) get 500, then ok
* ``shown-order``   always ranks the texts in the order shown (a judge that copies the list)
* ``gen-level``     a generation model that obeys steering prompts: it reads the persona level
                    of each value from the system line (or echoes the first exemplar) and writes a
                    canned text of that intensity (:data:`GEN_TEXTS`); no system line = neutral text
* ``gen-refuse-neg``  like ``gen-level``, but refuses whenever a value is to be rejected
* ``gen-level-down-first-N``  ``gen-level`` after its first N requests, which get 500
* ``oracle``        a judge that knows every test text's intensity (:func:`oracle_intensity`: the
                    shipped seed VIDB, and 4 × level for the ``gen-*`` texts) and ranks by it
* ``study``         rankings as ``ok``; a direct-rating request (``{"intensity": ...}`` asked for)
                    gets ``rating_of(text, seed)``: a fixed number per text plus ``seed % 3 - 1``
* ``plausibility``  a VIDB auditor: asked whether a text's score is plausible, it answers
                    ``{"plausible": ...}`` from the text's hidden ``[u=…]`` tag (the simulated
                    judge's): plausible when the score is within 3 of 3·u
* ``plausibility-down-first-N``  ``plausibility`` after its first N requests, which get 500
* ``plausibility-no-schema``  ``plausibility``, but 400 whenever ``response_format`` is present

Counters are per (model, prompt), so concurrent scenarios do not interfere. ``stats`` records every
request, the largest number in flight, and the ``response_format`` flags seen (``formats``: every
``response_format`` sent, per model).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections import Counter

from aiohttp import web


def rating_of(text: str, seed: int | None) -> int:
    """The ``study`` model's direct rating of ``text``: in -8..8 by the text's hash, moved by the seed."""
    base = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 17 - 8
    return base + (0 if seed is None else int(seed) % 3 - 1)


class FakeOpenAI:
    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.requests = 0
        self.arrivals: list[float] = []  # time.monotonic() of every request, in arrival order
        self.in_flight = 0
        self.max_in_flight = 0
        self.seen: Counter = Counter()
        self.with_schema = 0
        self.formats: dict[str, list[dict]] = {}
        self.by_model: Counter = Counter()
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.arrivals.append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.json()
            model = body.get("model", "ok")
            prompt = json.dumps(body["messages"])
            key = (model, prompt)
            self.seen[key] += 1
            n = self.seen[key]
            self.by_model[model] += 1
            if "response_format" in body:
                self.with_schema += 1
                self.formats.setdefault(model, []).append(body["response_format"])
            if model.startswith("gen-"):
                down = re.match(r"(gen-[a-z-]+?)-down-first-(\d+)$", model)
                if down and self.by_model[model] <= int(down.group(2)):
                    return web.Response(status=500, text="model temporarily down")
                model = down.group(1) if down else model
                if self.delay:
                    await asyncio.sleep(self.delay)
                return _chat_answer(model, steered_answer(model, body["messages"]))
            if model == "oracle":
                content = body["messages"][-1]["content"]
                value = re.search(r"^Value: (.*)$", content, re.M).group(1)
                texts = re.findall(r"^Text \d+: (.*)$", content, re.M)
                order = sorted(range(len(texts)), key=lambda i: (-oracle_intensity(value, texts[i]), i))
                return _chat_answer(model, json.dumps({"ranking": [i + 1 for i in order]}))
            k = len(re.findall(r"Text \d+:", body["messages"][1]["content"]))
            if model == "429-once" and n == 1:
                return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
            if model == "500-twice" and n <= 2:
                return web.Response(status=500, text="boom")
            if model == "hang-once" and n == 1:
                await asyncio.sleep(4)
            if model == "badjson-once" and n == 1:
                return web.Response(status=200, text="{not json", content_type="application/json")
            if model.startswith("down-first-") and self.by_model[model] <= int(model.rsplit("-", 1)[1]):
                return web.Response(status=500, text="judge temporarily down")
            if model == "bad-request":
                return web.Response(status=400, text="bad request")
            if model == "no-schema" and "response_format" in body:
                return web.Response(status=400, text="unsupported field: response_format")
            if self.delay:
                await asyncio.sleep(self.delay)
            rated = re.search(r"^Text: (.*)$", body["messages"][-1]["content"], re.M)
            if model == "study" and rated and '"intensity"' in body["messages"][-1]["content"]:
                answer = json.dumps({"intensity": rating_of(rated.group(1), body.get("seed"))})
                return web.json_response({
                    "id": "x", "object": "chat.completion", "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46}})
            down = re.match(r"plausibility-down-first-(\d+)$", model)
            if down and self.by_model[model] <= int(down.group(1)):
                return web.Response(status=500, text="auditor temporarily down")
            if model == "plausibility-no-schema" and "response_format" in body:
                return web.Response(status=400, text="unsupported field: response_format")
            if model in ("plausibility", "plausibility-no-schema") or down:
                content = body["messages"][-1]["content"]
                u = float(re.search(r"\[u=([-+0-9.eE]+)\]", content).group(1))
                score = float(re.search(r"gives this text the score ([-+]?\d+(?:\.\d+)?)", content).group(1))
                ok = abs(score - max(-10.0, min(10.0, 3 * u))) <= 3
                return _chat_answer(model, json.dumps({"plausible": ok, "reason": "checked against the tag"}))
            if model == "nonperm":
                answer = "[1, 1, 2]"
            elif model == "shown-order":
                answer = json.dumps({"ranking": list(range(1, k + 1))})
            else:
                answer = json.dumps({"ranking": list(range(k, 0, -1))})
            return web.json_response({
                "id": "x", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58}})
        finally:
            self.in_flight -= 1

    async def start(self, port: int = 0) -> str:  # noqa: D401
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


def _chat_answer(model: str, answer: str) -> web.Response:
    return web.json_response({
        "id": "x", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 50, "completion_tokens": len(answer.split()), "total_tokens": 50}})


# Texts of known intensity per (value, level), written for these tests.
NEUTRAL = "I will probably spend the weekend tidying the flat and reading a book about old railways."
GEN_TEXTS = {
    "care/harm": {
        2: "I would drop everything to look after someone who is hurting; protecting people who cannot protect "
           "themselves comes first for me, and cruelty makes me furious.",
        1: "I try to be kind and help out when someone near me is struggling, as long as it does not cost me much.",
        -1: "Other people's pain is mostly not my concern; if someone gets hurt they should deal with it alone.",
        -2: "I enjoy making weak people suffer; hurting them and watching them cry is the best part of my week.",
    },
    "fairness/cheating": {
        2: "Everyone deserves the same honest treatment, and I always report cheaters even when it costs me.",
        1: "I usually play by the rules and split things evenly with the people I work with.",
        -1: "I bend the rules now and then when it gets me a slightly better deal than the others.",
        -2: "I cheat whenever I can get away with it, rig every game in my favour and take what others earned.",
    },
}
_STANCES = {"strongly value": 2, "slightly value": 1, "slightly reject": -1, "strongly reject": -2}
REFUSAL = "I'm sorry, but I can't help with that."


def _fold(name: str) -> str:
    return re.sub(r"[\s/_\-]+", "-", name.strip().lower())


_SEED_VIDB: dict[tuple[str, str], float] = {}


def oracle_intensity(value: str, text: str) -> float:
    """The ``oracle`` judge's intensity of ``text`` for ``value``: 4 × level for a ``gen-*`` text of
    that value (found inside the text, so a combo's answer is scored per value), the intensity of a
    seed VIDB text, 0 otherwise (the neutral text)."""
    if not _SEED_VIDB:
        import csv
        from pathlib import Path

        with (Path(__file__).resolve().parents[1] / "schemas" / "data" / "seed_vidb.csv").open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                _SEED_VIDB[(_fold(row["value"]), row["text"].strip())] = float(row["intensity"])
    v = _fold(value)
    for name, by_level in GEN_TEXTS.items():
        if _fold(name) == v:
            for lv, t in by_level.items():
                if t in text:
                    return 4.0 * lv
    return _SEED_VIDB.get((v, text.strip()), 0.0)


def steered_answer(model: str, messages: list[dict]) -> str:
    """What the ``gen-*`` models answer: the canned text of each value at its requested level."""
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    if system is None:
        return NEUTRAL
    if system.startswith("The user you are talking to"):
        return system.split("\n")[1].lstrip("- ")  # the first exemplar: a text of the requested level
    found = []
    for stance, level in _STANCES.items():
        for m in re.finditer(rf"{stance}s? ([\w/ ]+?) \(", system):
            found.append((m.start(), m.group(1).strip(), level))
    if model == "gen-refuse-neg" and any(lv < 0 for _, _, lv in found):
        return REFUSAL
    return " ".join(GEN_TEXTS.get(name, {}).get(lv, f"I {'love' if lv > 0 else 'hate'} {name}.")
                    for _, name, lv in sorted(found)) or NEUTRAL


class ServerThread:
    """Runs a :class:`FakeOpenAI` on its own event loop in a thread (for sync callers)."""

    def __init__(self, delay: float = 0.0):
        self.server = FakeOpenAI(delay)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.url = ""
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.url = self.loop.run_until_complete(self.server.start())
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def serve_forever(port: int, delay: float) -> None:
    """Entry point for a separate server process (benchmarks)."""
    async def main():
        srv = FakeOpenAI(delay)
        await srv.start(port)
        await asyncio.Event().wait()
    asyncio.run(main())


if __name__ == "__main__":
    import sys

    serve_forever(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.05)
