"""The generic tasks every job kind runs on: one stage over one chunk, and the finalize step.

A task is registered per queue (``valueflow.<queue>.stage``, ``valueflow.<queue>.finalize``) and
routed by its name. Each body is thin: parse the message, run the lifecycle function, record the
metrics, send what it says to send next.
"""

from __future__ import annotations

import os
import socket

from celery import current_app, shared_task

from schemas.messages import FinalizeTask, StageTask
from schemas.settings import load_settings
from workers.infra.transient import CLIENT_ERRORS, TRANSIENT
from workers.jobs import lifecycle
from workers.tasks import metrics, runtime
from workers.tasks.app import QUEUES, task_name

# Transient infrastructure faults (a restarted PostgreSQL, a deadlock victim, a dropped socket)
# are retried with backoff; every task body is idempotent, so a retry never stores anything twice.
# Other errors fail the chunk or the job (lifecycle), with the error, instead of being retried.
RETRY = dict(autoretry_for=TRANSIENT, dont_autoretry_for=CLIENT_ERRORS, retry_backoff=True, retry_backoff_max=60,
             retry_jitter=True, max_retries=8)


def send(app, sends: list[lifecycle.Send]) -> int:
    """Enqueue lifecycle sends over one producer connection."""
    if not sends:
        return 0
    with app.producer_or_acquire() as producer:
        for s in sends:
            app.send_task(task_name(s.queue, s.what), kwargs=s.kwargs, producer=producer)
    return len(sends)


def run_stage(**body) -> dict:
    msg = StageTask(**body)
    store = runtime.store()
    out = runtime.run(lifecycle.run_stage(store, runtime.resources, msg, load_settings().max_redeliveries,
                                          f"{socket.gethostname()}:{os.getpid()}"))
    if out.state != "skipped":
        job = runtime.run(store.job(msg.job_id))
        if job is not None:
            from workers.jobs.registry import get_kind

            kind = get_kind(job["kind"])
            metrics.observe_stage(kind.name, kind.stages[msg.stage].name, msg.job_id, msg.chunk_no, out.state,
                                  out.seconds, out.report)
    send(current_app, out.sends)
    return {"state": out.state, "sent": len(out.sends)}


def run_finalize(**body) -> dict:
    msg = FinalizeTask(**body)
    store = runtime.store()
    ran = runtime.run(lifecycle.run_finalize(store, runtime.resources, msg.job_id))
    if ran:
        job = runtime.run(store.job(msg.job_id))
        metrics.FINALIZED.labels(job["kind"] if job else "?").inc()
    return {"ran": ran}


for _q in QUEUES:
    shared_task(name=task_name(_q, "stage"), **RETRY)(run_stage)
    shared_task(name=task_name(_q, "finalize"), **RETRY)(run_finalize)
