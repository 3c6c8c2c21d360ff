"""The steering tables' SQL (``generations``, see ``schemas/migrations/0004_steering.sql``)."""

from __future__ import annotations

from typing import Sequence

import asyncpg

from workers.store import Store
from workers.store.jobs import WINDOW_COLUMNS

GEN_COLUMNS = ["job_id", "gen_no", "chunk_no", "query_no", "query", "target", "values", "levels", "regime",
               "sample", "seed", "messages", "model"]


async def stage_generations(store: Store, job_id: str, rows: Sequence[tuple]) -> None:
    """Store planned generations (tuples in :data:`GEN_COLUMNS` order without job_id)."""
    cols = ", ".join('"' + c + '"' for c in GEN_COLUMNS)
    params = ", ".join(f"${i + 1}" for i in range(len(GEN_COLUMNS)))
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.executemany(f"INSERT INTO generations ({cols}) VALUES ({params})", [(job_id, *r) for r in rows])


async def pending_generations(store: Store, job_id: str, chunk_no: int) -> list[asyncpg.Record]:
    """Generations of a chunk without a response yet (a failed one is tried again)."""
    return await store.pool.fetch(
        "SELECT gen_no, messages, seed FROM generations WHERE job_id = $1 AND chunk_no = $2 AND text_id IS NULL"
        " ORDER BY gen_no", job_id, chunk_no)


async def store_response(store: Store, job_id: str, gen_no: int, text: str, refusal: bool, match: str | None,
                         telemetry: tuple, worker: str) -> bool:
    """Store one response (text, refusal, telemetry = (tokens_in, tokens_out, latency_s, attempts,
    cached)) and its job item, in one transaction. The first writer wins: a duplicate delivery that
    generated the same generation again stores nothing and gets False."""
    async with store.pool.acquire() as conn, conn.transaction():
        tid = (await store.intern_texts([text], conn))[0]
        got = await conn.fetchval(
            "UPDATE generations SET text_id = $3, refusal = $4, refusal_match = $5, tokens_in = $6, tokens_out = $7,"
            " latency_s = $8, attempts = $9, cached = $10, worker = $11, generated_at = now(), error = NULL"
            " WHERE job_id = $1 AND gen_no = $2 AND text_id IS NULL RETURNING gen_no",
            job_id, gen_no, tid, refusal, match, *telemetry, worker)
        if got is None:
            return False
        await conn.execute("INSERT INTO job_items (job_id, item_no, ext_id, text_id) VALUES ($1, $2, $3, $4)"
                           " ON CONFLICT DO NOTHING", job_id, gen_no, f"g{gen_no}", tid)
    return True


async def store_failure(store: Store, job_id: str, gen_no: int, error: str, attempts: int) -> None:
    await store.pool.execute("UPDATE generations SET error = $3, attempts = $4 WHERE job_id = $1 AND gen_no = $2"
                             " AND text_id IS NULL", job_id, gen_no, error, attempts)


async def reset_failed_generations(conn: asyncpg.Connection, job_id: str) -> list[int]:
    """Clear the error of every generation that failed (no response); returns their chunks, which
    ``jobs resume --retry-failed`` sends back to the generate stage."""
    rows = await conn.fetch("UPDATE generations SET error = NULL WHERE job_id = $1 AND text_id IS NULL"
                            " AND error IS NOT NULL RETURNING chunk_no", job_id)
    return sorted({r["chunk_no"] for r in rows})


async def generation_counts(store: Store, job_id: str) -> dict[str, dict[str, int]]:
    """What ``jobs status`` shows of a steering job's generations."""
    r = await store.pool.fetchrow(
        "SELECT count(*) FILTER (WHERE text_id IS NOT NULL) AS done,"
        " count(*) FILTER (WHERE text_id IS NULL AND error IS NOT NULL) AS failed,"
        " count(*) FILTER (WHERE text_id IS NULL AND error IS NULL) AS pending,"
        " count(*) FILTER (WHERE refusal) AS refusals FROM generations WHERE job_id = $1", job_id)
    return {"generations": {k: int(r[k]) for k in ("done", "failed", "pending", "refusals")}}


async def generated(store: Store, job_id: str, chunk_no: int) -> list[asyncpg.Record]:
    """A chunk's generations that have a response: what gets scored."""
    return await store.pool.fetch(
        "SELECT gen_no, \"values\", text_id FROM generations WHERE job_id = $1 AND chunk_no = $2"
        " AND text_id IS NOT NULL ORDER BY gen_no", job_id, chunk_no)


async def add_windows(store: Store, job_id: str, windows: Sequence[tuple]) -> int:
    """Insert scoring windows (:data:`WINDOW_COLUMNS` without job_id); ids are deterministic, so a
    window planned twice is stored once. Returns how many were new (added to the job's count)."""
    if not windows:
        return 0
    async with store.pool.acquire() as conn, conn.transaction():
        status = await store._copy_merge(conn, "windows", WINDOW_COLUMNS, [(job_id, *w) for w in windows],
                                         conflict="(job_id, window_id) DO NOTHING")
        added = int(str(status).split()[-1])
        if added:
            await conn.execute("UPDATE jobs SET n_windows = n_windows + $2, updated_at = now() WHERE id = $1",
                               job_id, added)
    return added


EXPORT_SQL = (
    "SELECT g.gen_no, g.query_no, g.query, g.target, u.value, u.level, g.regime, g.sample, g.model, g.seed,"
    " t.body AS response, g.refusal, g.refusal_match, s.intensity, s.intensity_se AS stderr, s.windows_used,"
    " s.windows_failed, s.judge, g.error"
    " FROM generations g CROSS JOIN LATERAL unnest(g.\"values\", g.levels) WITH ORDINALITY AS u(value, level, pos)"
    " LEFT JOIN texts t ON t.id = g.text_id"
    " LEFT JOIN scores s ON s.job_id = g.job_id AND s.item_no = g.gen_no AND s.value = u.value"
    " WHERE g.job_id = $1 ORDER BY g.gen_no, u.pos")


async def steer_rows(store: Store, job_id: str) -> list[dict]:
    """One row per (generation, target value) with the response, refusal flag and score."""
    return [dict(r) for r in await store.pool.fetch(EXPORT_SQL, job_id)]
