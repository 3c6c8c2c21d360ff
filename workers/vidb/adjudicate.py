r"""Human adjudication: merge people's ratings into the VIDB and mark where people and model disagree.

For an item with model intensity :math:`s` and human ratings :math:`h_1..h_m` (several raters may
rate one item), the merged intensity is

.. math::  s^* = (1 - \lambda)\, s + \lambda\, \bar h, \qquad \bar h = \tfrac{1}{m}\sum_j h_j ,

with λ = ``weight`` in [0, 1]. Every rating is recorded with its rater, file and time. An item
loses its ``implausible`` flag, gains ``adjudicated``, and gains ``disputed`` when
:math:`|\bar h - s| >` ``disagree``. Scoring with ``--vidb-filter agreed`` leaves out items flagged
``implausible`` or ``disputed``. Each value adjudicated gets one new version (kind ``adjudicate``).
"""

from __future__ import annotations

from collections import defaultdict

from workers.vidb import versions as V

UNAGREED = ("implausible", "disputed")


def merge(model: float, ratings: list[float], weight: float) -> float:
    """s* = (1 - λ) s + λ mean(h)."""
    return (1.0 - weight) * model + weight * sum(ratings) / len(ratings)


async def adjudicate(store, rows: list[tuple[int, str, float, str]], weight: float, disagree: float,
                     source: str) -> dict[str, dict]:
    """Apply ``rows`` (item_id, value, rating, rater) read from ``source``; all-or-nothing per file."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--weight must be in [0, 1], got {weight}")
    if not rows:
        raise ValueError(f"{source}: no filled-in ratings (column human_rating is empty on every row)")
    ids = sorted({r[0] for r in rows})
    found = {r["id"]: r for r in await store.pool.fetch(
        "SELECT id, value, text_id, intensity, utility, stderr, source FROM vidb_items WHERE id = ANY($1::bigint[])", ids)}
    for item_id, value, _, _ in rows:
        if item_id not in found:
            raise ValueError(f"{source}: item_id {item_id} is not in the VIDB")
        if value and value != found[item_id]["value"]:
            raise ValueError(f"{source}: item_id {item_id} belongs to {found[item_id]['value']!r}, not {value!r}")
    by_item: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for item_id, _, rating, rater in rows:
        by_item[item_id].append((rating, rater))
    by_value: dict[str, list[int]] = defaultdict(list)
    for item_id in by_item:
        by_value[found[item_id]["value"]].append(item_id)
    out = {}
    async with store.pool.acquire() as conn, conn.transaction():
        for value, items in sorted(by_value.items()):
            await V.value_lock(conn, value)
            current = {r["id"]: r for r in await conn.fetch(
                "SELECT id, text_id, intensity, utility, stderr, source FROM vidb_items WHERE id = ANY($1::bigint[])"
                " FOR UPDATE", items)}
            upd, recs, disputed = [], [], 0
            for item_id in items:
                cur = current[item_id]
                ratings = [h for h, _ in by_item[item_id]]
                merged = merge(cur["intensity"], ratings, weight)
                far = abs(sum(ratings) / len(ratings) - cur["intensity"]) > disagree
                disputed += far
                await conn.execute(
                    "UPDATE vidb_items SET flags = array_append(array_remove(array_remove(array_remove(flags,"
                    " 'implausible'), 'disputed'), 'adjudicated'), 'adjudicated') || CASE WHEN $2 THEN"
                    " ARRAY['disputed'] ELSE ARRAY[]::text[] END WHERE id = $1", item_id, far)
                upd.append(dict(text_id=cur["text_id"], intensity=max(-10.0, min(10.0, merged)), utility=cur["utility"],
                                stderr=cur["stderr"], source=cur["source"]))
                recs += [(item_id, rater, h, float(cur["intensity"]), merged, weight, source) for h, rater in by_item[item_id]]
            await conn.copy_records_to_table("vidb_adjudications", columns=[
                "item_id", "rater", "rating", "model", "merged", "weight", "file"], records=recs)
            version = await V.write_version(conn, value, "adjudicate", None, upd, 0, "kept",
                                            note=f"{len(items)} item(s) from {source}, weight {weight}")
            out[value] = {"items": len(items), "ratings": len(recs), "disputed": disputed, "version": version}
    return out
