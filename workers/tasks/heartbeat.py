"""Worker liveness: the worker's main process writes, every ``VALUEFLOW_HEARTBEAT_S`` seconds, that
it and each of its pool processes (``host:pid``, as ``chunks.last_worker`` names them) are alive.

A watcher that finds a job stalled (``valueflow jobs wait --resume-stalled``) re-sends a started
chunk only when the process that started it has been silent for 4 beats: it died with its task
(SIGKILL, a lost node), whose message Redis would otherwise hold until the visibility timeout. A
slow chunk on a live worker is left alone.
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


def processes() -> list[str]:
    """``host:pid`` of this process and its children (the prefork pool's processes)."""
    me = psutil.Process()
    host = socket.gethostname()
    return [f"{host}:{p.pid}" for p in [me, *me.children()]]


async def _beat_forever(database_url: str, every_s: float) -> None:
    from workers.store import open_store

    store = None
    while True:
        try:
            store = store or await open_store(database_url)
            await store.heartbeat(processes())
        except Exception as exc:  # noqa: BLE001 - the database may be restarting: beat again later
            log.warning("heartbeat not written (%s: %s); trying again in %s s", type(exc).__name__, exc, every_s)
            if store is not None:
                await store.close()
                store = None
        await asyncio.sleep(every_s)


def start(database_url: str, every_s: float) -> threading.Thread:
    """Beat in a daemon thread of this process for as long as it lives."""
    t = threading.Thread(target=lambda: asyncio.run(_beat_forever(database_url, every_s)),
                         name=f"valueflow-heartbeat-{os.getpid()}", daemon=True)
    t.start()
    return t
