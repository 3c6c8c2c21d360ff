"""VIDB audits: vote → finalize (the ``implausible`` flags).

* **plan** (scheduler): the value's current items are snapshotted (id, text, intensity), so every
  judge votes on the same items at the same intensities; a value without items is refused. The
  items are cut into blocks of ``items_per_chunk``; chunk ``block × J + j`` is judge j's votes on
  that block (J judges in the panel), and waits on that judge's queue (simulated judges:
  ``default``; configured ones: their config's queue). Interleaving the judges makes a chunk's
  judge, and so its queue, follow from its number and the spec alone.
* **vote** (the chunk's judge's queue): the judge's votes on the block's items
  (:mod:`workers.vidb.audit`: API judges are asked, ranking judges rank each item between its
  neighbours in the value's whole snapshot); they replace what an earlier delivery of the chunk
  stored, so a redelivered chunk stores each vote once.
* **finalize** (``refit``, once, under the value's advisory lock): items with at least
  ``min_weird`` "implausible" votes get the flag, the other audited items lose it, and the value
  gets a new version (kind ``audit``, a new one each time the audit finalizes, the audit named in
  its note: the same items and intensities, the new flags), so scoring
  jobs that plan against it, ``--vidb-filter agreed`` among them, see the verdict.
"""

from __future__ import annotations

from typing import AsyncIterator

from schemas.taxonomy import default_taxonomy
from schemas.vidb import VidbAuditSpec
from workers.jobs.judge_stage import judge_of
from workers.jobs.kind import FinalizeContext, JobKind, Stage, StageContext
from workers.jobs.kinds.vidb_build import queue_of_judge
from workers.store import Store
from workers.vidb import audit as A
from workers.vidb.simulated_judge import ensure_judge
from workers.vidb.versions import value_lock, write_version

EXPORT_COLUMNS = ("item_id", "value", "text", "intensity", "votes", "implausible_votes", "flagged")


def chunk_judge(spec: VidbAuditSpec, chunk_no: int) -> tuple[str, int]:
    """(the chunk's judge, the index of its first item); the inverse of :func:`chunk_of`."""
    n = len(spec.panel)
    return spec.panel[chunk_no % n], (chunk_no // n) * spec.items_per_chunk


def chunk_of(spec: VidbAuditSpec, item_no: int, judge_index: int) -> int:
    """The chunk holding judge ``judge_index``'s vote on item ``item_no``."""
    return (item_no // spec.items_per_chunk) * len(spec.panel) + judge_index


def chunk_queue(spec: VidbAuditSpec, chunk_no: int) -> str:
    return queue_of_judge(chunk_judge(spec, chunk_no)[0])


def planner(spec: VidbAuditSpec):
    async def plan(store: Store, job_id: str) -> tuple[int, int, int]:
        n = await A.snapshot_items(store.pool, job_id, spec.value)
        if n == 0:
            raise ValueError(f"value {spec.value!r} has no VIDB items to audit")
        n_chunks = chunk_of(spec, n - 1, len(spec.panel) - 1) + 1
        await store.stage_windows(job_id, [], [(c, chunk_queue(spec, c)) for c in range(n_chunks)])
        return n, 0, n_chunks

    return plan


async def vote_stage(ctx: StageContext) -> None:
    spec: VidbAuditSpec = ctx.spec  # type: ignore[assignment]
    job_id, pool = ctx.job["id"], ctx.store.pool
    name, lo = chunk_judge(spec, ctx.chunk_no)
    hi = lo + spec.items_per_chunk
    value = default_taxonomy().get(spec.value)
    ensure_judge(ctx.resources, name)
    judge = judge_of(ctx, name)  # built once per worker process
    if judge.config.kind == "api":
        items = await A.audit_items(pool, job_id, lo, hi)
        votes = await A.api_votes(judge.client, value, items)  # type: ignore[attr-defined]
    else:
        everything = await A.audit_items(pool, job_id)
        items = everything[lo:hi]
        votes = await A.ranking_votes(judge, value, everything, spec.margin, range(lo, lo + len(items)))
    stored = await A.store_votes(pool, job_id, name, items, votes)
    ctx.report.done += stored
    ctx.report.failed += len(votes) - stored
    for v in votes:
        ctx.report.count_answer(v.attempts, v.tokens_in, v.tokens_out, v.latency_s, v.cached)


async def finalize(ctx: FinalizeContext) -> None:
    spec: VidbAuditSpec = ctx.spec  # type: ignore[assignment]
    await value_lock(ctx.conn, spec.value)
    flagged = await A.apply_flags(ctx.conn, spec.value, ctx.job["id"], spec.min_weird)
    # one version per finalize run: an audit finalizes again after resume --retry-failed
    await write_version(ctx.conn, spec.value, "audit", ctx.job["id"], [], 0, "kept",
                        note=f"audit {ctx.job['id']}: {len(flagged)} item(s) flagged implausible "
                             f"(at least {spec.min_weird} vote(s))")


async def reset_unanswered(conn, job_id: str) -> list[int]:
    """Chunks with an item their judge left without a vote: ``jobs resume --retry-failed`` runs them
    again (they replace what they stored, so each vote stays stored once). An item a ranking judge
    could not bracket counts too and simply stays without a vote."""
    spec = VidbAuditSpec.model_validate_json(await conn.fetchval("SELECT spec::text FROM jobs WHERE id = $1", job_id))
    return sorted({chunk_of(spec, item_no, j) for item_no, j in await A.unvoted(conn, job_id, spec.panel)})


async def _job(store: Store, job_id: str):
    job = await store.job(job_id)
    if job is None:
        raise ValueError(f"no job {job_id!r}")
    return job, VidbAuditSpec.model_validate(job["spec"])


async def export_rows(store: Store, job_id: str) -> AsyncIterator[list[dict]]:
    _, spec = await _job(store, job_id)
    yield await A.audit_rows(store.pool, job_id, spec.min_weird)


async def status_counts(store: Store, job_id: str) -> dict[str, dict[str, int]]:
    job, spec = await _job(store, job_id)
    return {"votes": {**await A.vote_counts(store.pool, job_id), "asked for": job["n_items"] * len(spec.panel)}}


KIND = JobKind(
    name="vidb-audit",
    spec_model=VidbAuditSpec,
    stages=(Stage("vote", chunk_queue, vote_stage),),
    finalize=finalize,
    reset_failed_items=reset_unanswered,
    status_counts=status_counts,
    export_columns=EXPORT_COLUMNS,
    export_rows=export_rows,
)
