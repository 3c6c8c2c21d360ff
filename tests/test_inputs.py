"""Streaming input reader: every bad input names file:line: field; batches are whole and in order."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.settings import ConfigError
from workers.io import inputs
from workers.io.inputs import InputError, InputRow, iter_input_batches, read_inputs


def _raises(path, message: str, **kw) -> None:
    """Reading ``path`` fails with exactly ``{path}:{message}`` at the start of the error."""
    with pytest.raises(InputError) as info:
        read_inputs(path, **kw)
    assert str(info.value).startswith(f"{path}:{message}"), str(info.value)


def _write(tmp_path, name: str, data: bytes | str):
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return p


BAD_INPUTS = [
    # (file name, content, expected "line: field 'x': problem" prefix)
    ("utf8.jsonl", b'{"id": "a", "text": "fine"}\n\n{"id": "b", "text": "caf\xe9 au lait"}\n',
     "3: field 'text': invalid UTF-8 (byte 0xe9 at byte 25 of the line)"),
    ("utf8_key.jsonl", b'{"id": "a", "te\xffxt": "fine"}\n', "1: invalid UTF-8 (byte 0xff"),
    ("utf8.csv", b"id,text\na,fine\nb,caf\xe9\n", "3: field 'text': invalid UTF-8 (byte 0xe9 at byte 6 of the line)"),
    ("utf8_header.csv", b"id,t\xffxt\na,fine\n", "1: invalid UTF-8 (byte 0xff at byte 5 of the line)"),
    ("unterminated.csv", 'id,text\na,fine\nb,"opens here\nc,never closes\nd,at all\n',
     "3: field 'text': unterminated quote: opened here, it runs to the end of the file"),
    ("unterminated_later.csv", 'id,text,note\na,"two\nlines",x\nb,ok,"opens\nc,runs,on\n',
     "4: field 'note': unterminated quote"),
    ("misquoted.csv", 'id,text\na,"opens here\nb,"quoted",x\n',
     "2: field 'text': the quote opened here closes on line 3 and is followed by 'q'"),
    ("long_quoted.csv", 'id,text\na,"' + "x" * 300_000 + '\n', "2: field 'text': quoted from here, more than 100,000"),
    ("long_plain.csv", "id,text\na,ok\nb," + "y" * 300_000 + "\n",
     "3: field 'text': more than 100,000 characters, over the limit (VALUEFLOW_MAX_TEXT_CHARS)"),
    ("long_other.csv", "id,text,note\na,ok," + "z" * 300_000 + "\n", "2: field 'note': more than "),
    ("short_row.csv", "id,text,note\na,fine,x\nb,fine\n",
     "3: field 'note': missing (the record has 2 fields, the header 3)"),
    ("long_row.csv", "id,text\na,fine\nb,fine,extra\n", "3: field #3: not in the header (the record has 3 fields"),
    ("no_text_col.csv", "id,body\na,fine\n", "1: field 'text': column missing from the header ['id', 'body']"),
    ("twice.csv", "id,text,id\na,b,c\n", "1: field 'id': column named twice in the header"),
    ("empty.csv", "", "1: field 'text': no header"),
    ("too_long.jsonl", json.dumps({"id": "a", "text": "w" * 1_250_000}) + "\n",
     "1: field 'text': 1,250,000 characters, over the limit of 100,000 (VALUEFLOW_MAX_TEXT_CHARS)"),
    ("too_long.csv", "id,text\na," + "w" * 120_000 + "\n",
     "2: field 'text': 120,000 characters, over the limit of 100,000"),
    ("bad.jsonl", '{"id": "a", "text": "fine"}\n{"id": "b", "text": "unclosed}\n',
     "2: malformed JSON (Unterminated string starting at: column 21)"),
    ("array.jsonl", '[{"id": "a", "text": "fine"}]\n', "1: expected a JSON object, got list"),
    ("pretty.json", '[\n  {"id": "a", "text": "fine"}\n]\n',
     "1: malformed JSON (Expecting value: column 2) - the file must be JSON Lines, one object per line"),
    ("missing.jsonl", '{"id": "a", "body": "x"}\n', "1: field 'text': missing"),
    ("number.jsonl", '{"id": "a", "text": 42}\n', "1: field 'text': expected a string, got int"),
    ("blank.jsonl", '{"id": "a", "text": "  \\n "}\n', "1: field 'text': empty text"),
    ("blank.csv", 'id,text\na,""\n', "2: field 'text': empty text"),
    ("nul.jsonl", '{"id": "a", "text": "a\\u0000b"}\n', "1: field 'text': contains a NUL character"),
    ("surrogate.jsonl", '{"id": "a", "text": "half \\ud83d of an emoji"}\n',
     "1: field 'text': contains a lone surrogate U+D83D"),
    ("list_id.jsonl", '{"id": ["a"], "text": "fine"}\n', "1: field 'id': expected a string or an integer id, got list"),
    ("bool_id.jsonl", '{"id": true, "text": "fine"}\n', "1: field 'id': expected a string or an integer id, got bool"),
    ("long_id.jsonl", json.dumps({"id": "i" * 600, "text": "fine"}) + "\n", "1: field 'id': id of 600 characters"),
    ("dup.jsonl", '{"id": "a", "text": "t"}\n{"id": 1, "text": "t"}\n{"text": "t"}\n{"id": "1", "text": "t"}\n',
     "4: field 'id': duplicate id '1' (first on line 2)"),
    ("dup_generated.csv", "id,text\n,first\nline-2,second\n", "3: field 'id': duplicate id 'line-2' (first on line 2)"),
]


@pytest.mark.parametrize("name,content,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_file_line_and_field(tmp_path, name, content, message):
    _raises(_write(tmp_path, name, content), message)


def test_files_without_rows_or_of_unknown_kind(tmp_path):
    _raises(_write(tmp_path, "blank_lines.jsonl", "\n\n"), " no rows")
    _raises(_write(tmp_path, "header_only.csv", "id,text\n"), " no rows")
    _raises(_write(tmp_path, "a.txt", "hello\n"), " unsupported format '.txt'")
    _raises(tmp_path / "absent.jsonl", " no such file")
    _raises(_write(tmp_path, "junk.parquet", b"not parquet at all"), " not a readable Parquet file")


def test_parquet_errors_name_the_row(tmp_path):
    p = tmp_path / "n.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": [1, 2]}), p)
    _raises(p, "1: field 'text': expected a string, got int")
    pq.write_table(pa.table({"id": ["a", "b"], "body": ["x", "y"]}), p)
    _raises(p, "1: field 'text': column missing (columns: ['id', 'body'])")
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["x", None, "z"]}), p)
    _raises(p, "2: field 'text': missing")
    pq.write_table(pa.table({"id": [1, 2, 1], "text": ["x", "y", "z"]}), p)
    _raises(p, "3: field 'id': duplicate id '1' (first on line 1)")


def test_parquet_string_that_is_not_utf8_names_the_row(tmp_path):
    good = b"okfine"
    data = good + b"caf\xe9"  # row 3 is "caf\xe9", not UTF-8
    offsets = pa.array([0, 2, 6, 10], pa.int32()).buffers()[1]
    text = pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(data)])
    p = tmp_path / "u.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": text}), p)
    _raises(p, "3: field 'text': invalid UTF-8")


def test_text_limit_is_configurable(tmp_path, monkeypatch):
    p = _write(tmp_path, "t.jsonl", json.dumps({"text": "x" * 50}) + "\n" + json.dumps({"text": "y" * 51}) + "\n")
    monkeypatch.setenv("VALUEFLOW_MAX_TEXT_CHARS", "50")
    _raises(p, "2: field 'text': 51 characters, over the limit of 50 (VALUEFLOW_MAX_TEXT_CHARS)")
    assert [r.line for r in read_inputs(p, max_text_chars=51)] == [1, 2]
    monkeypatch.setenv("VALUEFLOW_MAX_TEXT_CHARS", "lots")
    with pytest.raises(ConfigError, match="VALUEFLOW_MAX_TEXT_CHARS: expected an integer, got 'lots'"):
        read_inputs(p)


def test_csv_long_quoted_text_under_a_raised_limit_is_read_whole(tmp_path):
    text = "line one\nline two, with a comma and a \"quote\"\n" + "z" * 200_000
    p = _write(tmp_path, "big.csv", 'id,text\na,"' + text.replace('"', '""') + '"\nb,short\n')
    rows = read_inputs(p, max_text_chars=250_000)
    assert rows == [InputRow(2, "a", text), InputRow(5, "b", "short")]


def test_batches_are_whole_and_in_order(tmp_path):
    lines = [json.dumps({"id": f"r{i}", "text": f"text {i}"}) if i % 3 else json.dumps({"text": f"text {i}"})
             for i in range(25)]
    p = _write(tmp_path, "b.jsonl", "\n".join(lines) + "\n")
    batches = list(iter_input_batches(p, batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 5]
    flat = [r for b in batches for r in b]
    assert flat == [InputRow(i + 1, f"r{i}" if i % 3 else f"line-{i + 1}", f"text {i}") for i in range(25)]
    assert flat == read_inputs(p)
    p20 = _write(tmp_path, "b20.jsonl", "\n".join(lines[:20]) + "\n")
    assert [len(b) for b in iter_input_batches(p20, batch_size=10)] == [10, 10]


def test_csv_records_are_numbered_by_their_first_line(tmp_path):
    p = _write(tmp_path, "m.csv", b'\xef\xbb\xbfid,text\r\na,"one\r\ntwo"\r\n\r\n,three\r\nc,"4,""four"""\r\n')
    assert read_inputs(p) == [InputRow(2, "a", "one\r\ntwo"), InputRow(5, "line-5", "three"),
                              InputRow(6, "c", '4,"four"')]


def test_parquet_is_read_by_row_group(tmp_path):
    p = tmp_path / "g.parquet"
    n = 30
    table = pa.table({"doc": [f"d{i}" for i in range(n)], "body": [f"body {i}" for i in range(n)],
                      "extra": [b"\x00" * 10] * n})
    pq.write_table(table, p, row_group_size=7)
    assert pq.ParquetFile(p).metadata.num_row_groups == 5
    batches = list(iter_input_batches(p, "doc", "body", batch_size=4))
    assert [len(b) for b in batches] == [4] * 7 + [2]
    assert [r for b in batches for r in b] == [InputRow(i + 1, f"d{i}", f"body {i}") for i in range(n)]
    bodies = [f"body {i}" for i in range(n)]
    bodies[22] = " "
    pq.write_table(table.set_column(1, "body", pa.array(bodies)), p, row_group_size=7)
    _raises(p, "23: field 'body': empty text", id_col="doc", text_col="body")


def test_duplicates_are_confirmed_when_hashes_collide(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "_id_hash", lambda ext_id: 0)  # every id collides
    p = _write(tmp_path, "c.jsonl", "".join(json.dumps({"id": f"x{i}", "text": "t"}) + "\n" for i in range(5)))
    assert [r.ext_id for r in read_inputs(p)] == [f"x{i}" for i in range(5)]
    with p.open("a") as fh:
        fh.write(json.dumps({"id": "x3", "text": "t"}) + "\n")
    _raises(p, "6: field 'id': duplicate id 'x3' (first on line 4)")


def test_million_rows_streamed_with_an_error_at_row_900000(tmp_path):
    n, bad = 1_000_000, 900_000
    p = tmp_path / "big.jsonl"
    with p.open("wb") as fh:
        for start in range(0, n, 100_000):
            chunk = "".join(f'{{"id": "t{i}", "text": "text number {i}"}}\n' for i in range(start, start + 100_000))
            fh.write(chunk.encode().replace(f'"text number {bad - 1}"'.encode(), b'"text n\xffmber"'))
    yielded = []
    with pytest.raises(InputError) as info:
        for b in iter_input_batches(p, batch_size=10_000):
            yielded.append(len(b))
    assert str(info.value) == f"{p}:900000: field 'text': invalid UTF-8 (byte 0xff at byte 34 of the line)"
    assert yielded == [10_000] * 89  # the 899,999 good rows before it came out in whole batches


@pytest.mark.parametrize("name, content, message, unnamed", [
    ("typo.csv", "doc,text\na,fine\n", "1: field 'dco': column missing from the header ['doc', 'text']", "line-2"),
    ("typo.jsonl", '{"doc": "a", "text": "fine"}\n', "1: field 'dco': missing id (named as the id field)", "line-1"),
    ("gap.jsonl", '{"dco": "a", "text": "fine"}\n{"dco": "", "text": "also fine"}\n',
     "2: field 'dco': missing id (named as the id field)", "line-1"),
])
def test_an_id_field_named_must_be_there(tmp_path, name, content, message, unnamed):
    """--id-field given: a mistyped name is an error, not every row silently numbered line-N."""
    p = _write(tmp_path, name, content)
    _raises(p, message, id_col="dco")
    assert read_inputs(p)[0].ext_id == unnamed  # not named: `id` where present, else the line


def test_a_parquet_id_column_named_must_be_there(tmp_path):
    p = tmp_path / "typo.parquet"
    pq.write_table(pa.table({"doc": ["a"], "text": ["fine"]}), p)
    _raises(p, "1: field 'dco': column missing (columns: ['doc', 'text'])", id_col="dco")
    assert read_inputs(p, id_col="doc") == [InputRow(1, "a", "fine")]
