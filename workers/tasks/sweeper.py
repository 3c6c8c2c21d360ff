"""Unattended recovery: the work the queues lost is sent again, by a watcher or by the workers.

Lost work (:func:`workers.jobs.lifecycle.resume` with ``lost_after_s``; the rule itself:
``workers/store/jobs.py``, ``_LOST``): a chunk waiting for a worker (never started in its stage,
or sent again by a recoverer, or let go by a live worker whose task for it failed), untouched for
``lost_after_s``, whose task cannot be waiting in its queue behind others: the queue is empty, or
its oldest message was sent more than ``lost_after_s`` after the chunk was last touched (queues
are FIFO, so a task sent before that has left the queue; :func:`workers.tasks.app.oldest_sent`):
a restarted Redis, or a send that never happened, lost it, however busy the queue has been since; a
chunk whose worker process is dead (its heartbeat lease expired: SIGKILL, an OOM kill, a lost node,
whose message Redis would hold until the visibility timeout, hours), busy queue or not; a finalize
step no worker runs, ``lost_after_s`` after the job was last touched. What is sent again is marked
as sent (touched now), so it counts as lost again only if no worker starts it within another
``lost_after_s``: a queue without consumers collects one copy per ``lost_after_s`` at most.

Two callers, one rule (:func:`resend_lost`): ``valueflow jobs wait --resume-stalled`` (one job, when
it stalls) and every worker's sweeper thread (:func:`start`): every ``VALUEFLOW_SWEEP_S`` seconds a
worker sweeps unless another is sweeping at that moment (a PostgreSQL advisory lock) or one swept
less than an interval ago (table ``sweeps``), so the cluster sweeps about once per interval however
many workers it has; ``lost_after_s`` = ``VALUEFLOW_STALL_WARN_S``. If a send fails, its claims are
released, so the next sweep tries again. Sending twice stores nothing twice (a stage or finalize
that already ran is skipped), so the rule may err towards sending; but a copy taken while the
first still runs runs the stage again (an API judge paid twice, a delivery counted), so a chunk
waiting in its queue behind others or running on a live worker is left alone. Limits (each an
early or late re-send, never a lost or duplicated comparison): a queue whose oldest message does
not say when it was sent (sent by a version before 2026-12-06, or by hand) counts as holding every
waiting chunk's task until it moves on; the send time is the sender's clock and the touch the
database's, so clocks more than ``lost_after_s`` apart make the sweep late, or early; a message a
worker holds without running it (taken but not yet started, a retry's countdown: milliseconds to
a minute) is in no queue, so its chunk can be sent again once it has waited ``lost_after_s`` and
its queue has moved on; a worker stopped while holding several messages puts them back in the
order it took them, so their send times are not ordered; the uptime guard on leases knows a
PostgreSQL restart, not a failover to a replica or a network partition between workers and the
database, after which a sweep may re-send chunks that live workers run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Iterable

from workers.jobs import lifecycle
from workers.store import Store

log = logging.getLogger(__name__)

SWEEP_LOCK = 0x76667377  # pg advisory lock key ("vfsw"): one sweeping worker at a time


async def resend_lost(store: Store, app, broker_url: str, job_ids: Iterable[str], lost_after_s: float) -> dict[str, int]:
    """Send again what each job lost; returns the tasks sent per job (jobs with none left out)."""
    from workers.tasks.app import oldest_sent
    from workers.tasks.stage import send

    heads = await asyncio.to_thread(oldest_sent, broker_url)
    sent = {}
    for job_id in job_ids:
        try:
            sends = await lifecycle.resume(store, job_id, lost_after_s=lost_after_s, oldest_sent=heads)
        except Exception as exc:  # noqa: BLE001 - one job's trouble must not stop the others' recovery
            log.warning("job %s: not recovered (%s: %s)", job_id, type(exc).__name__, exc)
            continue
        if not sends:
            continue
        try:
            sent[job_id] = await asyncio.to_thread(send, app, sends)
        except Exception:
            # claimed but maybe not sent: lost again at once (a copy that did go out is a harmless duplicate)
            await store.release_claims(job_id, [s.kwargs["chunk_no"] for s in sends if s.what == "stage"],
                                       any(s.what == "finalize" for s in sends), lost_after_s)
            raise
    return sent


async def sweep(store: Store, app, broker_url: str, lost_after_s: float, every_s: float = 0.0) -> dict[str, int] | None:
    """One sweep over every unfinished job, unless another worker is sweeping or one swept in the
    last ``every_s`` seconds (then None)."""
    async with store.pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SWEEP_LOCK):
            return None
        try:
            if not await store.start_sweep(conn, every_s):
                return None
            sent = await resend_lost(store, app, broker_url, await store.unfinished_jobs(), lost_after_s)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", SWEEP_LOCK)
    for job_id, n in sent.items():
        log.warning("job %s: re-enqueued %d lost task(s)", job_id, n)
    return sent


async def _sweep_forever(database_url: str, broker_url: str, every_s: float, lost_after_s: float) -> None:
    from workers.store import open_store
    from workers.tasks.app import app_for

    app, store = app_for(broker_url), None
    while True:
        await asyncio.sleep(every_s)
        try:
            store = store or await asyncio.wait_for(open_store(database_url), timeout=max(every_s, 10.0))
            # every_s less a little: workers whose timers drift still sweep about once per interval
            await asyncio.wait_for(sweep(store, app, broker_url, lost_after_s, 0.9 * every_s),
                                   timeout=max(every_s, 60.0))
        except Exception as exc:  # noqa: BLE001 - a server may be restarting: sweep again later
            log.warning("sweep for lost tasks failed (%s: %s); trying again in %s s", type(exc).__name__, exc, every_s)
            if store is not None:
                store.pool.terminate()
                store = None


def start(database_url: str, broker_url: str, every_s: float, lost_after_s: float) -> threading.Thread:
    """Sweep in a daemon thread of this process for as long as it lives."""
    t = threading.Thread(target=lambda: asyncio.run(_sweep_forever(database_url, broker_url, every_s, lost_after_s)),
                         name=f"valueflow-sweeper-{os.getpid()}", daemon=True)
    t.start()
    return t
