"""Helpers the per-queue task modules share: retry policy, judge lookup, the judge→score hand-off."""

from __future__ import annotations

import asyncpg

from schemas.messages import ChunkTask
from schemas.settings import load_settings
from workers.tasks import runtime
from workers.judging import judge_chunk
from workers.judges.registry import make_judge

# Transient infrastructure faults (a restarted PostgreSQL, a deadlock victim, a dropped socket)
# are retried with backoff; every task body is idempotent, so a retry never stores anything twice.
RETRY = dict(autoretry_for=(asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ConnectionError),
             retry_backoff=True, retry_backoff_max=60, retry_jitter=True, max_retries=8)


def judge_and_hand_off(job_id: str, chunk_no: int) -> dict:
    """Judge one chunk, then queue its scoring on ``refit``."""
    msg = ChunkTask(job_id=job_id, chunk_no=chunk_no)
    store = runtime.store()
    job = runtime.run(store.job(msg.job_id))
    if job is None:
        return {"state": "skipped"}
    judge_name = job["spec"]["judge"]
    judge = runtime.cached(f"judge:{judge_name}", lambda: make_judge(judge_name, store))
    outcome = runtime.run(judge_chunk(store, judge, msg.job_id, msg.chunk_no, load_settings().max_redeliveries))
    if outcome.state in ("judged", "failed"):
        from workers.tasks_refit import score_chunk

        score_chunk.apply_async(kwargs=msg.model_dump(), queue="refit")
    return outcome.__dict__
