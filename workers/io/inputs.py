"""Reading the texts to score: JSONL, CSV or Parquet with an id and a text column, streamed.

:func:`iter_input_batches` reads the file incrementally (JSONL and CSV as bytes, one physical line
at a time; Parquet one record batch of one row group at a time) and yields validated
:class:`InputRow` lists of ``batch_size``, in file order. Memory is one batch plus one hash per id
(duplicate ids are checked across the whole file). :func:`read_inputs` is the same as one list.

The first problem raises :class:`InputError` ``file:line: field 'name': problem``; the line is
1-based as an editor shows it (CSV: the header is line 1 and a record that spans lines is named by
its first line; Parquet: the row number). The error may come after batches were yielded, so a
consumer stages what it gets and makes it visible only once the iterator ends without error.

Checked: the file decodes as UTF-8 (the bad byte's line is named); each JSONL line is a JSON
object; a CSV record has exactly the header's fields and every quote closes (the line where an
unterminated quote opened is named); the text is present, a string, not blank, at most
``max_text_chars`` characters and storable (no NUL, no lone surrogate); ids are strings or integers,
at most :data:`MAX_ID_CHARS` characters and unique. A row without an id gets ``line-<n>``.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from schemas.settings import max_text_chars as _max_text_chars_setting

MAX_ID_CHARS = 512  # ids sit in a unique PostgreSQL index, whose entries must stay under ~2.7 kB
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL (PostgreSQL text refuses it), lone surrogates
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # an undecodable byte under surrogateescape
_CSV_FIELD_END = re.compile("[,\r\n]")
_json_decode = json.JSONDecoder().decode
_id_hash = hash  # duplicate ids are found by hash, then confirmed by reading the file again


class InputError(ValueError):
    """Bad input; the message is ``file:line: field 'name': problem``."""


class InputRow(NamedTuple):
    """One text to score: its line (Parquet: row number), the user's id and the text."""

    line: int
    ext_id: str
    text: str


class _Lines:
    """Physical lines of a binary file, decoded as UTF-8 with the byte offset and number of each.

    Undecodable bytes are kept as surrogates (``surrogateescape``) so the parser finishes the record
    and the caller can name the field that holds them; ``bad`` is ``(line, column, byte)`` of the
    first one.
    """

    def __init__(self, fh):
        self.fh, self.lineno, self.offset, self.bad = fh, 0, 0, None

    def __iter__(self) -> Iterator[str]:
        for raw in self.fh:
            self.lineno += 1
            self.offset += len(raw)
            if self.lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if self.bad is None:
                    self.bad = (self.lineno, exc.start + 1, raw[exc.start])
                line = raw.decode("utf-8", "surrogateescape")
            yield line


def _utf8_error(path: Path, bad: tuple[int, int, int], field: str | None) -> InputError:
    line, col, byte = bad
    where = f"field {field!r}: " if field is not None else ""
    return InputError(f"{path}:{line}: {where}invalid UTF-8 (byte 0x{byte:02x} at byte {col} of the line)")


def _field_with_bad_bytes(names: Iterable[str], values: Iterable[object]) -> str | None:
    return next((n for n, v in zip(names, values) if isinstance(v, str) and _ESCAPED_BYTE.search(v)), None)


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open("rb") as fh:
        lines = _Lines(fh)
        for line in lines:
            n = lines.lineno
            if not line.strip():
                continue
            try:
                obj = _json_decode(line.rstrip("\r\n"))  # so an unclosed string is reported as one
            except json.JSONDecodeError as exc:
                if lines.bad:
                    raise _utf8_error(path, lines.bad, None) from None
                array = n == 1 and line.lstrip()[:1] == "["
                hint = " - the file must be JSON Lines, one object per line" if array else ""
                raise InputError(f"{path}:{n}: malformed JSON ({exc.msg}: column {exc.pos + 1}){hint}") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            if lines.bad:
                raise _utf8_error(path, lines.bad, _field_with_bad_bytes(obj.keys(), obj.values()))
            yield n, obj


def csv_records(path: Path, text_col: str, text_limit: int | None = None,
                also: Iterable[str] = ()) -> Iterator[tuple[int, dict]]:
    """Records of a CSV (default dialect, strict) keyed by the header, numbered by their first line.

    The header must name ``text_col`` and every column in ``also``. ``text_limit``: the text column
    may hold that many characters (the csv module's process-wide field limit is raised to allow it,
    never lowered) and a longer one is reported against that limit."""
    if text_limit is not None and csv.field_size_limit() <= text_limit:
        csv.field_size_limit(text_limit + 1)
    header: list[str] | None = None
    with path.open("rb") as fh:
        lines = _Lines(fh)
        reader = csv.reader(lines, strict=True)
        while True:
            start, offset = lines.lineno + 1, lines.offset
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if lines.bad:
                    raise _utf8_error(path, lines.bad, None) from None
                raise _csv_record_error(path, start, offset, header, text_col, text_limit) or InputError(
                    f"{path}:{lines.lineno}: malformed CSV ({exc})") from None
            if lines.bad:
                raise _utf8_error(path, lines.bad, _field_with_bad_bytes(header or (), row))
            if not row:
                continue  # blank line
            if header is None:
                header = row
                for col in (text_col, *also):
                    if col not in header:
                        raise InputError(f"{path}:{start}: field {col!r}: column missing from the header {header}")
                if len(set(header)) != len(header):
                    twice = sorted({h for h in header if header.count(h) > 1})
                    raise InputError(f"{path}:{start}: field {twice[0]!r}: column named twice in the header")
                continue
            if len(row) < len(header):
                raise InputError(f"{path}:{start}: field {header[len(row)]!r}: missing "
                                 f"(the record has {len(row)} fields, the header {len(header)})")
            if len(row) > len(header):
                raise InputError(f"{path}:{start}: field #{len(header) + 1}: not in the header "
                                 f"(the record has {len(row)} fields, the header {len(header)})")
            yield start, dict(zip(header, row))
    if header is None:
        raise InputError(f"{path}:1: field {text_col!r}: no header (the file is empty)")


def _csv_record_error(path: Path, start: int, offset: int, header: list[str] | None, text_col: str,
                      text_limit: int | None) -> InputError | None:
    """Re-read the record that the csv module refused, from byte ``offset`` (line ``start``), following
    the default dialect's quoting, to say which field broke and on which line its quote opened.
    A field may have ``text_limit`` characters if it is the text column, else the csv module's limit."""
    field, length, quoted, closed, opened = 0, 0, False, False, start

    def name() -> str:
        return header[field] if header and field < len(header) else f"#{field + 1}"

    def error(n: int, problem: str) -> InputError:
        return InputError(f"{path}:{n}: field {name()!r}: {problem}")

    def too_long() -> bool:
        return length > (text_limit if text_limit is not None and name() == text_col else csv.field_size_limit())

    def over() -> str:
        if text_limit is not None and name() == text_col:
            return f"more than {text_limit:,} characters, over the limit (VALUEFLOW_MAX_TEXT_CHARS)"
        return f"more than {csv.field_size_limit():,} characters"

    with path.open("rb") as fh:
        fh.seek(offset)
        for n, raw in enumerate(fh, start):
            line, i = raw.decode("utf-8", "surrogateescape"), 0
            while i < len(line):
                if quoted:
                    j = line.find('"', i)
                    length += (len(line) if j < 0 else j) - i
                    if too_long():
                        return error(opened, f"quoted from here, {over()} (an unterminated quote?)")
                    if j < 0:
                        break
                    if line.startswith('"', j + 1):  # "" inside quotes
                        length, i = length + 1, j + 2
                    else:
                        quoted, closed, i = False, True, j + 1
                    continue
                c = line[i]
                if c == ",":
                    field, length, closed, i = field + 1, 0, False, i + 1
                elif c in "\r\n":
                    return None  # the record ended: not a quoting problem
                elif closed:
                    return error(opened, f"the quote opened here closes on line {n} and is followed by {c!r} "
                                         '(an unterminated quote, or a quote inside quoted text not doubled as "")')
                elif c == '"' and length == 0:
                    quoted, opened, i = True, n, i + 1
                else:
                    m = _CSV_FIELD_END.search(line, i)  # a quote inside an unquoted field is literal
                    j = m.start() if m else len(line)
                    length, i = length + j - i, j
                    if too_long():
                        return error(n, over())
    return error(opened, "unterminated quote: opened here, it runs to the end of the file") if quoted else None


def _parquet_records(path: Path, text_col: str, columns: Iterable[str] | None,
                     batch_size: int, also: Iterable[str] = ()) -> Iterator[tuple[int, dict]]:
    """Rows of a Parquet file, one record batch of one row group at a time, numbered from 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    for col in (text_col, *also):
        if col not in names:
            raise InputError(f"{path}:1: field {col!r}: column missing (columns: {names})")
    wanted = None if columns is None else [c for c in names if c in set(columns)]
    n = 0
    try:
        batches = pf.iter_batches(batch_size=batch_size, columns=wanted)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"{path}:{n + 1}: unreadable row group ({exc})") from None
            try:
                rows = batch.to_pylist()
            except (pa.ArrowException, UnicodeDecodeError):
                raise _parquet_cell_error(path, n, batch) from None
            for row in rows:
                n += 1
                yield n, row
    finally:
        pf.close()


def _parquet_cell_error(path: Path, before: int, batch) -> InputError:
    """The first cell of ``batch`` that cannot become a Python value (e.g. a string that is not UTF-8)."""
    for name, col in zip(batch.schema.names, batch.columns):
        for i in range(len(col)):
            try:
                col.slice(i, 1).to_pylist()
            except Exception as exc:  # noqa: BLE001 - any conversion failure is reported
                problem = "invalid UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
                return InputError(f"{path}:{before + i + 1}: field {name!r}: {problem}")
    return InputError(f"{path}:{before + 1}: unreadable rows {before + 1}-{before + batch.num_rows}")


def iter_records(path: str | Path, text_col: str, columns: Iterable[str] | None = None,
                 batch_size: int = 10_000, text_limit: int | None = None,
                 also: Iterable[str] = ()) -> Iterator[tuple[int, dict]]:
    """(line, record) pairs of a JSONL, CSV or Parquet file, streamed; ``text_col`` and ``also``
    must be CSV or Parquet columns. ``columns`` limits the Parquet columns read (JSONL and CSV
    records keep all); ``text_limit`` only makes a CSV text too long to parse be reported against
    that limit."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl_records(path)
    if suffix == ".csv":
        return csv_records(path, text_col, text_limit, also)
    if suffix in PARQUET_SUFFIXES:
        return _parquet_records(path, text_col, columns, batch_size, also)
    raise InputError(f"{path}: unsupported format {suffix or '(no suffix)'!r}; use .jsonl, .csv or .parquet")


def text_problem(value: object, limit: int) -> str | None:
    """What is wrong with a text, or None."""
    if value is None:
        return "missing"
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not value.strip():
        return "empty text"
    if len(value) > limit:
        return f"{len(value):,} characters, over the limit of {limit:,} (VALUEFLOW_MAX_TEXT_CHARS)"
    return _unstorable(value)


def _id_problem(raw: object, ext_id: str) -> str | None:
    """What is wrong with an id (``raw`` as read, ``ext_id`` as it would be stored), or None."""
    if raw is not None and (isinstance(raw, bool) or not isinstance(raw, (str, int))):
        return f"expected a string or an integer id, got {type(raw).__name__}"
    if len(ext_id) > MAX_ID_CHARS:
        return f"id of {len(ext_id):,} characters, over the limit of {MAX_ID_CHARS}"
    return _unstorable(ext_id)


def _unstorable(value: str) -> str | None:
    m = _UNSTORABLE.search(value)
    if m is None:
        return None
    if m.group() == "\x00":
        return "contains a NUL character (U+0000), which cannot be stored"
    return f"contains a lone surrogate U+{ord(m.group()):04X}, which is not valid Unicode"


def _ext_id(raw: object, line: int) -> str:
    """The user's id as text; ``line-<n>`` when it is absent or empty."""
    return f"line-{line}" if raw is None or raw == "" else str(raw)


def _first_line_of(path: Path, id_col: str, text_col: str, ext_id: str, before: int) -> int | None:
    """The line before ``before`` whose id is ``ext_id``, found by reading the file again (the
    duplicate check keeps only hashes; this runs only when two hashes meet)."""
    for line, rec in iter_records(path, text_col, (id_col, text_col)):
        if line >= before:
            return None
        if _ext_id(rec.get(id_col), line) == ext_id:
            return line
    return None


def iter_input_batches(path: str | Path, id_field: str | None = None, text_field: str = "text",
                       batch_size: int = 10_000, max_text_chars: int | None = None) -> Iterator[list[InputRow]]:
    """Validated rows of the input in file order, in lists of ``batch_size`` (the last may be shorter).

    ``id_field``: None reads ids from ``id`` where a row has one (else ``line-<n>``); a name given
    must be there: a CSV or Parquet column, and a non-empty value in every JSONL record (a mistyped
    name would otherwise number every row silently). ``max_text_chars`` defaults to
    ``VALUEFLOW_MAX_TEXT_CHARS`` (100,000). Raises :class:`InputError` at the first bad row
    (possibly after earlier batches were yielded), or when the file has no rows.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    limit = _max_text_chars_setting() if max_text_chars is None else max_text_chars
    path = Path(path)
    required, id_field = id_field is not None, id_field or "id"
    seen: set[int] = set()  # hash(ext_id): ~70 bytes per row
    batch: list[InputRow] = []
    total = 0
    for line, rec in iter_records(path, text_field, (id_field, text_field), batch_size, limit,
                                  also=(id_field,) if required else ()):
        text, raw_id = rec.get(text_field), rec.get(id_field)
        if required and (raw_id is None or raw_id == ""):
            raise InputError(f"{path}:{line}: field {id_field!r}: missing id (named as the id field)")
        ext_id = _ext_id(raw_id, line)
        if problem := text_problem(text, limit):
            raise InputError(f"{path}:{line}: field {text_field!r}: {problem}")
        if problem := _id_problem(raw_id, ext_id):
            raise InputError(f"{path}:{line}: field {id_field!r}: {problem}")
        h = _id_hash(ext_id)
        if h in seen and (first := _first_line_of(path, id_field, text_field, ext_id, line)) is not None:
            raise InputError(f"{path}:{line}: field {id_field!r}: duplicate id {ext_id!r} (first on line {first})")
        seen.add(h)
        batch.append(InputRow(line, ext_id, text))
        total += 1
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
    if total == 0:
        raise InputError(f"{path}: no rows")


def read_inputs(path: str | Path, id_col: str | None = None, text_col: str = "text",
                max_text_chars: int | None = None) -> list[InputRow]:
    """All rows of the input, validated (see :func:`iter_input_batches`; ``id_col`` None: ``id``
    where present, else ``line-<n>``)."""
    return [row for batch in iter_input_batches(path, id_col, text_col, max_text_chars=max_text_chars) for row in batch]
