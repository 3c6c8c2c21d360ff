"""Chaos run: a scoring job on 4 workers while workers are SIGKILLed and Redis and PostgreSQL restart.

Run: ``python benchmarks/chaos.py`` (200,000 windows) or ``python benchmarks/chaos.py --short`` (the CI
variant, about a minute: ``tests/test_chaos.py``).

Servers are private, so they can be killed: the embedded PostgreSQL and Redis
(:mod:`workers.infra.embedded`, under a temporary ``VALUEFLOW_HOME``; as root PostgreSQL runs as a
system user it creates), and the fake OpenAI-compatible judge server (``tests/fake_openai.py``)
answering after ``--latency`` seconds. Workers talk to the servers by URL, as on a cluster.

1. Submit a job of ``--windows`` windows (texts × 1 value × 3 windows, API judge, ``--chunk-size``).
2. Chaos until the job is done or stalls, or ``--chaos-s`` passed: every ``--kill-every`` seconds
   a random worker's process group gets SIGKILL and a fresh worker replaces it; once a third of
   the windows are done (or a third of the chaos time passed) Redis is SIGKILLed and restarted on
   its port; at two thirds the same for PostgreSQL. A task that dies with its worker stays
   unacknowledged in Redis (redelivered only after the visibility timeout, hours), so the job
   stalls on the lost chunks — what ``jobs resume`` is for.
3. ``valueflow jobs resume JOB`` re-enqueues exactly what is missing; the job must finish.
4. Checks: every window judged once — 0 comparisons lost (a window without its comparison), 0
   duplicated (more than one per window), 0 failed windows; every (text, value) has a score;
   finalize committed once; ``jobs export`` writes one row per text.

The whole run is bounded by ``--time-limit`` seconds. Last line: one JSON object with the figures,
the targets and whether each is met.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._servers import judges_file, run_measured, start_fake_openai, start_worker, stop  # noqa: E402

FULL = dict(windows=200_000, latency=0.05, concurrency=32, chunk_size=256, kill_every=5.0, chaos_s=900.0,
            time_limit=1800.0)
SHORT = dict(windows=1_200, latency=0.2, concurrency=4, chunk_size=24, kill_every=4.0, chaos_s=40.0,
             time_limit=150.0)


async def _fetch(url: str, sql: str, *args):
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def fetch(url: str, sql: str, *args):
    return asyncio.run(_fetch(url, sql, *args))


def done_windows(url: str, job: str) -> int | None:
    """Windows judged so far, or None while the database is down."""
    try:
        return fetch(url, "SELECT count(*) AS n FROM windows WHERE job_id = $1 AND state = 'done'", job)[0]["n"]
    except Exception:  # noqa: BLE001 - the database may be restarting
        return None


def job_state(url: str, job: str) -> str | None:
    try:
        return fetch(url, "SELECT state FROM jobs WHERE id = $1", job)[0]["state"]
    except Exception:  # noqa: BLE001
        return None


def restart(home: Path, which: str) -> float:
    """SIGKILL the embedded server ``which`` and start it again on the same address; seconds down."""
    from workers.infra.embedded import _alive, ensure_running

    state = json.loads((home / "embedded.json").read_text())
    pid = state[which]["pid"]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < end:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    time.sleep(1.0)  # workers notice the server is gone
    ensure_running(home)
    return time.monotonic() - t0


def write_texts(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"c{i}", "text": f"Chaos entry {i}: I {'kept' if i % 3 else 'broke'} "
                                                        f"a promise to neighbour {i % 97}."}) + "\n")


def verify(url: str, job: str, n_texts: int) -> dict:
    w = fetch(url, "SELECT count(*) AS total, count(*) FILTER (WHERE state = 'done') AS done,"
                   " count(*) FILTER (WHERE state = 'failed') AS failed FROM windows WHERE job_id = $1", job)[0]
    c = fetch(url, "SELECT count(*) AS n, count(DISTINCT window_id) AS distinct_windows FROM comparisons"
                   " WHERE job_id = $1", job)[0]
    lost = fetch(url, "SELECT count(*) AS n FROM windows w WHERE w.job_id = $1 AND NOT EXISTS"
                      " (SELECT 1 FROM comparisons c WHERE c.job_id = w.job_id AND c.window_id = w.window_id)", job)[0]["n"]
    mismatched = fetch(url, "SELECT count(*) AS n FROM windows w JOIN comparisons c ON c.job_id = w.job_id"
                            " AND c.window_id = w.window_id WHERE w.job_id = $1 AND c.item_ids <> w.members", job)[0]["n"]
    s = fetch(url, "SELECT count(*) AS n, count(*) FILTER (WHERE intensity IS NOT NULL AND windows_used = 3) AS full"
                   " FROM scores WHERE job_id = $1", job)[0]
    j = fetch(url, "SELECT state, finalize_runs FROM jobs WHERE id = $1", job)[0]
    return {"windows": w["total"], "windows_done": w["done"], "windows_failed": w["failed"],
            "comparisons": c["n"], "lost": lost, "duplicated": c["n"] - c["distinct_windows"],
            "mismatched": mismatched, "scores": s["n"], "scores_missing": n_texts - s["full"],
            "state": j["state"], "finalize_runs": j["finalize_runs"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", action="store_true", help="the CI variant (about a minute)")
    ap.add_argument("--windows", type=int)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--latency", type=float)
    ap.add_argument("--concurrency", type=int, help="judge requests in flight per worker")
    ap.add_argument("--chunk-size", type=int)
    ap.add_argument("--kill-every", type=float)
    ap.add_argument("--chaos-s", type=float, help="longest chaos phase")
    ap.add_argument("--time-limit", type=float)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = dict(SHORT if args.short else FULL)
    for k in cfg:
        if getattr(args, k, None) is not None:
            cfg[k] = getattr(args, k)
    t_start = time.monotonic()
    deadline = t_start + cfg["time_limit"]
    rng = random.Random(args.seed)
    n_texts = cfg["windows"] // 3
    tmp = Path(tempfile.mkdtemp(prefix="vf-chaos-"))
    home = tmp / "home"
    from workers.infra.embedded import ensure_running, stop as stop_embedded

    urls = ensure_running(home)
    db_url = urls["VALUEFLOW_DATABASE_URL"]
    server, base_url = start_fake_openai(cfg["latency"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("VALUEFLOW_")}
    env.update(urls, VALUEFLOW_HOME=str(home), PYTHONUNBUFFERED="1",
               VALUEFLOW_JUDGES_FILE=str(judges_file(tmp / "judges.toml", base_url, cfg["concurrency"])))
    procs: list = []
    out: dict = {"config": {**cfg, "workers": args.workers, "texts": n_texts}, "kills": 0}
    try:
        assert run_measured(["vidb", "stats"], env, 300).rc == 0  # schema + seed VIDB
        procs = [start_worker(env, "api,refit", tmp / f"worker{i}.log", pool="prefork") for i in range(args.workers)]
        inp = tmp / "texts.jsonl"
        write_texts(inp, n_texts)
        m = run_measured(["score", str(inp), "--value", "fidelity", "--judge", "fake",
                          "--chunk-size", str(cfg["chunk_size"])], env, max(60.0, deadline - time.monotonic()))
        assert m.rc == 0, m.stderr[-2000:]
        job = m.stdout.strip().splitlines()[-1]
        out["job"] = job
        total = 3 * n_texts

        # -- chaos -------------------------------------------------------------------------------
        t_chaos = time.monotonic()
        chaos_end = min(t_chaos + cfg["chaos_s"], deadline - 0.4 * cfg["time_limit"])
        restarted: dict[str, float] = {}
        last_kill = time.monotonic()
        last_n, last_change = -1, time.monotonic()
        while time.monotonic() < chaos_end:
            now = time.monotonic()
            n = done_windows(db_url, job)
            if n is not None and n != last_n:
                last_n, last_change = n, now
            frac_t = (now - t_chaos) / max(chaos_end - t_chaos, 1e-9)
            frac_w = (n or 0) / total
            if "redis" not in restarted and (frac_w >= 1 / 3 or frac_t >= 1 / 3):
                restarted["redis"] = restart(home, "redis")
                out["redis_restart_at_done"] = n
                last_change = time.monotonic()  # the time down is not a stall
            elif "redis" in restarted and "postgres" not in restarted and (frac_w >= 2 / 3 or frac_t >= 2 / 3):
                out["postgres_restart_at_done"] = n
                restarted["postgres"] = restart(home, "postgres")
                last_change = time.monotonic()
            if now - last_kill >= cfg["kill_every"]:
                i = rng.randrange(len(procs))
                os.killpg(procs[i].pid, signal.SIGKILL)
                procs[i].wait(30)
                procs[i] = start_worker(env, "api,refit", tmp / f"worker{i}.log", pool="prefork")
                out["kills"] += 1
                last_kill = now
            if len(restarted) == 2 and (job_state(db_url, job) == "done" or now - last_change > 15):
                break  # finished, or stalled on chunks lost with killed workers
            time.sleep(0.2)
        for k in ("redis", "postgres"):  # chaos cut short by the time limit: still restart both
            if k not in restarted:
                restarted[k] = restart(home, k)
        out["chaos_s"] = round(time.monotonic() - t_chaos, 1)
        out["restart_s"] = {k: round(v, 1) for k, v in restarted.items()}
        out["done_before_resume"] = done_windows(db_url, job)

        # -- resume ------------------------------------------------------------------------------
        res = run_measured(["jobs", "resume", job], env, 120)
        assert res.rc == 0, res.stderr[-2000:]
        out["reenqueued_by_resume"] = int(re.search(r"re-enqueued (\d+)", res.stdout).group(1))
        t_resume = time.monotonic()
        while time.monotonic() < deadline - 10:
            if job_state(db_url, job) in ("done", "failed", "cancelled"):
                break
            time.sleep(0.5)
        out["after_resume_s"] = round(time.monotonic() - t_resume, 1)
        out.update(verify(db_url, job, n_texts))
        exp = tmp / "scores.jsonl"
        res = run_measured(["jobs", "export", job, "-o", str(exp)], env, 120)
        out["exported_rows"] = sum(1 for _ in exp.open()) if res.rc == 0 else 0
    finally:
        stop(procs, signal.SIGKILL)
        stop([server])
        stop_embedded(home)
        shutil.rmtree(tmp, ignore_errors=True)
    out["seconds"] = round(time.monotonic() - t_start, 1)
    out["targets"] = {"lost": 0, "duplicated": 0, "scores_missing": 0, "failed_windows": 0,
                      "redis_restarts": 1, "postgres_restarts": 1}
    out["met"] = {"lost": out["lost"] == 0 and out["windows_done"] == out["windows"],
                  "duplicated": out["duplicated"] == 0 and out["mismatched"] == 0,
                  "every_score": out["scores_missing"] == 0 and out["exported_rows"] == n_texts,
                  "done": out["state"] == "done" and out["finalize_runs"] == 1,
                  "chaos": out["kills"] >= 1 and len(out["restart_s"]) == 2,
                  "full_size": cfg["windows"] >= 200_000 and args.workers >= 4}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
