"""Typed messages shared by the scheduler and the workers.

Celery carries plain JSON; every task body is one of these models, parsed on arrival, so a
malformed message fails loudly at the edge instead of deep inside a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageTask(_Msg):
    """Run one stage of a job kind over one chunk of a job."""

    job_id: str
    chunk_no: int = Field(ge=0)
    stage: int = Field(ge=0)


class FinalizeTask(_Msg):
    """Run a job's finalize step (claimed once all chunks finished their last stage)."""

    job_id: str


class EmbedTask(_Msg):
    """Embed texts with a HiVES/sentence encoder; the result is cached in the store."""

    texts: list[str]
    model: str | None = None  # checkpoint dir or HF name; None = default base encoder
    batch_size: int = Field(default=64, ge=1)


class PingTask(_Msg):
    payload: str


ScoreMode = Literal["upstream", "calibrated"]


Layout = Literal["upstream", "shuffled"]


def with_mode_layout(spec):
    """Fill an unset ``layout`` from the scoring mode: the published layout in ``upstream`` mode,
    shuffled positions in ``calibrated`` mode (specs are frozen, hence ``object.__setattr__``)."""
    if spec.layout is None:
        object.__setattr__(spec, "layout", "upstream" if spec.mode == "upstream" else "shuffled")
    return spec


class ScoreJobSpec(_Msg):
    """Everything needed to plan, run and reproduce a batch scoring job.

    ``layout`` defaults by mode: ``upstream`` mode shows the published layout (scored text first,
    anchors in ascending bucket order), ``calibrated`` mode shuffles positions.
    """

    input: str
    values: list[str]
    judge: str
    k: int = Field(default=6, ge=2, le=20)
    windows: int = Field(default=3, ge=1, le=50)
    anchors: Literal["bucket", "random"] = "bucket"
    seed: int = 0
    mode: ScoreMode = "upstream"
    layout: Layout | None = None
    empty_bucket: Literal["uniform", "nearest"] = "uniform"  # fill of an empty anchor bucket
    chunk_size: int = Field(default=256, ge=1)
    min_anchor_tau: float | None = Field(default=None, ge=-1, le=1)
    vidb_versions: dict[str, int] = Field(default_factory=dict)  # value → VIDB version planned against
    vidb_filter: Literal["all", "agreed"] = "all"  # agreed: no anchor flagged implausible or disputed

    @model_validator(mode="after")
    def _default_layout(self):
        return with_mode_layout(self)


@dataclass(frozen=True, slots=True)
class PlannedWindow:
    """One ranking window: the scored text plus k-1 VIDB anchors in the order shown to the judge."""

    window_id: int
    chunk_no: int
    value: str
    item_no: int
    member_text_ids: tuple[int | None, ...]  # None marks the scored text (its id is known at write time)
    target_pos: int
    anchor_ids: tuple[int, ...]  # VIDB item ids in shown order, target skipped
    anchor_intensity: tuple[float, ...]
    seed: int


class Ranking(_Msg):
    """A judge's answer for one window.

    ``order`` lists positions (0-based, into the texts as shown) from most supporting to most
    opposing; it is None when the window failed, and ``failure`` says why.
    """

    order: list[int] | None
    raw: str = ""
    prompt_hash: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.order is not None


SteerRegime = Literal["persona", "exemplars"]
STEER_LEVELS = (-2, -1, 0, 1, 2)


class SteerJobSpec(_Msg):
    """A steering job: generate responses to queries at target intensities of values (persona or
    exemplar prompts), then score each response on its target value(s) with the evaluator.

    ``values`` × ``levels`` are single-value targets; each of ``combos`` (value → level, in order)
    is one multi-value target. Level 0 is the unsteered baseline (the query alone), generated once
    per (query, value, sample) whatever the regimes. The scoring fields mean what they mean in
    :class:`ScoreJobSpec`.
    """

    queries: str
    query_field: str = "query"
    values: list[str] = Field(default_factory=list)
    levels: list[int] = Field(default_factory=lambda: list(STEER_LEVELS))
    combos: list[dict[str, int]] = Field(default_factory=list)
    regimes: list[SteerRegime] = Field(default_factory=lambda: ["persona"])
    model: str = "smollm2"
    samples: int = Field(default=1, ge=1, le=1000)
    exemplars: int = Field(default=3, ge=1, le=20)  # exemplar texts per value (exemplars regime)
    gen_chunk: int = Field(default=16, ge=1)  # generations per chunk (task)
    judge: str = "embedding"
    k: int = Field(default=6, ge=2, le=20)
    windows: int = Field(default=3, ge=1, le=50)
    anchors: Literal["bucket", "random"] = "bucket"
    seed: int = 0
    mode: ScoreMode = "upstream"
    layout: Layout | None = None
    empty_bucket: Literal["uniform", "nearest"] = "uniform"
    min_anchor_tau: float | None = Field(default=None, ge=-1, le=1)
    vidb_versions: dict[str, int] = Field(default_factory=dict)  # the VIDB the job scores against (ScoreJobSpec)

    @model_validator(mode="after")
    def _check(self):
        with_mode_layout(self)
        bad = [lv for lv in self.levels + [lv for c in self.combos for lv in c.values()] if lv not in STEER_LEVELS]
        if bad:
            raise ValueError(f"levels must be in {list(STEER_LEVELS)}, got {bad[0]}")
        if not self.values and not self.combos:
            raise ValueError("a steering job needs values or combos")
        if any(len(c) < 2 for c in self.combos):
            raise ValueError("a combo names at least two values")
        return self

    def all_values(self) -> list[str]:
        """Every value the job scores (single values first, then combo values), once each."""
        out = list(self.values) + [v for c in self.combos for v in c]
        return list(dict.fromkeys(out))

    def score_spec(self) -> ScoreJobSpec:
        """The scoring half of this spec, for the scoring kind's planning and scoring functions."""
        return ScoreJobSpec(input=self.queries, values=self.all_values(), judge=self.judge, k=self.k,
                            windows=self.windows, anchors=self.anchors, seed=self.seed, mode=self.mode,
                            layout=self.layout, empty_bucket=self.empty_bucket, chunk_size=10**9,
                            min_anchor_tau=self.min_anchor_tau, vidb_versions=self.vidb_versions)
