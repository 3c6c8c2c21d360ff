"""Operating jobs of every kind: submit, resume, cancel, wait, status, export."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

from schemas.states import FINISHED, JobState
from workers.jobs import lifecycle
from workers.jobs.kind import JobKind
from workers.jobs.registry import get_kind
from workers.store import Store
from workers.tasks.stage import send

EXPORT_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".pq")


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class TasksNotSent(RuntimeError):
    """A job is stored and live, but the broker took none or only some of its tasks."""


async def submit(store: Store, app, kind: JobKind, spec, plan: lifecycle.Planner) -> str:
    """Stage, plan, make live and enqueue a job; returns its id. A broker that fails while the
    tasks are sent raises :class:`TasksNotSent` naming the job (``jobs resume`` sends them)."""
    from kombu.exceptions import OperationalError

    from workers.infra.transient import describe

    job_id = new_job_id()
    sends = await lifecycle.submit(store, kind, spec, job_id, plan)
    try:
        send(app, sends)
    except OperationalError as exc:
        raise TasksNotSent(f"job {job_id} is stored, but the broker did not take its tasks ({describe(exc)}): "
                           f"`valueflow jobs resume {job_id}` sends them once the broker is back (running "
                           "workers' sweep sends them too)") from exc
    return job_id


async def resume(store: Store, app, job_id: str, retry_failed: bool = False) -> int:
    """Re-enqueue every pending chunk (or the finalize step); duplicates of tasks still queued are
    harmless (idempotent). Unattended recovery sends only what is lost: :mod:`workers.tasks.sweeper`."""
    return send(app, await lifecycle.resume(store, job_id, retry_failed))


async def cancel(store: Store, job_id: str) -> None:
    job = await store.job(job_id)
    if job is None:
        raise ValueError(f"no job {job_id!r}")
    if job["state"] in FINISHED:
        raise ValueError(f"job {job_id} already {job['state']}")
    await store.set_job_state(job_id, JobState.CANCELLED)


def _progress(job, prog, n_stages: int) -> tuple[int, int, str]:
    """(finished, total, unit): windows judged when the job has windows, else chunk-stages passed
    (kinds whose stages do not judge windows, e.g. an audit; a steering job before it plans any)."""
    if prog["total"]:
        return prog["done"] + prog["failed"], prog["total"], "windows"
    steps = sum(n * (stage + (state == "done")) for (stage, state), n in prog["chunks"].items())
    return steps, max(job["n_chunks"] * n_stages, 1), "chunk-stages"


def stall_hint(job_id: str, seconds: float) -> str:
    """What a watcher says when a running job stopped moving (no window, chunk or delivery changed)."""
    return (f"job {job_id}: no progress for {seconds:.0f} s. A chunk or finalize step may take that long (a slow "
            f"judge); otherwise: are workers consuming its queues? (`valueflow status` shows each queue's depth.) "
            f"Tasks lost with a killed worker or a restarted Redis are sent again by the workers' sweep (every "
            f"VALUEFLOW_SWEEP_S, once lost for VALUEFLOW_STALL_WARN_S) or at once by `valueflow jobs resume {job_id}`.")


POLL_COST_SHARE = 0.05  # counting a watched job's progress keeps at most this share of one database core busy
POLL_MAX_S = 15.0  # the job's own row (cheap) is read at least this often, so its end is seen at once


async def wait(store: Store, job_id: str, show: bool = True, poll_s: float = 0.5,
               timeout_s: float | None = None, stall_s: float | None = None,
               on_stall: Callable[[], Awaitable[tuple[str, bool]]] | None = None) -> str:
    """Block until the job is finished; a live bar shows windows (or chunk-stages), their rate and ETA.
    When nothing moves for ``stall_s`` seconds (default ``VALUEFLOW_STALL_WARN_S``) it says so, once
    per stall, on stderr: no worker on the job's queues, or tasks lost (``jobs resume``); then awaits
    ``on_stall`` (if given), which returns what to print and whether to try again after another
    ``stall_s`` even if nothing moves (it found nothing to do yet). If it fails (the broker is down,
    say), that is printed and it is tried again after another ``stall_s``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from schemas.settings import load_settings

    start = time.monotonic()
    job = await store.job(job_id)
    n_stages = len(get_kind(job["kind"]).stages)
    prog = await store.job_progress(job_id)
    first, total, unit = _progress(job, prog, n_stages)
    stall_s = float(load_settings().stall_warn_s if stall_s is None else stall_s)
    seen, moved_at, warned = None, time.monotonic(), False
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]:.1f} {task.fields[unit]}/s · failed {task.fields[failed]} · "
                             "{task.fields[state]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=not show, transient=False,
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(f"job {job_id}", total=total, rate=0.0, failed=0, state="running", unit=unit)
        count_at = 0.0
        while True:
            job = await store.job(job_id)  # one row: read every POLL_MAX_S at most, so the end is seen at once
            if job["state"] in FINISHED or time.monotonic() >= count_at:
                # counting a job's windows costs O(windows) (a 10⁶-window job takes the database
                # ~0.3 s, 10⁸ ~30 s): the next count waits POLL_COST_SHARE⁻¹ times as long, but at
                # most half the stall time (a stall is still told apart from a slow count)
                t_poll = time.monotonic()
                prog = await store.job_progress(job_id)
                every = min(max(poll_s, (time.monotonic() - t_poll) / POLL_COST_SHARE), max(stall_s / 2, poll_s))
                count_at = time.monotonic() + every
                finished, total, now_unit = _progress(job, prog, n_stages)
                if now_unit != unit:  # a steering job's windows appeared: count them from here
                    unit, first = now_unit, finished
                rate = (finished - first) / max(time.monotonic() - start, 1e-9)
                bar.update(task, completed=finished, total=total, rate=rate, failed=prog["failed"],
                           state=job["state"], unit=unit)
                if job["state"] in FINISHED:
                    return job["state"]
                now = (finished, prog["failed"], sorted(prog["chunks"].items()), prog["deliveries"], job["state"])
                if now != seen:
                    seen, moved_at, warned = now, time.monotonic(), False
                elif not warned and time.monotonic() - moved_at >= stall_s:
                    bar.console.print(stall_hint(job_id, time.monotonic() - moved_at), style="yellow",
                                      soft_wrap=True, markup=False)
                    warned = True
                    if on_stall is not None:
                        try:
                            said, again = await on_stall()
                        except Exception as exc:  # noqa: BLE001 - reported; the watcher goes on
                            said, again = f"resume failed: {type(exc).__name__}: {exc}", True
                        if again:  # try again after another stall_s
                            moved_at, warned = time.monotonic(), False
                        bar.console.print(said, soft_wrap=True, markup=False)
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                return job["state"]
            await asyncio.sleep(_until(POLL_MAX_S, count_at, start, timeout_s))


def _until(step: float, count_at: float, start: float, timeout_s: float | None) -> float:
    """How long a watcher sleeps: ``step``, but not past the next count or the timeout."""
    now = time.monotonic()
    delay = max(0.0, min(step, count_at - now))
    if timeout_s is not None:
        delay = min(delay, max(0.0, start + timeout_s - now))
    return delay


async def status(store: Store, job_id: str) -> dict[str, Any]:
    """Everything `jobs status` shows: state, per-stage progress, telemetry, judge health."""
    job = await store.job(job_id)
    if job is None:
        raise ValueError(f"no job {job_id!r}")
    kind = get_kind(job["kind"])
    prog = await store.job_progress(job_id)
    stages = []
    n = job["n_chunks"]
    for i, st in enumerate(kind.stages):
        passed = sum(v for (s, state), v in prog["chunks"].items() if s > i or (s == i and state == "done"))
        here = {state: v for (s, state), v in prog["chunks"].items() if s == i and state != "done"}
        stages.append({"stage": st.name, "done": passed, "pending": here.get("pending", 0),
                       "failed": here.get("failed", 0), "of": n})
    return {"job": job_id, "kind": job["kind"], "state": job["state"], "error": job["error"],
            "finalize_runs": job["finalize_runs"], "windows": {k: prog[k] for k in ("done", "failed", "total")},
            "scored": prog["scored"], "stages": stages, "telemetry": await store.telemetry(job_id),
            "health": [dict(h) for h in await store.health(job_id)],
            "counts": await kind.status_counts(store, job_id) if kind.status_counts else {}}


async def export(store: Store, job_id: str, path: str | Path) -> int:
    """Stream the job's results to JSONL, CSV or Parquet (by suffix) in batches; the file appears
    whole or not at all. Judge health goes beside it (``<name>.health.json``) when the job has one."""
    job = await store.job(job_id)
    if job is None:
        raise ValueError(f"no job {job_id!r}")
    if job["state"] == JobState.FAILED:
        raise ValueError(f"job {job_id} failed, nothing exported: {job['error']}")
    kind = get_kind(job["kind"])
    if kind.export_rows is None:
        raise ValueError(f"jobs of kind {kind.name!r} have nothing to export")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise ValueError(f"{path}: unsupported export format; use .jsonl, .csv or .parquet")
    tmp = path.with_name(path.name + ".part")
    columns = list(kind.export_columns)
    n = 0
    batches = kind.export_rows(store, job_id)
    if suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        async for rows in batches:
            table = pa.Table.from_pylist(rows)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            n += len(rows)
        if writer is None:
            pq.write_table(pa.table({c: [] for c in columns}), tmp)
        else:
            writer.close()
    else:
        import csv

        with tmp.open("w", encoding="utf-8", newline="") as fh:
            w = None
            if suffix == ".csv":
                w = csv.DictWriter(fh, fieldnames=columns)
                w.writeheader()
            async for rows in batches:
                if w is not None:
                    w.writerows(rows)
                else:
                    fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                n += len(rows)
    tmp.replace(path)  # readers never see a half-written file
    health = [dict(h) for h in await store.health(job_id)]
    if health:
        path.with_name(path.name + ".health.json").write_text(json.dumps(health, indent=2, default=str) + "\n")
    return n
