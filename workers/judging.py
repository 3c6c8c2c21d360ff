"""Judge one chunk of a job's windows and store the comparisons (the body of the judge tasks)."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from schemas.taxonomy import default_taxonomy
from workers.judges.base import Judge
from workers.store import Store

log = logging.getLogger(__name__)


@dataclass
class ChunkOutcome:
    state: str  # judged | skipped | failed
    done: int = 0
    failed: int = 0
    new_comparisons: int = 0


async def judge_chunk(store: Store, judge: Judge, job_id: str, chunk_no: int, max_deliveries: int) -> ChunkOutcome:
    """Rank the chunk's pending windows and record them; idempotent under redelivery.

    Windows already judged are not asked again, and a comparison that is already stored is not
    stored twice (unique key). A chunk delivered more than ``max_deliveries`` times is failed so a
    poisonous chunk cannot loop forever.
    """
    began = await store.begin_chunk(job_id, chunk_no, f"{socket.gethostname()}:{os.getpid()}")
    if began is None:
        return ChunkOutcome("skipped")
    state, deliveries, job_state = began
    if job_state != "running" or state in ("judged", "scored"):
        return ChunkOutcome("skipped" if job_state != "running" else state)
    if deliveries > max_deliveries:
        await store.fail_chunk(job_id, chunk_no, f"delivered {deliveries} times (limit {max_deliveries})")
        return ChunkOutcome("failed")
    windows = await store.pending_windows(job_id, chunk_no)
    bodies = await store.text_bodies([t for w in windows for t in w["members"]])
    taxonomy = default_taxonomy()
    done, failed = [], []
    by_value: dict[str, list] = {}
    for w in windows:
        by_value.setdefault(w["value"], []).append(w)
    for value, ws in by_value.items():
        v = taxonomy.get(value)
        rankings = await judge.rank_windows(v, [[bodies[t] for t in w["members"]] for w in ws])
        for w, r in zip(ws, rankings):
            if r.ok:
                key = bytes.fromhex(r.prompt_hash) if r.prompt_hash else None
                done.append((w["window_id"], value, w["members"], r.order, key))
            else:
                failed.append((w["window_id"], r.failure or "unknown failure"))
    added = await store.record_rankings(job_id, judge.name, done, failed)
    await store.set_chunk_state(job_id, chunk_no, "judged")
    return ChunkOutcome("judged", len(done), len(failed), added)
