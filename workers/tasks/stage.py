"""The generic tasks every job kind runs on: one stage over one chunk, and the finalize step.

A task is registered per queue (``valueflow.<queue>.stage``, ``valueflow.<queue>.finalize``) and
routed by its name. Each body is thin: parse the message, run the lifecycle function, send what
it says to send next, then record the metrics (which never fail a task).
"""

from __future__ import annotations

import logging
import time

from celery import current_app, shared_task
from kombu.exceptions import OperationalError

from schemas.messages import FinalizeTask, StageTask
from schemas.settings import load_settings
from workers.infra.transient import CLIENT_ERRORS, TRANSIENT, permanent_unless_transient
from workers.jobs import lifecycle
from workers.tasks import heartbeat, metrics, runtime
from workers.tasks.app import QUEUES, sent_now, task_name

# Transient infrastructure faults (a restarted PostgreSQL, a deadlock victim, a dropped socket)
# are retried with backoff (at most 60 s apart) for as long as they last: a task that gave up after
# a fixed number of tries while PostgreSQL was down for maintenance would leave its chunk held by a
# live worker, which no sweep re-sends. A stage that began counts a delivery per try, so
# VALUEFLOW_MAX_REDELIVERIES bounds those; every task body is idempotent, so a retry never stores
# anything twice. Other errors fail the chunk or the job (lifecycle), with the error, at once.
RETRY = dict(autoretry_for=TRANSIENT, dont_autoretry_for=CLIENT_ERRORS, retry_backoff=True, retry_backoff_max=60,
             retry_jitter=True, max_retries=None)


# A worker's hand-off is committed in PostgreSQL before its message is sent, and a retried task
# finds the chunk already moved on (it sends nothing), so the send itself rides out a broker
# restart: it keeps reconnecting for HANDOFF_PATIENCE_S before it gives up (Celery's default
# publish retry gives up within a second, and a connection that is not up yet is tried once, for
# ``broker_connection_timeout``). A message sent twice (a publish whose confirmation was lost) is a
# duplicate delivery, which sends nothing further.
HANDOFF_PATIENCE_S = 80.0
log = logging.getLogger(__name__)


def send(app, sends: list[lifecycle.Send]) -> int:
    """Enqueue lifecycle sends over one producer connection.

    ``ignore_result``: nobody waits on a lifecycle task's result (progress lives in PostgreSQL), and
    without it Celery subscribes to each task's result channel before publishing, one more Redis
    round trip per task, and one that fails with a RuntimeError, not a broker error, while Redis is
    away."""
    if not sends:
        return 0
    with app.producer_or_acquire() as producer:
        for s in sends:
            app.send_task(task_name(s.queue, s.what), kwargs=s.kwargs, producer=producer, ignore_result=True,
                          headers=sent_now())  # the sweep's horizon: app.oldest_sent
    return len(sends)


def hand_off(app, sends: list[lifecycle.Send], job_id: str, patience_s: float = HANDOFF_PATIENCE_S) -> int:
    """Send what a stage committed to sending, one message at a time, reconnecting for up to
    ``patience_s`` while the broker is away; past that, say what was not sent and how to send it,
    then fail the task."""
    deadline = time.monotonic() + patience_s
    for i, s in enumerate(sends):
        delay = 0.5
        while True:
            try:
                send(app, [s])
                break
            except OperationalError:
                if time.monotonic() + delay > deadline:
                    log.error("job %s: %d task(s) committed in PostgreSQL could not be sent (broker unreachable for "
                              "%.0f s): `valueflow jobs resume %s` sends them", job_id, len(sends) - i, patience_s,
                              job_id)
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 5.0)
    return len(sends)


def _observe(record, *args) -> None:
    """Metrics never fail a task whose work is committed and handed off."""
    try:
        record(*args)
    except Exception:  # noqa: BLE001
        log.exception("recording metrics failed")


def run_stage(**body) -> dict:
    msg = StageTask(**body)
    store = runtime.store()
    out = runtime.run(lifecycle.run_stage(store, runtime.resources, msg, load_settings().max_redeliveries,
                                          heartbeat.process_name()))
    sent = hand_off(current_app, out.sends, msg.job_id)  # first: the chunk has moved on in PostgreSQL
    if out.state != "skipped":
        _observe(metrics.observe_stage, out.kind, out.stage, msg.job_id, msg.chunk_no, out.state, out.seconds,
                 out.report)
    return {"state": out.state, "sent": sent}


def run_finalize(**body) -> dict:
    msg = FinalizeTask(**body)
    store = runtime.store()
    ran = runtime.run(lifecycle.run_finalize(store, runtime.resources, msg.job_id))
    if ran:
        _observe(_count_finalize, store, msg.job_id)
    return {"ran": ran}


def _count_finalize(store, job_id: str) -> None:
    job = runtime.run(store.job(job_id))
    metrics.FINALIZED.labels(job["kind"] if job else "?").inc()


for _q in QUEUES:
    shared_task(name=task_name(_q, "stage"), **RETRY)(permanent_unless_transient(run_stage))
    shared_task(name=task_name(_q, "finalize"), **RETRY)(permanent_unless_transient(run_finalize))
