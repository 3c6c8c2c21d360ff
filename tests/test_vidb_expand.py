"""VIDB expansion, serialised refits, kill -9 during a refit, audit → review → adjudicate."""

from __future__ import annotations

import asyncio
import csv
import functools
import json
import time
import uuid

import asyncpg
import pytest
import numpy as np
from scipy.stats import spearmanr

from tests.conftest import _admin, _db_url, open_test_store, run_cli
from tests.test_vidb_build import (VALUE, assert_map_prior, build_inline, corpus, fetch, references, write_jsonl,
                                   write_refs)


async def expand_stages(store, rows, job_id, rounds=10, **kw):
    """Submit an expansion and run its search stage inline; returns the finalize sends."""
    from schemas.vidb import VidbExpandSpec
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources
    from workers.jobs.kinds import vidb_expand

    spec = VidbExpandSpec(input="mem", value=VALUE, judge="simulated", rounds=rounds, **kw)
    todo = await lifecycle.submit(store, vidb_expand.KIND, spec, job_id, vidb_expand.planner(spec, rows))
    finals = []
    res = Resources()
    while todo:
        s = todo.pop(0)
        if s.what == "finalize":
            finals.append(s)
        else:
            from schemas.messages import StageTask

            todo += (await lifecycle.run_stage(store, res, StageTask(**s.kwargs), 5)).sends
    return finals


def in_scratch_db(run):
    """``asyncio.run(run(url))`` in a database of its own (created, then dropped)."""
    name = f"vf_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        return asyncio.run(run(_db_url(name)))
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def assert_same_items(got: dict, ref: dict, n: int) -> None:
    """Two version snapshots (text → row) hold the same n texts with the same numbers."""
    assert got.keys() == ref.keys() and len(got) == n
    for col in ("intensity", "utility", "stderr"):
        a = np.array([got[b][col] for b in sorted(got)])
        e = np.array([ref[b][col] for b in sorted(got)])
        assert np.allclose(a, e, rtol=0, atol=1e-9), col


def test_expansion_places_new_texts_in_log_n_windows_each(pg_url):
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources
    from workers.jobs.kinds import vidb_expand

    async def go():
        store = await open_test_store(pg_url)
        try:
            rows, theta = corpus(260)
            await build_inline(store, rows[:200], references(), per_text=12)
            new = rows[200:]
            finals = await expand_stages(store, new, "exp-1", rounds=9)
            assert [f.what for f in finals] == ["finalize"]
            await lifecycle.run_inline(store, Resources(), finals)
            assert (await store.job("exp-1"))["state"] == "done"
            per_text = await store.pool.fetch("SELECT item_no, count(*) AS n, count(DISTINCT anchor_ids[1]) AS opp"
                                              " FROM windows WHERE job_id = 'exp-1' GROUP BY item_no")
            assert len(per_text) == 60 and {r["n"] for r in per_text} == {9} and {r["opp"] for r in per_text} == {9}
            out = [r async for b in vidb_expand.KIND.export_rows(store, "exp-1") for r in b]
            assert [r["id"] for r in out] == [r.ext_id for r in new]
            assert spearmanr([r["utility"] for r in out], theta[200:]).statistic >= 0.85
            assert spearmanr([r["intensity"] for r in out], theta[200:]).statistic >= 0.85
            vs = await store.pool.fetch("SELECT version, kind, n_items, n_new FROM vidb_versions ORDER BY version")
            assert [tuple(v) for v in vs] == [(1, "build", 220, 220), (2, "expand", 280, 60)]
            # the refit started the new texts at their search estimates (posterior means), which sit
            # close to where the fit put them
            from schemas.vidb import VidbExpandSpec

            est = await vidb_expand.search_estimates(
                store.pool, VidbExpandSpec(input="mem", value=VALUE, judge="simulated", rounds=9), "exp-1")
            ids = await store.pool.fetch("SELECT text_id FROM job_items WHERE job_id = 'exp-1' ORDER BY item_no")
            e = np.array([est[r["text_id"]] for r in ids])
            assert len(est) == 60 and spearmanr(e, [r["utility"] for r in out]).statistic >= 0.9
            assert np.median(np.abs(e - np.array([r["utility"] for r in out]))) < 0.5
            # opponents were chosen near the text's running estimate: the last rounds' opponents are
            # close to the text's true utility (binary search), far closer than random items would be
            last = await store.pool.fetch("SELECT w.item_no, w.anchor_intensity[1] AS u FROM windows w"
                                          " WHERE job_id = 'exp-1' AND window_id % 9 = 8 ORDER BY item_no")
            fitted = np.array([r["utility"] for r in out])
            gap = np.abs(np.array([r["u"] for r in last]) - fitted)
            pool = np.array([r["utility"] for r in await store.pool.fetch(
                "SELECT utility FROM vidb_version_items WHERE version = 1")])
            random_gap = np.abs(pool[None, :] - fitted[:, None]).mean()
            assert np.median(gap) < 0.35 * random_gap
            # a scoring job planned against version 1 gets version 1's anchors after the VIDB grew
            from workers.jobs.kinds.score import anchor_pools

            (v1,), (cur,) = await anchor_pools(store, [VALUE], 6, {VALUE: 1}), await anchor_pools(store, [VALUE], 6)
            assert len(v1.item_ids) == 220 and len(cur.item_ids) == 280
            assert set(v1.item_ids.tolist()) < set(cur.item_ids.tolist())
        finally:
            await store.close()

    asyncio.run(go())


def test_items_the_audit_or_people_doubt_do_not_calibrate_new_texts(pg_url):
    """An expansion maps new texts' utilities by isotonic regression on the value's agreed items:
    items flagged implausible or disputed, whatever their intensity, are not references. A build
    that takes its references from the VIDB leaves them out too, and says so when too few remain."""
    from schemas.vidb import VidbBuildSpec
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources
    from workers.jobs.kinds import vidb_build
    from workers.vidb.fit import isotonic

    async def go():
        store = await open_test_store(pg_url)
        try:
            rows, _ = corpus(150, seed=4)
            await build_inline(store, rows[:100], references(), per_text=10)
            # six items get absurd intensities (low utility, +10) and the audit's flag
            doubted = [r["id"] for r in await store.pool.fetch(
                "SELECT id FROM vidb_items WHERE value = $1 ORDER BY utility LIMIT 6", VALUE)]
            await store.pool.execute("UPDATE vidb_items SET intensity = 10, flags = ARRAY[CASE WHEN id % 2 = 0 THEN"
                                     " 'implausible' ELSE 'disputed' END] WHERE id = ANY($1::bigint[])", doubted)
            finals = await expand_stages(store, rows[100:], "exp-d", rounds=8)
            await lifecycle.run_inline(store, Resources(), finals)
            items = await store.pool.fetch("SELECT id, text_id, intensity, utility, flags FROM vidb_items"
                                           " WHERE value = $1 ORDER BY text_id", VALUE)
            new_ids = {r["text_id"] for r in await store.pool.fetch("SELECT text_id FROM job_items WHERE job_id = 'exp-d'")}
            u = np.array([r["utility"] for r in items])
            refs = np.array([i for i, r in enumerate(items) if r["text_id"] not in new_ids and r["id"] not in doubted])
            want = isotonic(u, refs, np.array([items[i]["intensity"] for i in refs]))
            got = np.array([r["intensity"] for r in items])
            new = np.array([r["text_id"] in new_ids for r in items])
            assert new.sum() == 50 and np.allclose(got[new], want[new])
            # with the doubted items as references the low new texts would have been pulled up
            with_doubted = np.array([i for i, r in enumerate(items) if r["text_id"] not in new_ids])
            assert not np.allclose(got[new], isotonic(u, with_doubted, got[with_doubted])[new])

            # a build taking references from the VIDB picks agreed items only
            more, _ = corpus(10, seed=8, offset=700)
            spec = VidbBuildSpec(input="more.jsonl", value=VALUE, judge="simulated", max_references=1000)
            await lifecycle.submit(store, vidb_build.KIND, spec, "b-mix", vidb_build.planner(spec, more, None))
            refs = {r["text_id"] for r in await store.pool.fetch("SELECT text_id FROM vidb_job_refs WHERE job_id = 'b-mix'")}
            assert refs == {r["text_id"] for r in items if r["id"] not in doubted}  # 170 - 6
            # with none agreed: the build and the expansion refuse before anything is judged, counting the doubted
            await store.pool.execute("UPDATE vidb_items SET flags = ARRAY['disputed'] WHERE value = $1", VALUE)
            with pytest.raises(ValueError, match=r"has 0 VIDB item\(s\) not flagged implausible or disputed \(170 are\)"):
                await lifecycle.submit(store, vidb_build.KIND, spec, "b-more", vidb_build.planner(spec, more, None))
            with pytest.raises(ValueError, match=r"has 0 fitted VIDB item\(s\) not flagged implausible or disputed "
                                                 r"\(170 are\); isotonic calibration of the new texts needs at least 10"):
                await expand_stages(store, more, "exp-none", rounds=8)
            assert await store.pool.fetchval("SELECT count(*) FROM jobs WHERE id IN ('b-more', 'exp-none')") == 0
        finally:
            await store.close()

    asyncio.run(go())


def test_two_concurrent_expansions_of_one_value_both_land_in_order(pg_url):
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources

    async def go():
        stores = [await open_test_store(pg_url) for _ in range(2)]
        store = stores[0]
        try:
            rows, _ = corpus(200)
            await build_inline(store, rows[:140], references(), per_text=8)
            await expand_stages(store, rows[140:170], "exp-a", rounds=6)
            await expand_stages(store, rows[170:], "exp-b", rounds=6)
            # both refits at once, on separate connections, while a third holds the value's lock:
            # both wait for it; a write to another value does not
            holder = await asyncpg.connect(pg_url)
            await holder.execute("SELECT pg_advisory_lock(hashtext('vidb:' || $1)::bigint)", VALUE)
            both = asyncio.gather(lifecycle.run_finalize(stores[0], Resources(), "exp-a"),
                                  lifecycle.run_finalize(stores[1], Resources(), "exp-b"))
            waiting = 0
            for _ in range(200):
                await asyncio.sleep(0.05)
                waiting = await store.pool.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                if waiting == 2:
                    break
            assert waiting == 2 and not both.done()
            other = await asyncio.wait_for(store.add_vidb_items("care-harm", ["Another value's item."], [3.0], "t"), 30)
            assert other == 1 and [tuple(r) for r in await store.pool.fetch(
                "SELECT value, version, kind FROM vidb_versions ORDER BY value")] == [
                ("benevolence", 1, "build"), ("care-harm", 1, "import")]
            await holder.close()
            ran = await both
            assert ran == [True, True]
            assert [(await store.job(j))["state"] for j in ("exp-a", "exp-b")] == ["done", "done"]
            vs = await store.pool.fetch("SELECT version, job_id, n_items, n_new FROM vidb_versions WHERE value = $1"
                                        " ORDER BY version", VALUE)
            assert [v["version"] for v in vs] == [1, 2, 3]
            assert {vs[1]["job_id"], vs[2]["job_id"]} == {"exp-a", "exp-b"}
            assert [v["n_items"] for v in vs] == [160, 190, 220] and [v["n_new"] for v in vs] == [160, 30, 30]
            # nothing lost: the last version holds every text of both expansions
            last = {r["text_id"] for r in await store.pool.fetch("SELECT text_id FROM vidb_version_items WHERE version = 3")}
            both = {r["text_id"] for r in await store.pool.fetch(
                "SELECT text_id FROM job_items WHERE job_id IN ('exp-a', 'exp-b')")}
            assert both <= last and len(last) == 220
            assert await store.pool.fetchval("SELECT count(*) FROM vidb_items WHERE value = $1", VALUE) == 220
            # the later refit counted the earlier expansion's comparisons too
            n = {v["job_id"]: v for v in await store.pool.fetch(
                "SELECT job_id, n_comparisons FROM vidb_versions WHERE value = $1", VALUE)}
            later = vs[2]["job_id"]
            assert n[later]["n_comparisons"] == await store.pool.fetchval("SELECT count(*) FROM comparisons")
        finally:
            for s in stores:
                await s.close()

    asyncio.run(go())


@pytest.mark.parametrize("kind", ["build", "expand"])
def test_kill_9_during_a_refit_then_resume_writes_exactly_one_identical_version(env, workers, tmp_path, pg_url, kind):
    """A worker is killed while its refit writes (a build's cold fit, or an expansion's warm refit
    of a value that has version 1): nothing of the new version is left, and after resume exactly
    one new version is written, the same as an undisturbed run's."""
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources

    rows, _ = corpus(80, seed=3)
    built, new = (rows, []) if kind == "build" else (rows[:60], rows[60:])
    write_jsonl(tmp_path / "corpus.jsonl", built if kind == "build" else new)
    write_refs(tmp_path / "refs.csv", references())

    async def prepare(url):  # version 1 of the value, for an expansion (an own database's schema first)
        store = await open_test_store(url)
        try:
            if kind == "expand":
                await build_inline(store, built, references(), per_text=6, chunk_size=64)
        finally:
            await store.close()

    async def hold_lock():
        # the snapshot table's write lock: the refit takes the value's lock, fits, upserts the items
        # and the version row, and then blocks on its snapshot INSERT, inside its transaction
        await prepare(pg_url)
        conn = await asyncpg.connect(pg_url)
        await conn.execute("BEGIN")
        await conn.execute("LOCK TABLE vidb_version_items IN SHARE ROW EXCLUSIVE MODE")
        return conn

    q = functools.partial(fetch, pg_url)
    before = 0 if kind == "build" else 80  # items (and one version) of the value before the job

    loop = asyncio.new_event_loop()
    lock = loop.run_until_complete(hold_lock())  # the refit will block inside its transaction
    try:
        w = workers.start()
        if kind == "build":
            args = ["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated",
                    "--comparisons-per-text", "6", "--reference", str(tmp_path / "refs.csv"), "--chunk-size", "64"]
        else:
            args = ["vidb", "expand", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated",
                    "--rounds", "6", "--items-per-chunk", "8"]
        job_id = run_cli(args, env, check=True).stdout.strip().splitlines()[-1]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            waiting = asyncio.run(q("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'relation' AND NOT granted"
                                    " AND relation = 'vidb_version_items'::regclass"))
            state = asyncio.run(q("SELECT state FROM jobs WHERE id = $1", job_id))[0]["state"]
            if waiting[0]["n"] and state == "finalizing":
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"the refit never started:\n{workers.logs()[-3000:]}")
        workers.kill(w)  # kill -9 in the middle of the refit's writes
    finally:
        loop.run_until_complete(lock.close())
        loop.close()
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_versions"))[0]["n"] == (1 if before else 0)
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_items"))[0]["n"] == before
    assert asyncio.run(q("SELECT state, finalize_runs FROM jobs WHERE id = $1", job_id))[0]["state"] == "finalizing"

    workers.start()
    run_cli(["jobs", "resume", job_id], env, check=True)
    run_cli(["jobs", "wait", job_id, "--timeout", "300"], env, check=True, timeout=360)
    job = asyncio.run(q("SELECT state, finalize_runs FROM jobs WHERE id = $1", job_id))[0]
    assert (job["state"], job["finalize_runs"]) == ("done", 1)
    vs = asyncio.run(q("SELECT version, kind, job_id FROM vidb_versions ORDER BY version"))
    last = 1 if kind == "build" else 2
    assert [(v["version"], v["kind"]) for v in vs][-1:] == [(last, kind)] and len(vs) == last
    assert vs[-1]["job_id"] == job_id
    snapshot = ("SELECT t.body, v.intensity, v.utility, v.stderr FROM vidb_version_items v"
                " JOIN texts t ON t.id = v.text_id WHERE v.version = $1")
    got = {r["body"]: r for r in asyncio.run(q(snapshot, last))}

    async def undisturbed(url):  # the same job, undisturbed
        await prepare(url)
        store = await open_test_store(url)
        try:
            if kind == "build":
                await build_inline(store, built, references(), per_text=6, chunk_size=64)
            else:
                finals = await expand_stages(store, new, "expand-1", rounds=6, items_per_chunk=8)
                await lifecycle.run_inline(store, Resources(), finals)
            return {r["body"]: r for r in await store.pool.fetch(snapshot, last)}
        finally:
            await store.close()

    assert_same_items(got, in_scratch_db(undisturbed), 100)


def test_audit_review_export_adjudicate_round_trip(env, workers, tmp_path, pg_url):
    rows, theta = corpus(120, seed=5)
    tid = {}

    async def setup():
        store = await open_test_store(pg_url)
        try:
            await build_inline(store, rows, references(), per_text=12)
            # corrupt six items: their intensities flipped far to the other side
            bad = await store.pool.fetch(
                "SELECT v.id, v.intensity, t.body FROM vidb_items v JOIN texts t ON t.id = v.text_id"
                " WHERE abs(v.intensity) > 6 AND v.source LIKE 'fit:%' ORDER BY v.id LIMIT 6")
            await store.pool.execute("UPDATE vidb_items SET intensity = -intensity WHERE id = ANY($1::bigint[])",
                                     [b["id"] for b in bad])
            for r in await store.pool.fetch("SELECT v.id, t.body FROM vidb_items v JOIN texts t ON t.id = v.text_id"):
                tid[r["id"]] = r["body"]
            return {b["id"] for b in bad}
        finally:
            await store.close()

    corrupted = asyncio.run(setup())
    assert len(corrupted) == 6

    q = functools.partial(fetch, pg_url)

    # bad inputs are refused with a clear error before any job exists
    res = run_cli(["vidb", "audit", "--value", VALUE, "--panel", "simulated:beta=3", "--min-weird", "2"], env)
    assert res.returncode != 0 and "2 votes cannot come from 1 judge(s)" in res.stderr
    res = run_cli(["vidb", "audit", "--value", VALUE, "--panel", "simulated:sharp=3"], env)
    assert res.returncode != 0 and "simulated:beta=<float>:seed=<int>" in res.stderr
    res = run_cli(["vidb", "audit", "--value", "no-such-value", "--panel", "simulated"], env)
    assert res.returncode != 0 and "no-such-value" in res.stderr
    res = run_cli(["vidb", "audit", "--value", VALUE, "--panel", "simulated,simulated"], env)
    assert res.returncode != 0 and "judge 'simulated' is named twice" in res.stderr
    res = run_cli(["vidb", "audit", "--value", "care-harm", "--panel", "simulated", "--min-weird", "1"], env)
    assert res.returncode != 0 and "value 'care-harm' has no VIDB items to audit" in res.stderr
    assert asyncio.run(q("SELECT count(*) AS n FROM jobs WHERE kind = 'vidb-audit'"))[0]["n"] == 0

    # the audit runs on the workers: 140 items in blocks of 32 → 5 blocks × 3 judges = 15 tasks
    workers.start()
    panel = ",".join(f"simulated:beta=3:seed={s}" for s in (1, 2, 3))
    out = tmp_path / "audit.csv"
    res = run_cli(["vidb", "audit", "--value", VALUE, "--panel", panel, "--min-weird", "2", "--margin", "4",
                   "--items-per-chunk", "32", "--wait", "--no-local-worker", "-o", str(out)],
                  env, timeout=300, check=True)
    audit = res.stdout.strip().splitlines()[-1]
    assert "140 items × 3 judges, 420 votes" in res.stdout and f"audit {audit} of {VALUE}" in res.stdout
    job = asyncio.run(q("SELECT kind, state, n_items, n_chunks, finalize_runs FROM jobs WHERE id = $1", audit))[0]
    assert tuple(job) == ("vidb-audit", "done", 140, 15, 1)
    chunks = asyncio.run(q("SELECT chunk_no, queue, state FROM chunks WHERE job_id = $1 ORDER BY chunk_no", audit))
    assert [c["chunk_no"] for c in chunks] == list(range(15))
    assert {(c["queue"], c["state"]) for c in chunks} == {("default", "done")}
    flagged = {r["id"] for r in asyncio.run(q("SELECT id FROM vidb_items WHERE 'implausible' = ANY(flags)"))}
    # every corrupted item is caught; of the 134 others (fitted from 12 noisy windows each) under 30 %
    assert corrupted <= flagged and len(flagged - corrupted) < 0.3 * 134, (len(flagged), corrupted - flagged)
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_votes"))[0]["n"] == 420
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_votes WHERE audit_id = $1", audit))[0]["n"] == 420
    assert f"{len(flagged)} flagged implausible (≥ 2 votes)" in res.stdout
    st = " ".join(run_cli(["jobs", "status", audit], env, check=True).stdout.split())
    assert "[vidb-audit] done" in st and "stage vote 15/15 chunks done" in st and "votes: 420 stored" in st
    with out.open(newline="", encoding="utf-8") as fh:
        exported = list(csv.DictReader(fh))
    assert list(exported[0]) == ["item_id", "value", "text", "intensity", "votes", "implausible_votes", "flagged"]
    assert len(exported) == 140 and {(e["votes"], e["value"]) for e in exported} == {("3", VALUE)}
    assert {int(e["item_id"]) for e in exported if e["flagged"] == "True"} == flagged
    assert all((int(e["implausible_votes"]) >= 2) == (e["flagged"] == "True") for e in exported)
    assert all(e["text"] == tid[int(e["item_id"])] for e in exported)
    # the verdict is a version (the same items and intensities, the new flags): scoring jobs plan
    # against the latest version, so `--vidb-filter agreed` leaves the flagged items out
    v = asyncio.run(q("SELECT version, kind, job_id, n_items, n_new, note FROM vidb_versions ORDER BY version DESC LIMIT 1"))[0]
    assert (v["kind"], v["job_id"], v["n_items"], v["n_new"]) == ("audit", audit, 140, 0)
    assert v["note"].startswith(f"audit {audit}: {len(flagged)} item(s) flagged implausible")
    snap = asyncio.run(q("SELECT item_id, intensity, flags FROM vidb_version_items WHERE version = $1", v["version"]))
    assert {r["item_id"] for r in snap if "implausible" in r["flags"]} == flagged
    prev = {r["id"]: r["intensity"] for r in asyncio.run(q("SELECT id, intensity FROM vidb_items WHERE value = $1", VALUE))}
    assert {r["item_id"]: r["intensity"] for r in snap} == prev  # the audited intensities (six corrupted by hand)

    async def agreed_pool():
        from workers.jobs.kinds.score import anchor_pools

        store = await open_test_store(pg_url)
        try:
            (pool,) = await anchor_pools(store, [VALUE], 6, {VALUE: v["version"]}, only_agreed=True)
            return set(pool.item_ids.tolist())
        finally:
            await store.close()

    assert asyncio.run(agreed_pool()) == set(prev) - flagged

    sheet = tmp_path / "review.csv"
    res = run_cli(["vidb", "review-export", "--value", VALUE, "-o", str(sheet)], env, check=True)
    with sheet.open(newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert {int(g["item_id"]) for g in got} == flagged
    assert list(got[0]) == ["item_id", "value", "text", "model_intensity", "implausible_votes", "human_rating", "rater"]
    assert all(g["human_rating"] == "" and g["rater"] == "" and int(g["implausible_votes"]) >= 2 for g in got)

    from workers.vidb.simulated_judge import true_utility

    truth = {int(g["item_id"]): float(np.clip(3 * true_utility(g["text"]), -10, 10)) for g in got}
    model = {int(g["item_id"]): float(g["model_intensity"]) for g in got}
    for g in got:
        g["human_rating"], g["rater"] = f"{truth[int(g['item_id'])]:.3f}", "ann"
    extra = dict(got[0], human_rating=f"{truth[int(got[0]['item_id'])] + 1:.3f}", rater="bob")

    def write(path, rows_):
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(got[0]))
            w.writeheader()
            w.writerows(rows_)

    # a malformed sheet is refused whole, naming the line and field
    broken = tmp_path / "broken.csv"
    write(broken, got[:2] + [dict(got[2], human_rating="15")] + got[3:])
    versions_before = asyncio.run(q("SELECT count(*) AS n FROM vidb_versions"))[0]["n"]
    res = run_cli(["vidb", "adjudicate", str(broken)], env)
    assert res.returncode != 0 and f"{broken}:4: field 'human_rating'" in res.stderr
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_versions"))[0]["n"] == versions_before
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_adjudications"))[0]["n"] == 0

    write(sheet, got + [extra])
    res = run_cli(["vidb", "adjudicate", str(sheet), "--weight", "0.5", "--disagree", "3"], env, check=True)
    assert f"{len(got)} item(s), {len(got) + 1} rating(s)" in res.stdout and f"version {versions_before + 1}" in res.stdout
    items = {r["id"]: r for r in asyncio.run(q("SELECT id, intensity, flags FROM vidb_items"))}
    first = int(got[0]["item_id"])
    for i in flagged:
        human = [truth[i]] + ([truth[i] + 1] if i == first else [])
        assert abs(items[i]["intensity"] - (0.5 * model[i] + 0.5 * np.mean(human))) < 1e-2
        assert "implausible" not in items[i]["flags"] and "adjudicated" in items[i]["flags"]
        assert ("disputed" in items[i]["flags"]) == (abs(np.mean(human) - model[i]) > 3)
    assert all("disputed" in items[i]["flags"] for i in corrupted)  # people and model far apart
    adj = asyncio.run(q("SELECT rater, count(*) AS n, min(created_at) AS at FROM vidb_adjudications GROUP BY rater"))
    assert {r["rater"]: r["n"] for r in adj} == {"ann": len(got), "bob": 1} and all(r["at"] for r in adj)
    v = asyncio.run(q("SELECT kind, job_id, n_items FROM vidb_versions ORDER BY version DESC LIMIT 1"))[0]
    assert (v["kind"], v["job_id"], v["n_items"]) == ("adjudicate", None, 140)
    res = run_cli(["vidb", "diff", "--value", VALUE, "1", str(versions_before + 1)], env, check=True)
    assert f"0 added, 0 removed, {len(flagged)} changed" in res.stdout

    # the same sheet again changes nothing: no version, no second record, no merge into the merge
    res = run_cli(["vidb", "adjudicate", str(sheet), "--weight", "0.5", "--disagree", "3"], env, check=True)
    assert "nothing new" in res.stdout
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_versions"))[0]["n"] == versions_before + 1
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_adjudications"))[0]["n"] == len(got) + 1
    assert {r["id"]: r["intensity"] for r in asyncio.run(q("SELECT id, intensity FROM vidb_items"))} == {
        i: r["intensity"] for i, r in items.items()}
    # a copy of the sheet at another path holds the same people's same ratings: nothing new either
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "review.csv"
    copy.write_bytes(sheet.read_bytes())
    res = run_cli(["vidb", "adjudicate", str(copy), "--weight", "0.5", "--disagree", "3"], env, check=True)
    assert "nothing new" in res.stdout
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_adjudications"))[0]["n"] == len(got) + 1
    # a later sheet with a third rater of one item merges all its ratings into the model's number
    later = tmp_path / "later.csv"
    write(later, [dict(got[0], human_rating="-9", rater="cid")])
    res = run_cli(["vidb", "adjudicate", str(later), "--weight", "0.5", "--disagree", "3"], env, check=True)
    assert "1 item(s), 1 rating(s)" in res.stdout and f"version {versions_before + 2}" in res.stdout
    now = asyncio.run(q("SELECT intensity FROM vidb_items WHERE id = $1", first))[0]["intensity"]
    assert abs(now - (0.5 * model[first] + 0.5 * np.mean([truth[first], truth[first] + 1, -9]))) < 1e-2
    # ann corrects her rating in a sheet of her own: it replaces hers, wherever it came from
    fix = tmp_path / "ann-fix.csv"
    write(fix, [dict(got[0], human_rating=f"{truth[first] + 2:.3f}", rater="ann")])
    res = run_cli(["vidb", "adjudicate", str(fix), "--weight", "0.5", "--disagree", "3"], env, check=True)
    assert f"version {versions_before + 3}" in res.stdout
    now = asyncio.run(q("SELECT intensity FROM vidb_items WHERE id = $1", first))[0]["intensity"]
    assert abs(now - (0.5 * model[first] + 0.5 * np.mean([truth[first] + 2, truth[first] + 1, -9]))) < 1e-2
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_adjudications WHERE item_id = $1 AND rater = 'ann'",
                         first))[0]["n"] == 1
    # a new rater's sheet saved at the first sheet's path keeps ann's rating from that path
    second = int(got[1]["item_id"])
    write(sheet, [dict(got[1], human_rating="-8", rater="dan")])
    res = run_cli(["vidb", "adjudicate", str(sheet), "--weight", "0.5", "--disagree", "0"], env, check=True)
    assert f"version {versions_before + 4}" in res.stdout
    row = asyncio.run(q("SELECT intensity, flags FROM vidb_items WHERE id = $1", second))[0]
    assert abs(row["intensity"] - (0.5 * model[second] + 0.5 * np.mean([truth[second], -8]))) < 1e-2
    assert "disputed" in row["flags"]
    # the same sheet with another --disagree: the same numbers, a new verdict (and version)
    res = run_cli(["vidb", "adjudicate", str(sheet), "--weight", "0.5", "--disagree", "100"], env, check=True)
    assert f"version {versions_before + 5}" in res.stdout
    again = asyncio.run(q("SELECT intensity, flags FROM vidb_items WHERE id = $1", second))[0]
    assert again["intensity"] == row["intensity"] and "disputed" not in again["flags"]
    # bad sheets name the line and field, and change nothing
    for rows_, err in (([dict(got[1], item_id="999999", rater="cid")], ":2: field 'item_id': 999999 is not in the VIDB"),
                       ([dict(got[1], rater="cid"), dict(got[1], rater="cid", human_rating="1")],
                        f":3: field 'rater': cid rated item {got[1]['item_id']} on line 2 already")):
        write(later, rows_)
        res = run_cli(["vidb", "adjudicate", str(later)], env)
        assert res.returncode != 0 and f"{later}{err}" in res.stderr, res.stderr
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_versions"))[0]["n"] == versions_before + 5
    assert asyncio.run(q("SELECT count(*) AS n FROM vidb_adjudications"))[0]["n"] == len(got) + 3


async def audit_votes(store, audit_id) -> dict:
    return {(r["item_id"], r["judge"]): (r["plausible"], r["intensity"]) for r in await store.pool.fetch(
        "SELECT item_id, judge, plausible, intensity FROM vidb_votes WHERE audit_id = $1", audit_id)}


def test_a_redelivered_audit_chunk_stores_each_vote_once_and_status_shows_progress(pg_url):
    from schemas.messages import StageTask
    from schemas.vidb import VidbAuditSpec
    from scheduler import jobs as J
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources, StageContext
    from workers.jobs.kinds import vidb_audit

    async def go():
        store = await open_test_store(pg_url)
        try:
            rows, _ = corpus(40, seed=2)
            await build_inline(store, rows, references(), per_text=8)  # 40 texts + 20 references = 60 items
            bad = {r["id"] for r in await store.pool.fetch(
                "SELECT id FROM vidb_items WHERE abs(intensity) > 6 ORDER BY id LIMIT 3")}
            await store.pool.execute("UPDATE vidb_items SET intensity = -intensity, flags = ARRAY['implausible']"
                                     " WHERE id = ANY($1::bigint[])", list(bad))
            # flags of an earlier audit, to be replaced
            await store.pool.execute("UPDATE vidb_items SET flags = ARRAY['implausible'] WHERE id % 2 = 0")
            panel = ["simulated:beta=3:seed=1", "simulated:beta=3:seed=2"]
            spec = VidbAuditSpec(value=VALUE, panel=panel, min_weird=2, margin=4, items_per_chunk=16)
            sends = await lifecycle.submit(store, vidb_audit.KIND, spec, "audit-1", vidb_audit.planner(spec))
            # 60 items → 4 blocks × 2 judges; chunk 2·block + judge
            assert [s.kwargs["chunk_no"] for s in sends] == list(range(8)) and {s.queue for s in sends} == {"default"}
            res = Resources()
            # chunk 3 (judge 2, items 16–31): a worker stores its votes and dies before handing the chunk
            # on; the redelivered task runs the stage again and stores each vote once
            ctx = StageContext(store, await store.job("audit-1"), spec, 3, 0, res)
            await vidb_audit.KIND.stages[0].run(ctx)
            assert (ctx.report.done, ctx.report.failed, ctx.report.calls) == (16, 0, 16)
            first = await audit_votes(store, "audit-1")
            again = await lifecycle.run_stage(store, res, StageTask(**sends[3].kwargs), 5)
            assert again.state == "ran" and again.sends == [] and again.report.done == 16
            assert await audit_votes(store, "audit-1") == first and len(first) == 16
            assert {j for _, j in first} == {panel[1]}
            assert res.cached(f"judge:{panel[1]}", lambda: None).calls == 32  # one judge object, both runs
            # a duplicate of a chunk already handed on is skipped
            dup = await lifecycle.run_stage(store, res, StageTask(**sends[3].kwargs), 5)
            assert dup.state == "skipped" and dup.sends == []
            assert await store.pool.fetchval("SELECT count(*) FROM vidb_votes") == 16
            # progress per stage and the votes so far, as `jobs status` shows them
            st = await J.status(store, "audit-1")
            assert st["kind"] == "vidb-audit" and st["state"] == "running"
            assert st["stages"] == [{"stage": "vote", "done": 1, "pending": 7, "failed": 0, "of": 8}]
            assert st["counts"]["votes"]["stored"] == 16 and st["counts"]["votes"]["asked for"] == 120
            finals = []
            for s in sends[:3] + sends[4:]:
                finals += (await lifecycle.run_stage(store, res, StageTask(**s.kwargs), 5)).sends
            assert [f.what for f in finals] == ["finalize"] and finals[0].queue == "refit"
            assert (await J.status(store, "audit-1"))["stages"][0]["done"] == 8
            await lifecycle.run_inline(store, res, finals + finals)  # finalize delivered twice: runs once
            job = await store.job("audit-1")
            assert (job["state"], job["finalize_runs"]) == ("done", 1)
            votes = await audit_votes(store, "audit-1")
            assert len(votes) == 120 and await store.pool.fetchval("SELECT count(*) FROM vidb_votes") == 120
            # the flags were replaced: exactly the items with ≥ 2 implausible votes keep one
            weird: dict[int, int] = {}
            for (item, _), (ok, _) in votes.items():
                weird[item] = weird.get(item, 0) + (not ok)
            flagged = {r["id"] for r in await store.pool.fetch("SELECT id FROM vidb_items WHERE 'implausible' = ANY(flags)")}
            assert flagged == {i for i, n in weird.items() if n >= 2} and bad <= flagged and len(flagged) < 30
            # ranking judges bracket each item among the value's whole pool, not its block: the same
            # panel in one chunk per judge gives the same votes
            one = VidbAuditSpec(value=VALUE, panel=panel, min_weird=2, margin=4, items_per_chunk=1000)
            await lifecycle.run_inline(store, Resources(), await lifecycle.submit(
                store, vidb_audit.KIND, one, "audit-2", vidb_audit.planner(one)))
            assert (await store.job("audit-2"))["n_chunks"] == 2 and await audit_votes(store, "audit-2") == votes
            rows_out = [r async for b in vidb_audit.KIND.export_rows(store, "audit-2") for r in b]
            assert len(rows_out) == 60 and {r["item_id"] for r in rows_out if r["flagged"]} == flagged
            # a panel of a simulated and a configured judge: each chunk waits on its judge's queue
            mixed = VidbAuditSpec(value=VALUE, panel=["simulated", "embedding"], min_weird=1, items_per_chunk=30)
            sends = await lifecycle.submit(store, vidb_audit.KIND, mixed, "audit-3", vidb_audit.planner(mixed))
            assert [s.queue for s in sends] == ["default", "gpu"] * 2
            assert [r["queue"] for r in await store.pool.fetch(
                "SELECT queue FROM chunks WHERE job_id = 'audit-3' ORDER BY chunk_no")] == ["default", "gpu"] * 2
            # after a lost worker, resume sends each pending chunk to its judge's queue again
            assert [(s.queue, s.kwargs["chunk_no"]) for s in await lifecycle.resume(store, "audit-3")] == [
                ("default", 0), ("gpu", 1), ("default", 2), ("gpu", 3)]
        finally:
            await store.close()

    asyncio.run(go())


def _with_api_auditor(pg_url, tmp_path, monkeypatch, auditor: str, body, structured: str = "off") -> None:
    """Run ``await body(store, resources, server)`` against a 50-item VIDB of ``VALUE``, with the
    fake server's judge ``auditor`` (TOML lines after ``kind``/``base_url``/``structured``) configured."""
    from tests.fake_openai import ServerThread
    from workers.jobs.kind import Resources

    with ServerThread() as srv:
        judges = tmp_path / "judges.toml"
        judges.write_text(f'[judges.auditor]\nkind = "api"\nbase_url = "{srv.url}"\nstructured = "{structured}"\n{auditor}')
        monkeypatch.setenv("VALUEFLOW_JUDGES_FILE", str(judges))

        async def go():
            store = await open_test_store(pg_url)
            res = Resources()
            try:
                rows, _ = corpus(30, seed=4)
                await build_inline(store, rows, references(), per_text=8)  # 50 items
                await body(store, res, srv)
            finally:
                judge = res.cached("judge:auditor", lambda: None)
                if judge is not None:
                    await judge.aclose()
                await store.close()

        asyncio.run(go())


def test_an_api_judge_votes_through_the_audit_job(pg_url, tmp_path, monkeypatch):
    """An API judge of the panel is asked once per item, on the api queue, with one client per worker."""
    from schemas.vidb import VidbAuditSpec
    from workers.jobs import lifecycle
    from workers.jobs.kinds import vidb_audit

    async def body(store, res, srv):
        bad = [r["id"] for r in await store.pool.fetch(
            "SELECT id FROM vidb_items WHERE abs(intensity) > 6 ORDER BY id LIMIT 3")]
        await store.pool.execute("UPDATE vidb_items SET intensity = -intensity WHERE id = ANY($1::bigint[])", bad)
        spec = VidbAuditSpec(value=VALUE, panel=["auditor", "simulated:beta=3"], min_weird=1, items_per_chunk=20)
        sends = await lifecycle.submit(store, vidb_audit.KIND, spec, "audit-api", vidb_audit.planner(spec))
        assert [s.queue for s in sends] == ["api", "default"] * 3
        await lifecycle.run_inline(store, res, sends)
        assert (await store.job("audit-api"))["state"] == "done"
        votes = await audit_votes(store, "audit-api")
        assert len(votes) == 100 and srv.server.by_model["plausibility"] == 50
        said = {i: ok for (i, j), (ok, _) in votes.items() if j == "auditor"}
        assert all(not said[i] for i in bad)  # the flipped intensities are implausible to it
        flagged = {r["id"] for r in await store.pool.fetch("SELECT id FROM vidb_items WHERE 'implausible' = ANY(flags)")}
        assert set(bad) <= flagged

    _with_api_auditor(pg_url, tmp_path, monkeypatch, 'model = "plausibility"\n', body)


@pytest.mark.parametrize("model, used, formats, formatted, free_text", [
    ("plausibility", "json_schema", {"json_schema"}, 50, 0),  # every question carried the schema
    # refused: one question finds out (json_schema, then json_object, each refused once) while the
    # others wait; then every question is asked in free text
    ("plausibility-no-schema", None, {"json_schema", "json_object"}, 2, 50),
])
def test_an_api_judge_answers_the_audit_in_structured_output(pg_url, tmp_path, monkeypatch, model, used, formats,
                                                             formatted, free_text):
    """With ``structured = "auto"`` the auditor is asked for JSON matching the audit's own schema
    (OpenAI's ``json_schema`` form, named ``plausibility``); a server that refuses
    ``response_format`` is asked again in free text, and every item still gets its vote."""
    from schemas.vidb import VidbAuditSpec
    from workers.jobs import lifecycle
    from workers.jobs.kinds import vidb_audit
    from workers.vidb.audit import PLAUSIBILITY_SCHEMA

    async def body(store, res, srv):
        spec = VidbAuditSpec(value=VALUE, panel=["auditor"], min_weird=1, items_per_chunk=50)
        await lifecycle.run_inline(store, res, await lifecycle.submit(
            store, vidb_audit.KIND, spec, "audit-json", vidb_audit.planner(spec)))
        assert (await store.job("audit-json"))["state"] == "done"
        assert len(await audit_votes(store, "audit-json")) == 50
        sent = srv.server.formats[model]
        assert sent[0] == {"type": "json_schema",
                           "json_schema": {"name": "plausibility", "strict": True, "schema": PLAUSIBILITY_SCHEMA}}
        assert res.cached("judge:auditor", lambda: None).structured_format == used
        assert {f["type"] for f in sent} == formats
        assert (len(sent), srv.server.by_model[model] - len(sent)) == (formatted, free_text)  # with, without a format

    _with_api_auditor(pg_url, tmp_path, monkeypatch, f'model = "{model}"\n', body, structured="auto")


def test_resume_retry_failed_asks_again_for_the_votes_an_api_judge_did_not_give(pg_url, tmp_path, monkeypatch):
    """The auditor is down for its first 10 requests (no retries): the audit finishes with 10 items
    unvoted; ``resume --retry-failed`` sends back exactly the chunk holding them, and then every
    item has one vote and the flags are set again."""
    from schemas.vidb import VidbAuditSpec
    from workers.jobs import lifecycle
    from workers.jobs.kinds import vidb_audit

    async def body(store, res, srv):
        spec = VidbAuditSpec(value=VALUE, panel=["auditor"], min_weird=1, items_per_chunk=20)
        await lifecycle.run_inline(store, res, await lifecycle.submit(
            store, vidb_audit.KIND, spec, "audit-retry", vidb_audit.planner(spec)))
        assert (await store.job("audit-retry"))["state"] == "done"
        assert len(await audit_votes(store, "audit-retry")) == 40  # chunk 0's first 10 failed
        sends = await lifecycle.resume(store, "audit-retry", retry_failed=True)
        assert [(s.what, s.kwargs["chunk_no"]) for s in sends] == [("stage", 0)]
        await lifecycle.run_inline(store, res, sends)
        job = await store.job("audit-retry")
        assert job["state"] == "done" and job["finalize_runs"] == 2
        audits = await store.pool.fetch("SELECT job_id, note FROM vidb_versions WHERE kind = 'audit' ORDER BY version")
        assert len(audits) == 2  # one per finalize
        assert all(a["job_id"] == "audit-retry" and a["note"].startswith("audit audit-retry: ") for a in audits)
        votes = await audit_votes(store, "audit-retry")
        assert len(votes) == 50 and {j for _, j in votes} == {"auditor"}
        assert sum(srv.server.by_model.values()) == 50 + 20  # chunk 0 asked again in full
        assert await lifecycle.resume(store, "audit-retry", retry_failed=True) == []  # nothing left

    _with_api_auditor(pg_url, tmp_path, monkeypatch,
                      'model = "plausibility-down-first-10"\nmax_attempts = 1\nconcurrency = 1\n', body)


def test_resume_retry_failed_refits_a_finished_build_as_an_undisturbed_build_would(pg_url, tmp_path, monkeypatch):
    """The build's judge is down for its first 12 windows (no retries): the build finishes with them
    failed, and its version 1 fits the rest. ``resume --retry-failed`` judges them and finalizes
    again: version 2, by the same job, is what a build whose judge never failed writes as version 1
    (the job's own texts calibrated again as new, not kept at version 1's numbers)."""
    from tests.fake_openai import ServerThread
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources
    from workers.jobs.kinds import vidb_build

    rows, _ = corpus(40, seed=8)
    snapshot = ("SELECT t.body, v.intensity, v.utility, v.stderr FROM vidb_version_items v"
                " JOIN texts t ON t.id = v.text_id WHERE v.version = $1")

    async def retry_failed(store, res):
        job = await store.job("build-1")
        assert job["state"] == "done" and job["finalize_runs"] == 1
        failed = await store.pool.fetchval("SELECT count(*) FROM windows WHERE state = 'failed'")
        v1 = await store.pool.fetchrow("SELECT version, job_id, n_comparisons FROM vidb_versions")
        assert failed == 12 and tuple(v1) == (1, "build-1", job["n_windows"] - 12)
        sends = await lifecycle.resume(store, "build-1", retry_failed=True)
        assert sends and all(s.what == "stage" for s in sends)
        await lifecycle.run_inline(store, res, sends)
        job = await store.job("build-1")
        assert (job["state"], job["finalize_runs"]) == ("done", 2), job["error"]
        assert await store.pool.fetchval("SELECT count(*) FROM windows WHERE state <> 'done'") == 0

    async def nothing(store, res):
        pass

    async def run(url, judge, then):
        """Build with ``judge``, run ``then``; the job, its versions, its export and the last snapshot."""
        store, res = await open_test_store(url), Resources()
        try:
            await build_inline(store, rows, references(), per_text=6, judge=judge)
            await then(store, res)
            vs = await store.pool.fetch("SELECT version, kind, job_id, n_items, n_new, n_comparisons, note"
                                        " FROM vidb_versions ORDER BY version")
            out = [r async for b in vidb_build.KIND.export_rows(store, "build-1") for r in b]
            items = {r["body"]: r for r in await store.pool.fetch(snapshot, vs[-1]["version"])}
            return await store.job("build-1"), [dict(v) for v in vs], out, items
        finally:
            for name in ("flaky", "steady"):
                judge = res.cached(f"judge:{name}", lambda: None)
                if judge is not None:
                    await judge.aclose()
            await store.close()

    with ServerThread() as srv:
        judges = tmp_path / "judges.toml"
        judges.write_text(
            f'[judges.flaky]\nkind = "api"\nbase_url = "{srv.url}"\nstructured = "off"\nmodel = "down-first-12"\n'
            'max_attempts = 1\nconcurrency = 1\n\n'
            f'[judges.steady]\nkind = "api"\nbase_url = "{srv.url}"\nstructured = "off"\nmodel = "ok"\n')
        monkeypatch.setenv("VALUEFLOW_JUDGES_FILE", str(judges))
        job, vs, out, got = asyncio.run(run(pg_url, "flaky", retry_failed))
        ref_job, ref_vs, ref_out, ref = in_scratch_db(lambda url: run(url, "steady", nothing))
    # both: one build's version over all 60 items and every window; retried: version 2 by the same job,
    # whose new items are the job's 40 texts, calibrated again (the references were kept)
    for j, v in ((job, vs[-1]), (ref_job, ref_vs[-1])):
        assert (v["kind"], v["job_id"], v["n_items"], v["n_comparisons"]) == ("build", "build-1", 60, j["n_windows"])
    assert [(v["version"], v["n_new"]) for v in vs] == [(1, 60), (2, 40)]
    assert [(v["version"], v["n_new"]) for v in ref_vs] == [(1, 60)]
    assert "refit again after resume --retry-failed (this job's earlier version: 1)" in (vs[-1]["note"] or "")
    assert len(out) == 40 and {r["version"] for r in out} == {2}  # the job's latest version
    assert len(ref_out) == 40 and {r["version"] for r in ref_out} == {1}
    assert_same_items(got, ref, 60)


def test_cli_expand_and_versions(env, workers, tmp_path, pg_url):
    rows, theta = corpus(100, seed=7)

    async def setup():
        store = await open_test_store(pg_url)
        try:
            await build_inline(store, rows[:70], references(), per_text=8)
        finally:
            await store.close()

    asyncio.run(setup())
    write_jsonl(tmp_path / "new.jsonl", rows[70:])
    res = run_cli(["vidb", "expand", str(tmp_path / "new.jsonl"), "--value", "no-such-value", "--judge", "simulated"], env)
    assert res.returncode != 0 and "no-such-value" in res.stderr
    res = run_cli(["vidb", "expand", "--value", VALUE, "--judge", "simulated"], env)
    assert res.returncode != 0 and "give NEW texts and/or --from-job" in res.stderr
    res = run_cli(["vidb", "expand", str(tmp_path / "new.jsonl"), "--value", VALUE, "--judge", "simulated",
                   "--from-job", "nope"], env)
    assert res.returncode != 0 and "--from-job nope: no scoring job" in res.stderr
    (tmp_path / "empty.jsonl").write_text("")
    res = run_cli(["vidb", "expand", str(tmp_path / "empty.jsonl"), "--value", VALUE, "--judge", "simulated"], env)
    assert res.returncode != 0 and "empty corpus" in res.stderr
    write_jsonl(tmp_path / "known.jsonl", rows[68:72])  # rows[68:70] were built into the VIDB
    res = run_cli(["vidb", "expand", str(tmp_path / "known.jsonl"), "--value", VALUE, "--judge", "simulated"], env)
    assert res.returncode != 0 and f"known.jsonl:1: field 'text': already in the VIDB of '{VALUE}'" in res.stderr
    assert asyncio.run(_scalar(pg_url, "SELECT count(*) FROM jobs WHERE kind = 'vidb-expand'")) == 0
    assert asyncio.run(_scalar(pg_url, "SELECT count(*) FROM vidb_versions")) == 1
    res = run_cli(["vidb", "expand", "--value", VALUE, "--judge", "simulated", "--from-job", "nope"], env)
    assert res.returncode != 0 and "--from-job nope: no scoring job with that id" in res.stderr, res.stderr
    build_job = asyncio.run(_scalar(pg_url, "SELECT id FROM jobs WHERE kind = 'vidb-build'"))
    res = run_cli(["vidb", "expand", "--value", VALUE, "--judge", "simulated", "--from-job", build_job], env)
    assert res.returncode != 0 and f"--from-job {build_job}: no scoring job with that id (it is a vidb-build job)" \
        in " ".join(res.stderr.split()), res.stderr
    workers.start()
    write_jsonl(tmp_path / "new_fields.jsonl", rows[70:], "doc", "body")
    res = run_cli(["vidb", "expand", str(tmp_path / "new_fields.jsonl"), "--id-field", "doc", "--text-field", "body",
                   "--value", VALUE, "--judge", "simulated:beta=2", "--prior", "0.2", "--seed", "3",
                   "--rounds", "7", "--items-per-chunk", "10", "--wait", "--no-local-worker",
                   "-o", str(tmp_path / "added.jsonl")], env, timeout=300, check=True)
    said = " ".join(res.stderr.split())  # the console wraps long lines
    assert "7 windows per text among 90 items" in said and "version 2, 120 items (30 new)" in said
    added = [json.loads(x) for x in (tmp_path / "added.jsonl").read_text().splitlines()]
    assert [a["id"] for a in added] == [r.ext_id for r in rows[70:]] and {a["version"] for a in added} == {2}
    expand_job = res.stdout.strip().splitlines()[-1]
    assert asyncio.run(_scalar(pg_url, "SELECT array_agg(DISTINCT seed) FROM windows WHERE job_id = $1",
                               expand_job)) == [3]  # every window drawn and judged with --seed
    assert_map_prior(pg_url, expand_job, prior=0.2)
    assert spearmanr([a["utility"] for a in added], theta[70:]).statistic >= 0.8
    res = run_cli(["vidb", "versions"], env, check=True)
    lines = res.stdout.strip().splitlines()[1:]
    assert [ln.split()[1:3] for ln in lines] == [["1", "build"], ["2", "expand"]]
    res = run_cli(["vidb", "diff", "--value", VALUE, "1", "2"], env, check=True)
    assert "30 added, 0 removed" in res.stdout

    # a scoring job ranked other texts against the value's anchors; --from-job folds them in: its
    # texts join the VIDB, its windows count in their search and in the refit, and it becomes a source
    scored, _ = corpus(6, seed=11, offset=500)
    write_jsonl(tmp_path / "scored.jsonl", scored)
    res = run_cli(["score", str(tmp_path / "scored.jsonl"), "--value", VALUE, "--wait", "--no-local-worker"],
                  env, timeout=600, check=True)
    score_job = res.stdout.strip().splitlines()[-1]
    spec = json.loads(asyncio.run(_scalar(pg_url, "SELECT spec::text FROM jobs WHERE id = $1", score_job)))
    # planned against the latest version, recorded with every other value's (the seed: version 1)
    assert spec["vidb_versions"] == {**{v: 1 for v in spec["vidb_versions"] if v != VALUE}, VALUE: 2}
    assert len(spec["vidb_versions"]) == 32
    n_scored = asyncio.run(_scalar(pg_url, "SELECT count(*) FROM comparisons WHERE job_id = $1", score_job))
    assert n_scored == 6 * 3  # 3 windows per text, each judged
    res = run_cli(["vidb", "expand", "--value", VALUE, "--from-job", score_job, "--judge", "simulated:beta=2",
                   "--rounds", "4", "--k", "3", "--wait", "--no-local-worker"], env, timeout=300, check=True)
    said = " ".join(res.stderr.split())
    assert "version 3, 126 items (6 new)" in said, said
    job = asyncio.run(_scalar(pg_url, "SELECT id FROM jobs WHERE kind = 'vidb-expand' ORDER BY created_at DESC LIMIT 1"))
    n_expand = asyncio.run(_scalar(pg_url, "SELECT count(*) FROM comparisons WHERE job_id = $1", job))
    assert n_expand == 6 * 4
    assert asyncio.run(_scalar(pg_url, "SELECT array_agg(DISTINCT cardinality(members)) FROM windows WHERE job_id = $1",
                               job)) == [3]  # --k 3: each new text ranked with two VIDB items
    n2, n3 = (asyncio.run(_scalar(pg_url, "SELECT n_comparisons FROM vidb_versions WHERE value = $1 AND version = $2",
                                 VALUE, v)) for v in (2, 3))
    assert n3 == n2 + n_expand + n_scored  # every folded window counted, once
    assert asyncio.run(_scalar(pg_url, "SELECT count(*) FROM vidb_sources WHERE value = $1 AND job_id = $2",
                              VALUE, score_job)) == 1
    added = asyncio.run(_scalar(pg_url, "SELECT count(*) FROM vidb_items v JOIN texts t ON t.id = v.text_id"
                                       " WHERE v.value = $1 AND t.body = ANY($2::text[]) AND v.fit_version = 3",
                               VALUE, [r.text for r in scored]))
    assert added == 6

    # --vidb-version pins a value to an earlier version: the job's anchors come from that snapshot
    for pin, err in ((f"{VALUE}=9", f"value '{VALUE}' has no VIDB version 9 (latest: 3)"),
                     ("care-harm=7", "value 'care-harm' has no VIDB version 7 (latest: 1)"),
                     ("kindness-to-robots=1", "'kindness-to-robots' is not one steerable value"),
                     (f"{VALUE}=one", "expected VALUE=N with a version N >= 1")):
        res = run_cli(["score", str(tmp_path / "scored.jsonl"), "--value", VALUE, "--vidb-version", pin], env)
        assert res.returncode != 0 and err in res.stderr, res.stderr
    res = run_cli(["score", str(tmp_path / "scored.jsonl"), "--value", VALUE, "--vidb-version", f"{VALUE}=1",
                   "--vidb-version", "care-harm=1"], env, check=True)
    pinned = res.stdout.strip().splitlines()[-1]
    spec = json.loads(asyncio.run(_scalar(pg_url, "SELECT spec::text FROM jobs WHERE id = $1", pinned)))
    assert spec["vidb_versions"][VALUE] == 1 and spec["vidb_versions"]["care-harm"] == 1
    v1 = {r["item_id"] for r in asyncio.run(fetch(
        pg_url, "SELECT item_id FROM vidb_version_items WHERE value = $1 AND version = 1", VALUE))}
    used = {a for r in asyncio.run(fetch(pg_url, "SELECT anchor_ids FROM windows WHERE job_id = $1", pinned))
            for a in r["anchor_ids"]}
    assert used and used <= v1 and len(v1) == 90  # version 1: the build's 70 texts and 20 references


async def _scalar(url, sql, *args):
    return (await fetch(url, sql, *args))[0][0]


def test_cli_build_k_way_with_minmax_scale_and_no_references(env, workers, tmp_path, pg_url):
    rows, theta = corpus(40, seed=21)
    write_jsonl(tmp_path / "corpus.jsonl", rows)
    workers.start()
    res = run_cli(["vidb", "build", str(tmp_path / "corpus.jsonl"), "--value", VALUE, "--judge", "simulated:beta=2",
                   "--k", "3", "--comparisons-per-text", "6", "--scale", "minmax", "--wait", "--no-local-worker",
                   "-o", str(tmp_path / "built.jsonl")], env, timeout=300, check=True)
    assert "version 1, 40 items (40 new)" in " ".join(res.stderr.split())
    job = asyncio.run(_scalar(pg_url, "SELECT id FROM jobs WHERE kind = 'vidb-build'"))
    sizes = asyncio.run(fetch(pg_url, "SELECT cardinality(members) AS k, count(*) AS n FROM windows WHERE job_id = $1"
                                      " GROUP BY 1", job))
    assert len(sizes) == 1 and sizes[0]["k"] == 3
    n_windows = sizes[0]["n"]
    per_text = asyncio.run(fetch(pg_url, "SELECT m, count(*) AS n FROM windows, unnest(members) m WHERE job_id = $1"
                                         " GROUP BY m", job))
    # balanced: every text in 6 windows, except that 40 texts do not split into windows of 3, so
    # each of the 6 rounds fills its last window with two texts shown twice in that round
    counts = [r["n"] for r in per_text]
    assert len(counts) == 40 and min(counts) == 6 and sum(counts) == 3 * n_windows == 6 * 40 + 6 * 2
    assert asyncio.run(_scalar(pg_url, "SELECT count(*) FROM comparisons WHERE job_id = $1"
                                      " AND cardinality(ranking) = 3", job)) == n_windows
    v = asyncio.run(fetch(pg_url, "SELECT scale, n_comparisons FROM vidb_versions WHERE value = $1", VALUE))
    assert [tuple(r) for r in v] == [("minmax", n_windows)]
    built = [json.loads(x) for x in (tmp_path / "built.jsonl").read_text().splitlines()]
    inten = np.array([b["intensity"] for b in built])
    assert inten.min() == -10 and inten.max() == 10  # min–max: the extremes at the ends of the scale
    assert spearmanr(inten, theta).statistic >= 0.8

    # expand with the default number of windows per text: ⌈log2 40⌉ + 2 = 8 among the 40 fitted items
    new, _ = corpus(5, seed=22, offset=300)
    write_jsonl(tmp_path / "new.jsonl", new)
    res = run_cli(["vidb", "expand", str(tmp_path / "new.jsonl"), "--value", VALUE, "--judge", "simulated:beta=2",
                   "--wait", "--no-local-worker"], env, timeout=300, check=True)
    said = " ".join(res.stderr.split())
    assert "8 windows per text among 40 items" in said and "version 2, 45 items (5 new)" in said, said
    job = asyncio.run(_scalar(pg_url, "SELECT id FROM jobs WHERE kind = 'vidb-expand'"))
    spec = json.loads(asyncio.run(_scalar(pg_url, "SELECT spec::text FROM jobs WHERE id = $1", job)))
    assert spec["rounds"] == 8
    assert asyncio.run(_scalar(pg_url, "SELECT count(*) FROM comparisons WHERE job_id = $1", job)) == 5 * 8
