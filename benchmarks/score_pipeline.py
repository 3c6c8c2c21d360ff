"""End-to-end scoring throughput vs the same scoring in-process.

Run: ``python benchmarks/score_pipeline.py [--texts 10000] [--workers 2]``.

Scores N synthetic texts × 1 value with the embedding judge, (1) in this process with no queue or
database (:mod:`scheduler.inprocess`, the same library calls the workers make) and (2) through the
real pipeline: a job planned into PostgreSQL, chunks on Redis, ``--workers`` worker processes
(one torch thread each), scores written back. Prints texts/s for both and the ratio (target ≥ 50 %).

Servers: ``VALUEFLOW_DATABASE_URL`` / ``VALUEFLOW_BROKER_URL`` when set (a scratch database is
created next to the configured one), otherwise the embedded default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SUBJECTS = ["my neighbour", "a stranger", "my sister", "the new colleague", "an old friend", "my landlord",
            "a child at the park", "the team", "my grandfather", "a customer"]
ACTS = ["helped {} carry heavy boxes up the stairs", "ignored {} when they asked for help",
        "lied to {} about the money", "cooked dinner for {} after a long day", "shouted at {} in public",
        "stayed up all night looking after {}", "took credit for the work of {}", "lent my car to {}",
        "made fun of {} behind their back", "wrote a kind note to {}"]


def synthetic_texts(n: int) -> list[str]:
    out = []
    for i in range(n):
        act = ACTS[i % len(ACTS)].format(SUBJECTS[(i // len(ACTS)) % len(SUBJECTS)])
        out.append(f"Yesterday I {act} (entry {i}).")
    return out


async def scratch_urls() -> tuple[str, str, str | None]:
    db, broker = os.environ.get("VALUEFLOW_DATABASE_URL"), os.environ.get("VALUEFLOW_BROKER_URL")
    if not db:
        from workers.infra.urls import resolve_urls

        db, broker = resolve_urls()
        return db, broker, None
    import asyncpg

    name = f"vf_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(db)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    from workers.infra.urls import with_database

    return with_database(db, name), broker, name


def _chunks(rows: list, size: int = 10_000):
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


async def _submit(store, app, spec, rows) -> str:
    """Record the VIDB view, stage, plan, make live and enqueue a scoring job: the path ``valueflow
    score`` takes (so each worker's embedding judge is the job's pinned view, fitted once per worker
    in the warm-up job, which plans against the same VIDB)."""
    from scheduler import jobs
    from scheduler.cli.jobs import record_vidb_view
    from workers.jobs.kinds import score as score_kind

    spec = await record_vidb_view(store, spec)
    assert all(spec.vidb_versions[v] > 0 for v in spec.values), "the seed VIDB gives every value a version"
    return await jobs.submit(store, app, score_kind.KIND, spec, score_kind.planner(spec, _chunks(rows)))


async def pipeline(texts: list[str], value: str, n_workers: int, chunk: int) -> float:
    from scheduler import jobs
    from schemas.messages import ScoreJobSpec
    from workers.io.inputs import InputRow
    from workers.io.vidb_files import ensure_seed
    from workers.store import open_store
    from workers.tasks.app import app_for

    db, broker, scratch = await scratch_urls()
    env = dict(os.environ, VALUEFLOW_DATABASE_URL=db, VALUEFLOW_BROKER_URL=broker, VALUEFLOW_TORCH_THREADS="1")
    app = app_for(broker)
    store = await open_store(db)
    await ensure_seed(store)
    procs = [subprocess.Popen([sys.executable, "-m", "scheduler.cli", "worker", "-Q", "default,gpu,refit", "-c", "1",
                               "--loglevel", "WARNING"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(n_workers)]
    try:
        # warm-up job: every worker loads its encoder before the clock starts
        warm = [InputRow(i + 1, f"w{i}", t) for i, t in enumerate(texts[:64])]
        spec = ScoreJobSpec(input="warmup", values=[value], judge="embedding", chunk_size=8)
        wid = await _submit(store, app, spec, warm)
        await jobs.wait(store, wid, show=False, poll_s=0.2)
        rows = [InputRow(i + 1, f"t{i}", t) for i, t in enumerate(texts)]
        spec = ScoreJobSpec(input="bench", values=[value], judge="embedding", chunk_size=chunk)
        t0 = time.perf_counter()
        job = await _submit(store, app, spec, rows)
        state = await jobs.wait(store, job, show=True, poll_s=0.2)
        wall = time.perf_counter() - t0
        assert state == "done", state
        n = await store.pool.fetchval("SELECT count(*) FROM scores WHERE job_id=$1", job)
        assert n == len(texts), n
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        await store.close()
        if scratch:
            import asyncpg

            conn = await asyncpg.connect(os.environ["VALUEFLOW_DATABASE_URL"])
            await conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
            await conn.close()
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=10_000)
    ap.add_argument("--value", default="benevolence")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=256)
    args = ap.parse_args()
    texts = synthetic_texts(args.texts)

    from scheduler.inprocess import score_texts_sync
    from schemas.taxonomy import default_taxonomy
    from workers.judges.config import BUILTIN
    from workers.judges.embedding_judge import EmbeddingJudge

    judge = EmbeddingJudge(BUILTIN["embedding"])
    score_texts_sync(texts[:64], [default_taxonomy().get(args.value)], judge)  # warm-up
    judge = EmbeddingJudge(BUILTIN["embedding"], encoder=judge.encoder)  # fresh memo, loaded model
    t0 = time.perf_counter()
    rows = score_texts_sync(texts, [default_taxonomy().get(args.value)], judge)
    inproc = time.perf_counter() - t0
    assert len(rows) == len(texts)
    wall = asyncio.run(pipeline(texts, args.value, args.workers, args.chunk_size))
    a, b = len(texts) / inproc, len(texts) / wall
    print(f"{len(texts)} texts × 1 value, embedding judge, k=6, 3 windows")
    print(f"in-process (no queue, no database): {a:8.1f} texts/s ({inproc:.1f} s)")
    print(f"pipeline, {args.workers} workers:              {b:8.1f} texts/s ({wall:.1f} s)")
    print(f"pipeline / in-process = {100 * b / a:.0f} % (target ≥ 50 %)")
    print(json.dumps({"texts": len(texts), "workers": args.workers, "inprocess_texts_per_s": round(a, 1),
                      "pipeline_texts_per_s": round(b, 1), "ratio": round(b / a, 3), "targets": {"ratio_min": 0.5},
                      "met": {"ratio": b / a >= 0.5}}))


if __name__ == "__main__":
    main()
