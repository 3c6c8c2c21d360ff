"""The shipped seed VIDB: every row parses whole, every value is covered evenly, nothing is copied."""

import csv
import difflib
import json
import re
from collections import Counter

import pytest

from schemas.seed import SEED_VIDB, SeedError, intensity_bucket, read_seed, seed_vidb, write_seed
from schemas.taxonomy import STEERABLE
from tests.conftest import vidb_sample

SENTENCE = re.compile(r"^[A-Z][^\n]*[a-z][^\n]*[.!?]$")


def test_every_row_reads_back_as_value_intensity_and_a_full_sentence():
    with SEED_VIDB.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["value", "intensity", "text"]
    steerable = {v for vs in STEERABLE.values() for v in vs}
    for line, row in enumerate(rows[1:], start=2):
        assert len(row) == 3, f"line {line}: {row}"
        value, raw, text = row
        assert value in steerable, f"line {line}: {value}"
        assert -10 <= float(raw) <= 10, f"line {line}: {raw}"
        assert text == text.strip() and SENTENCE.match(text), f"line {line}: not a full sentence: {text!r}"
        assert len(text.split()) >= 4, f"line {line}: fragment {text!r}"
    assert len(rows) - 1 == sum(len(r) for r in seed_vidb().values())


def test_formerly_cut_texts_are_whole():
    texts = {t for rows in seed_vidb().values() for t, _ in rows}
    for whole in ("I borrowed a book, damaged it, and said nothing.",
                  "Life, liberty and equal dignity before the law belong to every person without exception.",
                  "Health, housing and a decent living are rights every person must have guaranteed.",
                  "I let my parents choose my career, my spouse and where I live."):
        assert whole in texts
    assert not texts & {"Life", "Health", "I borrowed a book", "Free speech"}


def test_every_value_has_thirty_texts_evenly_over_the_five_buckets():
    items = seed_vidb()
    assert set(items) == {v for vs in STEERABLE.values() for v in vs}
    for value, rows in items.items():
        assert len(rows) >= 30, value
        per_bucket = Counter(intensity_bucket(x) for _, x in rows)
        assert sorted(per_bucket) == [0, 1, 2, 3, 4], (value, per_bucket)
        assert max(per_bucket.values()) - min(per_bucket.values()) <= 1, (value, per_bucket)


def test_no_duplicate_texts():
    norm = [re.sub(r"\W+", " ", t.lower()).strip() for rows in seed_vidb().values() for t, _ in rows]
    dup = [t for t, n in Counter(norm).items() if n > 1]
    assert dup == []


def test_buckets_are_right_closed():
    assert [intensity_bucket(x) for x in (-10, -6, -5.9, -2, 2, 2.1, 6, 6.1, 10)] == [0, 0, 1, 1, 2, 3, 3, 4, 4]
    with pytest.raises(ValueError):
        intensity_bucket(10.5)


def test_no_text_is_taken_from_the_upstream_sample():
    """Our own words: no seed text is a near copy of an upstream VIDB-sample text."""
    def norm(s):
        return re.sub(r"[^a-z ]", "", s.lower())

    sample = [norm(x["text"]) for bins in vidb_sample().values() for b in bins.values() for x in b]
    worst = 0.0
    for rows in seed_vidb().values():
        for t, _ in rows:
            nt = norm(t)
            m = difflib.SequenceMatcher(None, nt)
            for s in sample:
                m.set_seq1(s)
                if m.real_quick_ratio() > worst and m.quick_ratio() > worst:
                    worst = max(worst, m.ratio())
    assert worst < 0.75


def test_write_then_read_round_trips_commas_and_quotes(tmp_path):
    rows = [("fidelity", -2.5, 'I said "later, maybe", and never came.'), ("justice", 7.5, "I split it, fairly.")]
    path = tmp_path / "seed.csv"
    write_seed(rows, path)
    assert read_seed(path) == rows


@pytest.mark.parametrize("body, message", [
    ("fidelity,-2.5,I borrowed a book, damaged it\n", r"seed\.csv:2: expected 3 fields .* must be quoted"),
    ("fidelity,lots,I kept my word.\n", r"seed\.csv:2: field 'intensity': not a number"),
    ("fidelity,11,I kept my word.\n", r"seed\.csv:2: field 'intensity': 11\.0 outside"),
    ("fidelity,1,\n", r"seed\.csv:2: field 'text': empty"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, body, message):
    path = tmp_path / "seed.csv"
    path.write_text("value,intensity,text\n" + body)
    with pytest.raises(SeedError, match=message):
        read_seed(path)


def test_vidb_files_keep_each_text_once_and_refuse_two_ratings_of_one(tmp_path):
    """An upstream CSV or few-shot JSON may repeat a text with its rating (kept once); the same text
    with two ratings is refused, naming both places."""
    from workers.io.inputs import InputError
    from workers.io.vidb_files import read_vidb

    ok = tmp_path / "care-harm_mft.csv"
    ok.write_text('text,final_rating\n"I sat with her, all night.",6\nI walked past.,-3\n"I sat with her, all night.",6\n')
    assert read_vidb(ok) == {"care-harm": [("I sat with her, all night.", 6.0), ("I walked past.", -3.0)]}
    bad = tmp_path / "care-harm_mft_bad.csv"
    bad.write_text('text,final_rating\nI walked past.,-3\nI helped.,4\nI walked past.,-1.5\n')
    with pytest.raises(InputError, match=r"care-harm_mft_bad\.csv:4: field 'text': same text as line 2, rated -3 there "
                                         r"and -1\.5 here"):
        read_vidb(bad)
    js = tmp_path / "few.json"
    js.write_text(json.dumps({"care-harm": {"1": [{"text": "I helped.", "intensity": 3}],
                                       "2": [{"text": "I helped.", "intensity": 3}, {"text": "I stayed.", "intensity": 8}]}}))
    assert read_vidb(js) == {"care-harm": [("I helped.", 3.0), ("I stayed.", 8.0)]}
    js.write_text(json.dumps({"care-harm": {"1": [{"text": "I helped.", "intensity": 3}],
                                       "2": [{"text": "I helped.", "intensity": 7}]}}))
    with pytest.raises(InputError, match=r"few\.json: care-harm\[2\]\[0\]: field 'text': same text as care-harm\[1\]\[0\], "
                                         r"rated 3 there and 7 here"):
        read_vidb(js)


BIG = 131_073  # one more than the csv module's default field limit


@pytest.mark.parametrize("name, body, message", [
    ("care-harm_mft.csv", b"text,final_rating\nI helped.,3\nI \xffhelped.,4\n",
     r"care-harm_mft\.csv:3: field 'text': invalid UTF-8 \(byte 0xff"),
    ("care-harm_mft.csv", b"\xef\xbb\xbftext,final_rating\nI helped.,true\n",  # BOM: Excel's "CSV UTF-8"
     r"care-harm_mft\.csv:2: field 'final_rating': not a number: 'true'"),
    ("care-harm_mft.csv", b'text,final_rating\nI helped.,3\n"I stayed\nall night.",x\n',
     r"care-harm_mft\.csv:3: field 'final_rating': not a number"),  # a record named by its first line
    ("care-harm_mft.csv", b"text,rating\nI helped.,3\n", r"care-harm_mft\.csv:1: field 'final_rating': column missing"),
    ("care-harm_mft.csv", b"text,final_rating\n", r"care-harm_mft\.csv: no rows"),
    ("care-harm_mft.csv", b"text,final_rating\n" + b"a" * BIG + b",3\n",
     r"care-harm_mft\.csv:2: field 'text': (more than 100,000 characters, over the limit|131,073 characters, over the "
     r"limit of 100,000) \(VALUEFLOW_MAX_TEXT_CHARS\)"),  # which one depends on the csv module's process-wide limit
    ("care-harm_mft.csv", b"text,final_rating\nI helped.\x00,3\n", r"care-harm_mft\.csv:2: field 'text': contains a NUL"),
    ("few.json", b'{"care-harm": {"1": [{"text": "I \xffhelped.", "intensity": 3}]}}', r"few\.json:1: invalid UTF-8"),
    ("few.json", b'{"care-harm": {"1": 5}}', r"few\.json: care-harm\[1\]: expected a list of items, got int"),
    ("few.json", b'{"care-harm": {"1": ["I helped."]}}', r"few\.json: care-harm\[1\]\[0\]: expected an object"),
    ("few.json", b'{"care-harm": {"1": [{"text": 5, "intensity": 3}]}}',
     r"few\.json: care-harm\[1\]\[0\]: field 'text': expected a string, got int"),
    ("few.json", b'{"care-harm": {"1": [{"text": "I helped.", "intensity": true}]}}',
     r"few\.json: care-harm\[1\]\[0\]: field 'intensity': not a number: True"),
    ("few.json", b'{"care-harm": {}}', r"few\.json: no items"),
])
def test_malformed_vidb_files_name_file_line_and_field(tmp_path, name, body, message):
    from workers.io.inputs import InputError
    from workers.io.vidb_files import read_vidb

    path = tmp_path / name
    path.write_bytes(body)
    with pytest.raises(InputError, match=message):
        read_vidb(path)


def test_vidb_texts_are_kept_as_given_like_corpus_texts(tmp_path):
    """Surrounding spaces are part of a text everywhere (the corpus reader keeps them), so a VIDB
    exported and read back names the same texts; a BOM is not part of the header."""
    from workers.io.vidb_files import read_vidb, write_vidb_export

    rows = [{"text": " I helped. ", "intensity": 3.0, "utility": None, "stderr": None, "flags": [], "source": "x"},
            {"text": 'She said "no, never".\n', "intensity": -2.5, "utility": None, "stderr": None, "flags": [],
             "source": "x"}]
    out = tmp_path / "care-harm_mft.csv"
    write_vidb_export(out, "care-harm", 1, rows)
    assert read_vidb(out) == {"care-harm": [(" I helped. ", 3.0), ('She said "no, never".\n', -2.5)]}
    out.write_bytes(b"\xef\xbb\xbf" + out.read_bytes())
    assert read_vidb(out) == {"care-harm": [(" I helped. ", 3.0), ('She said "no, never".\n', -2.5)]}


@pytest.mark.parametrize("body, message", [
    (b"\xef\xbb\xbfitem_id,value,human_rating,rater\n7,care-harm,x,ann\n", r"s\.csv:2: field 'human_rating': not a number"),
    (b"item_id,value,human_rating\n7,care-harm,3\n", r"s\.csv:1: field 'rater': column missing"),
    (b'item_id,value,text,human_rating,rater\n7,care-harm,"two\nlines",11,ann\n',
     r"s\.csv:2: field 'human_rating': intensity 11\.0 outside"),
    (b"item_id,value,human_rating,rater\n7,care-harm,3,\xff\n", r"s\.csv:2: field 'rater': invalid UTF-8"),
    (b"item_id,value,human_rating,rater\nseven,care-harm,3,ann\n", r"s\.csv:2: field 'item_id': not an integer"),
])
def test_malformed_review_sheets_name_file_line_and_field(tmp_path, body, message):
    from workers.io.inputs import InputError
    from workers.io.vidb_files import read_review

    path = tmp_path / "s.csv"
    path.write_bytes(body)
    with pytest.raises(InputError, match=message):
        read_review(path)
