"""Spec of the stability study job kind (rating versus ranking over seeds and prompt paraphrases)."""

from __future__ import annotations

from pydantic import Field

from schemas.messages import ScoreMode, _Msg


class StudySpec(_Msg):
    """Everything needed to plan, run and reproduce a stability study.

    Each labelled text (``data``: a VIDB sample directory, a few-shot JSON file or upstream
    ``text,final_rating`` CSVs) is scored in ``repeats × paraphrases`` runs by both methods:
    *rating* (the judge gives an intensity directly) and *ranking* (the anchor-based evaluator,
    ``k`` texts per window, ``windows`` windows per text, anchors from the store's VIDB, every
    window shown in a random order). Repeat ``r`` draws anchors and layouts with one seed for every
    paraphrase, so paraphrases differ only in the prompt's wording.
    """

    data: str
    values: list[str]
    judge: str
    repeats: int = Field(default=3, ge=1, le=20)
    paraphrases: int = Field(default=2, ge=1, le=3)
    k: int = Field(default=6, ge=2, le=20)
    windows: int = Field(default=3, ge=1, le=50)
    mode: ScoreMode = "upstream"
    seed: int = 0
    chunk_size: int = Field(default=256, ge=1)
    texts: int = Field(default=0, ge=0)  # labelled texts (per run), known when the spec is built
    vidb_versions: dict[str, int] = Field(default_factory=dict)  # the VIDB ranked against (ScoreJobSpec)
    prompted: bool = True  # False for a judge without a prompt (embedding): paraphrases do not apply
