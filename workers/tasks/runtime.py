"""Per-process state of a worker: one event loop, one database pool, loaded judges and models.

Celery's prefork children each build their own (pools and CUDA contexts must not cross a fork):
the ``worker_process_init`` signal resets this module in every child, ``worker_process_shutdown``
closes the pool. Everything is created lazily on first use and reused for the life of the process.
"""

from __future__ import annotations

import asyncio
import os
from typing import Awaitable, TypeVar

from celery import signals

from workers.infra.perf import freeze_heap, tune_malloc
from workers.jobs.kind import Resources
from workers.store import Store, open_store

tune_malloc()
if os.environ.get("VALUEFLOW_TORCH_THREADS"):  # e.g. 1 when several worker processes share the cores
    import torch

    torch.set_num_threads(int(os.environ["VALUEFLOW_TORCH_THREADS"]))

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_store: Store | None = None
_freeze_due = False


def _model_loaded() -> None:
    """A loaded model lives as long as the process: freeze it out of the collector's reach, once
    the task that loaded it has returned (so none of the task's own objects are frozen with it)."""
    global _freeze_due
    _freeze_due = True


resources = Resources(on_load=_model_loaded)


def reset() -> None:
    """Forget the parent's loop, pool and models (after a fork)."""
    global _loop, _store
    _loop, _store = None, None
    resources.clear()


def loop() -> asyncio.AbstractEventLoop:
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop


def run(coro: Awaitable[T]) -> T:
    """Run a coroutine on the process's loop (tasks are synchronous functions)."""
    global _freeze_due
    out = loop().run_until_complete(coro)
    if _freeze_due:
        _freeze_due = False
        freeze_heap()
    return out


def store() -> Store:
    global _store
    if _store is None:
        from workers.infra.urls import resolve_urls

        url = os.environ.get("VALUEFLOW_DATABASE_URL") or resolve_urls()[0]
        _store = run(open_store(url))
    return _store


@signals.worker_init.connect
def _parent_started(**_) -> None:
    """Import every job kind once in the worker's parent, before it forks its children (or runs
    tasks itself, with ``--pool solo``), so no task pays for the import; then freeze the heap,
    which the children inherit (the collector then never touches those pages: no copy-on-write)."""
    from workers.jobs.registry import KIND_MODULES, get_kind
    from workers.tasks.metrics import log_process_ready

    for name in KIND_MODULES:
        get_kind(name)
    log_process_ready(freeze_heap(), kinds=sorted(KIND_MODULES), role="parent")


@signals.worker_process_init.connect
def _child_started(**_) -> None:
    from workers.tasks.metrics import log_process_ready

    reset()
    log_process_ready(freeze_heap(), role="child")  # what the parent imported lives as long as the child


@signals.worker_process_shutdown.connect
def _child_stopping(**_) -> None:
    if _store is not None and _loop is not None and not _loop.is_closed():
        try:
            run(_store.close())
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
