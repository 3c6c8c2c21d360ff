"""PostgreSQL store (asyncpg): migrations, texts, VIDB, jobs, windows, comparisons, scores, caches.

One pool per process (:func:`open_store`). Bulk writes go through ``COPY`` into a temporary table,
then ``INSERT ... ON CONFLICT DO NOTHING`` into the real one, so a redelivered batch is a no-op and
a crash mid-batch leaves nothing half-written (each batch is one transaction).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any, Iterable, Sequence

import asyncpg

MIGRATION_LOCK = 0x56414C55  # advisory-lock id ("VALU"): serialises concurrent upgrades


def text_hash(body: str) -> bytes:
    return hashlib.sha256(body.encode("utf-8")).digest()


def _migrations() -> list[tuple[int, str, str]]:
    out = []
    for entry in resources.files("schemas.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text()))
    return sorted(out)


async def upgrade(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied. Safe to run twice or concurrently."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class Store:
    """All database access. Methods are coroutines; the pool is created by :func:`open_store`."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def close(self) -> None:
        await self.pool.close()

    # -- bulk helper ----------------------------------------------------------------------------
    @staticmethod
    async def _copy_merge(conn: asyncpg.Connection, table: str, columns: Sequence[str],
                          records: Iterable[Sequence[Any]], conflict: str = "DO NOTHING",
                          returning: str | None = None) -> list[asyncpg.Record] | str:
        """COPY records into a temp clone of ``table`` then merge them in one statement."""
        tmp = f"_in_{table}"
        await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {tmp} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP")
        await conn.execute(f"TRUNCATE {tmp}")
        await conn.copy_records_to_table(tmp, records=records, columns=list(columns))
        cols = ", ".join(columns)
        sql = f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {tmp} ON CONFLICT {conflict}"
        if returning:
            return await conn.fetch(sql + f" RETURNING {returning}")
        return await conn.execute(sql)

    # -- texts ----------------------------------------------------------------------------------
    async def intern_texts(self, bodies: Sequence[str], conn: asyncpg.Connection | None = None) -> list[int]:
        """Store texts (deduplicated by SHA-256) and return their ids in input order."""
        if conn is None:
            async with self.pool.acquire() as c, c.transaction():
                return await self.intern_texts(bodies, c)
        hashes = [text_hash(b) for b in bodies]
        unique = dict(zip(hashes, bodies))
        tmp = "_in_texts"
        await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {tmp} (sha256 bytea, body text) ON COMMIT DROP")
        await conn.execute(f"TRUNCATE {tmp}")
        await conn.copy_records_to_table(tmp, records=list(unique.items()), columns=["sha256", "body"])
        await conn.execute(
            f"INSERT INTO texts (sha256, body) SELECT sha256, body FROM {tmp} ORDER BY sha256 ON CONFLICT DO NOTHING")
        rows = await conn.fetch(f"SELECT t.sha256, t.id FROM texts t JOIN {tmp} i USING (sha256)")
        ids = {bytes(r["sha256"]): r["id"] for r in rows}
        return [ids[h] for h in hashes]

    async def text_bodies(self, ids: Sequence[int]) -> dict[int, str]:
        rows = await self.pool.fetch("SELECT id, body FROM texts WHERE id = ANY($1::bigint[])", list(set(ids)))
        return {r["id"]: r["body"] for r in rows}

    # -- VIDB -----------------------------------------------------------------------------------
    async def add_vidb_items(self, value: str, bodies: Sequence[str], intensities: Sequence[float],
                             source: str) -> int:
        """Insert VIDB items; an existing (value, text) keeps its row. Returns rows added."""
        async with self.pool.acquire() as conn, conn.transaction():
            ids = await self.intern_texts(bodies, conn)
            status = await self._copy_merge(
                conn, "vidb_items", ("value", "text_id", "intensity", "source"),
                [(value, i, float(x), source) for i, x in zip(ids, intensities)],
                conflict="(value, text_id) DO NOTHING")
        return int(str(status).split()[-1])

    async def vidb(self, value: str) -> list[asyncpg.Record]:
        """A value's VIDB items: id, text_id, body, intensity, utility, stderr, flags."""
        return await self.pool.fetch(
            "SELECT v.id, v.text_id, t.body, v.intensity, v.utility, v.stderr, v.flags "
            "FROM vidb_items v JOIN texts t ON t.id = v.text_id WHERE v.value = $1 ORDER BY v.id", value)

    async def vidb_counts(self) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT value, count(*) AS n FROM vidb_items GROUP BY value")
        return {r["value"]: r["n"] for r in rows}

    # -- jobs -----------------------------------------------------------------------------------
    async def create_job(self, job_id: str, kind: str, spec: dict, items: Sequence[tuple[int, str, str]],
                         windows: Sequence[tuple], chunks: Sequence[tuple[int, str]]) -> None:
        """Write a planned job in one transaction: all of it lands, or none of it.

        ``items``: (item_no, ext_id, body); ``windows``: :class:`schemas.messages.PlannedWindow`
        (the target's text id is filled in here); ``chunks``: (chunk_no, queue).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            text_ids = await self.intern_texts([b for _, _, b in items], conn)
            await conn.execute(
                "INSERT INTO jobs (id, kind, spec, state, n_items, n_windows, n_chunks) "
                "VALUES ($1, $2, $3, 'running', $4, $5, $6)",
                job_id, kind, spec, len(items), len(windows), len(chunks))
            await conn.copy_records_to_table(
                "job_items", columns=["job_id", "item_no", "ext_id", "text_id"],
                records=[(job_id, no, ext, tid) for (no, ext, _), tid in zip(items, text_ids)])
            by_item = {no: tid for (no, _, _), tid in zip(items, text_ids)}
            await conn.copy_records_to_table(
                "windows",
                columns=["job_id", "window_id", "chunk_no", "value", "item_no", "members", "target_pos",
                         "anchor_ids", "anchor_intensity", "seed"],
                records=[(job_id, w.window_id, w.chunk_no, w.value, w.item_no,
                          [by_item[w.item_no] if m is None else m for m in w.member_text_ids],
                          w.target_pos, w.anchor_ids, w.anchor_intensity, w.seed) for w in windows])
            await conn.copy_records_to_table(
                "chunks", columns=["job_id", "chunk_no", "queue"],
                records=[(job_id, c, q) for c, q in chunks])

    async def job(self, job_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)

    async def jobs(self, limit: int = 50) -> list[asyncpg.Record]:
        return await self.pool.fetch("SELECT * FROM jobs ORDER BY created_at DESC LIMIT $1", limit)

    async def job_progress(self, job_id: str) -> dict[str, int]:
        row = await self.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'done') AS done,"
            " count(*) FILTER (WHERE state = 'failed') AS failed,"
            " count(*) AS total FROM windows WHERE job_id = $1", job_id)
        scored = await self.pool.fetchval("SELECT count(*) FROM scores WHERE job_id = $1", job_id)
        return {"done": row["done"], "failed": row["failed"], "total": row["total"], "scored": scored}

    async def set_job_state(self, job_id: str, state: str) -> None:
        await self.pool.execute(
            "UPDATE jobs SET state = $2, updated_at = now(),"
            " finished_at = CASE WHEN $2 IN ('done', 'cancelled', 'failed') THEN now() END WHERE id = $1",
            job_id, state)

    async def unfinished_chunks(self, job_id: str, retry_failed: bool = False) -> list[asyncpg.Record]:
        states = ["pending", "judged"] + (["failed"] if retry_failed else [])
        return await self.pool.fetch(
            "SELECT chunk_no, queue, state FROM chunks WHERE job_id = $1 AND state = ANY($2::text[]) ORDER BY chunk_no",
            job_id, states)

    async def reset_failed(self, job_id: str) -> None:
        """Make failed windows and chunks pending again (resume --retry-failed)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE windows SET state='pending', failure=NULL WHERE job_id=$1 AND state='failed'", job_id)
            await conn.execute("UPDATE chunks SET state='pending', deliveries=0 WHERE job_id=$1 AND state='failed'", job_id)
            await conn.execute("DELETE FROM scores s USING windows w WHERE s.job_id=$1 AND w.job_id=$1 "
                               "AND w.item_no=s.item_no AND w.value=s.value AND w.state='pending'", job_id)
            await conn.execute("UPDATE jobs SET state='running', finished_at=NULL WHERE id=$1", job_id)

    # -- chunk lifecycle ------------------------------------------------------------------------
    async def begin_chunk(self, job_id: str, chunk_no: int, worker: str = "") -> tuple[str, int, str] | None:
        """Count a delivery; returns (chunk state, deliveries, job state) or None if unknown."""
        row = await self.pool.fetchrow(
            "UPDATE chunks c SET deliveries = deliveries + 1, updated_at = now(), last_worker = $3 FROM jobs j "
            "WHERE c.job_id = $1 AND c.chunk_no = $2 AND j.id = c.job_id "
            "RETURNING c.state, c.deliveries, j.state AS job_state", job_id, chunk_no, worker)
        return None if row is None else (row["state"], row["deliveries"], row["job_state"])

    async def pending_windows(self, job_id: str, chunk_no: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT window_id, value, item_no, members, target_pos, seed FROM windows "
            "WHERE job_id = $1 AND chunk_no = $2 AND state = 'pending' ORDER BY window_id", job_id, chunk_no)

    async def record_rankings(self, job_id: str, judge: str, done: Sequence[tuple],
                              failed: Sequence[tuple[int, str]]) -> int:
        """Store judged windows in one transaction; returns how many comparisons were new.

        ``done``: (window_id, value, members, ranking, response_key); ``failed``: (window_id, reason).
        """
        async with self.pool.acquire() as conn, conn.transaction():
            added = 0
            if done:
                status = await self._copy_merge(
                    conn, "comparisons",
                    ("job_id", "value", "window_id", "item_ids", "judge", "ranking", "response_key"),
                    [(job_id, v, w, list(m), judge, list(r), key) for w, v, m, r, key in done],
                    conflict="(job_id, window_id, judge) DO NOTHING")
                added = int(str(status).split()[-1])
                await conn.execute(
                    "UPDATE windows SET state = 'done', failure = NULL WHERE job_id = $1 AND window_id = ANY($2::int[])",
                    job_id, [d[0] for d in done])
            if failed:
                await conn.executemany(
                    "UPDATE windows SET state = 'failed', failure = $3 WHERE job_id = $1 AND window_id = $2 "
                    "AND state = 'pending'", [(job_id, w, reason) for w, reason in failed])
        return added

    async def fail_chunk(self, job_id: str, chunk_no: int, reason: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE windows SET state='failed', failure=$3 WHERE job_id=$1 AND chunk_no=$2 "
                               "AND state='pending'", job_id, chunk_no, reason)
            await conn.execute("UPDATE chunks SET state='judged', updated_at=now() WHERE job_id=$1 AND chunk_no=$2",
                               job_id, chunk_no)

    async def set_chunk_state(self, job_id: str, chunk_no: int, state: str) -> None:
        await self.pool.execute("UPDATE chunks SET state=$3, updated_at=now() WHERE job_id=$1 AND chunk_no=$2",
                                job_id, chunk_no, state)

    async def chunk_windows_for_scoring(self, job_id: str, chunk_no: int) -> list[asyncpg.Record]:
        """Every window of a chunk with its comparison (if any), for the anchored fit."""
        return await self.pool.fetch(
            "SELECT w.window_id, w.value, w.item_no, w.members, w.target_pos, w.anchor_intensity, w.state,"
            " c.ranking FROM windows w LEFT JOIN comparisons c"
            " ON c.job_id = w.job_id AND c.window_id = w.window_id"
            " WHERE w.job_id = $1 AND w.chunk_no = $2 ORDER BY w.window_id", job_id, chunk_no)

    async def write_scores(self, job_id: str, chunk_no: int, rows: Sequence[tuple]) -> bool:
        """Store a chunk's scores, mark it scored, and finish the job if it was the last chunk.

        ``rows``: (item_no, value, utility, stderr, intensity, intensity_se, used, failed, judge).
        Returns True when this call completed the job.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            # Lock the job row first: score writers of one job queue here instead of deadlocking
            # on the key-share locks their score rows take on it, and the last one sees all chunks.
            await conn.execute("SELECT 1 FROM jobs WHERE id=$1 FOR NO KEY UPDATE", job_id)
            if rows:
                await self._copy_merge(
                    conn, "scores",
                    ("job_id", "item_no", "value", "utility", "stderr", "intensity", "intensity_se",
                     "windows_used", "windows_failed", "judge"),
                    [(job_id, *r) for r in rows], conflict="(job_id, item_no, value) DO NOTHING")
            await conn.execute("UPDATE chunks SET state='scored', updated_at=now() WHERE job_id=$1 AND chunk_no=$2",
                               job_id, chunk_no)
            finished = await conn.fetchval(
                "UPDATE jobs SET state='done', finished_at=now(), updated_at=now() WHERE id=$1 AND state='running' "
                "AND NOT EXISTS (SELECT 1 FROM chunks WHERE job_id=$1 AND state <> 'scored') RETURNING id", job_id)
        return finished is not None

    async def export_scores(self, job_id: str) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT i.ext_id AS id, s.value, s.intensity, s.intensity_se AS stderr, s.utility,"
            " s.stderr AS utility_se, s.windows_used, s.windows_failed, s.judge FROM scores s"
            " JOIN job_items i ON i.job_id = s.job_id AND i.item_no = s.item_no"
            " WHERE s.job_id = $1 ORDER BY s.item_no, s.value", job_id)

    # -- judge cache ----------------------------------------------------------------------------
    async def cache_get(self, keys: Sequence[bytes]) -> dict[bytes, dict]:
        if not keys:
            return {}
        rows = await self.pool.fetch("SELECT key, response FROM judge_cache WHERE key = ANY($1::bytea[])", list(keys))
        return {bytes(r["key"]): r["response"] for r in rows}

    async def cache_put(self, judge: str, entries: dict[bytes, dict]) -> None:
        if not entries:
            return
        await self.pool.execute(
            "INSERT INTO judge_cache (key, judge, response) SELECT k, $2, r::jsonb"
            " FROM unnest($1::bytea[], $3::text[]) AS t(k, r) ON CONFLICT DO NOTHING",
            list(entries), judge, [json.dumps(v) for v in entries.values()])

    # -- embeddings cache -----------------------------------------------------------------------
    async def embeddings_get(self, model_version: str, hashes: Sequence[bytes]) -> dict[bytes, list[float]]:
        rows = await self.pool.fetch(
            "SELECT text_sha256, vector FROM embeddings WHERE model_version=$1 AND text_sha256 = ANY($2::bytea[])",
            model_version, list(hashes))
        return {bytes(r["text_sha256"]): r["vector"] for r in rows}

    async def embeddings_put(self, model_version: str, rows: Sequence[tuple[bytes, Sequence[float]]]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._copy_merge(conn, "embeddings", ("model_version", "text_sha256", "vector"),
                                   [(model_version, h, list(map(float, v))) for h, v in rows])


async def open_store(url: str, min_size: int = 1, max_size: int = 8) -> Store:
    """Create the process's pool and apply pending migrations (first use upgrades the schema)."""
    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init_connection)
    async with pool.acquire() as conn:
        await upgrade(conn)
    return Store(pool)
