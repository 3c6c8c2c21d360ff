"""Ranking prompts, one template per theory, written for this project.

The judge sees the value's name and definition and k numbered texts, and answers with the text
numbers ordered from the one that most strongly supports the value to the one that most strongly
opposes it (neutral texts in the middle).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from contextlib import contextmanager

from schemas.taxonomy import Value, default_taxonomy

THEORY_FRAMES = {
    "pvq": "Schwartz's theory of basic human values",
    "mft": "Moral Foundations Theory",
    "duty": "W. D. Ross's theory of prima facie duties",
    "right": "Karel Vasak's three generations of human rights",
}

# What "supports" and "opposes" mean in each theory's own terms.
THEORY_POLES = {
    "pvq": ("acts on or endorses the value as a guiding motivation", "acts against it or rejects it as a motivation"),
    "mft": ("upholds the moral foundation (its virtues)", "violates it (its vices)"),
    "duty": ("fulfils the duty", "breaches or neglects the duty"),
    "right": ("respects, protects or advances the right", "violates, denies or undermines the right"),
}

SYSTEM = (
    "You are a careful annotator of human values in text. You compare texts by how strongly each "
    "one expresses support for, or opposition to, a given value."
)

GENERIC_SYSTEM = "You are a helpful assistant."
SYSTEM_PROMPTS = {"project": SYSTEM, "generic": GENERIC_SYSTEM, "none": None}

# A worked example for the one-shot variant (invented for this project).
_EXAMPLE_TEXTS = [
    "I lied to my friend so I could keep the money she lent me.",
    "I returned the extra change the cashier gave me by mistake.",
    "I had toast for breakfast.",
]
_EXAMPLE_ANSWER = "[2, 3, 1]"


def _label(value: Value) -> str:
    return value.key.replace("_", " ")


def ranking_instructions(k: int) -> str:
    return (
        f"Rank all {k} texts. Rank 1 = the text that most strongly supports the value; rank {k} = the "
        "text that most strongly opposes it; texts that are neutral or unrelated go in the middle. "
        f"Answer with the text numbers in rank order as one list of {k} distinct integers, for "
        "example [2, 3, 1], and nothing else."
    )


# Paraphrases of the ranking request (the stability study asks each window in several wordings):
# 0 is the reference wording above; the others say the same in other words. A caller that cannot
# pass ``paraphrase`` (a judge's ``rank_shown``) sets it for a block with :func:`ranking_paraphrase`.
_PARAPHRASE_HEADS = (
    None,
    "We use {frame}. The value in question is {label}: {definition}\n"
    "Texts that {pro} count as supporting it; texts that {con} count as opposing it.\n\n",
    "Below are several short texts. Compare them on one value, {label}, as understood in {frame} "
    "({definition}). Supporting the value means the text {pro}; opposing it means the text {con}.\n\n",
)
_PARAPHRASE_INSTRUCTIONS = (
    None,
    "Put all {k} texts in order, starting with the one that supports the value most and ending with "
    "the one that opposes it most; neutral or unrelated texts belong in the middle. Reply with only the "
    "{k} text numbers as one list, each number once, e.g. [2, 3, 1].",
    "Order the {k} texts from strongest support (first) to strongest opposition (last), with neutral "
    "ones between. Your whole reply must be a single list of the {k} different text numbers, such as "
    "[2, 3, 1].",
)
N_RANKING_PARAPHRASES = len(_PARAPHRASE_HEADS)
_PARAPHRASE = contextvars.ContextVar("ranking_paraphrase", default=0)


@contextmanager
def ranking_paraphrase(paraphrase: int):
    """Within the block, :func:`build_messages` uses wording ``paraphrase`` unless told otherwise."""
    if not 0 <= paraphrase < N_RANKING_PARAPHRASES:
        raise ValueError(f"ranking paraphrase: expected 0..{N_RANKING_PARAPHRASES - 1}, got {paraphrase}")
    token = _PARAPHRASE.set(paraphrase)
    try:
        yield
    finally:
        _PARAPHRASE.reset(token)


def build_messages(value: Value, texts: list[str], one_shot: bool = False, system: str = "project",
                   paraphrase: int | None = None) -> list[dict]:
    """Chat messages asking the judge to rank ``texts`` for ``value``. ``system``: ``"project"``
    (:data:`SYSTEM`), ``"generic"`` (:data:`GENERIC_SYSTEM`, the system line the published
    evaluator's model wrappers send) or ``"none"`` (the user message alone). ``paraphrase``: the
    wording (0 = reference; None = the one set by :func:`ranking_paraphrase`, 0 by default)."""
    para = _PARAPHRASE.get() if paraphrase is None else paraphrase
    if not 0 <= para < N_RANKING_PARAPHRASES:
        raise ValueError(f"ranking paraphrase: expected 0..{N_RANKING_PARAPHRASES - 1}, got {para}")
    if system not in SYSTEM_PROMPTS:
        raise ValueError(f"system prompt: expected one of {', '.join(map(repr, SYSTEM_PROMPTS))}, got {system!r}")
    frame = THEORY_FRAMES.get(value.theory, value.theory)
    definition = value.definition or default_taxonomy().definition(value.name, value.theory)
    pro, con = THEORY_POLES.get(value.theory, ("supports the value", "opposes the value"))
    head = (
        f"Value theory: {frame}.\n"
        f"Value: {_label(value)}\n"
        f"Definition: {definition}\n"
        f"A text supports it when it {pro}; it opposes it when it {con}.\n\n"
    )
    shot = ""
    if one_shot:
        ex = "\n".join(f"Text {i}: {t}" for i, t in enumerate(_EXAMPLE_TEXTS, 1))
        shot = (
            "Example (value: fairness, treating people honestly and even-handedly):\n"
            f"{ex}\nAnswer: {_EXAMPLE_ANSWER}\n\nNow the real task.\n\n"
        )
    body = "\n".join(f"Text {i}: {' '.join(t.split())}" for i, t in enumerate(texts, 1))
    instructions = ranking_instructions(len(texts))
    if para:
        head = _PARAPHRASE_HEADS[para].format(frame=frame, label=_label(value), definition=definition, pro=pro, con=con)
        instructions = _PARAPHRASE_INSTRUCTIONS[para].format(k=len(texts))
    user = f"{head}{shot}{body}\n\n{instructions}"
    msgs = [{"role": "user", "content": user}]
    text = SYSTEM_PROMPTS[system]
    return [{"role": "system", "content": text}, *msgs] if text else msgs


REPAIR = (
    "I could not read a ranking from that answer. Reply with only the list of the {k} text numbers "
    "in rank order, most supporting first, each number exactly once, like [{example}]."
)


def repair_message(k: int) -> dict:
    return {"role": "user", "content": REPAIR.format(k=k, example=", ".join(map(str, range(k, 0, -1))))}


def ranking_schema(k: int) -> dict:
    """JSON schema for structured output: exactly k integers in 1..k."""
    return {
        "type": "object",
        "properties": {
            "ranking": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": k},
                        "minItems": k, "maxItems": k}
        },
        "required": ["ranking"],
        "additionalProperties": False,
    }


def cache_key(model: str, messages: list[dict], sampling: dict, seed: int | None) -> bytes:
    """sha256 over (judge model, full prompt, sampling parameters, seed)."""
    blob = json.dumps({"model": model, "messages": messages, "sampling": sampling, "seed": seed},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).digest()
