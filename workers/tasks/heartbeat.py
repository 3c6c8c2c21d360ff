"""Worker liveness: the worker's main process writes, every ``VALUEFLOW_HEARTBEAT_S`` seconds, that
it and each of its pool processes are alive, until 4 beats from now (``expires_at``).

A process is named as ``chunks.last_worker`` names it (:func:`process_name`: host, pid and start
time, so a container restarted in the same pod, with the same hostname and pid, is another
process). The workers' sweep (:mod:`workers.tasks.sweeper`, or a watcher that finds a job stalled:
``valueflow jobs wait --resume-stalled``) re-sends a started chunk only when the process that
started it is past its expiry: it died with its task
(SIGKILL, an OOM kill, a lost node), whose message Redis would otherwise hold until the visibility
timeout. A slow chunk on a live worker is left alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading

import psutil

log = logging.getLogger(__name__)

BEATS_TO_DEAD = 4


_own: tuple[int, str] | None = None  # (pid, name) of this process, recomputed after a fork


def process_name(proc: psutil.Process | None = None) -> str:
    """``host:pid:start time`` of a process (this one by default): one run of one process."""
    global _own
    if proc is None:
        if _own is None or _own[0] != os.getpid():
            _own = (os.getpid(), process_name(psutil.Process()))
        return _own[1]
    return f"{socket.gethostname()}:{proc.pid}:{proc.create_time():.2f}"


def processes() -> list[str]:
    """This process and its children (the prefork pool's processes)."""
    me = psutil.Process()
    names = [process_name(me)]
    for child in me.children():
        try:
            names.append(process_name(child))
        except psutil.NoSuchProcess:  # exited since it was listed
            pass
    return names


async def _beat_forever(database_url: str, every_s: float, look_s: float = 1.0) -> None:
    """Beat every ``every_s``, and at once when the pool has a process the last beat did not name
    (looked for every ``look_s``): a new pool process beats before it can have started a chunk for long."""
    from workers.store import open_store

    store, named, due = None, set(), 0.0
    loop = asyncio.get_running_loop()
    while True:
        now = set(processes())
        if loop.time() >= due or not now <= named:
            named, due = now, loop.time() + every_s  # a failed beat is tried again when due
            try:
                # bounded: a beat stuck on a half-open connection must not outlive its own expiry
                store = store or await asyncio.wait_for(open_store(database_url), timeout=max(every_s, 10.0))
                await asyncio.wait_for(store.heartbeat(sorted(now), BEATS_TO_DEAD * every_s), timeout=every_s)
            except Exception as exc:  # noqa: BLE001 - the database may be restarting: beat again later
                log.warning("heartbeat not written (%s: %s); trying again in %s s", type(exc).__name__, exc, every_s)
                if store is not None:
                    store.pool.terminate()
                    store = None
        await asyncio.sleep(min(look_s, every_s))


def start(database_url: str, every_s: float) -> threading.Thread:
    """Beat in a daemon thread of this process for as long as it lives."""
    t = threading.Thread(target=lambda: asyncio.run(_beat_forever(database_url, every_s)),
                         name=f"valueflow-heartbeat-{os.getpid()}", daemon=True)
    t.start()
    return t
