r"""Human adjudication: merge people's ratings into the VIDB and mark where people and model disagree.

For an item with model intensity :math:`s` and human ratings :math:`h_1..h_m` (several raters may
rate one item), the merged intensity is

.. math::  s^* = (1 - \lambda)\, s + \lambda\, \bar h, \qquad \bar h = \tfrac{1}{m}\sum_j h_j ,

with λ = ``weight`` in [0, 1]. :math:`s` is the model's intensity before any adjudication (kept in
the item's first adjudication record), and :math:`h` are all the ratings recorded for the item, from
every sheet so far: adjudicating a second sheet, or the same one again, merges into the model's
number, never into an earlier merge. Each rater has one rating per item, the latest: a sheet
replaces its raters' earlier ratings of its items, from whichever sheet they came (so a sheet
applied again, copied or moved, or corrected and saved elsewhere, does not count a person twice),
and keeps every other rater's. Rater, file and time are recorded. An item loses its
``implausible`` flag, gains ``adjudicated``, and gains ``disputed`` when :math:`|\bar h - s| >`
``disagree``. Scoring with ``--vidb-filter agreed`` leaves out items flagged ``implausible`` or
``disputed``. Each value whose items change gets one new version (kind ``adjudicate``); a sheet
that changes nothing (applied before: same ratings, weight and ``disagree`` verdict) writes none.
"""

from __future__ import annotations

from collections import defaultdict

from workers.vidb import versions as V


def merge(model: float, ratings: list[float], weight: float) -> float:
    """s* = (1 - λ) s + λ mean(h)."""
    return (1.0 - weight) * model + weight * sum(ratings) / len(ratings)


async def adjudicate(store, rows: list[tuple[int, str, float, str, int]], weight: float, disagree: float,
                     source: str) -> dict[str, dict]:
    """Apply ``rows`` (item_id, value, rating, rater, line) read from ``source``; all-or-nothing per
    file. Returns per value: items changed, ratings recorded, disputed, version (None: nothing changed)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"--weight must be in [0, 1], got {weight}")
    if not rows:
        raise ValueError(f"{source}: no filled-in ratings (column human_rating is empty on every row)")
    found = {r["id"]: r for r in await store.pool.fetch(
        "SELECT id, value FROM vidb_items WHERE id = ANY($1::bigint[])", sorted({r[0] for r in rows}))}
    by_item: dict[int, dict[str, float]] = defaultdict(dict)  # item → rater → rating, from this sheet
    first_line: dict[tuple[int, str], int] = {}
    for item_id, value, rating, rater, line in rows:
        where = f"{source}:{line}"
        if item_id not in found:
            raise ValueError(f"{where}: field 'item_id': {item_id} is not in the VIDB")
        if value and value != found[item_id]["value"]:
            raise ValueError(f"{where}: field 'value': item {item_id} belongs to {found[item_id]['value']!r}, not {value!r}")
        if (item_id, rater) in first_line:
            raise ValueError(f"{where}: field 'rater': {rater} rated item {item_id} on line "
                             f"{first_line[item_id, rater]} already")
        first_line[item_id, rater] = line
        by_item[item_id][rater] = rating
    by_value: dict[str, list[int]] = defaultdict(list)
    for item_id in by_item:
        by_value[found[item_id]["value"]].append(item_id)
    out = {}
    async with store.pool.acquire() as conn, conn.transaction():
        for value, items in sorted(by_value.items()):
            await V.value_lock(conn, value)
            current = {r["id"]: r for r in await conn.fetch(
                "SELECT id, text_id, intensity, utility, stderr, source, flags FROM vidb_items"
                " WHERE id = ANY($1::bigint[]) FOR UPDATE", items)}
            recorded = defaultdict(list)  # item → (rater, file, rating, model, weight) in record order
            for r in await conn.fetch("SELECT item_id, rater, file, rating, model, weight FROM vidb_adjudications"
                                      " WHERE item_id = ANY($1::bigint[]) ORDER BY id", items):
                recorded[r["item_id"]].append((r["rater"], r["file"], r["rating"], r["model"], r["weight"]))
            upd, recs, disputed = [], [], 0
            for item_id in sorted(items):
                cur, mine = current[item_id], by_item[item_id]
                # this sheet's raters replace their own earlier ratings; every other rater's stay
                replaced = [(rater, h, w) for rater, _, h, _, w in recorded[item_id] if rater in mine]
                model = recorded[item_id][0][3] if recorded[item_id] else float(cur["intensity"])
                ratings = [h for rater, _, h, _, _ in recorded[item_id] if rater not in mine]
                ratings += list(mine.values())
                merged = merge(model, ratings, weight)
                far = abs(sum(ratings) / len(ratings) - model) > disagree
                if sorted(replaced) == sorted((rater, h, weight) for rater, h in mine.items()) and \
                        far == ("disputed" in cur["flags"]):
                    continue  # recorded already, with this weight and the same verdict
                disputed += far
                await conn.execute(
                    "UPDATE vidb_items SET flags = array_append(array_remove(array_remove(array_remove(flags,"
                    " 'implausible'), 'disputed'), 'adjudicated'), 'adjudicated') || CASE WHEN $2 THEN"
                    " ARRAY['disputed'] ELSE ARRAY[]::text[] END WHERE id = $1", item_id, far)
                upd.append(dict(text_id=cur["text_id"], intensity=max(-10.0, min(10.0, merged)), utility=cur["utility"],
                                stderr=cur["stderr"], source=cur["source"]))
                recs += [(item_id, rater, h, model, merged, weight, source) for rater, h in mine.items()]
            if not upd:
                out[value] = {"items": 0, "ratings": 0, "disputed": 0, "version": None}
                continue
            await conn.execute(
                "DELETE FROM vidb_adjudications a USING unnest($1::bigint[], $2::text[]) AS r(item_id, rater)"
                " WHERE a.item_id = r.item_id AND a.rater = r.rater", [r[0] for r in recs], [r[1] for r in recs])
            await conn.copy_records_to_table("vidb_adjudications", columns=[
                "item_id", "rater", "rating", "model", "merged", "weight", "file"], records=recs)
            version = await V.write_version(conn, value, "adjudicate", None, upd, 0, "kept",
                                            note=f"{len(upd)} item(s) from {source}, weight {weight}")
            out[value] = {"items": len(upd), "ratings": len(recs), "disputed": disputed, "version": version}
    return out
