"""Judge-panel audit: each judge of a panel says whether an item's VIDB intensity is plausible.

* API judges are asked directly, with this project's own prompt and structured output
  (``{"plausible": bool, "reason": str}``; a free-text yes/no is read when the server has no
  structured output).
* Judges that only rank (the embedding judge, local models, the simulated judge) vote through a
  ranking: the item is shown with the value's nearest items at least ``margin`` below and above
  its intensity; the intensity is plausible when the judge puts the item between them (or on the
  right side of the one that exists, at the ends of the scale).

Items with at least ``min_weird`` "implausible" votes get the ``implausible`` flag (an audit
replaces the flags of the previous one); every vote is kept in ``vidb_votes``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

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
    plausible: bool | None  # None: the judge gave no usable answer (not counted)
    reason: str


async def ranking_votes(judge, value: Value, items: list, margin: float) -> list[Vote]:
    """Votes of a ranking judge (see the module docstring)."""
    pool_x = np.array([r["intensity"] for r in items], dtype=float)
    windows, layout = [], []
    for i, r in enumerate(items):
        lo, hi = bracket(r["intensity"], pool_x, margin, exclude=i)
        members = [r["body"]] + [items[j]["body"] for j in (lo, hi) if j is not None]
        layout.append((lo is not None, hi is not None))
        windows.append(members)
    votes: list[Vote] = [Vote(None, "no anchors")] * len(items)
    ask = [i for i, w in enumerate(windows) if len(w) >= 2]
    rankings = await judge.rank_windows(value, [windows[i] for i in ask])
    for i, rk in zip(ask, rankings):
        if rk.order is None:
            votes[i] = Vote(None, rk.failure or "no answer")
            continue
        rank = {p: n for n, p in enumerate(rk.order)}  # position → rank (0 = most supporting)
        has_lo, has_hi = layout[i]
        lo_pos = 1 if has_lo else None
        hi_pos = (2 if has_lo else 1) if has_hi else None
        ok = True
        if hi_pos is not None and rank[0] < rank[hi_pos]:
            ok = False  # ranked above an item scored clearly higher
        if lo_pos is not None and rank[0] > rank[lo_pos]:
            ok = False  # ranked below an item scored clearly lower
        votes[i] = Vote(ok, "ranked between its neighbours" if ok else "ranked outside its neighbours")
    return votes


async def api_votes(config, value: Value, items: list) -> list[Vote]:
    """Votes of an API judge: one structured-output question per item (:data:`PLAUSIBILITY_SCHEMA`)."""
    from workers.llm.client import ChatClient

    client = ChatClient(config)
    try:
        results = await client.chat_many([plausibility_messages(value, r["body"], r["intensity"]) for r in items],
                                         config.temperature, max(config.max_tokens, 96), schema=PLAUSIBILITY_SCHEMA,
                                         schema_name="plausibility")
    finally:
        await client.aclose()
    out = []
    for c in results:
        v = None if c.error else parse_verdict(c.text or "")
        out.append(Vote(None, c.error or "unreadable answer") if v is None else Vote(*v))
    return out


async def audit_value(store, value: str, panel: list[str], min_weird: int, margin: float = 3.0) -> dict:
    """Ask every judge of ``panel`` about every item of the value; flag and return a summary."""
    from workers.judges.config import get_judge_config
    from workers.judges.registry import make_judge
    from workers.vidb.simulated_judge import SimulatedJudge, is_simulated

    val = default_taxonomy().get(value)
    items = await store.vidb(val.key)
    if not items:
        raise ValueError(f"value {val.key!r} has no VIDB items to audit")
    audit_id = uuid.uuid4().hex[:12]
    weird = np.zeros(len(items), dtype=int)
    answered = np.zeros(len(items), dtype=int)
    records = []
    for name in panel:
        if is_simulated(name):
            votes = await ranking_votes(SimulatedJudge(name), val, items, margin)
        else:
            cfg = get_judge_config(name)
            if cfg.kind == "api":
                votes = await api_votes(cfg, val, items)
            else:
                judge = make_judge(cfg, store)
                try:
                    votes = await ranking_votes(judge, val, items, margin)
                finally:
                    await judge.aclose()
        for i, (r, v) in enumerate(zip(items, votes)):
            if v.plausible is None:
                continue
            answered[i] += 1
            weird[i] += not v.plausible
            records.append((r["id"], name, audit_id, float(r["intensity"]), v.plausible, v.reason))
    flagged = [int(items[i]["id"]) for i in np.flatnonzero(weird >= min_weird)]
    async with store.pool.acquire() as conn, conn.transaction():
        from workers.vidb.versions import value_lock

        await value_lock(conn, val.key)
        await conn.copy_records_to_table("vidb_votes", columns=["item_id", "judge", "audit_id", "intensity", "plausible",
                                                                "reason"], records=records)
        await conn.execute("UPDATE vidb_items SET flags = array_remove(flags, 'implausible') WHERE value = $1", val.key)
        await conn.execute("UPDATE vidb_items SET flags = array_append(flags, 'implausible') WHERE id = ANY($1::bigint[])",
                           flagged)
    return {"audit": audit_id, "value": val.key, "items": len(items), "judges": len(panel), "votes": len(records),
            "flagged": len(flagged), "unanswered": int((answered == 0).sum())}


async def flagged_items(store, value: str) -> list[dict]:
    """Items flagged implausible with their latest audit's implausible-vote count, for review."""
    rows = await store.pool.fetch(
        "SELECT v.id AS item_id, v.value, t.body AS text, v.intensity,"
        " (SELECT count(*) FROM vidb_votes o WHERE o.item_id = v.id AND NOT o.plausible AND o.audit_id ="
        "   (SELECT audit_id FROM vidb_votes WHERE item_id = v.id ORDER BY created_at DESC LIMIT 1)) AS votes"
        " FROM vidb_items v JOIN texts t ON t.id = v.text_id"
        " WHERE v.value = $1 AND 'implausible' = ANY(v.flags) ORDER BY v.id", value)
    return [dict(r) for r in rows]
