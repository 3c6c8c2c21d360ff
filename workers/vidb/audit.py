"""Judge-panel audit: each judge of a panel says whether an item's VIDB intensity is plausible.

* API judges are asked directly, with this project's own prompt and structured output
  (``{"plausible": bool, "reason": str}``; a free-text yes/no is read when the server has no
  structured output).
* Judges that only rank (the embedding judge, local models, the simulated judge) vote through a
  ranking: the item is shown with the value's nearest items at least ``margin`` below and above
  its intensity; the intensity is plausible when the judge puts the item between them (or on the
  right side of the one that exists, at the ends of the scale).

An audit is a job (kind ``vidb-audit``, :mod:`workers.jobs.kinds.vidb_audit`): the value's items
are snapshotted when it is planned (``vidb_audit_items``), every vote is kept in ``vidb_votes``
under ``audit_id`` = the job id, and finalize gives the items with at least ``min_weird``
"implausible" votes the ``implausible`` flag (replacing the flags an earlier audit gave them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from schemas.taxonomy import Value, default_taxonomy

PLAUSIBILITY_SCHEMA = {
    "type": "object",
    "properties": {"plausible": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["plausible", "reason"],
    "additionalProperties": False,
}

_PROMPT = (
    "Value: {label}\nDefinition: {definition}\n\n"
    "Scores run from -10 (the text strongly opposes the value) through 0 (neutral or unrelated) to "
    "+10 (the text strongly supports the value).\n\n"
    "Text: {text}\n\n"
    "A database gives this text the score {score:+.1f}. Would a careful annotator find that score "
    "plausible, within about two points? Answer in JSON as {{\"plausible\": true or false, "
    "\"reason\": \"one short sentence\"}}."
)


def plausibility_messages(value: Value, text: str, intensity: float) -> list[dict]:
    definition = value.definition or default_taxonomy().definition(value.name, value.theory)
    return [{"role": "system", "content": "You check value-intensity annotations for mistakes."},
            {"role": "user", "content": _PROMPT.format(label=value.key.replace("_", " "), definition=definition,
                                                       text=text, score=intensity)}]


def parse_verdict(text: str) -> tuple[bool, str] | None:
    """(plausible, reason) from a JSON answer or a bare yes/no/true/false; None when unreadable."""
    m = re.search(r"\{.*\}", text or "", re.S)
    if m:
        try:
            obj = json.loads(m.group(0))
            if isinstance(obj.get("plausible"), bool):
                return obj["plausible"], str(obj.get("reason", ""))[:500]
        except (ValueError, AttributeError):
            pass
    w = re.match(r"\W*(yes|no|true|false)\b", (text or "").lower())
    if w:
        return w.group(1) in ("yes", "true"), text.strip()[:500]
    return None


def bracket(intensity: float, pool_x: np.ndarray, margin: float, exclude: int | None = None) -> tuple[int | None, int | None]:
    """Indices of the pool items nearest below ``intensity - margin`` and above ``intensity + margin``
    (never ``exclude``, the item itself)."""
    ok = np.ones(len(pool_x), dtype=bool)
    if exclude is not None:
        ok[exclude] = False
    below = np.flatnonzero(ok & (pool_x <= intensity - margin))
    above = np.flatnonzero(ok & (pool_x >= intensity + margin))
    lo = int(below[np.argmax(pool_x[below])]) if below.size else None
    hi = int(above[np.argmin(pool_x[above])]) if above.size else None
    return lo, hi


@dataclass
class Vote:
    plausible: bool | None  # None: the judge gave no usable answer (not counted, not stored)
    reason: str
    # the answer's telemetry (StageReport.count_answer)
    attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float | None = None
    cached: bool = False


async def ranking_votes(judge, value: Value, items: Sequence, margin: float,
                        subset: Sequence[int] | None = None) -> list[Vote]:
    """Votes of a ranking judge (see the module docstring) on ``items[i]`` for each i of ``subset``
    (default: every item), in that order. ``items`` (``body``, ``intensity``) is the value's whole
    item pool: an item's neighbours come from all of it, not only from the items voted on."""
    pool_x = np.array([r["intensity"] for r in items], dtype=float)
    subset = range(len(items)) if subset is None else subset
    windows, layout = [], []
    for i in subset:
        lo, hi = bracket(items[i]["intensity"], pool_x, margin, exclude=i)
        members = [items[i]["body"]] + [items[j]["body"] for j in (lo, hi) if j is not None]
        layout.append((lo is not None, hi is not None))
        windows.append(members)
    votes: list[Vote] = [Vote(None, "no anchors")] * len(windows)
    ask = [n for n, w in enumerate(windows) if len(w) >= 2]
    rankings = await judge.rank_windows(value, [windows[n] for n in ask])
    for n, rk in zip(ask, rankings):
        tel = dict(attempts=rk.attempts, tokens_in=rk.tokens_in, tokens_out=rk.tokens_out, latency_s=rk.latency_s,
                   cached=rk.cached)
        if rk.order is None:
            votes[n] = Vote(None, rk.failure or "no answer", **tel)
            continue
        rank = {p: k for k, p in enumerate(rk.order)}  # position → rank (0 = most supporting)
        has_lo, has_hi = layout[n]
        lo_pos = 1 if has_lo else None
        hi_pos = (2 if has_lo else 1) if has_hi else None
        ok = True
        if hi_pos is not None and rank[0] < rank[hi_pos]:
            ok = False  # ranked above an item scored clearly higher
        if lo_pos is not None and rank[0] > rank[lo_pos]:
            ok = False  # ranked below an item scored clearly lower
        votes[n] = Vote(ok, "ranked between its neighbours" if ok else "ranked outside its neighbours", **tel)
    return votes


async def api_votes(client, value: Value, items: Sequence) -> list[Vote]:
    """Votes of an API judge through its :class:`~workers.llm.client.ChatClient`: one
    structured-output question per item (:data:`PLAUSIBILITY_SCHEMA`)."""
    config = client.config
    results = await client.chat_many([plausibility_messages(value, r["body"], r["intensity"]) for r in items],
                                     config.temperature, max(config.max_tokens, 96), schema=PLAUSIBILITY_SCHEMA,
                                     schema_name="plausibility")
    out = []
    for c in results:
        v = None if c.error else parse_verdict(c.text or "")
        tel = dict(attempts=c.attempts, tokens_in=c.tokens_in, tokens_out=c.tokens_out, latency_s=c.latency_s)
        out.append(Vote(None, c.error or "unreadable answer", **tel) if v is None else Vote(*v, **tel))
    return out


# -- the audit's rows ------------------------------------------------------------------------------------
async def snapshot_items(conn, audit_id: str, value: str) -> int:
    """Record the value's current items (id, text, intensity) as the audit's; returns how many."""
    status = await conn.execute(
        "INSERT INTO vidb_audit_items (job_id, item_no, item_id, text_id, intensity)"
        " SELECT $1, (row_number() OVER (ORDER BY id) - 1)::int, id, text_id, intensity FROM vidb_items"
        " WHERE value = $2", audit_id, value)
    return int(status.split()[-1])


async def audit_items(conn, audit_id: str, lo: int = 0, hi: int | None = None) -> list:
    """The audit's items ``lo`` ≤ item_no < ``hi`` (all by default) in item order: item_no, item_id,
    body, intensity (as audited)."""
    return await conn.fetch(
        "SELECT a.item_no, a.item_id, t.body, a.intensity FROM vidb_audit_items a JOIN texts t ON t.id = a.text_id"
        " WHERE a.job_id = $1 AND a.item_no >= $2 AND ($3::int IS NULL OR a.item_no < $3) ORDER BY a.item_no",
        audit_id, lo, hi)


async def store_votes(pool, audit_id: str, judge: str, items: Sequence, votes: Sequence[Vote]) -> int:
    """Make ``votes`` the audit's votes of ``judge`` on ``items``, in one transaction: what an earlier
    delivery of the same chunk stored is replaced, so every vote is stored once. Returns the number
    of votes stored (answers without a verdict are not)."""
    got = [(r, v) for r, v in zip(items, votes) if v.plausible is not None]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM vidb_votes WHERE audit_id = $1 AND judge = $2 AND item_id = ANY($3::bigint[])",
                           audit_id, judge, [r["item_id"] for r in items])
        await conn.execute(
            "INSERT INTO vidb_votes (item_id, judge, audit_id, intensity, plausible, reason)"
            " SELECT i, $2, $3, x, p, r"
            " FROM unnest($1::bigint[], $4::float8[], $5::bool[], $6::text[]) AS t(i, x, p, r)"
            " ON CONFLICT (item_id, judge, audit_id) DO UPDATE SET intensity = excluded.intensity,"
            " plausible = excluded.plausible, reason = excluded.reason, created_at = now()",
            [r["item_id"] for r, _ in got], judge, audit_id, [float(r["intensity"]) for r, _ in got],
            [v.plausible for _, v in got], [v.reason for _, v in got])
    return len(got)


async def unvoted(conn, audit_id: str, panel: Sequence[str]) -> list[tuple[int, int]]:
    """(item_no, index of the judge in ``panel``) of every audited item a judge left without a vote
    (an API error, an unreadable answer, or an item a ranking judge could not bracket)."""
    items = await conn.fetch("SELECT item_no, item_id FROM vidb_audit_items WHERE job_id = $1", audit_id)
    voted = {(r["judge"], r["item_id"]) for r in
             await conn.fetch("SELECT judge, item_id FROM vidb_votes WHERE audit_id = $1", audit_id)}
    return [(r["item_no"], j) for r in items for j, judge in enumerate(panel) if (judge, r["item_id"]) not in voted]


async def apply_flags(conn, value: str, audit_id: str, min_weird: int) -> list[int]:
    """Replace the ``implausible`` flags of the audited items by this audit's verdict: flagged are
    those with at least ``min_weird`` "implausible" votes. Items whose intensity changed since the
    snapshot (adjudicated meanwhile) are left alone: the votes were about the old intensity.
    Run inside the caller's transaction, under the value's lock; returns the flagged item ids."""
    audited = ("SELECT a.item_id FROM vidb_audit_items a JOIN vidb_items v ON v.id = a.item_id"
               " WHERE a.job_id = $1 AND v.intensity = a.intensity")
    flagged = [r["item_id"] for r in await conn.fetch(
        "SELECT item_id FROM vidb_votes WHERE audit_id = $1 AND NOT plausible AND item_id IN (" + audited + ")"
        " GROUP BY item_id HAVING count(*) >= $2 ORDER BY item_id", audit_id, min_weird)]
    await conn.execute("UPDATE vidb_items SET flags = array_remove(flags, 'implausible') WHERE value = $2"
                       " AND id IN (" + audited + ")", audit_id, value)
    await conn.execute("UPDATE vidb_items SET flags = array_append(flags, 'implausible') WHERE id = ANY($1::bigint[])",
                       flagged)
    return flagged


_PER_ITEM = (
    "SELECT a.item_no, a.item_id, a.intensity, count(o.item_id) AS votes,"
    " count(o.item_id) FILTER (WHERE NOT o.plausible) AS implausible_votes"
    " FROM vidb_audit_items a LEFT JOIN vidb_votes o ON o.item_id = a.item_id AND o.audit_id = a.job_id"
    " WHERE a.job_id = $1 GROUP BY a.item_no, a.item_id, a.intensity")


async def audit_summary(conn, audit_id: str, min_weird: int) -> dict:
    """items, votes, flagged (items with ≥ ``min_weird`` implausible votes), unanswered (no vote)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS items, coalesce(sum(votes), 0)::int AS votes,"
        " count(*) FILTER (WHERE implausible_votes >= $2) AS flagged, count(*) FILTER (WHERE votes = 0) AS unanswered"
        " FROM (" + _PER_ITEM + ") s", audit_id, min_weird)
    return dict(row)


async def vote_counts(conn, audit_id: str) -> dict[str, int]:
    """Votes stored so far and how many say "implausible" (progress, for ``jobs status``)."""
    row = await conn.fetchrow("SELECT count(*) AS stored, count(*) FILTER (WHERE NOT plausible) AS implausible"
                              " FROM vidb_votes WHERE audit_id = $1", audit_id)
    return dict(row)


async def audit_rows(conn, audit_id: str, min_weird: int) -> list[dict]:
    """One row per audited item: item_id, value, text, intensity (as audited), votes,
    implausible_votes, flagged (by this audit)."""
    rows = await conn.fetch(
        "SELECT s.item_id, v.value, t.body AS text, s.intensity, s.votes, s.implausible_votes,"
        " s.implausible_votes >= $2 AS flagged FROM (" + _PER_ITEM + ") s"
        " JOIN vidb_items v ON v.id = s.item_id JOIN texts t ON t.id = v.text_id ORDER BY s.item_no",
        audit_id, min_weird)
    return [dict(r) for r in rows]


async def flagged_items(store, value: str) -> list[dict]:
    """Items flagged implausible with their latest finished audit's implausible-vote count, for review."""
    rows = await store.pool.fetch(
        "SELECT v.id AS item_id, v.value, t.body AS text, v.intensity,"
        " (SELECT count(*) FROM vidb_votes o WHERE o.item_id = v.id AND NOT o.plausible AND o.audit_id ="
        "   (SELECT l.audit_id FROM vidb_votes l WHERE l.item_id = v.id AND NOT EXISTS"
        "     (SELECT 1 FROM jobs j WHERE j.id = l.audit_id AND j.state <> 'done')"  # not an audit still running
        "    ORDER BY l.created_at DESC LIMIT 1)) AS votes"
        " FROM vidb_items v JOIN texts t ON t.id = v.text_id"
        " WHERE v.value = $1 AND 'implausible' = ANY(v.flags) ORDER BY v.id", value)
    return [dict(r) for r in rows]
