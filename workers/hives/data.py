"""HiVES training rows and where they come from.

A row: ``text, theory, value, level_1..level_3`` (the value's top-down path in its theory, see
:func:`value_levels`), ``direction`` (supports / opposes / neutral), an individual-anchor id (the
fine-grained value and direction) and a cross-theory anchor id (concepts that mean the same across
theories, from a table the team ships or the user supplies). Stage 2 of training pulls together
texts that share an anchor id.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from schemas.seed import seed_vidb
from schemas.taxonomy import default_taxonomy

CROSS_ANCHORS = Path(__file__).resolve().parents[2] / "schemas" / "data" / "cross_theory_anchors.csv"
LEVELS = 3
DIRECTIONS = ("supports", "opposes", "neutral")


@dataclass(frozen=True)
class Row:
    text: str
    theory: str
    value: str
    level_1: str
    level_2: str
    level_3: str
    direction: str
    individual_anchor: str
    cross_anchor: str | None = None

    @property
    def levels(self) -> tuple[str, str, str]:
        return (self.level_1, self.level_2, self.level_3)


@dataclass(frozen=True)
class CrossAnchor:
    anchor: str
    description: str
    members: tuple[str, ...]  # "theory:value"


def prefix_ids(rows: list[Row]) -> np.ndarray:
    """(n, 3) integer ids of each row's level-1/2/3 path prefix (theory included): rows share an id
    at level l exactly when they share the path down to level l."""
    out = np.zeros((len(rows), LEVELS), dtype=np.int64)
    for l in range(LEVELS):
        keys = [(r.theory,) + r.levels[: l + 1] for r in rows]
        uniq = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        out[:, l] = [uniq[k] for k in keys]
    return out


def load_cross_anchors(path: str | Path | None = None) -> list[CrossAnchor]:
    path = Path(path) if path else CROSS_ANCHORS
    out = []
    tax = default_taxonomy()
    with path.open(newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.DictReader(fh), 2):
            members = tuple(row["members"].split())
            for m in members:
                theory, _, value = m.partition(":")
                try:
                    tax.get(value, theory)
                except KeyError as exc:
                    raise ValueError(f"{path}:{n}: field 'members': {exc}") from None
            out.append(CrossAnchor(row["anchor"], row["description"], members))
    return out


def cross_anchor_of(anchors: list[CrossAnchor]) -> dict[str, str]:
    """``theory:value`` → anchor id (a value belongs to at most one cross-theory anchor)."""
    return {m: a.anchor for a in anchors for m in a.members}


def value_levels(value: str, theory: str | None = None) -> tuple[str, str, str]:
    """Level-1..3 nodes of a value's top-down taxonomy path.

    A theory's single top node (``ross_duties``, ``human_rights``) is dropped like pvq's and mft's
    ``root``: every value shares it, so as a level it would only group texts by direction. A
    shorter path is padded by repeating its last node; a longer one keeps its first two nodes and
    puts the value itself at level 3, so Schwartz sub-values (``benevolence:caring``) stay distinct
    from their parent instead of being cut to it.
    """
    tax = default_taxonomy()
    v = tax.get(value, theory)
    path = [n for n in tax.path(v.name, v.theory) if n != tax.theories[v.theory].top]
    if len(path) > LEVELS:
        path = path[: LEVELS - 1] + path[-1:]
    return tuple(path[min(i, len(path) - 1)] for i in range(LEVELS))  # type: ignore[return-value]


def cross_anchor_for(theory: str, key: str, cross: dict[str, str]) -> str | None:
    """Cross-theory anchor of a value: its own entry in the table, else its nearest listed ancestor's
    (a sub-value such as ``benevolence:caring`` belongs to the concept of ``benevolence``)."""
    if f"{theory}:{key}" in cross:
        return cross[f"{theory}:{key}"]
    tax = default_taxonomy()
    for a in tax.ancestors(key, theory):
        hit = cross.get(f"{theory}:{tax.get(a, theory).key}")
        if hit is not None:
            return hit
    return None


def direction_of(intensity: float, neutral_band: float = 0.0) -> str:
    if abs(intensity) <= neutral_band:
        return "neutral"
    return "supports" if intensity > 0 else "opposes"


def make_row(text: str, value: str, direction: str, cross: dict[str, str]) -> Row:
    v = default_taxonomy().get(value)
    l1, l2, l3 = value_levels(v.name, v.theory)
    c = cross_anchor_for(v.theory, v.key, cross)
    return Row(text, v.theory, v.key, l1, l2, l3, direction, f"{v.theory}:{v.key}:{direction}",
               None if c is None else f"{c}:{direction}")


def rows_from_vidb(items: dict[str, list[tuple[str, float]]], cross_path: str | Path | None = None,
                   neutral_band: float = 0.0) -> list[Row]:
    """Rows from VIDB items (value → [(text, intensity)]); direction from the intensity's sign."""
    cross = cross_anchor_of(load_cross_anchors(cross_path))
    return [make_row(t, v, direction_of(x, neutral_band), cross) for v, its in items.items() for t, x in its]


def seed_rows(cross_path: str | Path | None = None) -> list[Row]:
    return rows_from_vidb(seed_vidb(), cross_path)


def vidb_sample_rows(directory: str | Path, cross_path: str | Path | None = None) -> list[Row]:
    """Rows from upstream few-shot VIDB JSON files (``{value: {bin: [{text, intensity}]}}``)."""
    from workers.io.vidb_files import read_vidb_json

    items: dict[str, list[tuple[str, float]]] = {}
    for f in sorted(Path(directory).glob("*.json")):
        for value, rows in read_vidb_json(f).items():
            items.setdefault(value, []).extend(rows)
    return rows_from_vidb(items, cross_path)


def read_rows(path: str | Path, cross_path: str | Path | None = None) -> list[Row]:
    """User rows from CSV/JSONL/Parquet with ``text, value, direction`` (levels and anchors are derived
    from the taxonomy when absent). Errors name file, line and field."""
    from workers.io.inputs import InputError, iter_records

    path = Path(path)
    cross = cross_anchor_of(load_cross_anchors(cross_path))
    try:
        records = list(iter_records(path, "text"))
    except InputError as exc:
        raise ValueError(str(exc)) from None
    out = []
    for n, r in records:
        for field in ("text", "value", "direction"):
            if not str(r.get(field) or "").strip():
                raise ValueError(f"{path}:{n}: field {field!r}: missing or empty")
        if r["direction"] not in DIRECTIONS:
            raise ValueError(f"{path}:{n}: field 'direction': {r['direction']!r} is not one of {DIRECTIONS}")
        try:
            row = make_row(r["text"], r["value"], r["direction"], cross)
        except KeyError as exc:
            raise ValueError(f"{path}:{n}: field 'value': {exc}") from None
        if r.get("cross_anchor"):
            row = Row(**{**asdict(row), "cross_anchor": r["cross_anchor"]})
        out.append(row)
    return out
