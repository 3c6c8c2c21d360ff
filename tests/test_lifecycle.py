"""The job lifecycle every kind shares: stages, hand-off, finalize exactly once, resume, telemetry."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, listen_for_events, open_test_store, run_cli, wait_until
from tests.fake_openai import ServerThread
from tests.test_score_job import _q, _submit, _wait_job, _write_inputs

TEXTS = ["I carried my neighbour's shopping up four flights of stairs.", "I laughed when my friend tripped and fell.",
         "I lent my brother money and never mentioned it again.", "I ignored a lost child crying in the supermarket.",
         "I volunteer at the food bank every Sunday.", "I kept the extra change the cashier gave me by mistake.",
         "I called my grandmother just to hear how her day went.", "I spread a rumour about a coworker."]


# -- library level: finalize once, duplicate deliveries, all-failed chunks ---------------------------------
async def _scoring_job(store, texts, chunk_size=2, mode="upstream", judge="embedding"):
    from schemas.messages import ScoreJobSpec
    from workers.io.inputs import InputRow
    from workers.io.vidb_files import ensure_seed
    from workers.jobs import lifecycle
    from workers.jobs.kinds import score

    await ensure_seed(store)
    spec = ScoreJobSpec(input="mem", values=["benevolence"], judge=judge, chunk_size=chunk_size, mode=mode)
    rows = [InputRow(i + 1, f"t{i}", t) for i, t in enumerate(texts)]
    sends = await lifecycle.submit(store, score.KIND, spec, "job-1", score.planner(spec, [rows]))
    return sends


def test_finalize_runs_exactly_once_under_duplicated_and_concurrent_delivery(pg_url, embedding_judge):
    from schemas.messages import StageTask
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources

    async def go():
        stores = [await open_test_store(pg_url) for _ in range(4)]
        store = stores[0]
        res = Resources()
        res.cached("judge:embedding", lambda: embedding_judge)
        try:
            sends = await _scoring_job(store, TEXTS, chunk_size=6)  # 8 texts × 3 windows → 4 chunks
            assert len(sends) == 4 and all(s.what == "stage" and s.kwargs["stage"] == 0 for s in sends)
            # judge stage of every chunk, each delivered twice: the duplicate is skipped and sends nothing
            score_sends = []
            for s in sends:
                first = await lifecycle.run_stage(store, res, StageTask(**s.kwargs), 5)
                dup = await lifecycle.run_stage(store, res, StageTask(**s.kwargs), 5)
                assert first.state == "ran" and dup.state == "skipped" and dup.sends == []
                score_sends += first.sends
            assert [s.kwargs["stage"] for s in score_sends] == [1, 1, 1, 1]
            # the score stage of all chunks concurrently, on separate connections, each twice:
            # exactly one of them claims completion and sends the finalize step
            outs = await asyncio.gather(*[lifecycle.run_stage(st, res, StageTask(**s.kwargs), 5)
                                          for s in score_sends for st in stores[:2]])
            finals = [x for o in outs for x in o.sends]
            assert [f.what for f in finals] == ["finalize"]
            assert (await store.job("job-1"))["state"] == "finalizing"
            # finalize delivered four times at once, then once more: it commits exactly once
            ran = await asyncio.gather(*[lifecycle.run_finalize(st, res, "job-1") for st in stores])
            ran.append(await lifecycle.run_finalize(store, res, "job-1"))
            assert sum(ran) == 1
            job = await store.job("job-1")
            assert job["state"] == "done" and job["finalize_runs"] == 1
            assert await store.pool.fetchval("SELECT count(*) FROM judge_health WHERE job_id='job-1'") == 1
            assert await store.pool.fetchval("SELECT count(*) FROM scores WHERE job_id='job-1'") == len(TEXTS)
            assert await store.pool.fetchval("SELECT count(*) FROM comparisons WHERE job_id='job-1'") == 3 * len(TEXTS)
        finally:
            for st in stores:
                await st.close()

    asyncio.run(go())


def test_a_chunk_whose_windows_all_failed_finishes_and_stays_retryable(pg_url):
    """Every window fails (the judge answers 400): the job still finishes, with them counted."""
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources
    from workers.judges.api_judge import APIJudge
    from workers.judges.config import JudgeConfig

    with ServerThread() as srv:
        async def go():
            store = await open_test_store(pg_url)
            res = Resources()
            judge = APIJudge(JudgeConfig(name="embedding", kind="api", model="bad-request", base_url=srv.url,
                                         max_attempts=1, structured="off"), store)
            res.cached("judge:embedding", lambda: judge)
            try:
                sends = await _scoring_job(store, TEXTS[:4], chunk_size=3)
                await lifecycle.run_inline(store, res, sends)
                job = await store.job("job-1")
                assert job["state"] == "done"
                rows = await store.pool.fetch("SELECT * FROM scores WHERE job_id='job-1' ORDER BY item_no")
                assert len(rows) == 4 and all(r["intensity"] is None and r["windows_failed"] == 3
                                              and r["windows_used"] == 0 for r in rows)
                tel = await store.telemetry("job-1")
                assert sum(tel["failures"].values()) == 12
                health = await store.health("job-1")
                assert health[0]["windows_failed"] == 12 and health[0]["verdict"].startswith("warn")
                # retryable: the failed windows go back to the judge stage
                again = await lifecycle.resume(store, "job-1", retry_failed=True)
                assert len(again) == 4 and all(s.kwargs["stage"] == 0 for s in again)
                assert (await store.job("job-1"))["state"] == "running"
            finally:
                await judge.aclose()
                await store.close()

        asyncio.run(go())


# -- through the queue and the CLI ---------------------------------------------------------------------
def _judges_file(tmp_path: Path, url: str, **judges: dict) -> Path:
    f = tmp_path / "judges.toml"
    lines = []
    for name, cfg in judges.items():
        lines.append(f"[judges.{name}]\nkind = \"api\"\nbase_url = \"{url}\"\nstructured = \"off\"")
        lines += [f"{k} = {json.dumps(v)}" for k, v in cfg.items()]
    f.write_text("\n".join(lines) + "\n")
    return f


def test_resume_retry_failed_completes_a_job_whose_judge_failed_first(env, workers, tmp_path, pg_url):
    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, TEXTS[:6])
    windows = 6 * 3
    with ServerThread() as srv:
        # the judge is down for exactly as many requests as the job has windows: every window of the
        # first pass fails (all chunks entirely failed), every retried window is answered
        env["VALUEFLOW_JUDGES_FILE"] = str(_judges_file(tmp_path, srv.url, flaky={"model": f"down-first-{windows}",
                                                                                   "max_attempts": 1}))
        workers.start()
        job = _submit(env, inp, "--value", "care-harm", "--judge", "flaky", "--chunk-size", "6")
        assert _wait_job(pg_url, job) == "done"
        failed = _q(pg_url, "SELECT count(*) AS n FROM windows WHERE job_id=$1 AND state='failed'", job)[0]["n"]
        assert failed == windows
        st = run_cli(["jobs", "status", job], env, check=True).stdout
        assert f"{windows} failed of {windows}" in st and "transport" in st
        res = run_cli(["jobs", "resume", job, "--retry-failed"], env, check=True)
        assert "re-enqueued 3 task(s)" in res.stdout
        assert run_cli(["jobs", "wait", job, "--timeout", "300"], env, check=True).stdout.strip().endswith(f"{job} done")
        w = _q(pg_url, "SELECT state, count(*) AS n FROM windows WHERE job_id=$1 GROUP BY state", job)
        assert {r["state"]: r["n"] for r in w} == {"done": windows}
        per_window = _q(pg_url, "SELECT window_id, count(*) AS n FROM comparisons WHERE job_id=$1 GROUP BY window_id", job)
        assert len(per_window) == windows and all(r["n"] == 1 for r in per_window)
        scores = _q(pg_url, "SELECT intensity, windows_used, windows_failed FROM scores WHERE job_id=$1", job)
        assert len(scores) == 6 and all(r["intensity"] is not None and r["windows_used"] == 3
                                        and r["windows_failed"] == 0 for r in scores)
        assert _q(pg_url, "SELECT finalize_runs FROM jobs WHERE id=$1", job)[0]["finalize_runs"] == 2


def test_calibrated_scores_do_not_depend_on_chunk_size_and_match_in_process(env, workers, tmp_path, embedding_judge):
    from scheduler.inprocess import score_texts_sync
    from schemas.taxonomy import default_taxonomy

    workers.start(concurrency=2)
    outs = {}
    for size in (7, 1000):
        out = tmp_path / f"s{size}.jsonl"
        run_cli(["score", str(ROOT / "examples" / "texts.jsonl"), "--value", "benevolence", "--mode", "calibrated",
                 "--chunk-size", str(size), "--wait", "--no-local-worker", "-o", str(out)], env, check=True, timeout=600)
        outs[size] = {(r["id"], r["value"]): r for r in map(json.loads, out.read_text().splitlines())}
    assert outs[7].keys() == outs[1000].keys() and len(outs[7]) > 7
    for key, a in outs[7].items():
        b = outs[1000][key]
        assert a["intensity"] == pytest.approx(b["intensity"], abs=1e-9)
        assert a["stderr"] == pytest.approx(b["stderr"], abs=1e-9)
    texts = [json.loads(line) for line in (ROOT / "examples" / "texts.jsonl").read_text().splitlines()]
    rows = score_texts_sync([t["text"] for t in texts], [default_taxonomy().get("benevolence")], embedding_judge,
                            mode="calibrated")
    for (item_no, _v, _u, _se, inten, inten_se, *_rest) in rows:
        q = outs[7][(texts[item_no]["id"], "benevolence")]
        assert q["intensity"] == pytest.approx(inten, abs=1e-9) and q["stderr"] == pytest.approx(inten_se, abs=1e-9)
    # health of the job is exported beside the scores
    health = json.loads((tmp_path / "s7.jsonl.health.json").read_text())
    assert health[0]["value"] == "benevolence" and health[0]["beta"] > 0


def test_worker_metrics_port_serves_real_values_after_a_job(env, workers, tmp_path, pg_url):
    from workers.infra.embedded import free_port

    port = free_port()
    log = open(tmp_path / "metrics-worker.log", "wb")
    import subprocess
    import sys

    # task events (--events) as Flower receives them
    events: list[str] = []
    listen_for_events(env["VALUEFLOW_BROKER_URL"], lambda e: events.append(e["type"]))
    proc = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "worker", "-c", "2", "--metrics-port", str(port),
                             "--events"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    workers.procs.append(proc)
    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, TEXTS)
    job = _submit(env, inp, "--value", "benevolence", "--chunk-size", "6")
    assert _wait_job(pg_url, job) == "done"
    # a task records its metrics after its hand-off (the job may be done already), and its
    # task-succeeded event only once it has returned: wait for the events, then scrape
    wait_until(lambda: events.count("task-succeeded") >= 9, 60)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    def metric(name, **labels):
        total = 0.0
        for line in body.splitlines():
            m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
            if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
                total += float(m.group(2))
        return total

    assert metric("valueflow_windows_total", stage="judge", state="done") == len(TEXTS) * 3
    assert metric("valueflow_chunk_duration_seconds_count", stage="judge") == 4
    assert metric("valueflow_chunk_duration_seconds_count", stage="score") == 4
    assert metric("valueflow_finalize_total", kind="score") == 1
    assert metric("valueflow_judge_latency_seconds_count", stage="judge") >= 1
    # 4 judge + 4 score chunks + finalize, each received, started and succeeded
    assert events.count("task-succeeded") >= 9 and events.count("task-started") >= 9, sorted(set(events))
    # one JSON line per chunk and stage in the worker's log
    lines = [json.loads(x) for x in (tmp_path / "metrics-worker.log").read_text().splitlines() if x.startswith('{"event"')]
    chunks = [x for x in lines if x["event"] == "chunk"]
    assert sorted((x["stage"], x["chunk"]) for x in chunks if x["job"] == job) == \
        sorted([("judge", c) for c in range(4)] + [("score", c) for c in range(4)])
    assert all({"duration_s", "calls", "tokens_in", "tokens_out", "retries"} <= x.keys() for x in chunks)
    # the parent imported every job kind and froze its heap before forking; both pool processes
    # froze what they inherited (at least the parent's objects) before their first task
    from workers.jobs.registry import KIND_MODULES

    ready = [x for x in lines if x["event"] == "process_ready"]
    parent = [x for x in ready if x["role"] == "parent"]
    children = [x for x in ready if x["role"] == "child"]
    assert len(parent) == 1 and parent[0]["kinds"] == sorted(KIND_MODULES), ready
    assert len({x["pid"] for x in children}) == 2 and parent[0]["pid"] not in {x["pid"] for x in children}, ready
    assert all(x["frozen_objects"] >= parent[0]["frozen_objects"] > 10_000 for x in children), ready
    # queue depth per queue in `valueflow status`
    st = run_cli(["status"], env, check=True).stdout
    assert re.search(r"queues\s+default=\d+\s+gpu=\d+\s+api=\d+\s+refit=\d+", st)


def test_judge_copying_the_shown_order_is_flagged_and_min_anchor_tau_fails_the_job(env, workers, tmp_path, pg_url):
    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, TEXTS)
    with ServerThread() as srv:
        env["VALUEFLOW_JUDGES_FILE"] = str(_judges_file(tmp_path, srv.url, copycat={"model": "shown-order"}))
        workers.start()
        job = _submit(env, inp, "--value", "benevolence", "--judge", "copycat", "--mode", "calibrated")
        assert _wait_job(pg_url, job) == "done"
        st = run_cli(["jobs", "status", job], env, check=True)
        assert "WARNING" in st.stderr and "100% of windows answered in the order shown" in st.stderr
        health = json.loads(run_cli(["jobs", "status", job, "--json"], env, check=True).stdout)["health"][0]
        assert health["shown_order_share"] == 1.0 and health["anchor_tau_lo"] <= 0 <= health["anchor_tau_hi"]
        res = run_cli(["score", str(inp), "--value", "benevolence", "--judge", "copycat", "--mode", "calibrated",
                       "--min-anchor-tau", "0.3", "--wait", "--no-local-worker", "-o", str(tmp_path / "x.csv")], env)
        assert res.returncode != 0 and "below --min-anchor-tau" in res.stderr and "not trustworthy" in res.stderr
        assert not (tmp_path / "x.csv").exists()
        failed = _q(pg_url, "SELECT id, state FROM jobs WHERE id <> $1", job)[0]
        assert failed["state"] == "failed"
        res = run_cli(["jobs", "export", failed["id"], "-o", str(tmp_path / "y.csv")], env)
        assert res.returncode != 0 and "failed, nothing exported" in res.stderr


def test_dry_run_prints_the_cost_and_stores_nothing(env, tmp_path, pg_url):
    from tests.test_score_job import _store_is_empty

    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, TEXTS)
    env["VALUEFLOW_JUDGES_FILE"] = str(_judges_file(tmp_path, "http://127.0.0.1:9/v1", big={"model": "m", "max_tokens": 40}))
    res = run_cli(["score", str(inp), "--theory", "mft", "--judge", "big", "--dry-run"], env, check=True)
    assert f"{len(TEXTS)} texts × 6 values → {len(TEXTS) * 6 * 3} windows" in res.stdout
    assert f"{len(TEXTS) * 18} calls" in res.stdout
    tokens = int(re.search(r"≈ ([\d,]+) prompt tokens", res.stdout).group(1).replace(",", ""))
    assert 100 * len(TEXTS) * 18 < tokens < 2000 * len(TEXTS) * 18  # a few hundred tokens per window
    assert f"at most {len(TEXTS) * 18 * 40:,}" in res.stdout
    res = run_cli(["score", str(inp), "--theory", "mft", "--judge", "big", "--dry-run", "-o", str(tmp_path / "x.csv")],
                  env)
    assert res.returncode == 2 and "a dry run submits nothing to export" in res.stderr
    # -o without --wait is refused before the input is read (it does not exist here)
    res = run_cli(["score", str(tmp_path / "missing.jsonl"), "--value", "care-harm", "-o", str(tmp_path / "x.csv")], env)
    assert res.returncode == 2 and "needs --wait" in res.stderr and "no such file" not in res.stderr
    assert _store_is_empty(pg_url)


def test_db_upgrade_reports_what_it_applied(env):
    first = run_cli(["db", "upgrade"], env, check=True).stdout
    shipped = sorted(f.name for f in (ROOT / "schemas" / "migrations").glob("*.sql"))
    assert first.strip() == "applied: " + ", ".join(shipped) and len(shipped) >= 2
    assert "schema up to date" in run_cli(["db", "upgrade"], env, check=True).stdout


# -- architecture ------------------------------------------------------------------------------------------
def _imports() -> dict[str, set[str]]:
    """Module → modules of this project it imports (anywhere in the file, lazy imports included)."""
    mods = {}
    for pkg in ("scheduler", "workers", "schemas"):
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


def test_dependencies_go_one_way_and_there_are_no_import_cycles():
    graph = _imports()
    upward = sorted(f"{m} → {d}" for m, ds in graph.items() for d in ds
                    if m.split(".")[0] in ("workers", "schemas") and d.startswith("scheduler")
                    or m.startswith("schemas") and d.startswith("workers"))
    assert upward == []
    # Tarjan's strongly connected components: any of size > 1 is a cycle
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_layout_and_empty_bucket_flags_reach_the_plan(env, tmp_path, pg_url):
    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, TEXTS)
    up = _submit(env, inp, "--value", "care-harm")  # upstream mode: the published layout by default
    rows = _q(pg_url, "SELECT target_pos, anchor_intensity FROM windows WHERE job_id=$1", up)
    assert len(rows) == len(TEXTS) * 3
    assert all(r["target_pos"] == 0 and list(r["anchor_intensity"]) == sorted(r["anchor_intensity"]) for r in rows)
    sh = _submit(env, inp, "--value", "care-harm", "--layout", "shuffled", "--empty-bucket", "nearest", "--seed", "4")
    rows = _q(pg_url, "SELECT target_pos FROM windows WHERE job_id=$1", sh)
    assert len({r["target_pos"] for r in rows}) > 1
    spec = json.loads(_q(pg_url, "SELECT spec::text AS s FROM jobs WHERE id=$1", sh)[0]["s"])
    assert spec["layout"] == "shuffled" and spec["empty_bucket"] == "nearest" and spec["seed"] == 4
    cal = _submit(env, inp, "--value", "care-harm", "--mode", "calibrated")  # calibrated: shuffled by default
    assert len({r["target_pos"] for r in _q(pg_url, "SELECT target_pos FROM windows WHERE job_id=$1", cal)}) > 1


async def _flag(url: str, value: str, flags: dict[str, list[int]]) -> None:
    """Give items flags and write the version that holds them, as an audit's or an adjudication's
    finalize does (scoring jobs plan against the latest version's snapshot)."""
    from tests.conftest import open_test_store
    from workers.vidb import versions as V

    store = await open_test_store(url)
    try:
        async with store.pool.acquire() as conn, conn.transaction():
            await V.value_lock(conn, value)
            for flag, ids in flags.items():
                await conn.execute("UPDATE vidb_items SET flags = array_append(flags, $2) WHERE id = ANY($1::bigint[])",
                                   list(ids), flag)
            await V.write_version(conn, value, "audit", None, [], 0, "kept")
    finally:
        await store.close()


def test_vidb_filter_agreed_leaves_flagged_anchors_out_and_the_spec_records_versions(env, tmp_path, pg_url):
    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, TEXTS)
    first = _submit(env, inp, "--value", "care-harm")  # imports the seed VIDB
    spec = json.loads(_q(pg_url, "SELECT spec::text AS s FROM jobs WHERE id=$1", first)[0]["s"])
    # the seed import is every value's version 1, and the job records all of them
    assert len(spec["vidb_versions"]) == 32 and set(spec["vidb_versions"].values()) == {1}
    assert spec["vidb_filter"] == "all"
    used = {a for r in _q(pg_url, "SELECT anchor_ids FROM windows WHERE job_id=$1", first) for a in r["anchor_ids"]}
    # a judge panel flags some items, people dispute others: `agreed` scoring never shows them
    ids = [r["id"] for r in _q(pg_url, "SELECT id FROM vidb_items WHERE value='care-harm' ORDER BY id")]
    bad = set(ids[::3]) | set(ids[1::7])
    asyncio.run(_flag(pg_url, "care-harm", {"implausible": ids[::3], "disputed": ids[1::7]}))
    assert used & bad  # the unfiltered job did use some of them
    job = _submit(env, inp, "--value", "care-harm", "--vidb-filter", "agreed")
    anchors = {a for r in _q(pg_url, "SELECT anchor_ids FROM windows WHERE job_id=$1", job) for a in r["anchor_ids"]}
    assert anchors and not anchors & bad and anchors <= set(ids) - bad


def test_wait_counts_windows_or_else_chunk_stages():
    """`--wait`'s bar: windows when the job has any, else stages passed by its chunks (an audit)."""
    from scheduler.jobs import _progress

    job = {"n_chunks": 4}
    no_windows = {"done": 0, "failed": 0, "total": 0, "chunks": {(0, "done"): 1, (1, "pending"): 2, (1, "done"): 1}}
    # 2-stage kind: a chunk done with stage 0 counts 1, pending in stage 1 counts 1, done with stage 1 counts 2
    assert _progress(job, no_windows, 2) == (1 + 2 + 2, 8, "chunk-stages")
    windows = dict(no_windows, done=30, failed=2, total=60)
    assert _progress(job, windows, 2) == (32, 60, "windows")


def test_resources_run_their_load_hook_once_per_new_object_and_freeze_heap_freezes():
    import gc

    from workers.infra.perf import freeze_heap
    from workers.jobs.kind import Resources

    loads: list[int] = []
    res = Resources(on_load=lambda: loads.append(1))
    first = res.cached("judge:a", object)
    assert res.cached("judge:a", object) is first and len(loads) == 1  # cached: built and hooked once
    res.cached("judge:b", object)
    assert len(loads) == 2
    try:
        n = freeze_heap()
        # this process's imports (pytest, numpy, ...) are frozen; a frozen object another thread frees
        # meanwhile (a pool thread of an earlier test) leaves the permanent generation, hence ≈
        assert n > 10_000 and n - 100 <= gc.get_freeze_count() <= n
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0

    # a worker's model load freezes the heap once the task that loaded it has returned, not during it
    from workers.tasks import runtime

    async def task_loading_a_model():
        runtime.resources.cached("test:model", object)
        return gc.get_freeze_count()

    try:
        assert runtime.run(task_loading_a_model()) == 0
        assert gc.get_freeze_count() > 10_000
        during = runtime.run(task_loading_a_model())
        assert gc.get_freeze_count() <= during  # cached: nothing new to freeze (frees may only lower it)
    finally:
        gc.unfreeze()
        runtime.loop().close()
        runtime.reset()


def _watch_with_slow_counts(pg_url, job_id: str, watch):
    """``watch(store)`` run against a running job ``job_id`` whose window count takes 0.1 s (as if it
    had millions of windows); returns what it returned and when each count began."""

    async def go():
        store = await open_test_store(pg_url)
        try:
            await store.pool.execute("INSERT INTO jobs (id, kind, spec, state) VALUES ($1, 'score', '{}', 'running')",
                                     job_id)
            calls = []
            real = store.job_progress

            async def slow_progress(jid):
                calls.append(time.monotonic())
                await asyncio.sleep(0.1)
                return await real(jid)

            store.job_progress = slow_progress
            return await watch(store), calls
        finally:
            await store.close()

    return asyncio.run(go())


def test_waiting_on_a_job_polls_less_often_when_counting_its_windows_is_slow(pg_url):
    """`--wait` counts the job's windows (O(windows)); a watcher must not keep the database busy
    counting: it waits 1/POLL_COST_SHARE times a count's cost before the next one."""
    from scheduler import jobs as J

    async def watch(store):
        t0 = time.monotonic()
        state = await J.wait(store, "w1", show=False, poll_s=0.01, timeout_s=5.0)
        return state, time.monotonic() - t0

    (state, took), calls = _watch_with_slow_counts(pg_url, "w1", watch)
    assert state == "running"
    gaps = [b - a for a, b in zip(calls[1:], calls[2:])]  # between counts of the loop
    assert gaps[0] >= 0.1 / J.POLL_COST_SHARE * 0.9  # ≥ 2 s apart, not 0.01 s + 0.1 s
    assert len(calls) <= 5
    # the last wait is cut to the timeout, not a full interval (≥ 2 s) past it; the 1 s margin is for
    # a loaded machine (the last count's 0.1 s)
    assert 5.0 <= took < 5.0 + 1.0


def test_a_watcher_counting_slowly_still_sees_the_job_end_at_once(pg_url, monkeypatch):
    """Between two slow counts of a job's windows the watcher reads the job's row (cheap) every
    POLL_MAX_S: a job that finishes is seen then (and counted once more), not a count interval later."""
    from scheduler import jobs as J

    monkeypatch.setattr(J, "POLL_MAX_S", 0.3)

    async def watch(store):
        async def finish_soon():
            await asyncio.sleep(0.8)
            await store.pool.execute("UPDATE jobs SET state = 'done' WHERE id = 'w2'")
            return time.monotonic()

        finisher = asyncio.create_task(finish_soon())
        state = await J.wait(store, "w2", show=False, poll_s=0.01, timeout_s=30.0)
        return state, time.monotonic() - await finisher

    (state, seen_after), calls = _watch_with_slow_counts(pg_url, "w2", watch)
    assert state == "done"
    assert seen_after < 0.3 + 0.1 + 0.5  # one row-read interval, the final count, a loaded machine's margin
    assert len(calls) == 3  # before the loop, its first count (2 s to the next), the final count


def test_errors_that_would_repeat_fail_the_chunk_or_the_job_and_transient_ones_are_retried(pg_url, monkeypatch):
    """A stage or finalize error that no retry can cure (a constraint violation, a bug) fails the
    chunk or the job at once, with the error, instead of being retried for minutes and leaving the
    job hanging; a transient fault (PostgreSQL shutting down) goes back to the task, which retries."""
    from asyncpg import exceptions as pgx

    from tests.test_vidb_build import build_inline, corpus, references
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources
    from workers.jobs.kinds import vidb_build

    async def violated(*args, **kw):
        raise pgx.CheckViolationError('new row for relation "vidb_items" violates check constraint')

    async def bad_argument(*args, **kw):  # asyncpg's client-side DataError is an InterfaceError, yet no fault of the link
        raise pgx._base.DataError("invalid input for query argument $2: 'x' (a float is required)")

    async def shutting_down(*args, **kw):
        raise pgx.AdminShutdownError("terminating connection due to administrator command")

    async def buggy_judge(ctx):
        raise ZeroDivisionError("division by zero")

    async def go():
        store = await open_test_store(pg_url)
        try:
            with monkeypatch.context() as m:
                m.setattr(vidb_build, "refit_and_write", violated)
                await build_inline(store, corpus(30)[0], references(), job_id="b-1", per_text=4)
                m.setattr(vidb_build, "refit_and_write", bad_argument)
                await build_inline(store, corpus(30, offset=300)[0], references(), job_id="b-4", per_text=4)
                m.setattr(vidb_build, "refit_and_write", shutting_down)
                with pytest.raises(pgx.AdminShutdownError):
                    await build_inline(store, corpus(30, offset=100)[0], references(), job_id="b-2", per_text=4)
            b1, b2 = await store.job("b-1"), await store.job("b-2")
            assert (b1["state"], b1["error"]) == ("failed", "finalize: CheckViolationError: new row for relation "
                                                            '"vidb_items" violates check constraint')
            b4 = await store.job("b-4")
            assert (b4["state"], b4["error"]) == ("failed", "finalize: DataError: invalid input for query argument $2: "
                                                            "'x' (a float is required)")
            assert b2["state"] == "finalizing"  # nothing written: the retried task runs it
            assert await store.pool.fetchval("SELECT count(*) FROM vidb_versions") == 0
            assert await lifecycle.run_finalize(store, Resources(), "b-2")  # the retry, once PostgreSQL is back
            assert (await store.job("b-2"))["state"] == "done"

            with monkeypatch.context() as m:
                m.setattr(vidb_build, "judge_windows", buggy_judge)
                await build_inline(store, corpus(30, offset=200)[0], [], job_id="b-3", per_text=4, scale="minmax")
            b3 = await store.job("b-3")
            errors = await store.pool.fetch("SELECT DISTINCT state, error FROM chunks WHERE job_id = 'b-3'")
            assert b3["state"] == "failed"
            assert [tuple(e) for e in errors] == [("failed", "stage judge: ZeroDivisionError: division by zero")]
            await lifecycle.run_inline(store, Resources(), await lifecycle.resume(store, "b-3", retry_failed=True))
            assert (await store.job("b-3"))["state"] == "done"  # the fixed judge, on resume --retry-failed
        finally:
            await store.close()

    asyncio.run(go())


def test_a_worker_whose_stage_task_fails_lets_go_of_the_chunk(pg_url, monkeypatch):
    """A stage's own error fails the chunk; an error after the work (here in the hand-off's
    bookkeeping) fails the task. A sweep never counts a chunk that a live process holds as lost, so
    the worker lets go of it: after a bug a sweep sends it again; after a transient fault the task's
    retry takes it (or a sweep, should Celery drop the retry); once its deliveries are spent, an
    error no retry fixes fails the chunk, and the sweep completes the job. A chunk a live worker is
    still running is left alone."""
    from asyncpg import exceptions as pgx

    from schemas.messages import StageTask
    from tests.test_vidb_build import corpus, submit_build
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources

    worker = "host:4242:1.0"

    async def go():
        store = await open_test_store(pg_url)
        try:
            sends = await submit_build(store, corpus(30)[0], [], "b-1", per_text=4, scale="minmax", chunk_size=10)
            assert len(sends) >= 4
            await store.pool.execute("INSERT INTO worker_heartbeats VALUES ($1, now(), now() + interval '1 hour')",
                                     worker)  # the worker is alive throughout
            held, bug, fault, spent = (StageTask(**s.kwargs) for s in sends[:4])
            real_advance = store.advance_chunk
            fail_again = {bug.chunk_no, fault.chunk_no, spent.chunk_no}

            async def advance(job_id, chunk_no, *args):
                if chunk_no in fail_again:
                    if chunk_no == fault.chunk_no:
                        raise pgx.AdminShutdownError("terminating connection due to administrator command")
                    raise RuntimeError("a bug in the bookkeeping")
                return await real_advance(job_id, chunk_no, *args)

            monkeypatch.setattr(store, "advance_chunk", advance)
            assert await store.begin_stage("b-1", held.chunk_no, 0, worker)  # started, still running
            with pytest.raises(RuntimeError, match="bookkeeping"):
                await lifecycle.run_stage(store, Resources(), bug, 5, worker)
            with pytest.raises(pgx.AdminShutdownError):
                await lifecycle.run_stage(store, Resources(), fault, 5, worker)
            with pytest.raises(RuntimeError, match="bookkeeping"):  # its one delivery spent (limit 0): gives up
                await lifecycle.run_stage(store, Resources(), spent, 0, worker)

            async def chunks():
                return {r["chunk_no"]: tuple(r)[1:] for r in await store.pool.fetch(
                    "SELECT chunk_no, state, deliveries, last_worker, error FROM chunks WHERE job_id = 'b-1'")}

            rows = await chunks()
            assert rows[bug.chunk_no] == ("pending", 1, None, None)
            assert rows[fault.chunk_no] == ("pending", 1, None, None)
            assert rows[spent.chunk_no] == ("failed", 1, worker, "stage judge: RuntimeError: a bug in the bookkeeping")
            assert rows[held.chunk_no] == ("pending", 1, worker, None)
            fail_again.discard(fault.chunk_no)  # PostgreSQL is back: the retry takes the chunk and finishes it
            assert (await lifecycle.run_stage(store, Resources(), fault, 5, worker)).state == "ran"
            assert (await chunks())[fault.chunk_no][:3] == ("done", 2, worker)
            await store.pool.execute("UPDATE chunks SET updated_at = now() - interval '10 s'")
            lost = {s.kwargs["chunk_no"] for s in await lifecycle.resume(store, "b-1", lost_after_s=4)}
            # the chunks nobody started (their sends were dropped here) and the one let go after a bug
            assert lost == {s.kwargs["chunk_no"] for s in sends} - {held.chunk_no, fault.chunk_no, spent.chunk_no}
            # once no chunk is pending, the sweep completes the job, failed for its failed chunk
            # (`jobs resume --retry-failed` runs that chunk again)
            await store.pool.execute("UPDATE chunks SET state = 'done' WHERE job_id = 'b-1' AND state = 'pending'")
            assert await lifecycle.resume(store, "b-1", lost_after_s=4) == []
            job = await store.job("b-1")
            assert (job["state"], job["error"]) == (
                "failed", "1 chunk(s) failed; first: stage judge: RuntimeError: a bug in the bookkeeping")
        finally:
            await store.close()

    asyncio.run(go())


def test_a_stage_copy_that_fails_leaves_the_chunk_to_a_copy_another_worker_began_since(pg_url, monkeypatch):
    """Two deliveries of one stage run at once on two workers (a sweep's re-send racing the
    original): the first fails for good while the second, begun after it, is still working. The
    chunk is not failed under the second copy, which finishes it; the job completes with every
    comparison stored once."""
    from schemas.messages import StageTask
    from tests.test_vidb_build import corpus, submit_build
    from workers.jobs import lifecycle
    from workers.jobs.kind import Resources
    from workers.jobs.kinds import vidb_build

    real_judge = vidb_build.judge_windows
    first_in, second_in, first_out = asyncio.Event(), asyncio.Event(), asyncio.Event()
    calls = []

    async def judge(ctx):
        calls.append(ctx.chunk_no)
        if len(calls) == 1:  # the first copy: fails once the second one has begun
            first_in.set()
            await second_in.wait()
            raise ZeroDivisionError("division by zero")
        second_in.set()  # the second copy: works on after the first one failed
        await first_out.wait()
        await real_judge(ctx)

    monkeypatch.setattr(vidb_build, "judge_windows", judge)

    async def go():
        store = await open_test_store(pg_url)
        try:
            sends = await submit_build(store, corpus(30)[0], [], "b-1", per_text=4, scale="minmax", chunk_size=1000)
            assert len(sends) == 1
            msg = StageTask(**sends[0].kwargs)
            first = asyncio.create_task(lifecycle.run_stage(store, Resources(), msg, 5, "host-a:1:1.0"))
            await asyncio.wait_for(first_in.wait(), 60)
            second = asyncio.create_task(lifecycle.run_stage(store, Resources(), msg, 5, "host-b:2:1.0"))
            out_first = await asyncio.wait_for(first, 60)
            row = await store.pool.fetchrow("SELECT state, deliveries, last_worker, error FROM chunks WHERE job_id = 'b-1'")
            assert out_first.state == "failed"
            assert tuple(row) == ("pending", 2, "host-b:2:1.0", None)
            first_out.set()
            out_second = await asyncio.wait_for(second, 60)
            assert out_second.state == "ran"
            await lifecycle.run_inline(store, Resources(), out_second.sends)  # the finalize
            job = await store.job("b-1")
            assert (job["state"], job["error"]) == ("done", None)
            n_windows = await store.pool.fetchval("SELECT count(*) FROM windows WHERE job_id = 'b-1'")
            n_comparisons = await store.pool.fetchval("SELECT count(*) FROM comparisons WHERE job_id = 'b-1'")
            assert n_windows > 0 and n_comparisons == n_windows
            assert calls == [0, 0]
        finally:
            await store.close()

    asyncio.run(go())


def test_a_local_worker_stops_when_the_command_that_started_it_is_killed(env):
    """--local-worker: the command's worker must not outlive it, even after SIGKILL (an orphaned
    worker would go on taking tasks, with the dead command's settings)."""
    import os
    import subprocess
    import sys

    def state(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return "gone"

    script = ("import time; from scheduler.cli.common import spawn_worker; "
              "print(spawn_worker().pid, flush=True); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 300
        while not open(f"/proc/{worker}/task/{worker}/children").read().split():  # its pool is up: it started
            assert time.monotonic() < deadline and state(worker) not in ("gone", "Z"), "the worker did not start"
            time.sleep(0.2)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 60
        while state(worker) not in ("gone", "Z"):
            assert time.monotonic() < deadline, "the worker outlived the command that started it"
            time.sleep(0.2)
    finally:
        parent.kill()
        if state(worker) not in ("gone", "Z"):
            os.killpg(worker, 9)


@pytest.mark.parametrize("exc, transient", [
    ("pgx.AdminShutdownError('terminating connection due to administrator command')", True),
    ("pgx.CannotConnectNowError('the database system is starting up')", True),
    ("pgx.ConnectionDoesNotExistError('connection was closed in the middle of operation')", True),
    ("pgx.SerializationError('could not serialize access')", True),
    ("pgx.DeadlockDetectedError('deadlock detected')", True),
    ("pgx.ReadOnlySQLTransactionError('cannot execute UPDATE in a read-only transaction')", True),
    ("pgx.InvalidCachedStatementError('cached statement plan is invalid')", True),
    ("pgx.TooManyConnectionsError('sorry, too many clients already')", True),
    ("FileNotFoundError(2, 'No such file or directory')", True),  # asyncpg's unix socket, PostgreSQL restarting
    ("ConnectionRefusedError(111, 'Connection refused')", True),
    ("TimeoutError()", True),
    ("pgx.CheckViolationError('violates check constraint')", False),
    ("pgx.UniqueViolationError('duplicate key value')", False),
    ("pgx._base.DataError('invalid input for query argument $1')", False),
    ("FileNotFoundError(2, 'No such file or directory', '/models/typo')", False),  # a file that stays missing
    ("PermissionError(13, 'Permission denied', '/state/x')", False),
    ("ValueError('bad')", False),
    ("ZeroDivisionError('division by zero')", False),
    ("pgx.InterfaceError('cannot perform operation: connection is closed')", True),
    ("pgx.InterfaceError('pool is closing')", True),
    ("pgx.InterfaceError('cannot perform operation: another operation is in progress')", False),  # a bug
    ("pgx.InterfaceError('the server expects 2 arguments for this query, 1 was passed')", False),
])
def test_which_errors_are_retried(exc, transient):
    from asyncpg import exceptions as pgx  # noqa: F401 - used by eval

    from workers.infra.transient import is_transient

    assert is_transient(eval(exc)) is transient


@pytest.mark.parametrize("exc, raised", [
    ("pgx.InterfaceError('cannot perform operation: connection is closed')", "InterfaceError"),  # Celery retries
    ("pgx.InterfaceError('cannot perform operation: another operation is in progress')", "PermanentError"),
    ("FileNotFoundError(2, 'No such file or directory', '/models/typo')", "PermanentError"),
    ("FileNotFoundError(2, 'No such file or directory')", "FileNotFoundError"),  # Celery retries
    ("ValueError('bad')", "ValueError"),  # not a retried class: the task fails as it is
])
def test_a_task_is_retried_only_for_what_is_transient(exc, raised):
    """Celery retries a task by the error's class (``TRANSIENT``); a task body wrapped in
    :func:`permanent_unless_transient` turns an error of such a class that a retry would not fix
    into a :class:`PermanentError` (the original chained), which Celery does not retry."""
    from asyncpg import exceptions as pgx  # noqa: F401 - used by eval

    from workers.infra.transient import TRANSIENT, permanent_unless_transient
    from workers.tasks.stage import RETRY

    error = eval(exc)

    @permanent_unless_transient
    def task(**body):
        raise error

    with pytest.raises(Exception) as info:
        task(job_id="j")
    assert type(info.value).__name__ == raised
    assert isinstance(info.value, TRANSIENT) is (raised not in ("PermanentError", "ValueError"))
    assert RETRY["autoretry_for"] == TRANSIENT
    permanent = raised == "PermanentError"
    assert (info.value.__cause__ if permanent else info.value) is error  # the original, chained or as is
    assert str(info.value) == (f"{type(error).__name__}: {error}" if permanent else str(error))


def test_a_transient_fault_is_retried_for_as_long_as_it_lasts():
    """A task whose database is down for longer than a fixed number of backed-off tries (here 12:
    minutes at 60 s apart) still runs once it is back: it would otherwise give up and leave its
    chunk held by a live worker. Celery's retry run eagerly, with the stage and finalize tasks'
    own policy; under a cap of 8 the same task fails."""
    from celery import Celery

    from workers.tasks.app import QUEUES, make_app, task_name
    from workers.tasks.stage import RETRY

    app = Celery("retry-policy", broker="memory://")
    app.conf.task_always_eager = True
    calls = []

    def down_for(n: int) -> str:
        calls.append(n)
        if len(calls) <= n:
            raise ConnectionRefusedError(111, "Connection refused")
        return "ran"

    unlimited = app.task(name="unlimited", **RETRY)(down_for)
    capped = app.task(name="capped", **{**RETRY, "max_retries": 8})(down_for)
    result = unlimited.apply(args=(12,))
    assert (result.state, result.result, len(calls)) == ("SUCCESS", "ran", 13)
    calls.clear()
    result = capped.apply(args=(12,))
    assert (result.state, type(result.result), len(calls)) == ("FAILURE", ConnectionRefusedError, 9)
    tasks = make_app("redis://127.0.0.1:1/0").tasks
    for q in QUEUES:
        for what in ("stage", "finalize"):
            assert tasks[task_name(q, what)].max_retries is None
            assert tasks[task_name(q, what)].autoretry_for == RETRY["autoretry_for"]


def test_a_model_that_is_not_there_is_a_value_error_not_a_retry(tmp_path):
    """transformers says OSError for a missing model; a retry would not find it, so it is a ValueError."""
    from workers.hives.encoder import Encoder
    from workers.infra.transient import is_transient
    from workers.judges.local_llm import load_causal_lm

    for load in (lambda: load_causal_lm(str(tmp_path / "no-model"), tmp_path, "cpu"),
                 lambda: Encoder(tmp_path / "no-encoder")):
        with pytest.raises(ValueError, match="no-(model|encoder)'?: cannot load it") as info:
            load()
        assert not is_transient(info.value)


def test_a_worker_whose_starting_command_is_already_dead_does_not_start(env, tmp_path):
    """VALUEFLOW_PARENT_PID names a command that died (a zombie not yet reaped): the worker exits
    at once instead of running on as an orphan."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while open(f"/proc/{dead.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":  # exited, not reaped
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        res = subprocess.run([sys.executable, "-m", "scheduler.cli", "worker", "-Q", "default"], cwd=ROOT,
                             env=dict(env, VALUEFLOW_PARENT_PID=str(dead.pid)), capture_output=True, text=True,
                             timeout=60)
    finally:
        dead.wait()
    assert res.returncode != 0 and f"the command that started it (pid {dead.pid}) is gone" in res.stderr


def test_a_workers_hand_off_is_sent_through_a_broker_restart(tmp_path):
    """The next stage is committed in PostgreSQL before its message is sent, and a retried task finds
    the chunk moved on and sends nothing; so the worker's send rides out a broker restart instead of
    losing the hand-off (Celery's default publish retry gives up within a second)."""
    import base64
    import subprocess
    import threading

    import redis as redis_lib
    from kombu.exceptions import OperationalError

    from workers.infra.embedded import free_port
    from workers.jobs.lifecycle import Send
    from workers.tasks.app import make_app
    from workers.tasks.stage import hand_off, send

    port = free_port()
    client = redis_lib.Redis(host="127.0.0.1", port=port)

    def start_redis() -> None:
        subprocess.run(["redis-server", "--daemonize", "yes", "--port", str(port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", str(tmp_path)], check=True, capture_output=True)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis_lib.ConnectionError:
            return False

    start_redis()
    try:
        for _ in range(100):
            if up():
                break
            time.sleep(0.1)
        url = f"redis://127.0.0.1:{port}/0"
        app = make_app(url)
        task = Send("stage", "api", {"job_id": "job-h", "chunk_no": 3, "stage": 1})
        assert send(app, [task]) == 1  # the worker's broker connection is up and used
        client.shutdown(nosave=True)
        assert not up()
        with pytest.raises(OperationalError):
            send(app, [task])  # Celery's default policy: lost while the broker is away

        def hand_off_across_a_restart(sender) -> None:
            restart = threading.Timer(8.0, start_redis)
            restart.start()
            t0 = time.monotonic()
            assert hand_off(sender, [task], "job-h") == 1
            restart.join()
            assert time.monotonic() - t0 >= 7.5  # it waited for the restart
            # the restarted broker kept nothing (no persistence): the one queued message is the hand-off
            queued = client.lrange("api", 0, -1)
            assert len(queued) == 1
            message = json.loads(queued[0])
            assert message["headers"]["task"] == "valueflow.api.stage"
            assert json.loads(base64.b64decode(message["body"]))[1] == task.kwargs
            client.shutdown(nosave=True)
            assert not up()

        # down for 8 s, longer than one connection attempt's timeout (4 s): the hand-off reconnects
        # again and again, from the app whose send just failed and from a new process's app that
        # never connected
        hand_off_across_a_restart(app)
        hand_off_across_a_restart(make_app(url))
    finally:
        try:
            client.shutdown(nosave=True)
        except redis_lib.ConnectionError:
            pass


def test_waiting_on_a_stalled_job_says_why_and_resume_stalled_finishes_it(env, workers, tmp_path, redis_url, pg_url):
    """A job whose tasks are gone (Redis restarted without persistence) never moves again; a watcher
    says so after VALUEFLOW_STALL_WARN_S, once, naming the command that sends them again; with
    ``--resume-stalled`` it sends them itself and the job finishes, every chunk's stage run once."""
    import redis as redis_lib

    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, TEXTS[:4])
    job = _submit(env, inp, "--value", "care-harm", "--chunk-size", "4")
    redis_lib.Redis.from_url(redis_url).flushdb()  # the queued tasks are lost, as with a restarted Redis
    hint = "no progress for"
    quiet = run_cli(["jobs", "wait", job, "--timeout", "2"], env)  # the default: 10 minutes
    assert quiet.returncode == 1 and quiet.stdout.strip().endswith(f"{job} running")
    assert hint not in quiet.stderr
    stalled = run_cli(["jobs", "wait", job, "--timeout", "5"], {**env, "VALUEFLOW_STALL_WARN_S": "1"})
    assert stalled.returncode == 1 and stalled.stdout.strip().endswith(f"{job} running")
    lines = [ln for ln in stalled.stderr.splitlines() if hint in ln]
    assert len(lines) == 1, stalled.stderr  # once per stall, not once per poll
    assert lines[0].startswith(f"job {job}: no progress for ") and f"`valueflow jobs resume {job}`" in lines[0]
    bad = run_cli(["jobs", "wait", job, "--timeout", "1"], {**env, "VALUEFLOW_STALL_WARN_S": "0"})
    assert bad.returncode != 0 and "VALUEFLOW_STALL_WARN_S: must be >= 1, got 0" in bad.stderr
    # unattended: `jobs wait --resume-stalled` sends the lost tasks itself once the job stalls, and a
    # worker finishes the job
    n_chunks = _q(pg_url, "SELECT n_chunks FROM jobs WHERE id=$1", job)[0]["n_chunks"]
    workers.start()
    healed = run_cli(["jobs", "wait", job, "--resume-stalled", "--timeout", "300"], {**env, "VALUEFLOW_STALL_WARN_S": "2"})
    assert healed.returncode == 0 and healed.stdout.strip().endswith(f"{job} done"), healed.stderr
    resumed = [ln for ln in healed.stderr.splitlines() if "re-enqueued" in ln]
    assert n_chunks > 1 and resumed[0] == f"re-enqueued {n_chunks} task(s) of {job}"
    assert _q(pg_url, "SELECT count(*) AS n FROM scores WHERE job_id=$1", job)[0]["n"] == 4
    # a later stall (the worker loading its model) re-sends only chunks no worker had started, so no
    # chunk's stage ran twice
    ran = [json.loads(ln) for ln in workers.logs().splitlines() if ln.startswith('{"event": "chunk"')]
    assert sorted((r["chunk"], r["stage"]) for r in ran if r["job"] == job) == sorted(
        (c, st) for c in range(n_chunks) for st in ("judge", "score"))
    per_window = _q(pg_url, "SELECT count(*) AS n FROM comparisons WHERE job_id=$1 GROUP BY window_id", job)
    assert len(per_window) == 12 and all(r["n"] == 1 for r in per_window)


def test_resume_stalled_sends_only_lost_chunks_and_a_failed_resume_is_tried_again(env, tmp_path, pg_url):
    """Unattended recovery sends only what is lost, and marks it as sent. A waiting chunk (not
    started in its stage, or sent again) counts once it is untouched for ``lost_after_s`` and its
    queue is empty (in a busy queue its task may be waiting behind others); a started chunk may
    still be running on a slow worker, so it counts only when the heartbeat lease of the process
    that started it ran out while the database was up, busy queue or not, or when that process never
    beat and the chunk is untouched for ``lost_after_s`` (``jobs resume`` by hand sends every
    pending chunk). A finalize step counts when none runs and the job is untouched for
    ``lost_after_s``. Whatever is sent counts as lost again only ``lost_after_s`` later. A resume
    that fails (the broker is down) is reported and tried again after another stall, not a
    traceback."""
    from workers.jobs import lifecycle

    async def go():
        store = await open_test_store(pg_url)
        try:
            sends = await _scoring_job(store, TEXTS[:4], chunk_size=4)
            chunks = [s.kwargs["chunk_no"] for s in sends]
            queue = sends[0].queue
            assert len(chunks) > 2 and {s.queue for s in sends} == {queue}
            assert await store.begin_stage("job-1", 1, 0, "w:1") == (1, "running")  # chunk 1 is being judged
            await store.heartbeat(["w:1"], 60)  # ... by a process alive for the next minute

            async def lost(oldest=None):
                return [s.kwargs["chunk_no"] for s in await lifecycle.resume(store, "job-1", lost_after_s=4,
                                                                             oldest_sent=oldest)]

            busy = {queue: float("-inf")}  # it holds messages that do not say when they were sent

            async def age(where="true"):
                await store.pool.execute(f"UPDATE chunks SET updated_at = now() - interval '10 s' WHERE {where}")

            others = [c for c in chunks if c != 1]
            assert [s.kwargs["chunk_no"] for s in await lifecycle.resume(store, "job-1")] == chunks
            assert await lost() == []  # every chunk was sent (or started) just now
            await age()
            assert await lost(busy) == []  # their queue holds messages: they may be waiting there
            touched = await store.pool.fetchval("SELECT extract(epoch FROM max(updated_at))::float8 FROM chunks")
            # its oldest message was sent 3 s after the chunks were last touched (sent): they may be
            # waiting behind it (a touch precedes its send by up to lost_after_s)
            assert await lost({queue: touched + 3}) == []
            # its oldest message was sent 5 s after them, more than lost_after_s: FIFO, so theirs left
            # the queue (a restarted Redis lost them while new work kept the queue busy): sent again
            assert await lost({queue: touched + 5}) == others
            await age()
            assert await lost({"refit": float("-inf")}) == others  # unsent for 10 s, their queue empty
            assert await lost() == []  # ... and marked: not lost again until 4 s pass without a start
            await age()
            assert await lost(busy) == []  # chunk 1 started 10 s ago by a process alive now: running
            await store.pool.execute("UPDATE worker_heartbeats SET expires_at = now() - interval '1 s'")
            assert await lost(busy) == [1]  # its process's lease ran out: it died with the chunk
            assert await lost(busy) == []  # sent again: it now waits like the others
            # a lease that ran out while the database was down (here: one longer than the server's
            # uptime) is no sign of death: live workers get a lease's time to beat again
            assert await store.begin_stage("job-1", 2, 0, "w:2") == (1, "running")
            await store.pool.execute("INSERT INTO worker_heartbeats (process, seen_at, expires_at)"
                                     " VALUES ('w:2', now() - interval '100 years', now() - interval '1 s')")
            assert await lost(busy) == []
            # a process that never beat (a worker older than heartbeats): lost once untouched for 4 s
            assert await store.begin_stage("job-1", 0, 0, "w:3") == (1, "running")
            assert await lost(busy) == []
            await age("chunk_no = 0")
            assert await lost(busy) == [0]
            await age()
            assert await lost() == [c for c in chunks if c != 2]  # waiting 10 s, queue empty; w:2 may live
            # `jobs resume` by hand sends every pending chunk, and lets go of a dead process's chunk:
            # the sweep then finds it waiting in its queue, not held by the dead process
            assert await store.begin_stage("job-1", 3, 0, "w:4") == (1, "running")
            await store.pool.execute("INSERT INTO worker_heartbeats (process, seen_at, expires_at)"
                                     " VALUES ('w:4', now() - interval '10 s', now() - interval '1 s')")
            assert [s.kwargs["chunk_no"] for s in await lifecycle.resume(store, "job-1")] == chunks
            assert await lost(busy) == []
            # a finalize step: lost once the job is untouched for lost_after_s and none runs
            await store.pool.execute("UPDATE jobs SET state = 'finalizing', updated_at = now()")
            kinds = lambda sends: [(s.what, s.queue) for s in sends]  # noqa: E731
            fin = kinds(await lifecycle.resume(store, "job-1"))
            assert fin == [("finalize", fin[0][1])]  # by hand: sent whatever runs
            assert kinds(await lifecycle.resume(store, "job-1", lost_after_s=4)) == []
            await store.pool.execute("UPDATE jobs SET updated_at = now() - interval '10 s'")
            job_touched = await store.pool.fetchval("SELECT extract(epoch FROM updated_at)::float8 FROM jobs")
            fq = fin[0][1]
            # the finalize queue's oldest message was sent 3 s after the job was touched: its task may wait there
            assert kinds(await lifecycle.resume(store, "job-1", lost_after_s=4, oldest_sent={fq: job_touched + 3})) == []
            async with store.finalize_claim("job-1") as running:  # a worker runs the finalize step
                assert running is not None
                assert kinds(await lifecycle.resume(store, "job-1", lost_after_s=4)) == []
            # 5 s after: its task left the queue, none runs it
            assert kinds(await lifecycle.resume(store, "job-1", lost_after_s=4, oldest_sent={fq: job_touched + 5})) == fin
            assert kinds(await lifecycle.resume(store, "job-1", lost_after_s=4)) == []  # marked as sent
            await store.pool.execute("UPDATE jobs SET updated_at = now() - interval '10 s'")
            assert kinds(await lifecycle.resume(store, "job-1", lost_after_s=4)) == fin  # its queue empty
        finally:
            await store.close()

    asyncio.run(go())

    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, TEXTS[:2])
    job = _submit(env, inp, "--value", "care-harm")
    from workers.infra.embedded import free_port

    down = {**env, "VALUEFLOW_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0", "VALUEFLOW_STALL_WARN_S": "1"}
    res = run_cli(["jobs", "wait", job, "--resume-stalled", "--timeout", "12"], down, timeout=120)
    assert res.returncode == 1 and res.stdout.strip().endswith(f"{job} running")
    failed = [ln for ln in res.stderr.splitlines() if ln.startswith("resume failed: ")]
    assert len(failed) >= 2 and "Traceback" not in res.stderr  # reported, and tried again


def test_a_sweep_sends_lost_tasks_once_and_one_worker_sweeps_at_a_time(pg_url, redis_url):
    """The workers' sweep (:func:`workers.tasks.sweeper.sweep`) on the real broker: chunks planned but
    never sent are not lost until ``lost_after_s`` passes; then one sweep sends each chunk's stage
    task once; later sweeps send nothing while they wait in their queue, and send them again once
    the queue lost them. A send that fails releases its claims, so the next sweep tries again. While
    another worker holds the sweep's lock, or one swept less than an interval ago, a sweep does
    nothing."""
    import base64

    import redis as redis_lib
    from kombu.exceptions import OperationalError

    from workers.jobs import lifecycle
    from workers.tasks import sweeper
    from workers.tasks.app import app_for, queue_depths
    from workers.tasks.stage import send

    async def go():
        store = await open_test_store(pg_url)
        try:
            sends = await _scoring_job(store, TEXTS[:4], chunk_size=4)  # planned; the sends are dropped
            queue, app = sends[0].queue, app_for(redis_url)
            assert len(sends) > 2
            assert await sweeper.sweep(store, app, redis_url, 4) == {}  # planned just now: not lost yet
            await store.pool.execute("UPDATE chunks SET updated_at = now() - interval '10 s'")
            async with store.pool.acquire() as other:  # another worker is sweeping
                assert await other.fetchval("SELECT pg_try_advisory_lock($1)", sweeper.SWEEP_LOCK)
                assert await sweeper.sweep(store, app, redis_url, 4) is None
                await other.execute("SELECT pg_advisory_unlock($1)", sweeper.SWEEP_LOCK)
            from workers.infra.embedded import free_port

            down = app_for(f"redis://127.0.0.1:{free_port()}/0")  # a broker that is not there
            with pytest.raises(OperationalError):
                await sweeper.resend_lost(store, down, redis_url, ["job-1"], 4)
            # the failed send's claims were released: the next sweep sends at once
            assert await sweeper.sweep(store, app, redis_url, 4) == {"job-1": len(sends)}
            assert queue_depths(redis_url)[queue] == len(sends)
            assert await sweeper.sweep(store, app, redis_url, 4, every_s=60) is None  # one swept just now
            assert await sweeper.sweep(store, app, redis_url, 4) == {}  # just sent
            r = redis_lib.Redis.from_url(redis_url)

            async def ten_seconds_pass():  # for the chunks' last touch and their messages' send times
                await store.pool.execute("UPDATE chunks SET updated_at = now() - interval '10 s'")
                for i in range(r.llen(queue)):
                    m = json.loads(r.lindex(queue, i))
                    m["headers"]["vf_sent"] -= 10
                    r.lset(queue, i, json.dumps(m))

            await ten_seconds_pass()
            assert await sweeper.sweep(store, app, redis_url, 4) == {}  # still waiting in their queue
            bodies = [json.loads(base64.b64decode(json.loads(m)["body"]))[1] for m in r.lrange(queue, 0, -1)]
            assert sorted(b["chunk_no"] for b in bodies) == sorted(s.kwargs["chunk_no"] for s in sends)
            assert {b["stage"] for b in bodies} == {0}
            r.flushdb()  # lost again (a restarted Redis): the next sweep sends them again
            assert await sweeper.sweep(store, app, redis_url, 4) == {"job-1": len(sends)}
            assert queue_depths(redis_url)[queue] == len(sends)
            await ten_seconds_pass()
            other = lifecycle.Send("stage", queue, {"job_id": "job-2", "chunk_no": 0, "stage": 0})
            send(app, [other])  # a newer message on top of theirs: theirs are still the oldest, next out
            assert await sweeper.sweep(store, app, redis_url, 4) == {}
            # lost while new work keeps their queue busy (a Redis restarted, then another job's task
            # came): its oldest message was sent 10 s after they were, so theirs left it: sent again
            r.delete(queue)
            send(app, [other])
            assert await sweeper.sweep(store, app, redis_url, 4) == {"job-1": len(sends)}
            assert queue_depths(redis_url)[queue] == len(sends) + 1
            await ten_seconds_pass()  # the other job's task is now the oldest, sent with theirs
            assert await sweeper.sweep(store, app, redis_url, 4) == {}
        finally:
            await store.close()

    asyncio.run(go())


def test_workers_send_lost_tasks_again_when_nobody_watches(env, workers, tmp_path, redis_url, pg_url):
    """A job submitted without --wait whose queued tasks a restarted Redis lost: nobody runs
    ``jobs wait --resume-stalled`` or ``jobs resume``, yet the workers' own sweep (every
    ``VALUEFLOW_SWEEP_S``, once lost for ``VALUEFLOW_STALL_WARN_S``; two workers, one sweeping at a
    time) sends them again, and the job finishes with every chunk's stage run once. With
    ``VALUEFLOW_SWEEP_S=0`` a worker does not sweep."""
    import redis as redis_lib

    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, TEXTS[:4])
    job = _submit(env, inp, "--value", "care-harm", "--chunk-size", "4")
    redis_lib.Redis.from_url(redis_url).flushdb()  # the queued tasks are lost, as with a restarted Redis
    n_chunks = _q(pg_url, "SELECT n_chunks FROM jobs WHERE id=$1", job)[0]["n_chunks"]
    assert n_chunks > 1
    bad = run_cli(["worker", "-Q", "default"], {**env, "VALUEFLOW_SWEEP_S": "-1"}, timeout=60)
    assert bad.returncode != 0 and "VALUEFLOW_SWEEP_S: must be >= 0, got -1" in bad.stderr
    env.update(VALUEFLOW_STALL_WARN_S="2", VALUEFLOW_SWEEP_S="0", VALUEFLOW_HEARTBEAT_S="1")
    workers.start()
    for _ in range(300):  # started: its pool processes are up
        if '"event": "process_ready", "role": "child"' in workers.logs():
            break
        time.sleep(0.2)
    assert '"event": "process_ready", "role": "child"' in workers.logs()
    quiet = run_cli(["jobs", "wait", job, "--timeout", "8"], env)  # a worker that does not sweep
    assert quiet.returncode == 1 and quiet.stdout.strip().endswith(f"{job} running")
    assert _q(pg_url, "SELECT sum(deliveries) AS n FROM chunks WHERE job_id=$1", job)[0]["n"] == 0
    env["VALUEFLOW_SWEEP_S"] = "1"
    workers.start()
    workers.start()
    done = run_cli(["jobs", "wait", job, "--timeout", "240"], env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith(f"{job} done"), done.stderr
    assert _q(pg_url, "SELECT count(*) AS n FROM scores WHERE job_id=$1", job)[0]["n"] == 4
    expected = sorted((c, st) for c in range(n_chunks) for st in ("judge", "score"))

    def ran():  # a stage's log line follows its hand-off, so the last may trail the job's end
        logs = workers.logs()
        lines = [json.loads(ln) for ln in logs.splitlines() if ln.startswith('{"event": "chunk"')]
        return logs, sorted((r["chunk"], r["stage"]) for r in lines if r["job"] == job)

    wait_until(lambda: len(ran()[1]) >= len(expected), 30)
    logs, stages = ran()
    assert f"job {job}: re-enqueued {n_chunks} lost task(s)" in logs
    assert stages == expected
    per_window = _q(pg_url, "SELECT count(*) AS n FROM comparisons WHERE job_id=$1 GROUP BY window_id", job)
    assert len(per_window) == 12 and all(r["n"] == 1 for r in per_window)


def test_resume_stalled_re_sends_the_chunk_of_a_killed_worker(env, workers, tmp_path, pg_url):
    """A worker SIGKILLed mid-chunk leaves its task unacknowledged in Redis (delivered again only
    after the visibility timeout, hours). Its processes stop beating; the watcher sees the job
    stall, finds the chunk's process silent for 4 beats, and re-sends that chunk to a live worker;
    the job finishes, every chunk's stage run to completion once."""
    import psutil

    from workers.tasks.heartbeat import process_name

    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, TEXTS[:4])
    env["VALUEFLOW_HEARTBEAT_S"] = "1"
    # each answer takes 8 s, so the kill lands mid-chunk however long the checks before it take
    with ServerThread(delay=8.0) as srv:
        env["VALUEFLOW_JUDGES_FILE"] = str(_judges_file(tmp_path, srv.url, slow={"model": "ok"}))
        first = workers.start(queues="api,refit")
        job = _submit(env, inp, "--value", "care-harm", "--judge", "slow", "--chunk-size", "3")
        started = []
        for _ in range(600):
            started = _q(pg_url, "SELECT chunk_no, last_worker FROM chunks WHERE job_id=$1 AND state='pending'"
                                 " AND stage=0 AND deliveries > 0", job)
            if started:
                break
            time.sleep(0.2)
        assert len(started) == 1
        killed, process = started[0]["chunk_no"], started[0]["last_worker"]
        # the worker's main process and the pool process judging the chunk both beat (the pool
        # process from the first beat after it was forked)
        alive = {process_name(psutil.Process(first.pid)), process}
        for _ in range(50):
            beats = {r["process"] for r in _q(pg_url, "SELECT process FROM worker_heartbeats"
                                                      " WHERE seen_at > now() - interval '2 s'")}
            if alive <= beats:
                break
            time.sleep(0.1)
        assert alive <= beats
        workers.kill(first)
        workers.start(queues="api,refit")
        healed = run_cli(["jobs", "wait", job, "--resume-stalled", "--timeout", "240"],
                         {**env, "VALUEFLOW_STALL_WARN_S": "2"}, timeout=300)
    assert healed.returncode == 0 and healed.stdout.strip().endswith(f"{job} done"), healed.stderr
    assert any(ln.startswith("re-enqueued ") and not ln.startswith("re-enqueued 0 ") for ln in healed.stderr.splitlines())
    w = _q(pg_url, "SELECT state, count(*) AS n FROM windows WHERE job_id=$1 GROUP BY state", job)
    assert {r["state"]: r["n"] for r in w} == {"done": 12}
    assert _q(pg_url, "SELECT count(*) AS n FROM scores WHERE job_id=$1", job)[0]["n"] == 4
    ran = [json.loads(ln) for ln in workers.logs().splitlines() if ln.startswith('{"event": "chunk"')]
    done = sorted((r["chunk"], r["stage"]) for r in ran if r["job"] == job)
    n_chunks = _q(pg_url, "SELECT n_chunks FROM jobs WHERE id=$1", job)[0]["n_chunks"]
    assert done == sorted((c, st) for c in range(n_chunks) for st in ("judge", "score"))
    assert (killed, "judge") in done  # the killed worker's chunk, finished by the other one
