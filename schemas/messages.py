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

    @model_validator(mode="after")
    def _default_layout(self):
        if self.layout is None:
            object.__setattr__(self, "layout", "upstream" if self.mode == "upstream" else "shuffled")
        return self


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
