"""VIDB build: window design, simulated-judge recovery, versions, export, bad inputs (library and CLI)."""

from __future__ import annotations

import asyncio
import csv
import json

import asyncpg
import numpy as np
import pytest
from scipy.stats import spearmanr

from tests.conftest import open_test_store, run_cli

VALUE = "benevolence"


# -- helpers shared with the other VIDB tests ------------------------------------------------------------
def corpus(n: int, seed: int = 0, offset: int = 0) -> tuple[list, np.ndarray]:
    """n texts whose hidden utilities ~ N(0, 1.5²) are tagged for the simulated judge."""
    from workers.io.inputs import InputRow
    from workers.vidb.simulated_judge import tag

    theta = np.random.default_rng(seed).normal(0, 1.5, n)
    return [InputRow(i + 1, f"t{offset + i}", tag(f"text {offset + i}", theta[i])) for i in range(n)], theta


def references(n: int = 20) -> list[tuple[str, float]]:
    """Reference items with known intensity 3·u over the utility range."""
    from workers.vidb.simulated_judge import tag

    return [(tag(f"reference {j}", u), float(np.clip(3 * u, -10, 10))) for j, u in enumerate(np.linspace(-3.5, 3.5, n))]


def write_jsonl(path, rows, id_field: str = "id", text_field: str = "text") -> None:
    path.write_text("".join(json.dumps({id_field: r.ext_id, text_field: r.text}) + "\n" for r in rows))


def write_refs(path, refs) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "final_rating"])
        w.writerows(refs)


async def submit_build(store, rows, refs, job_id="build-1", **kw):
    """Submit a build of ``rows`` (spec fields in ``kw``; the simulated judge by default): its sends."""
    from schemas.vidb import VidbBuildSpec
    from workers.jobs import lifecycle
    from workers.jobs.kinds import vidb_build

    spec = VidbBuildSpec(input="mem", value=VALUE, judge=kw.pop("judge", "simulated"), reference="refs.csv", **kw)
    return await lifecycle.submit(store, vidb_build.KIND, spec, job_id, vidb_build.planner(spec, rows, refs))


async def build_inline(store, rows, refs, job_id="build-1", **kw):
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources

    await lifecycle.run_inline(store, Resources(), await submit_build(store, rows, refs, job_id, **kw))
    return job_id


async def counts(store) -> dict:
    out = {}
    for t in ("jobs", "texts", "vidb_items", "vidb_versions", "windows", "job_items"):
        out[t] = await store.pool.fetchval(f"SELECT count(*) FROM {t}")
    return out


def _db(pg_url: str, fn):
    async def go():
        conn = await asyncpg.connect(pg_url)
        try:
            return await fn(conn)
        finally:
            await conn.close()
    return asyncio.run(go())


def assert_build_seed(pg_url: str, job_id: str, seed: int, per_text: int) -> None:
    """A build's windows are the balanced design drawn with ``--seed`` over its texts, then its references."""
    from workers.vidb.design import balanced_design

    async def read(conn):
        texts = [r["text_id"] for r in await conn.fetch(
            "SELECT text_id FROM job_items WHERE job_id = $1 ORDER BY item_no", job_id)]
        refs = [await conn.fetchval("SELECT id FROM texts WHERE body = $1", t) for t, _ in references()]
        members = [list(r["members"]) for r in await conn.fetch(
            "SELECT members FROM windows WHERE job_id = $1 ORDER BY window_id", job_id)]
        return np.array(texts + refs), members

    universe, members = _db(pg_url, read)
    assert members == [universe[d].tolist() for d in balanced_design(len(universe), 2, per_text,
                                                                     np.random.default_rng(seed))]


def assert_map_prior(pg_url: str, job_id: str, prior: float) -> None:
    """The value's utilities after ``job_id``'s refit are the MAP fit of every comparison it counts
    with precision ``--prior`` (and not with another)."""
    from workers.vidb.fit import fit_utilities, rank_rows
    from workers.vidb.versions import gather_comparisons

    async def read(conn):
        ranked, lengths = await gather_comparisons(conn, VALUE, [job_id])
        stored = {r["text_id"]: r["utility"] for r in await conn.fetch(
            "SELECT text_id, utility FROM vidb_items WHERE value = $1", VALUE)}
        return ranked, lengths, stored

    ranked, lengths, stored = _db(pg_url, read)
    tids = np.unique(ranked)
    rows = rank_rows(ranked, lengths, tids)
    got = np.array([stored[t] for t in tids.tolist()])
    assert np.abs(fit_utilities(len(tids), rows, prior).utility - got).max() < 1e-5
    assert np.abs(fit_utilities(len(tids), rows, 0.1 if prior != 0.1 else 1.0).utility - got).max() > 1e-3


# -- design ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,k,r", [(101, 2, 4), (300, 2, 10), (50, 6, 3), (7, 3, 2)])
def test_design_is_connected_balanced_and_never_one_opponent(n, k, r):
    from workers.vidb.design import balanced_design, components

    ws = balanced_design(n, k, r, np.random.default_rng(1))
    assert all(len(w) == k and len(set(w.tolist())) == k for w in ws)
    appear = np.bincount(np.concatenate(ws), minlength=n)
    assert appear.min() >= r and appear.max() <= r + 1 + (1 if n % k else 0)  # balanced
    assert len(np.unique(components(n, ws))) == 1  # connected
    opponents = [set() for _ in range(n)]
    for w in ws:
        for a in w:
            opponents[a] |= set(w.tolist()) - {a}
    assert min(len(o) for o in opponents) >= (r if k == 2 else k)  # no text only against one other


def test_design_rejects_too_few_texts():
    from workers.vidb.design import balanced_design

    with pytest.raises(ValueError, match="at least 3 texts"):
        balanced_design(2, 2, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least k=6"):
        balanced_design(5, 6, 3, np.random.default_rng(0))


def test_search_likelihood_is_plackett_luce_with_the_others_fixed():
    from workers.stats import plackett_luce as pl
    from workers.vidb.search import window_loglik

    others = np.array([0.7, -0.2, 1.1])  # utilities of the anchors, in the judge's rank order
    grid = np.linspace(-3, 3, 7)
    for pos in range(4):
        ranking = [1, 2, 3]
        ranking.insert(pos, 0)  # item 0 is the new text
        ll = window_loglik(grid, pos, others)
        ref = [pl.loglik(4, np.array([ranking]), np.r_[t, others]) for t in grid]
        assert np.allclose(ll - ll[0], np.array(ref) - ref[0], atol=1e-12)


def test_search_likelihood_averages_over_the_opponents_standard_error():
    from workers.vidb.search import window_loglik

    grid = np.linspace(-4, 4, 81)
    assert np.allclose(window_loglik(grid, 0, np.array([0.5]), np.array([0.0])), window_loglik(grid, 0, np.array([0.5])))
    u = np.random.default_rng(0).normal(0.5, 1.2, 200_000)  # the opponent's utility, se 1.2
    exact = np.array([np.mean(1 / (1 + np.exp(-(t - u)))) for t in grid])  # P(text beats it | θ)
    approx = np.exp(window_loglik(grid, 0, np.array([0.5]), np.array([1.2])))
    assert np.abs(approx - exact).max() < 0.02
    # the loss likelihood is the complement (up to the constant the search drops), and an
    # uncertain opponent moves the posterior less
    ratio = np.exp(window_loglik(grid, 1, np.array([0.5]), np.array([1.2]))) / (1 - approx)
    assert np.allclose(ratio, ratio[0])
    sure = window_loglik(grid, 0, np.array([0.5]))
    assert np.ptp(window_loglik(grid, 0, np.array([0.5]), np.array([1.2]))) < np.ptp(sure)


# -- library: recovery, version, export ----------------------------------------------------------------------
def test_build_on_a_simulated_judge_recovers_the_order_and_writes_one_version(pg_url):
    from workers.jobs.kinds import vidb_build

    async def go():
        store = await open_test_store(pg_url)
        try:
            rows, theta = corpus(300)
            job = await build_inline(store, rows, references(), per_text=16)
            assert (await store.job(job))["state"] == "done"
            out = [r async for b in vidb_build.export_rows(store, job) for r in b]
            assert [r["id"] for r in out] == [r.ext_id for r in rows]
            u = np.array([r["utility"] for r in out])
            s = np.array([r["intensity"] for r in out])
            assert spearmanr(u, theta).statistic >= 0.9
            assert spearmanr(s, theta).statistic >= 0.9
            assert np.all((s >= -10) & (s <= 10))
            # intensities land on the references' scale (3·u): slope near 3
            assert 2.0 < np.polyfit(theta, s, 1)[0] < 4.0
            assert np.all(np.array([r["stderr"] for r in out]) > 0.05)
            vs = await store.pool.fetch("SELECT * FROM vidb_versions")
            assert [(v["value"], v["version"], v["kind"], v["n_items"], v["n_new"]) for v in vs] == \
                [(VALUE, 1, "build", 320, 320)]
            assert vs[0]["n_comparisons"] == await store.pool.fetchval("SELECT count(*) FROM comparisons")
            snap = await store.pool.fetchval("SELECT count(*) FROM vidb_version_items WHERE version = 1")
            assert snap == 320
            # the references keep their known intensities
            ref_rows = await store.pool.fetch("SELECT intensity, source FROM vidb_items WHERE source LIKE 'reference:%'"
                                              " ORDER BY intensity")
            assert [r["intensity"] for r in ref_rows] == sorted(x for _, x in references())
        finally:
            await store.close()

    asyncio.run(go())


def test_gather_comparisons_ranks_and_flattens_in_postgresql(pg_url):
    """A refit reads a value's comparisons as two flat arrays (members in rank order, lengths),
    ranked by PostgreSQL: k-way and pairwise windows mixed, source jobs and the job itself only,
    in (job, window, judge) order; a k-way build's rows reach the fit whole."""
    from workers.vidb import versions as V
    from workers.vidb.fit import rank_rows

    async def go():
        store = await open_test_store(pg_url)
        try:
            async with store.pool.acquire() as conn:
                rows = [  # job, value, window, members as shown, judge, ranking (positions, best first)
                    ("jb", VALUE, 1, [7, 8, 9], "j1", [2, 0, 1]),
                    ("ja", VALUE, 5, [4, 5], "j1", [1, 0]),
                    ("jb", VALUE, 0, [1, 2], "j2", [0, 1]),
                    ("ja", VALUE, 2, [3, 4, 5, 6], "j1", [3, 1, 0, 2]),
                    ("jc", VALUE, 0, [1, 9], "j1", [1, 0]),  # not a source of the value: left out
                    ("ja", "care-harm", 0, [1, 2], "j1", [1, 0]),  # another value: left out
                ]
                await conn.executemany("INSERT INTO comparisons (job_id, value, window_id, item_ids, judge, ranking)"
                                       " VALUES ($1, $2, $3, $4, $5, $6)", rows)
                await V.add_sources(conn, VALUE, ["ja"])
                ranked, lengths = await V.gather_comparisons(conn, VALUE, ["jb"])
                assert lengths.tolist() == [4, 2, 2, 3]
                assert ranked.tolist() == [6, 4, 3, 5, 5, 4, 1, 2, 9, 7, 8]
                keys = np.unique(ranked)
                fit_rows = rank_rows(ranked, lengths, keys)
                assert [keys[r].tolist() for r in fit_rows] == [[6, 4, 3, 5], [5, 4], [1, 2], [9, 7, 8]]
                none = await V.gather_comparisons(conn, "self-direction-thought", [])
                assert none[0].size == 0 and none[1].size == 0
        finally:
            await store.close()

    asyncio.run(go())


def test_build_refuses_bad_input_and_changes_nothing(pg_url):
    async def go():
        from workers.io.inputs import InputRow
        from workers.jobs.kinds import vidb_build

        store = await open_test_store(pg_url)
        try:
            rows, _ = corpus(30)
            await build_inline(store, rows, references(), per_text=4)
            before = await counts(store)
            # a text already in the VIDB
            again, _ = corpus(5, seed=9, offset=100)
            with pytest.raises(ValueError, match=r"mem:2: field 'text': already in the VIDB of 'benevolence'"):
                await build_inline(store, [again[0], InputRow(2, "x", rows[3].text), *again[1:]], references(),
                                   job_id="build-2", per_text=4)
            # a corpus repeating a text
            dup = [again[0], InputRow(2, "y", again[0].text)]
            with pytest.raises(ValueError, match="mem:2: field 'text': same text as line 1"):
                await build_inline(store, dup, references(), job_id="build-3", per_text=4)
            # too few references for the isotonic map
            with pytest.raises(ValueError, match="isotonic calibration needs at least 10.*--scale minmax"):
                await build_inline(store, again, references()[:4], job_id="build-4", per_text=4)
            # empty corpus
            with pytest.raises(ValueError, match="empty corpus"):
                await build_inline(store, [], references(), job_id="build-5", per_text=4)
            assert await counts(store) == before
            assert vidb_build.KIND.name == "vidb-build"
        finally:
            await store.close()

    asyncio.run(go())


# -- CLI ------------------------------------------------------------------------------------------------------
def test_cli_build_versions_diff_export_and_bad_inputs(env, workers, tmp_path, pg_url):
    rows, theta = corpus(60)
    write_jsonl(tmp_path / "corpus.jsonl", rows)
    write_refs(tmp_path / "refs.csv", references())

    async def snapshot():
        store = await open_test_store(pg_url)
        try:
            return await counts(store)
        finally:
            await store.close()

    empty = asyncio.run(snapshot())
    # no references anywhere: refuse unless --scale minmax
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated"], env)
    assert res.returncode != 0 and "has 0 VIDB item(s)" in res.stderr and "--scale minmax" in res.stderr
    # unknown value
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", "kindness-to-robots",
                   "--judge", "simulated"], env)
    assert res.returncode != 0 and "kindness-to-robots" in res.stderr
    # empty corpus
    (tmp_path / "empty.jsonl").write_text("")
    res = run_cli(["vidb", "build", str(tmp_path / "empty.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--reference", str(tmp_path / "refs.csv")], env)
    assert res.returncode != 0 and "empty corpus" in res.stderr
    # malformed reference file: a rating out of range, named by file, line and field
    bad = tmp_path / "bad_refs.csv"
    bad.write_text("text,final_rating\nfine text,2\nanother text,17\n")
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--reference", str(bad)], env)
    assert res.returncode != 0 and f"{bad}:3: field 'final_rating'" in res.stderr
    (tmp_path / "nohead.csv").write_text("words,score\na,1\n")
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--reference", str(tmp_path / "nohead.csv")], env)
    assert res.returncode != 0 and f"{tmp_path / 'nohead.csv'}:1: field 'text': column missing" in res.stderr
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbftext,final_rating\nfine text,2\nan \xffodd text,3\n")
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--reference", str(tmp_path / "bom.csv")], env)  # a BOM is no part of the header; bad bytes named
    assert res.returncode != 0 and f"{tmp_path / 'bom.csv'}:3: field 'text': invalid UTF-8 (byte 0xff" in res.stderr
    # a reference text twice with two ratings; a reference text that is also in the corpus
    twice = tmp_path / "twice.csv"
    twice.write_text('text,final_rating\nfirst text,2\nsecond text,-4\n"first text",5\n')
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--reference", str(twice)], env)
    assert res.returncode != 0 and f"{twice}:4: field 'text': same text as line 2, rated 2 there and 5 here" in res.stderr
    shared = tmp_path / "shared_refs.csv"
    write_refs(shared, references() + [(rows[4].text, 1.0)])
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--reference", str(shared)], env)
    assert res.returncode != 0, res.stderr
    assert f"{shared}:22: field 'text': also in the corpus ({tmp_path / 'corpus.jsonl'}:5)" in " ".join(res.stderr.split())
    # another value's upstream file (named {value}_{theory}...) is not taken as this value's references
    foreign = tmp_path / "fairness-cheating_mft_flag_aggregated.csv"
    write_refs(foreign, references())
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--reference", str(foreign)], env)
    assert res.returncode != 0
    assert f"{foreign}: the file name says value 'fairness-cheating', --value says {VALUE!r}" in res.stderr
    # too few texts for any design (no references with --scale minmax), refused before a text is stored
    write_jsonl(tmp_path / "two.jsonl", rows[:2])
    res = run_cli(["vidb", "build", str(tmp_path / "two.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--scale", "minmax"], env)
    assert res.returncode != 0 and "2 text(s) and 0 reference(s): pairwise design needs at least 3 texts, got 2 (--k 2)" \
        in " ".join(res.stderr.split()), res.stderr
    write_jsonl(tmp_path / "three.jsonl", rows[:3])
    res = run_cli(["vidb", "build", str(tmp_path / "three.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--scale", "minmax", "--k", "6"], env)
    assert res.returncode != 0 and "3 text(s) and 0 reference(s): need at least k=6 texts, got 3 (--k 6)" \
        in " ".join(res.stderr.split()), res.stderr
    # a mistyped --id-field: refused, not every text silently numbered line-N
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--reference", str(tmp_path / "refs.csv"), "--id-field", "ident"], env)
    assert res.returncode != 0 and "corpus.jsonl:1: field 'ident': missing id" in res.stderr, res.stderr
    # an export format it cannot write, and -o without --wait, are refused before the job is submitted
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--reference", str(tmp_path / "refs.csv"), "--wait", "-o", str(tmp_path / "built.txt")], env)
    assert res.returncode != 0 and "built.txt: use .jsonl, .csv or .parquet" in " ".join(res.stderr.split())
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--reference", str(tmp_path / "refs.csv"), "-o", str(tmp_path / "built.jsonl")], env)
    assert res.returncode != 0 and "needs --wait" in res.stderr
    assert asyncio.run(snapshot()) == empty  # nothing stored by any refusal

    workers.start()
    write_jsonl(tmp_path / "fields.jsonl", rows, "doc", "body")
    res = run_cli(["vidb", "build", str(tmp_path / "fields.jsonl"), "--id-field", "doc", "--text-field", "body",
                   "--value", VALUE, "--judge", "simulated:beta=2", "--comparisons-per-text", "8", "--prior", "0.2",
                   "--seed", "4", "--reference", str(tmp_path / "refs.csv"), "--chunk-size", "50",
                   "--wait", "--no-local-worker", "-o", str(tmp_path / "built.jsonl")], env, timeout=300, check=True)
    assert "version 1, 80 items (80 new)" in " ".join(res.stderr.split())
    built = [json.loads(x) for x in (tmp_path / "built.jsonl").read_text().splitlines()]
    assert [b["id"] for b in built] == [r.ext_id for r in rows]  # ids from --id-field, texts from --text-field
    assert spearmanr([b["utility"] for b in built], theta).statistic >= 0.85
    job_id = res.stdout.strip().splitlines()[-1]
    assert_build_seed(pg_url, job_id, seed=4, per_text=8)
    assert_map_prior(pg_url, job_id, prior=0.2)

    # the same text again is refused and nothing changes
    before = asyncio.run(snapshot())
    write_jsonl(tmp_path / "again.jsonl", rows[:3])
    res = run_cli(["vidb", "build", str(tmp_path / "again.jsonl"), "--value", VALUE, "--judge", "simulated"], env)
    assert res.returncode != 0 and "already in the VIDB of 'benevolence'" in res.stderr and ":1: field 'text'" in res.stderr
    # the value's own items as references, fewer than calibration needs because of --max-references
    more, _ = corpus(5, seed=9, offset=900)
    write_jsonl(tmp_path / "more.jsonl", more)
    res = run_cli(["vidb", "build", str(tmp_path / "more.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--max-references", "2"], env)
    said = " ".join(res.stderr.split())
    assert res.returncode != 0 and "has 80 VIDB item(s), of which --max-references takes 2" in said, said
    assert asyncio.run(snapshot()) == before

    res = run_cli(["vidb", "versions", "--value", VALUE], env, check=True)
    assert len(res.stdout.strip().splitlines()) == 2 and " build " in res.stdout
    # exports: upstream CSV read back whole, and JSONL with utility, stderr, flags, source
    run_cli(["vidb", "export", "--value", VALUE, "--version", "1", "-o", str(tmp_path / "v1.csv")], env, check=True)
    with (tmp_path / "v1.csv").open(newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == 80 and set(got[0]) == {"text", "final_rating"}
    by_text = {g["text"]: float(g["final_rating"]) for g in got}
    assert by_text[references()[0][0]] == references()[0][1]
    run_cli(["vidb", "export", "--value", VALUE, "-o", str(tmp_path / "cur.jsonl")], env, check=True)
    cur = [json.loads(x) for x in (tmp_path / "cur.jsonl").read_text().splitlines()]
    assert len(cur) == 80 and {"utility", "stderr", "flags", "source", "version"} <= set(cur[0])
    assert {c["source"].split(":")[0] for c in cur} == {"fit", "reference"}
    res = run_cli(["vidb", "export", "--value", VALUE, "--version", "7", "-o", str(tmp_path / "v7.csv")], env)
    assert res.returncode != 0 and "has no VIDB version 7" in res.stderr
    res = run_cli(["vidb", "diff", "--value", VALUE, "1", "1"], env, check=True)
    assert "0 added, 0 removed, 0 changed" in res.stdout
    # Parquet export: the same columns as JSONL, read back whole
    import pyarrow.parquet as pq

    run_cli(["vidb", "export", "--value", VALUE, "--version", "1", "-o", str(tmp_path / "v1.parquet")], env, check=True)
    table = pq.read_table(tmp_path / "v1.parquet").to_pylist()
    assert len(table) == 80 and {t["text"]: t["intensity"] for t in table} == by_text
    assert all(t["version"] == 1 and t["utility"] is not None and t["stderr"] > 0 and t["flags"] == [] for t in table)

    # items imported into a value that has versions get one (kind import), so scoring plans with them
    extra = tmp_path / "more.csv"
    with extra.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["text", "final_rating"], ["An imported kindness, freely given.", 4.5],
                                  ["An imported slight, on purpose.", -3.0]])
    assert "2 new items" in run_cli(["vidb", "import", str(extra), "--value", VALUE], env, check=True).stdout
    v2 = asyncio.run(fetch(pg_url, "SELECT kind, job_id, n_items, n_new FROM vidb_versions WHERE value = $1"
                                    " AND version = 2", VALUE))
    assert [tuple(r) for r in v2] == [("import", None, 82, 2)]
    res = run_cli(["vidb", "diff", "--value", VALUE, "1", "2"], env, check=True)
    assert "2 added, 0 removed, 0 changed" in res.stdout
    assert "0 new items" in run_cli(["vidb", "import", str(extra), "--value", VALUE], env, check=True).stdout
    assert len(asyncio.run(fetch(pg_url, "SELECT 1 FROM vidb_versions WHERE value = $1", VALUE))) == 2  # none added

    # --min-change: intensity moves above it are listed; a flag change is listed whatever the move
    async def version_3(conn):
        from workers.vidb import versions as V

        items = await conn.fetch("SELECT id, text_id, intensity, utility, stderr, source FROM vidb_items"
                                 " WHERE value = $1 ORDER BY id LIMIT 3", VALUE)
        async with conn.transaction():
            await V.value_lock(conn, VALUE)
            await conn.execute("UPDATE vidb_items SET flags = ARRAY['implausible'] WHERE id = $1", items[2]["id"])
            return await V.write_version(conn, VALUE, "import", None, [
                dict(items[0], intensity=items[0]["intensity"] + 0.5), dict(items[1], intensity=items[1]["intensity"] - 3)],
                0, "kept")

    assert _db(pg_url, version_3) == 3
    res = run_cli(["vidb", "diff", "--value", VALUE, "2", "3"], env, check=True)
    assert "0 added, 0 removed, 3 changed" in res.stdout
    res = run_cli(["vidb", "diff", "--value", VALUE, "2", "3", "--min-change", "1"], env, check=True)
    changed = [json.loads(x) for x in res.stdout.splitlines()[1:]]
    assert "0 added, 0 removed, 2 changed" in res.stdout
    assert sorted((round(c["to"] - c["from"], 6), c["flags"]) for c in changed) == [(-3.0, []), (0.0, ["implausible"])]
    res = run_cli(["vidb", "diff", "--value", VALUE, "2", "3", "--min-change", "-1"], env)
    assert res.returncode == 2 and "--min-change" in res.stderr


async def fetch(url, sql, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def test_cli_build_runs_its_own_worker_with_local_worker_and_scales_minmax(env, tmp_path):
    """--local-worker: no worker runs anywhere; the command runs one while it waits. --scale minmax
    with no references stretches the fitted utilities over [-10, 10]."""
    from pathlib import Path

    rows, theta = corpus(12, seed=5)
    write_jsonl(tmp_path / "small.jsonl", rows)
    Path(env["VALUEFLOW_HOME"]).mkdir(parents=True, exist_ok=True)  # the local worker logs there
    out = tmp_path / "small.csv"
    res = run_cli(["vidb", "build", str(tmp_path / "small.jsonl"), "--value", VALUE, "--judge", "simulated:beta=2",
                   "--scale", "minmax", "--comparisons-per-text", "6", "--wait", "--local-worker", "-o", str(out)],
                  env, timeout=300, check=True)
    assert "version 1, 12 items (12 new)" in " ".join(res.stderr.split())
    with out.open(newline="", encoding="utf-8") as fh:
        got = {r["id"]: float(r["intensity"]) for r in csv.DictReader(fh)}
    assert list(got) == [r.ext_id for r in rows]
    assert min(got.values()) == -10.0 and max(got.values()) == 10.0
    assert spearmanr(list(got.values()), theta).statistic >= 0.8
