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

from schemas.settings import max_text_chars
from workers.io.inputs import InputError, csv_records, text_problem
from schemas.seed import seed_vidb
from schemas.taxonomy import default_taxonomy

Rows = dict[str, list[tuple[str, float]]]


def _intensity(raw, where: str) -> float:
    if isinstance(raw, bool):  # float(True) is 1.0: a JSON true is not a rating
        raise InputError(f"{where}: not a number: {raw!r}")
    try:
        x = float(raw)
    except (TypeError, ValueError):
        raise InputError(f"{where}: not a number: {raw!r}") from None
    if not math.isfinite(x) or not -10 <= x <= 10:
        raise InputError(f"{where}: intensity {x!r} outside [-10, 10]")
    return x


def _text(raw, where: str) -> str:
    """A VIDB text as given (not stripped: the corpus reader keeps texts as given too, so an
    exported VIDB read back names the same texts); missing, blank, too long or unstorable is an error."""
    if problem := text_problem(raw, max_text_chars()):
        raise InputError(f"{where}: field 'text': {problem}")
    return raw


def _value_key(name: str, where: str) -> str:
    try:
        v = default_taxonomy().get(name)
    except KeyError as exc:
        raise InputError(f"{where}: {exc}") from None
    if not v.steerable:
        raise InputError(f"{where}: value {name!r} is not one of the 32 steerable values")
    return v.key


def _known_key(name: str) -> str | None:
    """The key of the value ``name`` names, or None when it names none."""
    try:
        return default_taxonomy().get(name).key
    except KeyError:
        return None


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
    """``text,final_rating`` (or ``text,intensity``); the value comes from the file name or ``value``
    (a name that names another value than ``value`` is refused).
    A text may appear once (or repeated with the same rating). Read as every input CSV is
    (:func:`workers.io.inputs.csv_records`: UTF-8 with or without a BOM, a record named by its first
    line). ``lines``: the rows are (text, intensity, line) instead of pairs."""
    m = re.match(r"(.+?)_(pvq|mft|duty|right)(?:_.*)?$", path.stem)
    if value is None:
        if not m:
            raise InputError(f"{path}: cannot tell the value from the file name; pass --value")
        value = m.group(1)
    key = _value_key(value, str(path))
    named = _known_key(m.group(1)) if m else None
    if named is not None and named != key:  # a file of another value, given for this one
        raise InputError(f"{path}: the file name says value {named!r}, --value says {key!r}")
    once = _Once()
    score_col = None
    for line, row in csv_records(path, "text", max_text_chars()):
        where = f"{path}:{line}"
        if score_col is None:
            score_col = "final_rating" if "final_rating" in row else "intensity" if "intensity" in row else None
            if score_col is None:
                raise InputError(f"{path}:1: field 'final_rating': column missing from the header {list(row)} "
                                 "(the upstream format is text,final_rating; intensity is accepted too)")
        once.add(_text(row["text"], where), _intensity(row[score_col], f"{where}: field {score_col!r}"), where,
                 f"line {line}", line)
    if not once.rows:
        raise InputError(f"{path}: no rows")
    if lines:
        return {key: [(t, x, n) for (t, x), n in zip(once.rows, once.lines)]}
    return {key: once.rows}


def read_vidb_json(path: Path) -> Rows:
    """Few-shot JSON ``{value: {bin: [{"text", "intensity"}, ...]}}``; errors name ``value[bin][i]``."""
    data = path.read_bytes()
    try:
        raw = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{path}:{line}: invalid UTF-8 (byte 0x{data[exc.start]:02x})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected an object keyed by value")
    out: dict[str, _Once] = {}
    for value, bins in raw.items():
        key = _value_key(value, f"{path}: value {value!r}")
        if not isinstance(bins, dict):
            raise InputError(f"{path}: value {value!r}: expected an object of bins, got {type(bins).__name__}")
        for b, items in bins.items():
            if not isinstance(items, list):
                raise InputError(f"{path}: {value}[{b}]: expected a list of items, got {type(items).__name__}")
            for i, item in enumerate(items):
                where = f"{path}: {value}[{b}][{i}]"
                if not isinstance(item, dict):
                    raise InputError(f"{where}: expected an object with text and intensity, got {type(item).__name__}")
                out.setdefault(key, _Once()).add(_text(item.get("text"), where),
                                                 _intensity(item.get("intensity"), f"{where}: field 'intensity'"),
                                                 where, f"{value}[{b}][{i}]")
    if not out:
        raise InputError(f"{path}: no items")
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

    Read as every input CSV is (:func:`workers.io.inputs.csv_records`); every row is validated
    before any is returned; an error names ``file:line: field``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    out = []
    for line, row in csv_records(path, "item_id", max_text_chars(), also=("value", "human_rating", "rater")):
        where = f"{path}:{line}"
        raw = row["human_rating"].strip()
        if not raw:
            continue
        try:
            item_id = int(row["item_id"])
        except ValueError:
            raise InputError(f"{where}: field 'item_id': not an integer: {row['item_id']!r}") from None
        rating = _intensity(raw, f"{where}: field 'human_rating'")
        rater = row["rater"].strip()
        if not rater:
            raise InputError(f"{where}: field 'rater': who rated this item? (required with a rating)")
        out.append((item_id, row["value"].strip(), rating, rater, line))
    return out
