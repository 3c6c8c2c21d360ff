"""The seed VIDB shipped with the project (written by the team): ≥12 texts per steerable value."""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

SEED_VIDB = Path(__file__).parent / "data" / "seed_vidb.csv"


@lru_cache(maxsize=1)
def seed_vidb() -> dict[str, list[tuple[str, float]]]:
    """value key → [(text, intensity)], intensities in [-10, 10]."""
    out: dict[str, list[tuple[str, float]]] = {}
    with SEED_VIDB.open(newline="") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["value"], []).append((row["text"], float(row["intensity"])))
    return out
