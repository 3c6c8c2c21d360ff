"""Submitting, resuming, cancelling, watching and exporting batch scoring jobs."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import numpy as np

from workers.io.inputs import InputRow
from workers.jobs.windows import AnchorPool, plan_windows
from schemas.messages import ChunkTask, ScoreJobSpec
from schemas.taxonomy import Value
from workers.judges.config import get_judge_config
from workers.store import Store, text_hash

JUDGE_TASK = {"api": "valueflow.api.judge_chunk", "gpu": "valueflow.gpu.judge_chunk"}
SCORE_TASK = "valueflow.refit.score_chunk"


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


async def anchor_pools(store: Store, values: list[Value], k: int) -> list[AnchorPool]:
    pools = []
    for v in values:
        rows = await store.vidb(v.key)
        if len(rows) < k - 1:
            raise ValueError(f"value {v.key!r} has {len(rows)} VIDB items; windows of k={k} need at least {k - 1} "
                             "(import more with 'valueflow vidb import')")
        pools.append(AnchorPool(v.key, np.array([r["id"] for r in rows]), np.array([r["text_id"] for r in rows]),
                                np.array([r["intensity"] for r in rows], dtype=float)))
    return pools


async def existing_text_ids(store: Store, texts: list[str]) -> np.ndarray:
    """Text ids of inputs already stored (−1 otherwise), so a text is never its own anchor."""
    hashes = [text_hash(t) for t in texts]
    rows = await store.pool.fetch("SELECT sha256, id FROM texts WHERE sha256 = ANY($1::bytea[])", hashes)
    ids = {bytes(r["sha256"]): r["id"] for r in rows}
    return np.array([ids.get(h, -1) for h in hashes])


async def submit_score_job(store: Store, app, spec: ScoreJobSpec, rows: list[InputRow], values: list[Value]) -> str:
    """Plan every window, write the job in one transaction, then enqueue its chunks."""
    judge = get_judge_config(spec.judge)
    pools = await anchor_pools(store, values, spec.k)
    item_text_ids = await existing_text_ids(store, [r.text for r in rows])
    windows, chunks = plan_windows(item_text_ids, len(rows), pools, spec.k, spec.windows, spec.anchors,
                                   spec.seed, spec.chunk_size)
    job_id = new_job_id()
    await store.create_job(job_id, "score", spec.model_dump(), [(i, r.ext_id, r.text) for i, r in enumerate(rows)],
                           windows, [(c, judge.queue) for c in chunks])
    enqueue(app, job_id, [(c, judge.queue, "pending") for c in chunks])
    return job_id


def enqueue(app, job_id: str, chunks: list[tuple[int, str, str]]) -> int:
    """Send a judge task for each pending chunk and a score task for each judged one."""
    for chunk_no, queue, state in chunks:
        body = ChunkTask(job_id=job_id, chunk_no=chunk_no).model_dump()
        if state == "judged":
            app.send_task(SCORE_TASK, kwargs=body, queue="refit")
        else:
            app.send_task(JUDGE_TASK[queue], kwargs=body, queue=queue)
    return len(chunks)


async def resume(store: Store, app, job_id: str, retry_failed: bool = False) -> int:
    """Re-enqueue only what is missing; duplicates of tasks still queued are harmless (idempotent)."""
    job = await store.job(job_id)
    if job is None:
        raise ValueError(f"no job {job_id!r}")
    if job["state"] == "cancelled":
        raise ValueError(f"job {job_id} was cancelled")
    if retry_failed:
        await store.reset_failed(job_id)
    elif job["state"] == "done":
        return 0
    chunks = await store.unfinished_chunks(job_id)
    return enqueue(app, job_id, [(c["chunk_no"], c["queue"], c["state"]) for c in chunks])


async def wait(store: Store, job_id: str, show: bool = True, poll_s: float = 0.5, timeout_s: float | None = None) -> str:
    """Block until the job leaves ``running``; a live bar shows windows, calls/s and ETA."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    start = time.monotonic()
    prog = await store.job_progress(job_id)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]:.1f} judge calls/s · failed {task.fields[failed]} · scored {task.fields[scored]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=not show, transient=False) as bar:
        task = bar.add_task(f"job {job_id}", total=prog["total"], rate=0.0, failed=0, scored=0)
        first = prog["done"] + prog["failed"]
        while True:
            job = await store.job(job_id)
            prog = await store.job_progress(job_id)
            finished = prog["done"] + prog["failed"]
            rate = (finished - first) / max(time.monotonic() - start, 1e-9)
            bar.update(task, completed=finished, rate=rate, failed=prog["failed"], scored=prog["scored"])
            if job["state"] != "running":
                return job["state"]
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                return "running"
            await asyncio.sleep(poll_s)


EXPORT_COLUMNS = ["id", "value", "intensity", "stderr", "utility", "utility_se", "windows_used", "windows_failed", "judge"]


async def export(store: Store, job_id: str, path: str | Path) -> int:
    """Write the job's scores as JSONL, CSV or Parquet (by suffix); returns rows written."""
    rows = [dict(r) for r in await store.export_scores(job_id)]
    path = Path(path)
    suffix = path.suffix.lower()
    tmp = path.with_name(path.name + ".part")
    if suffix in (".jsonl", ".ndjson", ".json"):
        with tmp.open("w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    elif suffix == ".csv":
        import csv

        with tmp.open("w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=EXPORT_COLUMNS)
            w.writeheader()
            w.writerows(rows)
    elif suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in EXPORT_COLUMNS})
        pq.write_table(table, tmp)
    else:
        raise ValueError(f"{path}: unsupported export format; use .jsonl, .csv or .parquet")
    tmp.replace(path)  # readers never see a half-written file
    return len(rows)
