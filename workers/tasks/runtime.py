"""Per-process state of a worker: one event loop, one database pool, loaded judges and models.

Celery's prefork children each build their own (pools and CUDA contexts must not cross a fork);
everything is created lazily on first use and reused for the life of the process.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable, TypeVar

from workers.infra.perf import tune_malloc
from workers.store import Store, open_store

tune_malloc()
if os.environ.get("VALUEFLOW_TORCH_THREADS"):  # e.g. 1 when several worker processes share the cores
    import torch

    torch.set_num_threads(int(os.environ["VALUEFLOW_TORCH_THREADS"]))

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_store: Store | None = None
_pid: int | None = None
_cache: dict[str, Any] = {}


def _check_fork() -> None:
    global _loop, _store, _pid
    if _pid != os.getpid():
        _loop, _store, _pid = None, None, os.getpid()
        _cache.clear()


def loop() -> asyncio.AbstractEventLoop:
    global _loop
    _check_fork()
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine on the process's loop (tasks are synchronous functions)."""
    return loop().run_until_complete(coro)


def store() -> Store:
    global _store
    _check_fork()
    if _store is None:
        url = os.environ.get("VALUEFLOW_DATABASE_URL")
        if not url:
            from workers.tasks.app import _urls

            url, _ = _urls()
        _store = run(open_store(url))
    return _store


def cached(key: str, factory):
    """Process-wide memo for expensive objects (judges, encoders)."""
    _check_fork()
    if key not in _cache:
        _cache[key] = factory()
    return _cache[key]
