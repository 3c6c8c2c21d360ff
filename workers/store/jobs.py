"""The job lifecycle's SQL: staging a job, walking chunks through stages, claiming finalize.

Every transition is one conditional ``UPDATE … WHERE <expected state> RETURNING``: a redelivered
or concurrent task that lost the race gets no row back and does nothing. See
:mod:`schemas.states` for the state diagram.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Sequence

import asyncpg

from schemas.states import ChunkState, JobState

# A pending chunk is *waiting* when its stage task should be in a queue: no worker started it in its
# stage, a recoverer sent it again (:meth:`Store.claim_lost_chunks` clears ``last_worker``), or the
# worker whose task failed let go of it (:meth:`Store.drop_claim`).
_WAITING = "(c.deliveries = 0 OR c.last_worker IS NULL)"
# A pending chunk may be *lost* ($3 = lost_after_s) when it has been waiting, untouched, that long
# (whether its task can still be in a queue is the caller's question: lifecycle._gone_from_queue), or a
# worker process started it and that process is dead: its heartbeat lease expired while the
# database was up for a full lease (after a PostgreSQL restart, live workers get a lease's time to
# beat again), or it never beat (a worker older than heartbeats) and the chunk is untouched that long.
_LOST = (
    f"(({_WAITING} OR NOT EXISTS (SELECT 1 FROM worker_heartbeats h WHERE h.process = c.last_worker))"
    "   AND c.updated_at < now() - make_interval(secs => $3)"
    f" OR NOT {_WAITING} AND EXISTS (SELECT 1 FROM worker_heartbeats h WHERE h.process = c.last_worker"
    "   AND h.expires_at < now() AND pg_postmaster_start_time() < now() - (h.expires_at - h.seen_at)))")

COMPARISON_COLUMNS = ("job_id", "value", "window_id", "item_ids", "judge", "ranking", "response_key")

WINDOW_COLUMNS = ["job_id", "window_id", "chunk_no", "value", "item_no", "members", "target_pos",
                  "anchor_ids", "anchor_intensity", "seed"]


def _columns(rows: Sequence[tuple], n: int) -> list[list]:
    """Rows → n column lists (for one ``UPDATE … FROM unnest(…)`` instead of one statement per row)."""
    return [list(c) for c in zip(*rows)] if rows else [[] for _ in range(n)]


class JobsMixin:
    pool: asyncpg.Pool

    # -- staging: a job is written in batches, invisible until it goes live ------------------------
    async def stage_job(self, job_id: str, kind: str, spec: dict, n_stages: int) -> None:
        await self.pool.execute(
            "INSERT INTO jobs (id, kind, spec, state, n_stages) VALUES ($1, $2, $3, $4, $5)",
            job_id, kind, spec, JobState.STAGING, n_stages)

    async def stage_items(self, job_id: str, items: Sequence[tuple[int, str, str]]) -> list[int]:
        """Store a batch of (item_no, ext_id, body); returns the texts' ids in order."""
        async with self.pool.acquire() as conn, conn.transaction():
            text_ids = await self.intern_texts([b for _, _, b in items], conn)  # type: ignore[attr-defined]
            await conn.copy_records_to_table(
                "job_items", columns=["job_id", "item_no", "ext_id", "text_id"],
                records=[(job_id, no, ext, tid) for (no, ext, _), tid in zip(items, text_ids)])
        return text_ids

    async def stage_windows(self, job_id: str, windows: Sequence[tuple], chunks: Sequence[tuple[int, str]],
                            columns: Sequence[str] = WINDOW_COLUMNS[1:]) -> None:
        """Store planned windows (tuples in ``columns`` order: by default :data:`WINDOW_COLUMNS` without
        job_id; a kind whose windows leave the other columns at their defaults names fewer, which
        halves the COPY) and chunks."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table("windows", columns=["job_id", *columns],
                                             records=[(job_id, *w) for w in windows])
            await conn.copy_records_to_table("chunks", columns=["job_id", "chunk_no", "queue"],
                                             records=[(job_id, c, q) for c, q in chunks])

    async def go_live(self, job_id: str, n_items: int, n_windows: int, n_chunks: int) -> None:
        """Make a staged job visible and runnable, in one statement."""
        done = await self.pool.fetchval(
            "UPDATE jobs SET state=$2, n_items=$3, n_windows=$4, n_chunks=$5, updated_at=now() "
            "WHERE id=$1 AND state=$6 RETURNING id", job_id, JobState.RUNNING, n_items, n_windows, n_chunks,
            JobState.STAGING)
        if done is None:
            raise RuntimeError(f"job {job_id} is not staged")
        # planning may have taken long: the chunks' tasks are sent from now, so they are untouched
        # (not lost: :data:`_LOST`) from now
        await self.pool.execute("UPDATE chunks SET updated_at = now() WHERE job_id = $1", job_id)

    async def drop_staged(self, job_id: str | None = None, older_than_s: float | None = None) -> int:
        """Delete one staged job, or every staged job older than ``older_than_s`` (abandoned submits)."""
        if job_id is not None:
            status = await self.pool.execute("DELETE FROM jobs WHERE id=$1 AND state=$2", job_id, JobState.STAGING)
        else:
            status = await self.pool.execute(
                "DELETE FROM jobs WHERE state=$1 AND created_at < now() - make_interval(secs => $2)",
                JobState.STAGING, float(older_than_s or 0))
        return int(status.split()[-1])

    # -- reading jobs ------------------------------------------------------------------------------
    async def job(self, job_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM jobs WHERE id = $1 AND state <> $2", job_id, JobState.STAGING)

    async def jobs(self, limit: int = 50) -> list[asyncpg.Record]:
        return await self.pool.fetch("SELECT * FROM jobs WHERE state <> $2 ORDER BY created_at DESC LIMIT $1",
                                     limit, JobState.STAGING)

    async def set_job_state(self, job_id: str, state: JobState, error: str | None = None) -> None:
        await self.pool.execute(
            "UPDATE jobs SET state = $2, error = $3, updated_at = now(),"
            " finished_at = CASE WHEN $2 = ANY($4::text[]) THEN now() END WHERE id = $1",
            job_id, state, error, [JobState.DONE, JobState.CANCELLED, JobState.FAILED])

    async def job_progress(self, job_id: str) -> dict[str, Any]:
        """Windows by state, chunks by (stage, state), their deliveries so far, scores written."""
        w = await self.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'done') AS done,"
            " count(*) FILTER (WHERE state = 'failed') AS failed,"
            " count(*) AS total FROM windows WHERE job_id = $1", job_id)
        chunks = await self.pool.fetch(
            "SELECT stage, state, count(*) AS n, sum(deliveries) AS d FROM chunks WHERE job_id = $1 GROUP BY stage, state",
            job_id)
        scored = await self.pool.fetchval("SELECT count(*) FROM scores WHERE job_id = $1", job_id)
        return {"done": w["done"], "failed": w["failed"], "total": w["total"], "scored": scored,
                "chunks": {(r["stage"], r["state"]): r["n"] for r in chunks},
                "deliveries": sum(int(r["d"] or 0) for r in chunks)}

    async def telemetry(self, job_id: str) -> dict[str, Any]:
        """Judge telemetry of a job: calls, tokens, latency percentiles, failures by cause, rate."""
        row = await self.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE judged_at IS NOT NULL) AS judged,"
            " coalesce(sum(attempts) FILTER (WHERE NOT coalesce(cached, false)), 0) AS calls,"
            " count(*) FILTER (WHERE cached) AS cached,"
            " coalesce(sum(tokens_in), 0) AS tokens_in, coalesce(sum(tokens_out), 0) AS tokens_out,"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_s) FILTER (WHERE NOT coalesce(cached, false)) AS p50,"
            " percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_s) FILTER (WHERE NOT coalesce(cached, false)) AS p95,"
            " extract(epoch FROM max(judged_at) - min(c.started_at)) AS span_s"
            " FROM windows w LEFT JOIN (SELECT min(started_at) AS started_at FROM chunks WHERE job_id = $1) c ON true"
            " WHERE w.job_id = $1", job_id)
        causes = await self.pool.fetch(
            "SELECT coalesce(failure_cause, 'other') AS cause, count(*) AS n FROM windows"
            " WHERE job_id = $1 AND state = 'failed' GROUP BY 1 ORDER BY 2 DESC", job_id)
        out = dict(row)
        span = out.pop("span_s")
        out["windows_per_s"] = (out["judged"] / float(span)) if span and float(span) > 0 else None
        out["failures"] = {r["cause"]: r["n"] for r in causes}
        return out

    # -- walking stages ----------------------------------------------------------------------------
    async def begin_stage(self, job_id: str, chunk_no: int, stage: int, worker: str = "") -> tuple[int, str] | None:
        """Count a delivery of (chunk, stage); returns (deliveries, job state), or None when the chunk
        is not waiting in that stage (a stale or duplicate task)."""
        row = await self.pool.fetchrow(
            "UPDATE chunks c SET deliveries = deliveries + 1, updated_at = now(), last_worker = $4,"
            " started_at = coalesce(c.started_at, now()) FROM jobs j"
            " WHERE c.job_id = $1 AND c.chunk_no = $2 AND c.stage = $3 AND c.state = $5 AND j.id = c.job_id"
            " RETURNING c.deliveries, j.state AS job_state", job_id, chunk_no, stage, worker, ChunkState.PENDING)
        return None if row is None else (row["deliveries"], row["job_state"])

    async def advance_chunk(self, job_id: str, chunk_no: int, stage: int, n_stages: int, queue: str | None) -> bool:
        """Move a chunk that finished ``stage`` on (or to done after the last stage). True if this call
        moved it; a duplicate that finished the same stage gets False and enqueues nothing."""
        if stage + 1 < n_stages:
            row = await self.pool.fetchval(
                "UPDATE chunks SET stage = stage + 1, deliveries = 0, queue = coalesce($5, queue), updated_at = now()"
                " WHERE job_id = $1 AND chunk_no = $2 AND stage = $3 AND state = $4 RETURNING chunk_no",
                job_id, chunk_no, stage, ChunkState.PENDING, queue)
        else:
            row = await self.pool.fetchval(
                "UPDATE chunks SET state = $5, updated_at = now()"
                " WHERE job_id = $1 AND chunk_no = $2 AND stage = $3 AND state = $4 RETURNING chunk_no",
                job_id, chunk_no, stage, ChunkState.PENDING, ChunkState.DONE)
        return row is not None

    async def fail_chunk(self, job_id: str, chunk_no: int, stage: int, error: str, worker: str = "") -> bool:
        """Fail a chunk waiting in ``stage``; True if this call failed it. From a worker (``worker``
        given), only while that worker is the chunk's latest holder: a copy of the stage that
        another worker began since (a duplicate delivery) may still finish it, and if it fails too,
        it fails the chunk itself. Only the latest holder counts: a copy begun later that fails still
        fails the chunk under an earlier one, and two copies in one process are not told apart."""
        return await self.pool.fetchval(
            "UPDATE chunks SET state = $5, error = $4, updated_at = now()"
            " WHERE job_id = $1 AND chunk_no = $2 AND stage = $3 AND state = $6"
            " AND ($7 = '' OR last_worker = $7) RETURNING true",
            job_id, chunk_no, stage, error, ChunkState.FAILED, ChunkState.PENDING, worker) is not None

    async def claim_completion(self, job_id: str, has_finalize: bool) -> JobState | None:
        """When every chunk is done: running → finalizing (or → done without a finalize step); when
        every chunk is done or failed and some failed: running → failed. One statement each, so of
        all the workers finishing chunks concurrently exactly one sees the transition."""
        target = JobState.FINALIZING if has_finalize else JobState.DONE
        row = await self.pool.fetchval(
            "UPDATE jobs SET state = $2, updated_at = now(),"
            " finished_at = CASE WHEN $2 = 'done' THEN now() END"
            " WHERE id = $1 AND state = 'running'"
            " AND NOT EXISTS (SELECT 1 FROM chunks WHERE job_id = $1 AND state <> 'done') RETURNING state",
            job_id, target)
        if row is not None:
            return JobState(row)
        row = await self.pool.fetchval(
            "UPDATE jobs SET state = 'failed', updated_at = now(), finished_at = now(),"
            " error = (SELECT count(*) || ' chunk(s) failed; first: ' || min(error) FROM chunks"
            "          WHERE job_id = $1 AND state = 'failed')"
            " WHERE id = $1 AND state = 'running'"
            " AND NOT EXISTS (SELECT 1 FROM chunks WHERE job_id = $1 AND state = 'pending')"
            " AND EXISTS (SELECT 1 FROM chunks WHERE job_id = $1 AND state = 'failed') RETURNING state", job_id)
        return None if row is None else JobState(row)

    @asynccontextmanager
    async def finalize_claim(self, job_id: str) -> AsyncIterator[asyncpg.Connection | None]:
        """A transaction holding the job row while it is ``finalizing``; yields None otherwise.

        The finalize step writes through the yielded connection and marks the job done in the same
        transaction, so it commits once: a duplicate waits on the row lock, then sees ``done``; a
        worker killed mid-way rolls everything back and the redelivered task starts clean.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            state = await conn.fetchval("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            yield conn if state == JobState.FINALIZING else None

    async def pending_chunks(self, job_id: str, lost_after_s: float | None = None) -> list[asyncpg.Record]:
        """Pending chunks (chunk_no, stage, ``waiting``: see :data:`_WAITING`); with ``lost_after_s``,
        only those that may be lost (:data:`_LOST`), with ``touched`` (``updated_at``, epoch seconds)."""
        if lost_after_s is None:
            return await self.pool.fetch(
                f"SELECT c.chunk_no, c.stage, {_WAITING} AS waiting FROM chunks c WHERE c.job_id = $1 AND c.state = $2"
                " ORDER BY c.chunk_no", job_id, ChunkState.PENDING)
        return await self.pool.fetch(
            f"SELECT c.chunk_no, c.stage, {_WAITING} AS waiting, extract(epoch FROM c.updated_at)::float8 AS touched"
            f" FROM chunks c WHERE c.job_id = $1 AND c.state = $2 AND {_LOST} ORDER BY c.chunk_no",
            job_id, ChunkState.PENDING, float(lost_after_s))

    async def claim_lost_chunks(self, job_id: str, chunk_nos: Sequence[int], lost_after_s: float) -> list[asyncpg.Record]:
        """Of ``chunk_nos``, those still lost, marked as sent again now (``updated_at``; no process
        holds them: ``last_worker`` NULL), so they count as lost again only if no worker starts them
        within ``lost_after_s``. Two recoverers claiming at once: the row lock orders them, and the
        second finds the chunk no longer lost."""
        return await self.pool.fetch(
            "UPDATE chunks c SET updated_at = now(), last_worker = NULL"
            f" WHERE c.job_id = $1 AND c.state = $2 AND c.chunk_no = ANY($4::int[]) AND {_LOST}"
            " RETURNING c.chunk_no, c.stage", job_id, ChunkState.PENDING, float(lost_after_s), list(chunk_nos))

    async def drop_claim(self, job_id: str, chunk_no: int, stage: int, worker: str) -> bool:
        """Let go of a chunk this live process started and whose task failed: it counts as waiting
        again, so a retry's :meth:`begin_stage` takes it, or else a sweep sends it again once it has
        been untouched for ``lost_after_s``. Its delivery stays counted. True if this process still
        held it."""
        return await self.pool.fetchval(
            "UPDATE chunks SET last_worker = NULL, updated_at = now() WHERE job_id = $1 AND chunk_no = $2"
            " AND stage = $3 AND state = $4 AND last_worker = $5 RETURNING true",
            job_id, chunk_no, stage, ChunkState.PENDING, worker) is not None

    async def release_claims(self, job_id: str, chunk_nos: Sequence[int], finalize: bool, lost_after_s: float) -> None:
        """Undo a claim whose send failed: the chunks (and the finalize step) count as lost again at
        once (``updated_at`` back by ``lost_after_s``)."""
        back = float(lost_after_s) + 1.0
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE chunks SET updated_at = now() - make_interval(secs => $3) WHERE job_id = $1"
                " AND chunk_no = ANY($2::int[]) AND state = $4 AND last_worker IS NULL",
                job_id, list(chunk_nos), back, ChunkState.PENDING)
            if finalize:
                await conn.execute("UPDATE jobs SET updated_at = now() - make_interval(secs => $2)"
                                   " WHERE id = $1 AND state = $3", job_id, back, JobState.FINALIZING)

    async def start_sweep(self, conn: asyncpg.Connection, every_s: float) -> bool:
        """Inside the sweep's lock: True (and the sweep's time recorded) when no worker swept in the
        last ``every_s`` seconds."""
        return await conn.fetchval(
            "INSERT INTO sweeps AS s (id, swept_at) VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET swept_at = now()"
            " WHERE s.swept_at <= now() - make_interval(secs => $1) RETURNING true", float(every_s)) is not None

    async def claim_lost_finalize(self, job_id: str, lost_after_s: float) -> bool:
        """True when the job has been ``finalizing``, untouched, for ``lost_after_s`` or more and no
        finalize step runs now (a running one holds the job's row: :meth:`finalize_claim`); the job
        is then marked as touched now, so the step counts as lost again only ``lost_after_s`` later."""
        return await self.pool.fetchval(
            "UPDATE jobs SET updated_at = now() WHERE id = (SELECT id FROM jobs WHERE id = $1 AND state = $2"
            " AND updated_at < now() - make_interval(secs => $3) FOR UPDATE SKIP LOCKED) RETURNING true",
            job_id, JobState.FINALIZING, float(lost_after_s)) is not None

    async def unfinished_jobs(self) -> list[str]:
        """Jobs running or finalizing, oldest first."""
        rows = await self.pool.fetch("SELECT id FROM jobs WHERE state = ANY($1::text[]) ORDER BY created_at",
                                     [JobState.RUNNING, JobState.FINALIZING])
        return [r["id"] for r in rows]

    async def heartbeat(self, processes: Sequence[str], valid_s: float) -> None:
        """Worker processes are alive now, and count as alive for ``valid_s`` more seconds; beats
        expired a day ago are dropped."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO worker_heartbeats (process, seen_at, expires_at)"
                " SELECT unnest($1::text[]), now(), now() + make_interval(secs => $2)"
                " ON CONFLICT (process) DO UPDATE SET seen_at = excluded.seen_at, expires_at = excluded.expires_at",
                list(processes), float(valid_s))
            await conn.execute("DELETE FROM worker_heartbeats WHERE expires_at < now() - interval '1 day'")

    async def reset_failed(self, job_id: str, window_stage: int, reset_items=None) -> dict[str, int]:
        """Make failed windows pending again (their chunks go back to ``window_stage``) and failed
        chunks pending in their stage; the job runs again. Nothing already judged is touched.
        ``reset_items(conn, job_id)``: the kind's own reset of failed first-stage items, returning
        their chunks, which go back to stage 0 (see ``JobKind.reset_failed_items``)."""
        async with self.pool.acquire() as conn, conn.transaction():
            first = sorted(await reset_items(conn, job_id)) if reset_items else []
            if first:
                await conn.execute(
                    "UPDATE chunks SET stage = 0, state = 'pending', deliveries = 0, error = NULL, updated_at = now()"
                    " WHERE job_id = $1 AND chunk_no = ANY($2::int[])", job_id, first)
            chunks = await conn.fetch(
                "SELECT DISTINCT chunk_no FROM windows WHERE job_id = $1 AND state = 'failed'", job_id)
            windows = await conn.execute(
                "UPDATE windows SET state = 'pending', failure = NULL, failure_cause = NULL"
                " WHERE job_id = $1 AND state = 'failed'", job_id)
            await conn.execute(
                "UPDATE chunks SET stage = LEAST(stage, $2), state = 'pending', deliveries = 0, error = NULL,"
                " updated_at = now() WHERE job_id = $1 AND chunk_no = ANY($3::int[])",
                job_id, window_stage, [r["chunk_no"] for r in chunks])
            failed_chunks = await conn.execute(
                "UPDATE chunks SET state = 'pending', deliveries = 0, error = NULL, updated_at = now()"
                " WHERE job_id = $1 AND state = 'failed'", job_id)
            out = {"windows": int(windows.split()[-1]),
                   "chunks": len(set(first) | {r["chunk_no"] for r in chunks}) + int(failed_chunks.split()[-1])}
            # a job runs again when something was reset, or when its finalize step failed it
            await conn.execute(
                "UPDATE jobs SET state = 'running', error = NULL, finished_at = NULL, updated_at = now()"
                " WHERE id = $1 AND (state = 'failed' OR (state = 'done' AND $2))", job_id, out["windows"] + out["chunks"] > 0)
        return out

    # -- windows and comparisons -------------------------------------------------------------------
    async def pending_windows(self, job_id: str, chunk_no: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT window_id, value, item_no, members, target_pos, seed FROM windows "
            "WHERE job_id = $1 AND chunk_no = $2 AND state = 'pending' ORDER BY window_id", job_id, chunk_no)

    async def record_rankings(self, job_id: str, chunk_no: int, judge: str, done: Sequence[tuple],
                              failed: Sequence[tuple]) -> int:
        """Store a chunk's judged windows in one transaction; returns how many comparisons were new.

        The window updates name the chunk, so they reach its windows through ``windows_by_chunk``
        (without it PostgreSQL may hash every window of the job for each chunk: quadratic in the
        job's size).

        ``done``: (window_id, value, members, ranking, response_key, telemetry);
        ``failed``: (window_id, reason, cause, telemetry); telemetry = (latency_s, tokens_in,
        tokens_out, attempts, cached).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            added = 0
            if done:
                added = await self._add_comparisons(conn, [
                    (job_id, v, w, list(m), judge, list(r), key) for w, v, m, r, key, _ in done])
                status = await conn.execute(
                    "UPDATE windows w SET state = 'done', failure = NULL, failure_cause = NULL, judged_at = now(),"
                    " latency_s = t.l, tokens_in = t.ti, tokens_out = t.tout, attempts = t.a, cached = t.c"
                    " FROM unnest($2::int[], $3::real[], $4::int[], $5::int[], $6::smallint[], $7::bool[])"
                    " AS t(id, l, ti, tout, a, c) WHERE w.job_id = $1 AND w.chunk_no = $8 AND w.window_id = t.id",
                    job_id, *_columns([(d[0], *d[5]) for d in done], 6), chunk_no)
                updated = int(status.split()[-1])
                if updated != len(done):  # rolls the comparisons back too
                    raise RuntimeError(f"job {job_id}: {len(done)} judged windows, but only {updated} of them are "
                                       f"windows of chunk {chunk_no}")
            if failed:
                await conn.execute(
                    "UPDATE windows w SET state = 'failed', failure = t.f, failure_cause = t.fc, judged_at = now(),"
                    " latency_s = t.l, tokens_in = t.ti, tokens_out = t.tout, attempts = t.a, cached = t.c"
                    " FROM unnest($2::int[], $3::text[], $4::text[], $5::real[], $6::int[], $7::int[], $8::smallint[],"
                    " $9::bool[]) AS t(id, f, fc, l, ti, tout, a, c)"
                    " WHERE w.job_id = $1 AND w.chunk_no = $10 AND w.window_id = t.id AND w.state = 'pending'",
                    job_id, *_columns([(w, reason, cause, *tel) for w, reason, cause, tel in failed], 8), chunk_no)
        return added

    async def _add_comparisons(self, conn: asyncpg.Connection, rows: list[tuple]) -> int:
        """Insert the comparisons not stored yet; returns how many were new.

        A chunk's pending windows have no comparison (a window's comparison and its move to
        ``done`` commit together), so the rows go straight into the table with one COPY, under a
        savepoint. Only a delivery of the same chunk racing this one (it stored some of them first:
        a unique violation) takes the slower path: COPY into a temporary table and
        ``INSERT … ON CONFLICT DO NOTHING``."""
        try:
            async with conn.transaction():
                await conn.copy_records_to_table("comparisons", records=rows, columns=list(COMPARISON_COLUMNS))
            return len(rows)
        except asyncpg.UniqueViolationError:
            status = await self._copy_merge(  # type: ignore[attr-defined]
                conn, "comparisons", COMPARISON_COLUMNS, rows, conflict="(job_id, window_id, judge) DO NOTHING")
            return int(str(status).split()[-1])

    async def fail_pending_windows(self, job_id: str, chunk_no: int, reason: str, cause: str) -> int:
        status = await self.pool.execute(
            "UPDATE windows SET state = 'failed', failure = $3, failure_cause = $4 WHERE job_id = $1 AND chunk_no = $2"
            " AND state = 'pending'", job_id, chunk_no, reason, cause)
        return int(status.split()[-1])

    async def chunk_windows_for_scoring(self, job_id: str, chunk_no: int) -> list[asyncpg.Record]:
        """Every window of a chunk with its comparison (if any), for the anchored fit."""
        return await self.pool.fetch(
            "SELECT w.window_id, w.value, w.item_no, w.members, w.target_pos, w.anchor_intensity, w.state,"
            " c.ranking FROM windows w LEFT JOIN comparisons c"
            " ON c.job_id = w.job_id AND c.window_id = w.window_id"
            " WHERE w.job_id = $1 AND w.chunk_no = $2 ORDER BY w.window_id", job_id, chunk_no)

    async def job_values(self, job_id: str) -> list[str]:
        rows = await self.pool.fetch("SELECT DISTINCT value FROM windows WHERE job_id = $1 ORDER BY value", job_id)
        return [r["value"] for r in rows]

    async def value_windows(self, job_id: str, value: str, batch: int = 50_000) -> AsyncIterator[list[asyncpg.Record]]:
        """A value's windows with their comparisons, in window order, in batches (server-side cursor)."""
        async with self.pool.acquire() as conn, conn.transaction():
            cur = conn.cursor(
                "SELECT w.window_id, w.value, w.item_no, w.members, w.target_pos, w.anchor_intensity, w.state,"
                " c.ranking FROM windows w LEFT JOIN comparisons c"
                " ON c.job_id = w.job_id AND c.window_id = w.window_id"
                " WHERE w.job_id = $1 AND w.value = $2 ORDER BY w.window_id", job_id, value, prefetch=batch)
            rows: list[asyncpg.Record] = []
            async for r in cur:
                rows.append(r)
                if len(rows) >= batch:
                    yield rows
                    rows = []
            if rows:
                yield rows

    # -- results -----------------------------------------------------------------------------------
    async def write_scores(self, job_id: str, rows: Sequence[tuple], conn: asyncpg.Connection | None = None) -> None:
        """Upsert scores: (item_no, value, utility, stderr, intensity, intensity_se, used, failed, judge)."""
        if not rows:
            return
        if conn is None:
            async with self.pool.acquire() as c, c.transaction():
                return await self.write_scores(job_id, rows, c)
        await self._copy_merge(  # type: ignore[attr-defined]
            conn, "scores",
            ("job_id", "item_no", "value", "utility", "stderr", "intensity", "intensity_se",
             "windows_used", "windows_failed", "judge"),
            [(job_id, *r) for r in rows],
            conflict="(job_id, item_no, value) DO UPDATE SET utility = EXCLUDED.utility, stderr = EXCLUDED.stderr,"
                     " intensity = EXCLUDED.intensity, intensity_se = EXCLUDED.intensity_se,"
                     " windows_used = EXCLUDED.windows_used, windows_failed = EXCLUDED.windows_failed")

    async def write_health(self, conn: asyncpg.Connection, job_id: str, rows: Sequence[dict]) -> None:
        await conn.execute("DELETE FROM judge_health WHERE job_id = $1", job_id)
        cols = ["value", "judge", "windows", "windows_failed", "anchor_tau", "anchor_tau_lo", "anchor_tau_hi",
                "beta", "beta_se", "shown_order_share", "first_position_win", "verdict"]
        await conn.copy_records_to_table("judge_health", columns=["job_id", *cols],
                                         records=[(job_id, *[r[c] for c in cols]) for r in rows])

    async def health(self, job_id: str) -> list[asyncpg.Record]:
        return await self.pool.fetch("SELECT * FROM judge_health WHERE job_id = $1 ORDER BY value, judge", job_id)

    async def iter_scores(self, job_id: str, batch: int = 20_000) -> AsyncIterator[list[dict]]:
        """A job's scores joined with the user's ids, streamed in batches from a server-side cursor."""
        async with self.pool.acquire() as conn, conn.transaction():
            cur = conn.cursor(
                "SELECT i.ext_id AS id, s.value, s.intensity, s.intensity_se AS stderr, s.utility,"
                " s.stderr AS utility_se, s.windows_used, s.windows_failed, s.judge FROM scores s"
                " JOIN job_items i ON i.job_id = s.job_id AND i.item_no = s.item_no"
                " WHERE s.job_id = $1 ORDER BY s.item_no, s.value", job_id, prefetch=batch)
            rows: list[dict] = []
            async for r in cur:
                rows.append(dict(r))
                if len(rows) >= batch:
                    yield rows
                    rows = []
            if rows:
                yield rows

