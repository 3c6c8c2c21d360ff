r"""What a scoring job would cost, before anything is stored (``valueflow score --dry-run``).

Windows are exact: :math:`W = n_\text{texts}\cdot n_\text{values}\cdot m`. Judge calls are
:math:`W` (twice with ``both_orders``), before repair turns and retries. Prompt tokens are estimated
from the real prompt template: the characters of a prompt built with empty texts (the fixed part,
per value) plus the scored text and :math:`k-1` anchors of the seed VIDB's mean length, at about
four characters per token; completion tokens from the length of an answer listing :math:`k`
positions, with ``max_tokens`` as the upper bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from schemas.messages import ScoreJobSpec
from schemas.seed import seed_vidb
from schemas.taxonomy import default_taxonomy
from workers.io.inputs import InputRow
from workers.judges.config import get_judge_config
from workers.judges.prompts import build_messages

CHARS_PER_TOKEN = 4.0


@dataclass
class Estimate:
    judge: str
    kind: str
    texts: int = 0
    values: int = 0
    windows: int = 0
    calls: int = 0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    completion_tokens_max: float = 0.0
    per_value: dict[str, float] = field(default_factory=dict)

    def render(self) -> str:
        lines = [f"dry run: {self.texts} texts × {self.values} values → {self.windows} windows (nothing stored)",
                 f"judge {self.judge} ({self.kind}): {self.calls} calls"]
        if self.kind == "embedding":
            lines.append(f"  no LLM tokens: about {self.texts + self.values * 30} encoder forward passes")
        else:
            lines.append(f"  ≈ {self.prompt_tokens:,.0f} prompt tokens, ≈ {self.completion_tokens:,.0f} completion "
                         f"tokens (at most {self.completion_tokens_max:,.0f}); repairs and retries not counted")
        return "\n".join(lines)


def estimate_score_job(spec: ScoreJobSpec, batches: Iterable[list[InputRow]]) -> Estimate:
    judge = get_judge_config(spec.judge)
    tax = default_taxonomy()
    seed = seed_vidb()
    est = Estimate(spec.judge, judge.kind, values=len(spec.values))
    fixed, anchor_chars = {}, {}
    for v in spec.values:
        value = tax.get(v)
        fixed[v] = sum(len(m["content"]) for m in build_messages(value, [""] * spec.k, one_shot=judge.one_shot))
        anchor_chars[v] = float(np.mean([len(t) for t, _ in seed.get(v, [("x" * 80, 0.0)])]))
    text_chars = 0
    for batch in batches:
        est.texts += len(batch)
        text_chars += sum(len(r.text) for r in batch)
    est.windows = est.texts * len(spec.values) * spec.windows
    per_call = 2 if judge.both_orders else 1
    est.calls = est.windows * per_call if judge.kind != "embedding" else 0
    if judge.kind != "embedding":
        for v in spec.values:
            chars = spec.windows * (est.texts * (fixed[v] + (spec.k - 1) * anchor_chars[v]) + text_chars)
            est.per_value[v] = chars / CHARS_PER_TOKEN * per_call
        est.prompt_tokens = sum(est.per_value.values())
        answer = len("[" + ", ".join(str(i) for i in range(1, spec.k + 1)) + "]") + 20  # JSON wrapper
        est.completion_tokens = est.calls * answer / CHARS_PER_TOKEN
        est.completion_tokens_max = est.calls * judge.max_tokens
    return est
