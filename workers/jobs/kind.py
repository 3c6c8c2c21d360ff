"""What a job kind declares: its spec, stages (each a Celery task over chunks, on a queue) and an
optional finalize step that runs exactly once after every chunk finished the last stage.

A new kind is one module under :mod:`workers.jobs.kinds` that builds a :class:`JobKind` and is
listed in :mod:`workers.jobs.registry`. The lifecycle (:mod:`workers.jobs.lifecycle`) walks chunks
through the stages, counts deliveries, hands off between stages and claims finalize; the kind only
says what each stage does to one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import asyncpg
from pydantic import BaseModel

from workers.store import Store


class JobFailure(Exception):
    """Raised by a finalize step to fail the job with a message (nothing it wrote is kept)."""


class Resources:
    """Expensive per-process objects (judges, models) built once and reused across tasks."""

    def __init__(self, on_load: Callable[[], Any] | None = None) -> None:
        self._cache: dict[str, Any] = {}
        self._on_load = on_load  # run after each new object is built (a worker freezes its heap)

    def cached(self, key: str, factory: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = factory()
            if self._on_load is not None:
                self._on_load()
        return self._cache[key]

    def clear(self) -> None:
        self._cache.clear()


@dataclass
class StageReport:
    """What one stage did to one chunk: logged as one JSON line and exported as metrics."""

    calls: int = 0  # judge or model calls made (cache hits excluded)
    tokens_in: int = 0
    tokens_out: int = 0
    retries: int = 0
    done: int = 0  # windows (or items) finished
    failed: int = 0
    latencies: list[float] = field(default_factory=list)  # per call, seconds

    def count_answer(self, attempts: int, tokens_in: int, tokens_out: int, latency_s: float | None,
                     cached: bool = False) -> None:
        """One judge or model answer: its tokens always; its calls, retries (attempts beyond the
        first) and latency only when it was asked for, not served from the cache."""
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        if cached:
            return
        self.calls += attempts
        self.retries += max(0, attempts - 1)
        if latency_s is not None:
            self.latencies.append(latency_s)

    def add(self, other: "StageReport") -> None:
        for f in ("calls", "tokens_in", "tokens_out", "retries", "done", "failed"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.latencies += other.latencies


@dataclass
class StageContext:
    store: Store
    job: asyncpg.Record
    spec: BaseModel
    chunk_no: int
    stage: int
    resources: Resources
    report: StageReport = field(default_factory=StageReport)


@dataclass
class FinalizeContext:
    store: Store
    conn: asyncpg.Connection  # write through this: it commits together with the job's ``done``
    job: asyncpg.Record
    spec: BaseModel
    resources: Resources


@dataclass(frozen=True)
class Stage:
    name: str
    # (spec, chunk number) → queue name; most stages route by the spec alone, an audit's vote stage by
    # the chunk's judge
    queue: Callable[[BaseModel, int], str]
    run: Callable[[StageContext], Awaitable[None]]  # idempotent: may run again after a redelivery
    # called instead of ``run`` once the chunk was delivered more than the limit; None fails the chunk
    give_up: Callable[[StageContext, str], Awaitable[None]] | None = None


ExportRows = Callable[[Store, str], AsyncIterator[list[dict]]]


@dataclass(frozen=True)
class JobKind:
    name: str
    spec_model: type[BaseModel]
    stages: tuple[Stage, ...]
    finalize: Callable[[FinalizeContext], Awaitable[None]] | None = None
    finalize_queue: str = "refit"
    window_stage: int = 0  # the stage that judges windows: ``resume --retry-failed`` sends chunks back here
    # chunks holding failed items of the kind's own first stage (not windows; e.g. generations), made
    # retryable in the reset's transaction: ``resume --retry-failed`` sends them back to stage 0
    reset_failed_items: Callable[[asyncpg.Connection, str], Awaitable[list[int]]] | None = None
    # extra counts `jobs status` shows for this kind: name → {count name: n} (e.g. generations)
    status_counts: Callable[[Store, str], Awaitable[dict[str, dict[str, int]]]] | None = None
    export_columns: tuple[str, ...] = ()
    export_rows: ExportRows | None = None

    def parse_spec(self, spec: dict) -> BaseModel:
        return self.spec_model.model_validate(spec)

    def queue_of(self, stage: int, spec: BaseModel, chunk_no: int) -> str:
        return self.stages[stage].queue(spec, chunk_no)
