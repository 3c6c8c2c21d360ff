"""Specs of the VIDB job kinds (build, expand): everything needed to plan, run and reproduce them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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
