"""Reading the texts to score: JSONL, CSV or Parquet with an id and a text column.

Everything is validated before anything is stored; the first problem raises :class:`InputError`
naming the file, the line (1-based, as an editor shows it; for CSV the header is line 1) and the field.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path


class InputError(ValueError):
    """Bad input; the message is ``file:line: field 'name': problem``."""


@dataclass(frozen=True)
class InputRow:
    line: int
    ext_id: str
    text: str


def iter_records(path: Path, text_col: str):
    """(line, record) pairs of a JSONL, CSV or Parquet file; ``text_col`` must be a CSV/Parquet column."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                yield lineno, obj
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or text_col not in reader.fieldnames:
                raise InputError(f"{path}:1: field {text_col!r}: column missing from the header {reader.fieldnames}")
            for row in reader:
                if None in row:
                    raise InputError(f"{path}:{reader.line_num}: more fields than the header has")
                yield reader.line_num, row
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_col not in table.column_names:
            raise InputError(f"{path}:1: field {text_col!r}: column missing (columns: {table.column_names})")
        for n, row in enumerate(table.to_pylist(), 1):
            yield n, row
    else:
        raise InputError(f"{path}: unsupported format {suffix or '(no suffix)'!r}; use .jsonl, .csv or .parquet")


def read_inputs(path: str | Path, id_col: str = "id", text_col: str = "text") -> list[InputRow]:
    """All rows of the input, validated. Missing ids become ``line-<n>``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    out: list[InputRow] = []
    seen: dict[str, int] = {}
    for lineno, row in iter_records(path, text_col):
        if text_col not in row or row[text_col] is None:
            raise InputError(f"{path}:{lineno}: field {text_col!r}: missing")
        text = row[text_col]
        if not isinstance(text, str):
            raise InputError(f"{path}:{lineno}: field {text_col!r}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"{path}:{lineno}: field {text_col!r}: empty text")
        raw_id = row.get(id_col)
        ext_id = f"line-{lineno}" if raw_id is None or raw_id == "" else str(raw_id)
        if ext_id in seen:
            raise InputError(f"{path}:{lineno}: field {id_col!r}: duplicate id {ext_id!r} (first on line {seen[ext_id]})")
        seen[ext_id] = lineno
        out.append(InputRow(lineno, ext_id, text))
    if not out:
        raise InputError(f"{path}: no rows")
    return out
