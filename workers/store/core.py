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

from workers.store.jobs import JobsMixin
from workers.vidb import versions as V

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


class Store(JobsMixin):
    """All database access. Methods are coroutines; the pool is created by :func:`open_store`.

    Texts, VIDB and caches live here; the job lifecycle's SQL in :mod:`workers.store.jobs`."""

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
                             source: str, only_if_empty: bool = False) -> int:
        """Insert VIDB items; an existing (value, text) keeps its row. Returns rows added.

        Items added make a new version of the value (kind ``import``; the seed's is version 1), so
        scoring jobs, which plan against the latest version, use them, and a job can be judged
        later against exactly what it planned with. ``only_if_empty`` (the seed): add nothing when
        the value has items by the time its lock is held."""
        async with self.pool.acquire() as conn, conn.transaction():
            await V.value_lock(conn, value)
            if only_if_empty and await conn.fetchval("SELECT EXISTS (SELECT 1 FROM vidb_items WHERE value = $1)", value):
                return 0
            ids = await self.intern_texts(bodies, conn)
            status = await self._copy_merge(
                conn, "vidb_items", ("value", "text_id", "intensity", "source"),
                [(value, i, float(x), source) for i, x in zip(ids, intensities)],
                conflict="(value, text_id) DO NOTHING")
            added = int(str(status).split()[-1])
            if added:
                await V.write_version(conn, value, "import", None, [], 0, "kept", n_new=added,
                                      note=f"{added} item(s) imported from {source}")
        return added

    async def vidb(self, value: str) -> list[asyncpg.Record]:
        """A value's VIDB items: id, text_id, body, intensity, utility, stderr, flags."""
        return await self.pool.fetch(
            "SELECT v.id, v.text_id, t.body, v.intensity, v.utility, v.stderr, v.flags "
            "FROM vidb_items v JOIN texts t ON t.id = v.text_id WHERE v.value = $1 ORDER BY v.id", value)

    async def vidb_counts(self) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT value, count(*) AS n FROM vidb_items GROUP BY value")
        return {r["value"]: r["n"] for r in rows}

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


async def open_store(url: str, min_size: int = 1, max_size: int = 8, migrate: bool = True) -> Store:
    """Create the process's pool; by default apply pending migrations (first use upgrades the schema).

    ``migrate=False`` leaves the schema alone (``valueflow db upgrade`` reports what it applied).
    """
    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init_connection)
    if migrate:
        async with pool.acquire() as conn:
            await upgrade(conn)
    return Store(pool)
