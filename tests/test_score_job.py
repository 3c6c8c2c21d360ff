"""The main job end to end: CLI → PostgreSQL + Redis → worker subprocesses → scores → export."""

import asyncio
import json
import re
import time

import asyncpg
import psutil
import pytest
from celery.exceptions import TimeoutError as CeleryTimeout
from scipy.stats import spearmanr

from tests.conftest import run_cli, shared_data, vidb_sample, wait_until


def _q(url, sql, *args):
    async def go():
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()
    return asyncio.run(go())


def _wait_job(url, job_id, timeout=600):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = _q(url, "SELECT state FROM jobs WHERE id=$1", job_id)[0]["state"]
        if state in ("done", "failed", "cancelled"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {state} after {timeout}s")


def _submit(env, inp, *args):
    res = run_cli(["score", str(inp), *args], env)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[-1]


def _write_inputs(path, texts):
    with path.open("w") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": f"x{i:04d}", "text": t}) + "\n")


def test_200_texts_two_values_end_to_end_with_export(env, workers, tmp_path, pg_url, capsys):
    sample = vidb_sample()
    values = ["care-harm", "benevolence"]
    known = {}  # text -> (value, intensity) for the sample texts of the scored values
    texts = []
    for v in values:
        for b in sample[v].values():
            for x in b:
                known[x["text"]] = (v, x["intensity"])
                texts.append(x["text"])
    others = [x["text"] for v, bins in sample.items() if v not in values for b in bins.values() for x in b]
    texts += [t for t in others if t not in known][: 200 - len(texts)]
    assert len(texts) == 200
    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, texts)
    workers.start(concurrency=1)
    workers.start(concurrency=1)
    job = _submit(env, inp, "--value", values[0], "--value", values[1], "--chunk-size", "60")
    assert _wait_job(pg_url, job) == "done", workers.logs()[-3000:]
    for suffix in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"scores.{suffix}"
        res = run_cli(["jobs", "export", job, "-o", str(out)], env)
        assert res.returncode == 0 and out.stat().st_size > 0, res.stderr
    rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 400 and {r["value"] for r in rows} == set(values)
    assert all(-10 <= r["intensity"] <= 10 and r["stderr"] > 0 and r["windows_used"] == 3 for r in rows)
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "scores.parquet").num_rows == 400
    by_id = {f"x{i:04d}": t for i, t in enumerate(texts)}
    pairs = [(r["intensity"], known[by_id[r["id"]]][1]) for r in rows
             if by_id[r["id"]] in known and known[by_id[r["id"]]][0] == r["value"]]
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])[0]
    with capsys.disabled():
        print(f"\n[score job] Spearman(exported intensity, VIDB-sample intensity) = {rho:.3f} over {len(pairs)} texts")
    assert rho > 0
    status = run_cli(["jobs", "status", job], env, check=True).stdout
    assert "done" in status and "1200 done, 0 failed" in status


def test_kill_dash_nine_mid_job_then_resume_loses_and_duplicates_nothing(env, workers, tmp_path, pg_url):
    texts = [f"Text number {i}: I {'helped' if i % 2 else 'ignored'} my neighbour on day {i}." for i in range(200)]
    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, texts)
    w1 = workers.start(concurrency=1)
    job = _submit(env, inp, "--value", "benevolence", "--chunk-size", "6")
    # let it get part of the way, then kill the worker (all its processes) without warning
    end = time.monotonic() + 300
    while time.monotonic() < end:
        done = _q(pg_url, "SELECT count(*) AS n FROM windows WHERE job_id=$1 AND state='done'", job)[0]["n"]
        if done >= 60:
            break
        time.sleep(0.05)
    workers.kill(w1)
    done_at_kill = _q(pg_url, "SELECT count(*) AS n FROM windows WHERE job_id=$1 AND state='done'", job)[0]["n"]
    assert 0 < done_at_kill < 600, "the kill must land mid-job"
    workers.start(concurrency=1)
    res = run_cli(["jobs", "resume", job], env, check=True)
    assert "re-enqueued" in res.stdout
    assert _wait_job(pg_url, job) == "done", workers.logs()[-3000:]
    per_window = _q(pg_url, "SELECT w.window_id, count(c.id) AS n FROM windows w LEFT JOIN comparisons c "
                            "ON c.job_id=w.job_id AND c.window_id=w.window_id WHERE w.job_id=$1 GROUP BY w.window_id", job)
    assert len(per_window) == 600 and all(r["n"] == 1 for r in per_window)
    assert _q(pg_url, "SELECT count(*) AS n FROM scores WHERE job_id=$1", job)[0]["n"] == 200
    # a second resume of a finished job does nothing
    assert "re-enqueued 0" in run_cli(["jobs", "resume", job], env, check=True).stdout


def test_three_workers_share_one_job(env, workers, tmp_path, pg_url):
    from workers.tasks.app import app_for

    texts = [f"Statement {i}: I kept my promise to help a friend ({i})." for i in range(150)]
    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, texts)
    for _ in range(3):
        workers.start(concurrency=1, queues="default,gpu,refit")
    app = app_for(env["VALUEFLOW_BROKER_URL"])
    # wait until all three consume (each answers a ping on its own pid)
    pids = set()
    end = time.monotonic() + 300
    while len(pids) < 3 and time.monotonic() < end:
        try:
            pids.add(app.send_task("valueflow.ping", kwargs={"payload": "x"}, queue="gpu",
                                   ignore_result=False).get(timeout=30)["pid"])
        except CeleryTimeout:  # no worker up yet (three start at once on a small machine)
            continue
    assert len(pids) == 3
    job = _submit(env, inp, "--value", "fidelity", "--chunk-size", "3")
    assert _wait_job(pg_url, job) == "done"
    assert _q(pg_url, "SELECT count(*) AS n FROM chunks WHERE job_id=$1 AND state='done'", job)[0]["n"] == 150
    # every worker ran stages of this job (chunks.last_worker keeps only the last stage's worker, and a
    # worker still loading its judge may run no score stage at all), and each of the 150 chunks ran its
    # two stages once: judge and score
    # (a worker logs a task's success after the task returns, so the last lines may trail the job's end)
    def ran():
        return [len(re.findall(r"Task valueflow\.\w+\.stage\[[^]]+\] succeeded in [\d.e-]+s: \{'state': 'ran'",
                               f.read_text())) for f in sorted(tmp_path.glob("worker*.log"))]

    wait_until(lambda: sum(ran()) >= 300, 60)
    counts = ran()
    assert len(counts) == 3 and min(counts) >= 1 and sum(counts) == 300, counts


def test_job_cancel_and_retry_failed(env, tmp_path, pg_url):
    inp = tmp_path / "in.jsonl"
    _write_inputs(inp, ["I returned the lost wallet.", "I cheated at cards."])
    job = _submit(env, inp, "--value", "fairness-cheating")  # no worker: stays queued
    assert "cancelled" in run_cli(["jobs", "cancel", job], env, check=True).stdout
    assert _q(pg_url, "SELECT state FROM jobs WHERE id=$1", job)[0]["state"] == "cancelled"
    res = run_cli(["jobs", "resume", job], env)
    assert res.returncode != 0 and "cancelled" in res.stderr
    listing = run_cli(["jobs", "list"], env, check=True).stdout
    assert job in listing


BAD_INPUTS = [
    ('{"id": "a", "text": "fine"}\n{"id": "b", "text": "broken"\n', "in.jsonl:2: malformed JSON"),
    ('{"id": "a", "text": "fine"}\n{"id": "b"}\n', "in.jsonl:2: field 'text': missing"),
    ('{"id": "a", "text": "fine"}\n{"id": "b", "text": "   "}\n', "in.jsonl:2: field 'text': empty text"),
    ('{"id": "a", "text": "fine"}\n{"id": "a", "text": "again"}\n', "in.jsonl:2: field 'id': duplicate id 'a' (first on line 1)"),
    ('{"id": "a", "text": 5}\n', "in.jsonl:1: field 'text': expected a string"),
]


def _store_is_empty(url):
    tables = {r["tablename"] for r in _q(url, "SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    if not tables:
        return True
    return all(_q(url, f"SELECT count(*) AS n FROM {t}")[0]["n"] == 0 for t in ("jobs", "texts", "windows", "comparisons"))


@pytest.mark.parametrize("content, message", BAD_INPUTS)
def test_bad_input_is_rejected_before_anything_is_stored(env, tmp_path, pg_url, content, message):
    inp = tmp_path / "in.jsonl"
    inp.write_text(content)
    res = run_cli(["score", str(inp), "--value", "benevolence"], env)
    assert res.returncode != 0
    assert message in res.stderr and "Traceback" not in res.stderr
    assert _store_is_empty(pg_url)


def test_bad_csv_and_unknown_value(env, tmp_path, pg_url):
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("id,body\n1,hello\n")
    res = run_cli(["score", str(csv_in), "--value", "benevolence"], env)
    assert res.returncode != 0 and "in.csv:1: field 'text': column missing" in res.stderr
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"text": "hello there"}\n')
    res = run_cli(["score", str(ok), "--value", "benevolense"], env)
    assert res.returncode != 0 and "unknown value 'benevolense'" in res.stderr and "benevolence" in res.stderr
    res = run_cli(["score", str(ok), "--value", "benevolence", "--judge", "nope"], env)
    assert res.returncode != 0 and "unknown judge 'nope'" in res.stderr
    assert _store_is_empty(pg_url)


def test_inputs_in_csv_and_parquet_with_generated_ids(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workers.io.inputs import read_inputs

    c = tmp_path / "a.csv"
    c.write_text('text,note\n"Hello, world",x\nSecond,y\n')
    rows = read_inputs(c)
    assert [r.ext_id for r in rows] == ["line-2", "line-3"] and rows[0].text == "Hello, world"
    p = tmp_path / "a.parquet"
    pq.write_table(pa.table({"doc": ["d1", "d2"], "body": ["one", "two"]}), p)
    rows = read_inputs(p, id_col="doc", text_col="body")
    assert [(r.ext_id, r.text) for r in rows] == [("d1", "one"), ("d2", "two")]


def test_vidb_import_of_upstream_formats(env, tmp_path, pg_url):
    res = run_cli(["vidb", "import", str(shared_data() / "vidb-sample" / "mft.json")], env, check=True)
    assert "72 new items over 6 values" in res.stdout
    again = run_cli(["vidb", "import", str(shared_data() / "vidb-sample" / "mft.json")], env, check=True)
    assert "0 new items" in again.stdout  # idempotent
    csv_file = tmp_path / "care-harm_mft_flag_aggregated.csv"
    csv_file.write_text("text,final_rating\nA kind deed.,6.5\nA cruel deed.,-7\n")
    assert "2 new items" in run_cli(["vidb", "import", str(csv_file)], env, check=True).stdout
    versions = _q(pg_url, "SELECT value, version, kind, n_new FROM vidb_versions ORDER BY value, version")
    # every import that adds items is a version: mft.json's 6 values (version 1), then care-harm's 2
    assert len(versions) == 7 and {r["kind"] for r in versions} == {"import"}
    assert [(r["version"], r["n_new"]) for r in versions if r["value"] == "care-harm"][-1] == (2, 2)
    # one text rated differently by two files of one import: refused, nothing imported
    other = tmp_path / "care-harm_mft_second.csv"
    other.write_text("text,final_rating\nA new deed.,1\n")
    clash = tmp_path / "care-harm_mft_third.csv"
    clash.write_text("text,final_rating\nA new deed.,3\n")
    res = run_cli(["vidb", "import", str(other), str(clash)], env)
    assert res.returncode != 0 and f"{clash}: field 'text': 'A new deed.' of 'care-harm' is rated 3 here and 1 in {other}" \
        in " ".join(res.stderr.split())
    assert _q(pg_url, "SELECT count(*) AS n FROM vidb_items WHERE value = 'care-harm'")[0]["n"] == 14
    bad = tmp_path / "fidelity_duty_flag_aggregated.csv"
    bad.write_text("text,final_rating\nok,1\nbad,12\n")
    res = run_cli(["vidb", "import", str(bad)], env)
    assert res.returncode != 0 and "fidelity_duty_flag_aggregated.csv:3: field 'final_rating': intensity 12.0 outside" in res.stderr
    n = _q(pg_url, "SELECT count(*) AS n FROM vidb_items WHERE value='fidelity'")[0]["n"]
    assert n == 0  # nothing of the bad file was written
    stats = run_cli(["vidb", "stats"], env, check=True).stdout
    assert "care-harm" in stats and len(stats.strip().splitlines()) == 32


def test_broker_and_database_restart_mid_job_lose_and_duplicate_nothing(tmp_path, workers):
    """Private Redis and PostgreSQL (the embedded ones), each SIGKILLed mid-job and restarted."""
    import os
    import signal

    embedded = {k: v for k, v in os.environ.items() if k not in ("VALUEFLOW_DATABASE_URL", "VALUEFLOW_BROKER_URL")}
    embedded["VALUEFLOW_HOME"] = str(tmp_path / "home")
    try:
        urls = dict(line.split(None, 1) for line in run_cli(["up"], embedded, check=True).stdout.splitlines())
        # the workers and the CLI below talk to the servers by URL, as on a cluster
        e = dict(embedded, VALUEFLOW_DATABASE_URL=urls["database"].strip(), VALUEFLOW_BROKER_URL=urls["broker"].strip())
        pg_url = e["VALUEFLOW_DATABASE_URL"]
        workers.env = e
        workers.start(concurrency=1)
        inp = tmp_path / "in.jsonl"
        _write_inputs(inp, [f"Day {i}: I {'kept' if i % 3 else 'broke'} my promise to a friend." for i in range(200)])
        job = _submit(e, inp, "--value", "fidelity", "--chunk-size", "6")
        state = json.loads((tmp_path / "home" / "embedded.json").read_text())

        def done():
            return _q(pg_url, "SELECT count(*) AS n FROM windows WHERE job_id=$1 AND state='done'", job)[0]["n"]

        def gone(pid):  # a killed server's port and files are free once its process is gone
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        def wait_done(n):
            end = time.monotonic() + 300
            while done() < n and time.monotonic() < end:
                time.sleep(0.1)

        wait_done(60)
        assert done() < 600, "the broker must die mid-job"
        os.kill(state["redis"]["pid"], signal.SIGKILL)  # the broker dies with queued tasks
        wait_until(lambda: gone(state["redis"]["pid"]), 60, 0.1)
        run_cli(["up"], embedded, check=True)  # restarts Redis on the same port
        wait_done(done() + 30)  # progress resumes after the broker restart
        assert done() < 600, "the database must die mid-job"
        os.kill(state["postgres"]["pid"], signal.SIGKILL)  # then the database
        wait_until(lambda: gone(state["postgres"]["pid"]), 60, 0.1)
        time.sleep(2)  # its backends notice the postmaster's death and exit
        up = run_cli(["up"], embedded, check=True)
        assert urls["database"].strip() in up.stdout and urls["broker"].strip() in up.stdout
        run_cli(["jobs", "resume", job], e, check=True)
        assert _wait_job(pg_url, job, timeout=600) == "done", workers.logs()[-3000:]
        per_window = _q(pg_url, "SELECT w.window_id, count(c.id) AS n FROM windows w LEFT JOIN comparisons c "
                                "ON c.job_id=w.job_id AND c.window_id=w.window_id WHERE w.job_id=$1 GROUP BY w.window_id", job)
        assert len(per_window) == 600 and all(r["n"] == 1 for r in per_window)
        assert _q(pg_url, "SELECT count(*) AS n FROM scores WHERE job_id=$1", job)[0]["n"] == 200
    finally:
        workers.stop_all()
        run_cli(["down"], embedded)
