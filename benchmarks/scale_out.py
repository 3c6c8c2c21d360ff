"""Scale-out of the API queue, and the store's and broker's own ceilings.

Run: ``python benchmarks/scale_out.py [--workers 1,2,4,8] [--judge-concurrency 8] [--chunk-size 48]``.

1. **Windows/s per worker count.** A local OpenAI-compatible test server (``tests/fake_openai.py``,
   its own process) answers every request after ``--latency`` seconds (200 ms). For each worker
   count n, n worker processes (``valueflow worker -Q api --pool solo``: one OS process each, the
   judge's ``concurrency`` requests in flight on its event loop) consume one scoring job of
   ``n × --windows-per-worker`` windows on the real PostgreSQL and Redis. The rate is measured in
   steady state: windows judged between the moment 5 % and the moment 95 % of the job's windows
   were done, over that time (start-up and the last chunks' tail excluded). Scaling efficiency at n
   = rate(n) / (n × rate(1)); target ≥ 0.8 up to 8 workers. The bound per worker is
   concurrency / latency (8 / 0.2 s = 40 windows/s by default).
2. **Store ceiling.** Comparisons written per second through :meth:`Store.record_rankings` (the
   call every judge task ends with: COPY-merge of the comparisons and the windows' update), one
   write per chunk of ``--ceiling-chunk-size`` windows, from ``--writers`` concurrent coroutines of
   one process.
3. **Broker ceiling.** Celery task messages published per second over one producer (the way
   ``submit``/``resume`` enqueue), and drained per second by a raw consumer.

Servers: see :mod:`benchmarks._servers`. Last line: one JSON object with figures and targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._servers import (BENCH_REDIS, create_db, drop_db, flush_redis, judges_file,  # noqa: E402
                                 run_measured, start_fake_openai, start_worker, stop)

TARGET_EFFICIENCY = 0.8


def write_texts(path: Path, n: int, tag: str) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"{tag}{i}", "text": f"Run {tag}, entry {i}: I kept my word to a friend."}) + "\n")


async def _fetchval(url: str, sql: str, *args):
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def fetchval(url: str, sql: str, *args):
    return asyncio.run(_fetchval(url, sql, *args))


def submit(env: dict, tmp: Path, n_texts: int, tag: str, chunk: int, judge: str = "fake") -> str:
    inp = tmp / f"{tag}.jsonl"
    write_texts(inp, n_texts, tag)
    m = run_measured(["score", str(inp), "--value", "benevolence", "--judge", judge, "--chunk-size", str(chunk)],
                     env, 600)
    assert m.rc == 0, m.stderr[-2000:]
    return m.stdout.strip().splitlines()[-1]


def wait_ready(broker: str, n: int, timeout: float = 120) -> None:
    """Until n distinct worker processes answered a ping on the api queue."""
    from workers.tasks.app import app_for

    app = app_for(broker)
    pids: set[int] = set()
    end = time.monotonic() + timeout
    while len(pids) < n and time.monotonic() < end:
        res = [app.send_task("valueflow.ping", kwargs={"payload": "x"}, queue="api", ignore_result=False)
               for _ in range(2 * n)]
        for r in res:
            pids.add(r.get(timeout=60)["pid"])
    if len(pids) < n:
        raise RuntimeError(f"only {len(pids)} of {n} workers answered")


def steady_rate(db_url: str, job: str, total: int, timeout: float) -> dict:
    """Windows/s between 5 % and 95 % of the job's windows done (sampled every 0.25 s)."""
    lo, hi = int(0.05 * total), int(0.95 * total)
    t_lo = n_lo = None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        n = fetchval(db_url, "SELECT count(*) FROM windows WHERE job_id = $1 AND state <> 'pending'", job)
        now = time.monotonic()
        if t_lo is None and n >= lo:
            t_lo, n_lo = now, n
        if n >= hi and t_lo is not None:
            failed = fetchval(db_url, "SELECT count(*) FROM windows WHERE job_id = $1 AND state = 'failed'", job)
            return {"windows_per_s": round((n - n_lo) / max(now - t_lo, 1e-9), 1), "seconds": round(now - t_lo, 1),
                    "failed": failed}
        time.sleep(0.25)
    raise RuntimeError(f"job {job} did not reach 95 % in {timeout} s")


def scale_run(env: dict, db_url: str, broker: str, tmp: Path, n: int, per_worker: int, chunk: int,
              timeout: float) -> dict:
    procs = [start_worker(env, "api", tmp / f"w{n}-{i}.log") for i in range(n)]
    try:
        wait_ready(broker, n)
        texts = n * per_worker // 3
        job = submit(env, tmp, texts, f"n{n}-", chunk)
        res = steady_rate(db_url, job, 3 * texts, timeout)
        res["workers"] = n
        res["windows"] = 3 * texts
        return res
    finally:
        stop(procs)
        flush_redis(broker)


async def store_ceiling(db_url: str, job: str, writers: int) -> dict:
    """Comparisons/s through record_rankings: every pending window of ``job`` gets a ranking."""
    from workers.store import open_store

    store = await open_store(db_url, max_size=writers + 1)
    try:
        rows = await store.pool.fetch("SELECT chunk_no, window_id, value, members FROM windows WHERE job_id = $1 "
                                      "ORDER BY chunk_no, window_id", job)
        by_chunk: dict[int, list] = {}
        for r in rows:  # one batch per chunk, as a worker writes them
            by_chunk.setdefault(r["chunk_no"], []).append(r)
        batches = list(by_chunk.items())
        tel = (0.2, 50, 8, 1, False)
        todo = asyncio.Queue()
        for b in batches:
            todo.put_nowait(b)

        async def writer() -> int:
            added = 0
            while not todo.empty():
                chunk_no, b = todo.get_nowait()
                done = [(r["window_id"], r["value"], r["members"], list(range(len(r["members"]))[::-1]), None, tel)
                        for r in b]
                added += await store.record_rankings(job, chunk_no, "fake", done, [])
            return added

        t0 = time.perf_counter()
        added = sum(await asyncio.gather(*(writer() for _ in range(writers))))
        secs = time.perf_counter() - t0
        assert added == len(rows), (added, len(rows))
        return {"comparisons": added, "seconds": round(secs, 2), "comparisons_per_s": round(added / secs),
                "writers": writers, "batch": max(len(b) for _, b in batches)}
    finally:
        await store.close()


def broker_ceiling(broker: str, n: int = 5000) -> dict:
    """Task messages published per second over one producer, and drained by a raw consumer."""
    from workers.jobs.lifecycle import Send
    from workers.tasks.app import app_for
    from workers.tasks.stage import send

    app = app_for(broker)
    sends = [Send("stage", "default", {"job_id": "bench", "chunk_no": i, "stage": 0}) for i in range(n)]
    t0 = time.perf_counter()
    send(app, sends)
    pub = time.perf_counter() - t0
    got = 0
    t0 = time.perf_counter()
    with app.connection_for_read() as conn:
        q = conn.SimpleQueue("default", no_ack=True)
        while got < n:
            q.get(timeout=10)
            got += 1
        q.close()
    drain = time.perf_counter() - t0
    return {"messages": n, "published_per_s": round(n / pub), "drained_per_s": round(n / drain)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,2,4,8")
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--judge-concurrency", type=int, default=8)
    ap.add_argument("--chunk-size", type=int, default=48)
    ap.add_argument("--windows-per-worker", type=int, default=1200)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--ceiling-windows", type=int, default=30_000)
    ap.add_argument("--ceiling-chunk-size", type=int, default=256, help="windows per chunk (one write) in the store ceiling")
    ap.add_argument("--timeout", type=float, default=300, help="seconds allowed per worker count")
    args = ap.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    db_url, db_name = create_db()
    broker = f"{BENCH_REDIS}/3"
    flush_redis(broker)
    tmp = Path(tempfile.mkdtemp(prefix="vf-scale-out-"))
    server, base_url = start_fake_openai(args.latency)
    env = dict(os.environ, VALUEFLOW_DATABASE_URL=db_url, VALUEFLOW_BROKER_URL=broker, VALUEFLOW_HOME=str(tmp / "home"),
               VALUEFLOW_JUDGES_FILE=str(judges_file(tmp / "judges.toml", base_url, args.judge_concurrency)),
               PYTHONUNBUFFERED="1")
    out: dict = {"latency_s": args.latency, "judge_concurrency": args.judge_concurrency, "chunk_size": args.chunk_size,
                 "bound_per_worker": round(args.judge_concurrency / args.latency, 1), "runs": []}
    try:
        assert run_measured(["vidb", "stats"], env, 300).rc == 0  # schema + seed VIDB before timing
        for n in counts:
            r = scale_run(env, db_url, broker, tmp, n, args.windows_per_worker, args.chunk_size, args.timeout)
            out["runs"].append(r)
            print(f"{n} worker(s): {r['windows_per_s']:7.1f} windows/s over {r['seconds']} s "
                  f"({r['windows']} windows, {r['failed']} failed)", flush=True)
        base = out["runs"][0]["windows_per_s"] / counts[0]
        for r in out["runs"]:
            r["efficiency"] = round(r["windows_per_s"] / (r["workers"] * base), 3)
        # the store's ceiling: a job planned but never consumed, its windows written directly
        job = submit(env, tmp, args.ceiling_windows // 3, "ceil-", args.ceiling_chunk_size)
        flush_redis(broker)
        out["store"] = asyncio.run(store_ceiling(db_url, job, args.writers))
        print(f"store: {out['store']['comparisons_per_s']} comparisons/s through record_rankings "
              f"({args.writers} writers, one write per chunk of {out['store']['batch']} windows)", flush=True)
        out["broker"] = broker_ceiling(broker)
        print(f"broker: {out['broker']['published_per_s']} messages/s published, "
              f"{out['broker']['drained_per_s']} /s drained", flush=True)
    finally:
        stop([server])
        flush_redis(broker)
        drop_db(db_name)
    for r in out["runs"]:
        print(f"  {r['workers']} workers  {r['windows_per_s']:8.1f} windows/s  efficiency {r['efficiency']:.2f}")
    out["targets"] = {"efficiency_min": TARGET_EFFICIENCY, "up_to_workers": 8}
    out["met"] = {"scaling": all(r["efficiency"] >= TARGET_EFFICIENCY for r in out["runs"])
                  and max(counts) >= 8}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
