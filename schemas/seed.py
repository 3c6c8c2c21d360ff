"""The seed VIDB shipped with the project (written by the team, in its own words).

``schemas/data/seed_vidb.csv`` holds columns ``value,intensity,text``: for each of the 32 steerable
values at least 30 short first-person texts, six in each of the five equal-width intensity buckets
of [-10, 10] (right-closed: (-10, -6], (-6, -2], (-2, 2], (2, 6], (6, 10]). The file is written
with the ``csv`` module (:func:`write_seed`), so texts with commas are quoted; :func:`read_seed`
rejects any row that does not read back as exactly value, intensity and text, naming file, line
and field.
"""

from __future__ import annotations

import csv
import math
from functools import lru_cache
from pathlib import Path

SEED_VIDB = Path(__file__).parent / "data" / "seed_vidb.csv"
COLUMNS = ("value", "intensity", "text")
BUCKET_EDGES = (-10.0, -6.0, -2.0, 2.0, 6.0, 10.0)


class SeedError(ValueError):
    """A malformed seed row; the message reads ``file:line: field 'name': problem``."""


def intensity_bucket(x: float) -> int:
    """Bucket 0..4 of an intensity: the right-closed bins (-10, -6], …, (6, 10]; -10 joins bucket 0."""
    for b, hi in enumerate(BUCKET_EDGES[1:]):
        if x <= hi:
            return b
    raise ValueError(f"intensity {x!r} outside [-10, 10]")


def read_seed(path: str | Path = SEED_VIDB) -> list[tuple[str, float, str]]:
    """Rows ``(value, intensity, text)`` in file order, validated; see the module docstring."""
    path = Path(path)
    rows: list[tuple[str, float, str]] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) != COLUMNS:
            raise SeedError(f"{path}:1: header must be {','.join(COLUMNS)}, got {header}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) != 3:
                raise SeedError(f"{where}: expected 3 fields (value, intensity, text), got {len(row)}: {row} "
                                "(a text with a comma must be quoted)")
            value, raw, text = (f.strip() for f in row)
            if not value:
                raise SeedError(f"{where}: field 'value': empty")
            try:
                x = float(raw)
            except ValueError:
                raise SeedError(f"{where}: field 'intensity': not a number: {raw!r}") from None
            if not math.isfinite(x) or not -10 <= x <= 10:
                raise SeedError(f"{where}: field 'intensity': {x!r} outside [-10, 10]")
            if not text:
                raise SeedError(f"{where}: field 'text': empty")
            rows.append((value, x, text))
    return rows


def write_seed(rows: list[tuple[str, float, str]], path: str | Path = SEED_VIDB) -> None:
    """Write ``(value, intensity, text)`` rows with the ``csv`` module (quoting where needed)."""
    with Path(path).open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        for value, x, text in rows:
            w.writerow([value, f"{float(x):g}", text])


@lru_cache(maxsize=1)
def seed_vidb() -> dict[str, list[tuple[str, float]]]:
    """value key → [(text, intensity)], intensities in [-10, 10]."""
    out: dict[str, list[tuple[str, float]]] = {}
    for value, x, text in read_seed():
        out.setdefault(value, []).append((text, x))
    return out
