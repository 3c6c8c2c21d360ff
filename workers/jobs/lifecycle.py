"""One lifecycle for every job kind: submit (staged, then live), stages over chunks, finalize once.

These coroutines decide *what* runs and return :class:`Send` instructions; the Celery layer
(:mod:`workers.tasks.stage`) turns them into messages, and tests can run them inline. Hand-off is
generic: a chunk that finishes stage *s* is moved to *s+1* by one conditional update and only the
worker whose update took effect sends the next task; the worker that moves the last chunk past
the last stage claims completion (``running → finalizing``), and the finalize step commits in the
same transaction that marks the job ``done`` (:meth:`Store.finalize_claim`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal, Mapping

from pydantic import BaseModel

from schemas.messages import StageTask
from schemas.states import JobState
from workers.infra.transient import describe, is_transient
from workers.jobs.kind import FinalizeContext, JobFailure, JobKind, Resources, StageContext, StageReport
from workers.jobs.registry import get_kind
from workers.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Send:
    """A task to enqueue: a stage of one chunk, or a job's finalize step."""

    what: Literal["stage", "finalize"]
    queue: str
    kwargs: dict


@dataclass
class StageOutcome:
    state: str  # ran | gave_up | failed | skipped
    sends: list[Send]
    report: StageReport
    seconds: float = 0.0
    kind: str = ""  # the job's kind and the stage's name (for metrics; empty when skipped)
    stage: str = ""


async def _load(store: Store, job_id: str) -> tuple | None:
    job = await store.job(job_id)
    if job is None:
        return None
    kind = get_kind(job["kind"])
    return job, kind, kind.parse_spec(job["spec"])


# -- submit ------------------------------------------------------------------------------------------
Planner = Callable[[Store, str], Awaitable[tuple[int, int, int]]]


async def submit(store: Store, kind: JobKind, spec: BaseModel, job_id: str, plan: Planner) -> list[Send]:
    """Stage the job, let ``plan(store, job_id)`` write its items, windows and chunks in batches
    (returning their counts), then make it live in one statement. If planning fails (bad input
    found half-way, say) the staged rows are deleted and nothing was ever visible."""
    await store.drop_staged(older_than_s=24 * 3600)  # submits abandoned by a killed scheduler
    await store.stage_job(job_id, kind.name, spec.model_dump(), len(kind.stages))
    try:
        n_items, n_windows, n_chunks = await plan(store, job_id)
        await store.go_live(job_id, n_items, n_windows, n_chunks)
    except BaseException:
        await store.drop_staged(job_id)
        raise
    chunks = await store.pending_chunks(job_id)
    if not chunks:  # nothing to do (an empty job): complete it now
        return await _complete(store, kind, job_id)
    return [Send("stage", kind.queue_of(0, spec, c["chunk_no"]),
                 StageTask(job_id=job_id, chunk_no=c["chunk_no"], stage=0).model_dump()) for c in chunks]


# -- stages ------------------------------------------------------------------------------------------
async def run_stage(store: Store, resources: Resources, msg: StageTask, max_deliveries: int,
                    worker: str = "") -> StageOutcome:
    """Run one stage of one chunk; idempotent under redelivery and duplicate delivery."""
    t0 = time.monotonic()
    loaded = await _load(store, msg.job_id)
    if loaded is None:
        return StageOutcome("skipped", [], StageReport())
    job, kind, spec = loaded
    began = await store.begin_stage(msg.job_id, msg.chunk_no, msg.stage, worker)
    if began is None or began[1] != JobState.RUNNING:
        return StageOutcome("skipped", [], StageReport())
    try:
        return await _run_begun(store, kind, spec, job, resources, msg, began[0], max_deliveries, t0, worker)
    except Exception as exc:
        # A sweep never counts a chunk that a live process holds as lost, and the task's retry may
        # never come (Celery drops a retry it cannot publish): let go of the chunk (a retry's
        # begin_stage takes it again), or fail it once its deliveries are spent and no retry would fix it.
        spent = began[0] > max_deliveries and not is_transient(exc)
        await _let_go(store, msg, worker, f"stage {kind.stages[msg.stage].name}: {describe(exc)}" if spent else None)
        raise


async def _let_go(store: Store, msg: StageTask, worker: str, error: str | None) -> None:
    try:
        if error is not None:
            await store.fail_chunk(msg.job_id, msg.chunk_no, msg.stage, error, worker)  # a sweep completes the job
        elif await store.drop_claim(msg.job_id, msg.chunk_no, msg.stage, worker):
            log.warning("job %s chunk %s: stage %s failed outside its work; it waits to be sent again",
                        msg.job_id, msg.chunk_no, msg.stage)
    except Exception as exc:  # noqa: BLE001 - the task's own error is the one to report
        log.warning("job %s chunk %s: could not let go of the chunk (%s)", msg.job_id, msg.chunk_no, describe(exc))


async def _run_begun(store: Store, kind: JobKind, spec: BaseModel, job, resources: Resources, msg: StageTask,
                     deliveries: int, max_deliveries: int, t0: float, worker: str) -> StageOutcome:
    """The stage's work (or its give-up) and the hand-off, once :meth:`Store.begin_stage` counted
    this delivery."""
    stage = kind.stages[msg.stage]
    ctx = StageContext(store, job, spec, msg.chunk_no, msg.stage, resources)
    state = "ran"
    if deliveries > max_deliveries:
        reason = f"delivered {deliveries} times (limit {max_deliveries})"
        if stage.give_up is None:
            return await _fail_chunk(store, kind, msg, ctx, stage.name, reason, t0, worker)
        work, state = stage.give_up(ctx, reason), "gave_up"
    else:
        work = stage.run(ctx)
    try:
        await work
    except Exception as exc:  # noqa: BLE001
        if is_transient(exc):
            raise  # the task retries it
        # it would fail every retry the same way: fail the chunk (retryable), not the job
        log.exception("job %s chunk %s: stage %s failed", msg.job_id, msg.chunk_no, stage.name)
        return await _fail_chunk(store, kind, msg, ctx, stage.name, describe(exc), t0, worker)
    sends = await _advance(store, kind, spec, msg)
    return StageOutcome(state, sends, ctx.report, time.monotonic() - t0, kind.name, stage.name)


async def _fail_chunk(store: Store, kind: JobKind, msg: StageTask, ctx: StageContext, stage: str, error: str,
                      t0: float, worker: str) -> StageOutcome:
    """Fail the chunk (``jobs resume --retry-failed`` runs it again); the job goes on without it.
    Not when another worker began this stage since (:meth:`Store.fail_chunk`): its copy goes on."""
    if not await store.fail_chunk(msg.job_id, msg.chunk_no, msg.stage, f"stage {stage}: {error}", worker):
        log.warning("job %s chunk %s: stage %s failed here (%s); the chunk is left as it is: another copy holds"
                    " or finished it, or it waits to be sent again", msg.job_id, msg.chunk_no, stage, error)
    return StageOutcome("failed", await _complete(store, kind, msg.job_id), ctx.report, time.monotonic() - t0,
                        kind.name, stage)


async def _advance(store: Store, kind: JobKind, spec: BaseModel, msg: StageTask) -> list[Send]:
    last = msg.stage + 1 == len(kind.stages)
    nxt = None if last else kind.queue_of(msg.stage + 1, spec, msg.chunk_no)
    if not await store.advance_chunk(msg.job_id, msg.chunk_no, msg.stage, len(kind.stages), nxt):
        return []  # a duplicate already moved this chunk on
    if not last:
        return [Send("stage", nxt, StageTask(job_id=msg.job_id, chunk_no=msg.chunk_no, stage=msg.stage + 1).model_dump())]
    return await _complete(store, kind, msg.job_id)


async def _complete(store: Store, kind: JobKind, job_id: str) -> list[Send]:
    state = await store.claim_completion(job_id, kind.finalize is not None)
    if state == JobState.FINALIZING:
        return [Send("finalize", kind.finalize_queue, {"job_id": job_id})]
    return []


# -- finalize ----------------------------------------------------------------------------------------
async def run_finalize(store: Store, resources: Resources, job_id: str) -> bool:
    """Run the kind's finalize step if the job is ``finalizing``; True if this call ran it.

    Its writes and the job's move to ``done`` (or ``failed`` on :class:`JobFailure`) commit
    together, so the step takes effect exactly once however often the task is delivered.
    """
    loaded = await _load(store, job_id)
    if loaded is None:
        return False
    job, kind, spec = loaded
    async with store.finalize_claim(job_id) as conn:
        if conn is None:
            return False
        try:
            async with conn.transaction():  # a savepoint: a JobFailure drops what finalize wrote
                await kind.finalize(FinalizeContext(store, conn, job, spec, resources))  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001
            if is_transient(exc):
                raise  # the task retries it
            # a JobFailure, or an error that would fail every retry the same way
            if not isinstance(exc, JobFailure):
                log.exception("job %s: finalize failed", job_id)
            error = str(exc) if isinstance(exc, JobFailure) else f"finalize: {describe(exc)}"
            await conn.execute("UPDATE jobs SET state = 'failed', error = $2, finalize_runs = finalize_runs + 1,"
                               " finished_at = clock_timestamp(), updated_at = clock_timestamp() WHERE id = $1", job_id, error)
            return True
        # clock_timestamp(), not now(): now() is when this transaction began, before the finalize ran
        await conn.execute("UPDATE jobs SET state = 'done', error = NULL, finalize_runs = finalize_runs + 1,"
                           " finished_at = clock_timestamp(), updated_at = clock_timestamp() WHERE id = $1", job_id)
    return True


# -- resume ------------------------------------------------------------------------------------------
def _gone_from_queue(queue: str, touched: float, lost_after_s: float, oldest_sent: Mapping[str, float]) -> bool:
    """Whether a task sent when its chunk (or job) was last touched (``touched``, epoch seconds)
    can no longer be waiting in ``queue``: the queue is empty, or its oldest message was sent more
    than ``lost_after_s`` after that (FIFO: everything sent before it has left the queue). The
    slack absorbs the gap between the touch and the send, and the skew between the database's
    clock and the sender's."""
    return queue not in oldest_sent or oldest_sent[queue] > touched + lost_after_s


async def resume(store: Store, job_id: str, retry_failed: bool = False, lost_after_s: float | None = None,
                 oldest_sent: Mapping[str, float] | None = None) -> list[Send]:
    """What to enqueue so the job finishes: pending chunks at their stage, a lost completion claim,
    or a finalize step. With ``retry_failed``, failed windows and chunks are made pending first.

    With ``lost_after_s`` (unattended recovery), only what is lost, claimed as sent again now so
    that it counts as lost again only after another ``lost_after_s`` (:meth:`Store.claim_lost_chunks`,
    :meth:`Store.claim_lost_finalize`): chunks :meth:`Store.pending_chunks` finds lost, less the
    waiting ones whose task may still be waiting in their queue behind others
    (:func:`_gone_from_queue`; ``oldest_sent``: per non-empty queue, when its oldest message was
    sent, :func:`workers.tasks.app.oldest_sent`); a finalize step when none runs, the job has been
    finalizing for ``lost_after_s`` and its task cannot be waiting in the finalize queue. A chunk a
    live worker has started may still be running, and is left alone."""
    oldest_sent = oldest_sent or {}
    loaded = await _load(store, job_id)
    if loaded is None:
        raise ValueError(f"no job {job_id!r}")
    job, kind, spec = loaded
    if job["state"] == JobState.CANCELLED:
        raise ValueError(f"job {job_id} was cancelled")
    if retry_failed:
        await store.reset_failed(job_id, kind.window_stage, kind.reset_failed_items)
        job = await store.job(job_id)
    state = job["state"]
    if state == JobState.FINALIZING:
        if lost_after_s is not None and (
                not _gone_from_queue(kind.finalize_queue, job["updated_at"].timestamp(), lost_after_s, oldest_sent)
                or not await store.claim_lost_finalize(job_id, lost_after_s)):
            return []
        return [Send("finalize", kind.finalize_queue, {"job_id": job_id})]
    if state != JobState.RUNNING:
        return []
    chunks = await store.pending_chunks(job_id)
    if not chunks:
        return await _complete(store, kind, job_id)
    if lost_after_s is None:  # by hand: every pending chunk; those lost are marked as sent now
        await store.claim_lost_chunks(job_id, [c["chunk_no"] for c in chunks], 0.0)
    else:
        lost = [c for c in await store.pending_chunks(job_id, lost_after_s)
                if not c["waiting"] or _gone_from_queue(kind.queue_of(c["stage"], spec, c["chunk_no"]),
                                                        c["touched"], lost_after_s, oldest_sent)]
        chunks = await store.claim_lost_chunks(job_id, [c["chunk_no"] for c in lost], lost_after_s) if lost else []
    return [Send("stage", kind.queue_of(c["stage"], spec, c["chunk_no"]),
                 StageTask(job_id=job_id, chunk_no=c["chunk_no"], stage=c["stage"]).model_dump())
            for c in sorted(chunks, key=lambda c: c["chunk_no"])]


async def run_inline(store: Store, resources: Resources, sends: list[Send], max_deliveries: int = 5) -> None:
    """Execute sends in this process until none are left (tests, and small jobs without workers)."""
    todo = list(sends)
    while todo:
        s = todo.pop(0)
        if s.what == "finalize":
            await run_finalize(store, resources, s.kwargs["job_id"])
        else:
            todo += (await run_stage(store, resources, StageTask(**s.kwargs), max_deliveries)).sends
