"""Specs of the VIDB job kinds (build, expand, audit): everything needed to plan, run and reproduce them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.messages import _Msg

Scale = Literal["isotonic", "minmax"]


class VidbBuildSpec(_Msg):
    """Build a value's VIDB from judge rankings of a corpus.

    ``per_text``: windows each text appears in (for k = 2, comparisons per text). The corpus and
    the reference items are ranked together in a connected, balanced design; finalize fits
    Plackett–Luce (MAP, precision ``prior``) and maps utilities to [-10, 10] by isotonic regression
    on the references (``scale='isotonic'``) or linearly from the fitted range (``'minmax'``).
    """

    input: str
    value: str
    judge: str
    k: int = Field(default=2, ge=2, le=6)
    per_text: int = Field(default=10, ge=2, le=200)
    reference: str | None = None  # upstream CSV text,final_rating; None = the value's VIDB items
    max_references: int = Field(default=100, ge=1)
    scale: Scale = "isotonic"
    prior: float = Field(default=0.1, gt=0)
    seed: int = 0
    chunk_size: int = Field(default=256, ge=1)


class VidbExpandSpec(_Msg):
    """Insert new texts into a value's VIDB by noisy binary search against its current items.

    Each new text gets ``rounds`` windows, one after another; each window shows it with the k-1
    current items nearest to quantiles of its running utility posterior. Finalize refits the
    value warm-started from the current utilities and maps the new utilities to intensities by
    isotonic regression on the existing items.
    """

    input: str
    value: str
    judge: str
    k: int = Field(default=2, ge=2, le=6)
    rounds: int = Field(default=12, ge=1, le=200)
    from_jobs: list[str] = Field(default_factory=list)  # scoring jobs whose comparisons are folded in
    prior: float = Field(default=0.1, gt=0)
    seed: int = 0
    items_per_chunk: int = Field(default=64, ge=1)


class VidbAuditSpec(_Msg):
    """Ask a judge panel whether each of a value's VIDB items has a plausible intensity.

    The items are snapshotted when the job is planned and split into blocks of
    ``items_per_chunk``; each chunk is one judge's votes on one block. Ranking judges place an
    item between the value's items ``margin`` below and above it; items with at least
    ``min_weird`` "implausible" votes are flagged by finalize.
    """

    value: str
    panel: list[str] = Field(min_length=1)  # judge names, each at most once
    min_weird: int = Field(default=2, ge=1)
    margin: float = Field(default=3.0, gt=0)
    items_per_chunk: int = Field(default=256, ge=1)

    @model_validator(mode="after")
    def _panel(self) -> "VidbAuditSpec":
        twice = sorted({j for j in self.panel if self.panel.count(j) > 1})
        if twice:
            raise ValueError(f"judge {twice[0]!r} is named twice in the panel")
        if self.min_weird > len(self.panel):
            raise ValueError(f"{self.min_weird} votes cannot come from {len(self.panel)} judge(s)")
        return self
