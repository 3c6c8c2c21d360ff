"""Loading VIDB items: the shipped seed, and the upstream formats.

Upstream formats:

* per-value CSV ``{value}_{theory}_flag_aggregated.csv`` with columns ``text,final_rating``;
* few-shot JSON ``{value: {"-2"|"-1"|"1"|"2": [{"text": ..., "intensity": ...}]}}``.

A file is validated completely before any row is written, and written in one transaction per value.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from workers.io.inputs import InputError
from schemas.seed import seed_vidb
from schemas.taxonomy import default_taxonomy

Rows = dict[str, list[tuple[str, float]]]


def _intensity(raw, where: str) -> float:
    try:
        x = float(raw)
    except (TypeError, ValueError):
        raise InputError(f"{where}: not a number: {raw!r}") from None
    if not math.isfinite(x) or not -10 <= x <= 10:
        raise InputError(f"{where}: intensity {x!r} outside [-10, 10]")
    return x


def _value_key(name: str, where: str) -> str:
    try:
        v = default_taxonomy().get(name)
    except KeyError as exc:
        raise InputError(f"{where}: {exc}") from None
    if not v.steerable:
        raise InputError(f"{where}: value {name!r} is not one of the 32 steerable values")
    return v.key


class _Once:
    """A value's rows, each text once: a repeat with the same rating is dropped, one with another
    rating is an error naming both places."""

    def __init__(self):
        self.rows: list[tuple[str, float]] = []
        self.where: list[str] = []  # where each row is, as an error names it ("line 7", "care[2][0]")
        self.lines: list[int | None] = []
        self._at: dict[str, int] = {}

    def add(self, text: str, x: float, where: str, place: str, line: int | None = None) -> None:
        i = self._at.get(text)
        if i is None:
            self._at[text] = len(self.rows)
            self.rows.append((text, x))
            self.where.append(place)
            self.lines.append(line)
        elif self.rows[i][1] != x:
            raise InputError(f"{where}: field 'text': same text as {self.where[i]}, rated {self.rows[i][1]:g} there"
                             f" and {x:g} here")


def read_vidb_csv(path: Path, value: str | None = None, lines: bool = False) -> Rows:
    """``text,final_rating`` (or ``text,intensity``); the value comes from the file name or ``value``.
    A text may appear once (or repeated with the same rating). ``lines``: the rows are
    (text, intensity, line) instead of pairs."""
    if value is None:
        m = re.match(r"(.+?)_(pvq|mft|duty|right)(?:_.*)?$", path.stem)
        if not m:
            raise InputError(f"{path}: cannot tell the value from the file name; pass --value")
        value = m.group(1)
    key = _value_key(value, str(path))
    once = _Once()
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        score_col = "final_rating" if "final_rating" in cols else "intensity" if "intensity" in cols else None
        if "text" not in cols or score_col is None:
            raise InputError(f"{path}:1: header must have 'text' and 'final_rating' columns, has {cols}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            text = (row.get("text") or "").strip()
            if not text:
                raise InputError(f"{where}: field 'text': empty text")
            once.add(text, _intensity(row.get(score_col), f"{where}: field {score_col!r}"), where,
                     f"line {reader.line_num}", reader.line_num)
    if lines:
        return {key: [(t, x, n) for (t, x), n in zip(once.rows, once.lines)]}
    return {key: once.rows}


def read_vidb_json(path: Path) -> Rows:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected an object keyed by value")
    out: dict[str, _Once] = {}
    for value, bins in raw.items():
        key = _value_key(value, f"{path}: value {value!r}")
        if not isinstance(bins, dict):
            raise InputError(f"{path}: value {value!r}: expected an object of bins")
        for b, items in bins.items():
            for i, item in enumerate(items):
                where = f"{path}: {value}[{b}][{i}]"
                if not isinstance(item, dict) or not str(item.get("text") or "").strip():
                    raise InputError(f"{where}: field 'text': missing or empty")
                out.setdefault(key, _Once()).add(item["text"].strip(),
                                                 _intensity(item.get("intensity"), f"{where}: field 'intensity'"),
                                                 where, f"{value}[{b}][{i}]")
    return {key: once.rows for key, once in out.items()}


def read_vidb(path: str | Path, value: str | None = None) -> Rows:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() == ".json":
        return read_vidb_json(path)
    if path.suffix.lower() == ".csv":
        return read_vidb_csv(path, value)
    raise InputError(f"{path}: unsupported VIDB format; expected .csv (text,final_rating) or .json (few-shot)")


async def import_rows(store, rows: Rows, source: str, only_if_empty: bool = False) -> dict[str, int]:
    """Insert rows; returns new items per value (existing (value, text) pairs are kept; with
    ``only_if_empty``, nothing goes into a value that has items)."""
    return {value: await store.add_vidb_items(value, [t for t, _ in items], [x for _, x in items], source,
                                              only_if_empty)
            for value, items in rows.items()}


async def ensure_seed(store) -> dict[str, int]:
    """Give every steerable value without VIDB items the shipped seed items (checked again under
    each value's lock: an import that lands meanwhile is not mixed with the seed)."""
    have = await store.vidb_counts()
    missing = {v: rows for v, rows in seed_vidb().items() if have.get(v, 0) == 0}
    return await import_rows(store, missing, "seed", only_if_empty=True) if missing else {}


# -- export and the human review sheet ---------------------------------------------------------------
EXPORT_SUFFIXES = (".csv", ".jsonl", ".parquet")
REVIEW_COLUMNS = ["item_id", "value", "text", "model_intensity", "implausible_votes", "human_rating", "rater"]


def write_vidb_export(path: Path, value: str, version: int | None, rows) -> int:
    """Write a value's items: ``.csv`` in the upstream format (``text,final_rating``), ``.jsonl`` or
    ``.parquet`` with text, value, version, intensity, utility, stderr, flags and source. The file
    appears whole or not at all."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise InputError(f"{path}: unsupported export format; use .csv (upstream text,final_rating), .jsonl or .parquet")
    tmp = path.with_name(path.name + ".part")
    recs = [{"text": r["text"], "value": value, "version": version, "intensity": float(r["intensity"]),
             "utility": r["utility"], "stderr": r["stderr"], "flags": list(r["flags"]), "source": r["source"]}
            for r in rows]
    if suffix == ".csv":
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "final_rating"])
            w.writerows([(r["text"], r["intensity"]) for r in recs])
    elif suffix == ".jsonl":
        with tmp.open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("text", pa.string()), ("value", pa.string()), ("version", pa.int64()),
                            ("intensity", pa.float64()), ("utility", pa.float64()), ("stderr", pa.float64()),
                            ("flags", pa.list_(pa.string())), ("source", pa.string())])
        pq.write_table(pa.Table.from_pylist(recs, schema=schema), tmp)
    tmp.replace(path)
    return len(recs)


def write_review(path: Path, rows) -> int:
    """The review sheet a person fills in: one row per flagged item, ``human_rating`` and ``rater`` empty."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=REVIEW_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({"item_id": r["item_id"], "value": r["value"], "text": r["text"],
                        "model_intensity": r["intensity"], "implausible_votes": r["votes"], "human_rating": "", "rater": ""})
    tmp.replace(path)
    return len(rows)


def read_review(path: Path) -> list[tuple[int, str, float, str, int]]:
    """Filled rows of a review sheet: (item_id, value, rating, rater, line); rows without a rating are skipped.

    Every row is validated before any is returned; an error names ``file:line: field``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    out = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("item_id", "value", "human_rating", "rater") if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            raw = (row.get("human_rating") or "").strip()
            if not raw:
                continue
            try:
                item_id = int(row["item_id"])
            except (TypeError, ValueError):
                raise InputError(f"{where}: field 'item_id': not an integer: {row.get('item_id')!r}") from None
            rating = _intensity(raw, f"{where}: field 'human_rating'")
            rater = (row.get("rater") or "").strip()
            if not rater:
                raise InputError(f"{where}: field 'rater': who rated this item? (required with a rating)")
            out.append((item_id, (row.get("value") or "").strip(), rating, rater, reader.line_num))
    return out
