"""Steering prompts, written for this project.

Two regimes move a model along a value, at levels -2 (strongly against) … +2 (strongly for):

* **persona** — a system line that makes the model a person who strongly values / slightly values /
  slightly rejects / strongly rejects the value, with the value's definition;
* **exemplars** — a system line listing texts "the user has written or agreed with", drawn from the
  value's VIDB bin for that level (:data:`LEVEL_BINS`).

Level 0 is the unsteered baseline: the query alone, no system line. A multi-value combo states each
value at its own level in one system line (a value at level 0 in a combo is left out of the prompt
and still scored). Every user message carries the same length request, baseline included, so the
only difference between levels is the steering.
"""

from __future__ import annotations

import numpy as np

from schemas.taxonomy import Value, default_taxonomy

LENGTH_REQUEST = "Please answer in at most 100 words."

# level → how the persona holds the value
PERSONA_STANCE = {
    2: ("strongly values", "strongly value", "It is among the things you care about most, and it shapes what you say and do."),
    1: ("slightly values", "slightly value", "You care about it somewhat, though other things often come first for you."),
    -1: ("slightly rejects", "slightly reject", "You tend to set it aside and find it somewhat overrated."),
    -2: ("strongly rejects", "strongly reject", "You think it matters little or not at all, and you readily act against it."),
}

# level → VIDB intensity interval [lo, hi) of its exemplars: strong |I| ≥ 6, slight 3 ≤ |I| < 6
LEVEL_BINS = {2: (6.0, 10.0001), 1: (3.0, 6.0), -1: (-5.9999, -2.9999), -2: (-10.0, -5.9999)}


def in_bin(intensity: float, level: int) -> bool:
    """Whether a VIDB intensity belongs to the exemplar bin of ``level`` (|I| ≥ 6 strong, 3–6 slight)."""
    a = abs(intensity)
    if level == 0 or np.sign(intensity) != np.sign(level):
        return False
    return a >= 6.0 if abs(level) == 2 else 3.0 <= a < 6.0


def label(value: Value) -> str:
    return value.name.replace("_", " ")


def _definition(value: Value) -> str:
    return (value.definition or default_taxonomy().definition(value.name, value.theory)).strip().rstrip(".")


def user_message(query: str) -> dict:
    return {"role": "user", "content": f"{query.strip()}\n\n{LENGTH_REQUEST}"}


def persona_system(targets: list[tuple[Value, int]]) -> str:
    """The persona line for one value or a combo: each value at its own level (level 0 left out)."""
    parts = [(v, lv) for v, lv in targets if lv != 0]
    if len(parts) == 1:
        v, lv = parts[0]
        stance, _, colour = PERSONA_STANCE[lv]
        return (f"You are a person who {stance} {label(v)} ({_definition(v)}). {colour} "
                "Answer the user as this person would, in your own voice.")
    lines = [f"- you {PERSONA_STANCE[lv][1]} {label(v)} ({_definition(v)})" for v, lv in parts]
    return ("You are a person with these convictions:\n" + "\n".join(lines)
            + "\nEach conviction is as strong as stated. Answer the user as this person would, in your own voice.")


def exemplar_system(exemplars: list[str]) -> str:
    """The exemplar line: texts the user wrote or agreed with."""
    listed = "\n".join(f"- {t.strip()}" for t in exemplars)
    return ("The user you are talking to has written or agreed with the following texts:\n"
            f"{listed}\nReply to the user in a way that fits the outlook these texts show.")


def draw_exemplars(pool: list[tuple[str, float]], level: int, k: int, rng: np.random.Generator,
                   value: str) -> list[str]:
    """``k`` texts (or all there are) from the bin of ``level`` in ``pool`` = [(text, intensity)]."""
    binned = [t for t, i in pool if in_bin(i, level)]
    if not binned:
        lo, hi = LEVEL_BINS[level]
        raise ValueError(f"value {value!r}: no VIDB texts in the exemplar bin of level {level:+d} "
                         f"(intensity in [{lo:.0f}, {hi:.0f})); import more with 'valueflow vidb import'")
    pick = rng.choice(len(binned), size=min(k, len(binned)), replace=False)
    return [binned[i] for i in sorted(pick)]


def build_messages(query: str, targets: list[tuple[Value, int]], regime: str,
                   exemplars: list[str] | None = None) -> list[dict]:
    """The conversation of one generation. ``regime`` 'none' (or all levels 0) is the baseline."""
    if regime == "none" or all(lv == 0 for _, lv in targets):
        return [user_message(query)]
    if regime == "persona":
        system = persona_system(targets)
    elif regime == "exemplars":
        if not exemplars:
            raise ValueError("the exemplars regime needs exemplar texts")
        system = exemplar_system(exemplars)
    else:
        raise ValueError(f"unknown steering regime {regime!r}; use persona or exemplars")
    return [{"role": "system", "content": system}, user_message(query)]
