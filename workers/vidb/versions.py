"""VIDB state in PostgreSQL: current items, immutable versions, the comparisons a value's fit uses.

A version is written by :func:`write_version` inside the caller's transaction (a job's finalize
step, or an adjudication), after :func:`value_lock` has serialised it against every other writer
of the same value: the current rows in ``vidb_items`` are updated and all of the value's items are
snapshotted under the next version number, so a killed writer leaves nothing half-written and
versions of one value are numbered in commit order.
"""

from __future__ import annotations

from typing import Any, Sequence

import asyncpg
import numpy as np


UNAGREED = ("implausible", "disputed")  # flags set by `vidb audit` and `vidb adjudicate`


def agreed(flags) -> bool:
    """Whether an item with these flags is agreed: neither the audit nor people doubt its intensity
    (such items anchor scoring with ``--vidb-filter agreed`` and calibrate builds and expansions)."""
    return not any(f in UNAGREED for f in flags or ())


async def value_lock(conn: asyncpg.Connection, value: str) -> None:
    """Transaction-scoped advisory lock on a value: every write to its items (a refit, an audit's
    verdict, an adjudication, an import) runs one at a time; different values in parallel."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('vidb:' || $1)::bigint)", value)


async def current_items(conn, value: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, text_id, intensity, utility, stderr, flags, source FROM vidb_items WHERE value = $1"
        " ORDER BY text_id", value)


async def latest_version(conn, value: str) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM vidb_versions WHERE value = $1", value))


async def latest_versions(conn, values: Sequence[str] | None = None) -> dict[str, int]:
    """Each of ``values``' latest version (0: none yet); ``None``: every value that has one."""
    rows = await conn.fetch("SELECT value, max(version) AS v FROM vidb_versions"
                            " WHERE $1::text[] IS NULL OR value = ANY($1::text[]) GROUP BY value",
                            None if values is None else list(values))
    got = {r["value"]: int(r["v"]) for r in rows}
    return got if values is None else {v: got.get(v, 0) for v in values}


async def view_items(conn, values: Sequence[str] | None = None, versions: dict[str, int] | None = None,
                     only_agreed: bool = False) -> list[asyncpg.Record]:
    """The items (value, id, text_id, intensity) of ``values`` (None: every value) as a job sees the
    VIDB: a value in ``versions`` (version ≥ 1) as that version's snapshot, any other as its current
    items; with ``only_agreed``, none flagged :data:`UNAGREED`. In (value, id) order."""
    pinned = {v: n for v, n in (versions or {}).items() if n > 0}
    return await conn.fetch(
        "SELECT value, id, text_id, intensity FROM ("
        " SELECT value, id, text_id, intensity, flags FROM vidb_items WHERE NOT (value = ANY($1::text[]))"
        " UNION ALL SELECT v.value, v.item_id, v.text_id, v.intensity, v.flags FROM vidb_version_items v"
        " JOIN unnest($1::text[], $2::int[]) AS p(value, version) ON v.value = p.value AND v.version = p.version) x"
        " WHERE NOT (flags && $3::text[]) AND ($4::text[] IS NULL OR value = ANY($4::text[])) ORDER BY value, id",
        list(pinned), list(pinned.values()), list(UNAGREED) if only_agreed else [],
        None if values is None else list(values))


async def vidb_view(conn, values: Sequence[str]) -> dict[str, int]:
    """What a job that scores ``values`` records as the VIDB it ranks against: the latest version of
    each of them (0: no items yet) and of every other value (a judge that learns from the VIDB,
    the embedding judge, learns from all values)."""
    return {**await latest_versions(conn), **await latest_versions(conn, values)}


async def gather_comparisons(conn, value: str, job_ids: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The value's comparisons from its source jobs and ``job_ids`` as two flat arrays: every
    comparison's members in rank order (best first; ``item_ids[ranking]``), one after another, and
    each comparison's length. The order is fixed (job, window, judge) so a refit is reproducible.
    PostgreSQL numbers the comparisons in that order and ranks their members; the flat triples
    (number, rank, member) are put in order here, so a refit of 10⁶ comparisons decodes three
    arrays instead of 10⁶ rows of Python lists."""
    row = await conn.fetchrow(
        "WITH c AS (SELECT row_number() OVER (ORDER BY job_id, window_id, judge) AS n, item_ids, ranking"
        "  FROM comparisons WHERE value = $1"
        "  AND job_id = ANY(SELECT job_id FROM vidb_sources WHERE value = $1 UNION SELECT unnest($2::text[])))"
        " SELECT array_agg(c.n) AS n, array_agg(r.o) AS o, array_agg(c.item_ids[r.pos + 1]) AS ids"
        " FROM c, unnest(c.ranking) WITH ORDINALITY AS r(pos, o)", value, list(job_ids))
    if row["n"] is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    n, o = np.array(row["n"], dtype=np.int64), np.array(row["o"], dtype=np.int64)
    ranked = np.array(row["ids"], dtype=np.int64)[np.lexsort((o, n))]
    lengths = np.bincount(n)[1:].astype(np.int64)
    return ranked, lengths[lengths > 0]  # an empty ranking (none is stored today) ranks nothing


async def add_sources(conn, value: str, job_ids: Sequence[str]) -> None:
    await conn.execute("INSERT INTO vidb_sources (value, job_id) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
                       value, list(job_ids))


async def write_version(conn: asyncpg.Connection, value: str, kind: str, job_id: str | None,
                        items: Sequence[dict[str, Any]], n_comparisons: int, scale: str,
                        note: str | None = None, n_new: int | None = None) -> int:
    """Upsert ``items`` (text_id, intensity, utility, stderr, source) into the value's current rows and
    snapshot every item of the value as the next version; returns its number. Call inside a
    transaction holding :func:`value_lock`. ``n_new``: items the caller added itself just before
    (an import) or calibrated again as new (a refit after ``resume --retry-failed``), counted as
    the version's new items with those ``items`` adds."""
    version = await latest_version(conn, value) + 1
    before = int(await conn.fetchval("SELECT count(*) FROM vidb_items WHERE value = $1", value))
    await conn.execute(
        "INSERT INTO vidb_items (value, text_id, intensity, utility, stderr, fit_version, source)"
        " SELECT $1, t, i, u, s, $7, src FROM unnest($2::bigint[], $3::float8[], $4::float8[], $5::float8[], $6::text[])"
        " AS x(t, i, u, s, src)"
        " ON CONFLICT (value, text_id) DO UPDATE SET intensity = EXCLUDED.intensity, utility = EXCLUDED.utility,"
        " stderr = EXCLUDED.stderr, fit_version = EXCLUDED.fit_version",
        value, [int(r["text_id"]) for r in items], [float(r["intensity"]) for r in items],
        [None if r.get("utility") is None else float(r["utility"]) for r in items],
        [None if r.get("stderr") is None else float(r["stderr"]) for r in items],
        [str(r["source"]) for r in items], version)
    n_items = int(await conn.fetchval("SELECT count(*) FROM vidb_items WHERE value = $1", value))
    await conn.execute(
        "INSERT INTO vidb_versions (value, version, kind, job_id, n_items, n_new, n_comparisons, scale, note)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        value, version, kind, job_id, n_items, n_items - before + (n_new or 0), n_comparisons, scale, note)
    await conn.execute(
        "INSERT INTO vidb_version_items (value, version, item_id, text_id, intensity, utility, stderr, flags, source)"
        " SELECT value, $2, id, text_id, intensity, utility, stderr, flags, source FROM vidb_items WHERE value = $1",
        value, version)
    return version


async def versions(conn, value: str | None = None) -> list[asyncpg.Record]:
    if value is None:
        return await conn.fetch("SELECT * FROM vidb_versions ORDER BY value, version")
    return await conn.fetch("SELECT * FROM vidb_versions WHERE value = $1 ORDER BY version", value)


async def version_exists(conn, value: str, version: int) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM vidb_versions WHERE value = $1 AND version = $2", value, version))


async def version_items(conn, value: str, version: int | None = None) -> list[asyncpg.Record]:
    """A version's items with their texts (``None``: the current rows, which equal the latest
    version plus any items imported since)."""
    if version is None:
        return await conn.fetch(
            "SELECT v.id AS item_id, v.text_id, t.body AS text, v.intensity, v.utility, v.stderr, v.flags, v.source"
            " FROM vidb_items v JOIN texts t ON t.id = v.text_id WHERE v.value = $1 ORDER BY v.id", value)
    if not await version_exists(conn, value, version):
        raise ValueError(f"value {value!r} has no VIDB version {version}")
    return await conn.fetch(
        "SELECT v.item_id, v.text_id, t.body AS text, v.intensity, v.utility, v.stderr, v.flags, v.source"
        " FROM vidb_version_items v JOIN texts t ON t.id = v.text_id WHERE v.value = $1 AND v.version = $2"
        " ORDER BY v.item_id", value, version)


async def diff(conn, value: str, a: int, b: int, min_change: float = 0.0) -> dict[str, list[dict]]:
    """Items added, removed and whose intensity changed by more than ``min_change`` from version a to b."""
    old = {r["text_id"]: r for r in await version_items(conn, value, a)}
    new = {r["text_id"]: r for r in await version_items(conn, value, b)}
    added = [dict(new[t]) for t in new.keys() - old.keys()]
    removed = [dict(old[t]) for t in old.keys() - new.keys()]
    changed = [{"text": new[t]["text"], "item_id": new[t]["item_id"], "from": old[t]["intensity"],
                "to": new[t]["intensity"], "flags_from": list(old[t]["flags"]), "flags_to": list(new[t]["flags"])}
               for t in new.keys() & old.keys()
               if abs(new[t]["intensity"] - old[t]["intensity"]) > min_change or list(new[t]["flags"]) != list(old[t]["flags"])]
    key = lambda r: r["item_id"]  # noqa: E731
    return {"added": sorted(added, key=key), "removed": sorted(removed, key=key), "changed": sorted(changed, key=key)}
