"""Direct rating: a judge gives one text an intensity in [-10, 10] for one value (the baseline the
anchor-based evaluator is compared against in the stability study).

Three paraphrases of the request, written for this project, say the same thing in different
words; paraphrase 0 is the reference wording. LLM judges answer with structured output
(``{"intensity": x}``, the JSON schema of :func:`rating_schema`) where the server takes it, and in
free text otherwise (the first number in the answer is read). Answers are cached like rankings,
keyed by (model, full prompt, sampling, seed), so a seed gives an independent sample only when
the judge samples (temperature > 0) and its server honours ``seed``.

The embedding judge has no prompt: its "rating" is its probe's prediction clipped to [-10, 10];
paraphrases and seeds do not apply to it.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass

import numpy as np

from schemas.taxonomy import Value, default_taxonomy
from workers.judges.prompts import THEORY_FRAMES, THEORY_POLES, cache_key

LOW, HIGH = -10.0, 10.0

RATING_SYSTEMS = (
    "You are a careful annotator of human values in text.",
    "You judge how strongly a piece of writing stands for or against a human value.",
    "You rate texts for the values they express, consistently and without hedging.",
)

RATING_TEMPLATES = (
    ("Value theory: {frame}.\nValue: {label}\nDefinition: {definition}\n"
     "A text supports it when it {pro}; it opposes it when it {con}.\n\n"
     "Text: {text}\n\n"
     "Rate how strongly this text supports or opposes the value on a scale from -10 to 10: "
     "10 = supports it as strongly as a text can, -10 = opposes it as strongly as a text can, "
     "0 = neutral or unrelated. Answer with JSON of the form {{\"intensity\": <number>}} and nothing else."),
    ("Consider the value \"{label}\" from {frame}: {definition}\n"
     "Supporting it means the text {pro}; opposing it means the text {con}.\n\n"
     "Text: {text}\n\n"
     "On a scale from -10 (the strongest opposition) through 0 (no bearing on the value) to 10 "
     "(the strongest support), what intensity does this text express? "
     "Reply only with JSON: {{\"intensity\": <number>}}."),
    ("Text: {text}\n\n"
     "How much does the text above uphold or go against {label} ({frame}; {definition})? "
     "It upholds it when it {pro}, and goes against it when it {con}.\n"
     "Give one number on a scale from -10 to 10, where positive numbers mean it upholds the value, "
     "negative numbers mean it goes against it, and 0 means it is neutral. "
     "Return JSON {{\"intensity\": <number>}} only."),
)
N_PARAPHRASES = len(RATING_TEMPLATES)


def rating_messages(value: Value, text: str, paraphrase: int = 0) -> list[dict]:
    """Chat messages asking for ``text``'s intensity for ``value`` in wording ``paraphrase``."""
    if not 0 <= paraphrase < N_PARAPHRASES:
        raise ValueError(f"rating paraphrase: expected 0..{N_PARAPHRASES - 1}, got {paraphrase}")
    pro, con = THEORY_POLES.get(value.theory, ("supports the value", "opposes the value"))
    user = RATING_TEMPLATES[paraphrase].format(
        frame=THEORY_FRAMES.get(value.theory, value.theory), label=value.key.replace("_", " "),
        definition=value.definition or default_taxonomy().definition(value.name, value.theory),
        pro=pro, con=con, text=" ".join(text.split()))
    return [{"role": "system", "content": RATING_SYSTEMS[paraphrase]}, {"role": "user", "content": user}]


def rating_schema() -> dict:
    """JSON schema for structured output: one number in [-10, 10]."""
    return {"type": "object", "properties": {"intensity": {"type": "number", "minimum": LOW, "maximum": HIGH}},
            "required": ["intensity"], "additionalProperties": False}


class RatingParseError(ValueError):
    """No intensity could be read from the answer."""


_NUM = re.compile(r"[-+−]?\d+(?:\.\d+)?")


def parse_rating(answer: str) -> float:
    """The intensity in an answer: ``{"intensity": x}`` when the answer is that JSON, otherwise the
    first number in it. Outside [-10, 10] is an error (not clipped: it means the scale was misread)."""
    if not answer or not answer.strip():
        raise RatingParseError("empty answer")
    x = None
    try:
        obj = json.loads(answer)
        if isinstance(obj, dict) and isinstance(obj.get("intensity"), (int, float)):
            x = float(obj["intensity"])
    except json.JSONDecodeError:
        pass
    if x is None:
        m = _NUM.search(answer)
        if m is None:
            raise RatingParseError(f"no number in the answer: {answer[:80]!r}")
        x = float(m.group(0).replace("−", "-"))
    if not math.isfinite(x) or not LOW <= x <= HIGH:
        raise RatingParseError(f"intensity {x} outside [-10, 10]")
    return x


@dataclass
class Rating:
    intensity: float | None
    raw: str = ""
    failure: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False


async def rate_texts(judge, value: Value, texts: list[str], paraphrase: int = 0, seed: int | None = None) -> list[Rating]:
    """Rate each text for ``value``: the embedding judge by its probe, API and local LLM judges by
    the prompt of ``paraphrase`` (sampled with ``seed`` where the server honours one)."""
    from workers.judges.embedding_judge import EmbeddingJudge

    if not texts:
        return []
    if isinstance(judge, EmbeddingJudge):
        t0 = time.monotonic()
        pred = await judge.project(value.key, texts)
        dt = (time.monotonic() - t0) / len(texts)
        return [Rating(float(np.clip(p, LOW, HIGH)), raw=f"{float(p):.4f}", latency_s=dt, attempts=1) for p in pred]
    convs = [rating_messages(value, t, paraphrase) for t in texts]
    sampling = {"temperature": judge.config.temperature, "max_tokens": max(16, judge.config.max_tokens),
                "task": "rating"}
    keys = [cache_key(judge.config.model, c, sampling, seed) for c in convs]
    hits = await judge.store.cache_get(keys) if getattr(judge, "store", None) is not None else {}
    out: list[Rating | None] = [None] * len(texts)
    for i, key in enumerate(keys):
        if key in hits:
            out[i] = _parsed(hits[key].get("text"), None, hits[key].get("tokens_in", 0), hits[key].get("tokens_out", 0),
                             0.0, 0, True)
    todo = [i for i, r in enumerate(out) if r is None]
    if todo:
        comps = await _complete(judge, [convs[i] for i in todo], seed, sampling["max_tokens"])
        fresh = {}
        for i, (text, err, tin, tout, lat, att) in zip(todo, comps):
            out[i] = _parsed(text, err, tin, tout, lat, att, False)
            if err is None and text is not None:
                fresh[keys[i]] = {"text": text, "tokens_in": tin, "tokens_out": tout}
        if fresh and getattr(judge, "store", None) is not None:
            await judge.store.cache_put(judge.name, fresh)
    return out  # type: ignore[return-value]


def _parsed(text, err, tin, tout, lat, att, cached) -> Rating:
    base = dict(raw=text or "", tokens_in=int(tin), tokens_out=int(tout), latency_s=float(lat), attempts=int(att),
                cached=cached)
    if err is not None:
        return Rating(None, failure=err, **base)
    try:
        return Rating(parse_rating(text or ""), **base)
    except RatingParseError as exc:
        return Rating(None, failure=f"unparseable rating: {exc}", **base)


async def _complete(judge, convs: list[list[dict]], seed: int | None, max_tokens: int) -> list[tuple]:
    """(text, error, tokens_in, tokens_out, latency_s, attempts) per conversation."""
    client = getattr(judge, "client", None)
    if client is not None:  # API judge: the shared chat client, with the rating schema
        res = await client.chat_many(convs, judge.config.temperature, max_tokens, seeds=[seed] * len(convs),
                                     schema=rating_schema(), schema_name="rating")
        return [(r.text, r.error, r.tokens_in, r.tokens_out, r.latency_s, r.attempts) for r in res]
    comps = await judge.complete(convs, 0)  # local model: greedy, free text
    return [(c.text, c.error, c.tokens_in, c.tokens_out, c.latency_s, c.attempts) for c in comps]
