"""The scoring pipeline without queue or database: plan → judge → anchored PL, in this process.

Used by ``hives profile --judge`` and as the baseline of ``benchmarks/score_pipeline.py``. It runs
exactly the library functions the workers run, so the two paths cannot drift apart.
"""

from __future__ import annotations

import asyncio

import numpy as np

from workers.jobs.windows import AnchorPool, plan_windows
from schemas.seed import seed_vidb
from schemas.taxonomy import Value
from workers.judges.base import Judge
from workers.scoring import score_rows


def pools_from_items(values: list[Value], items: dict[str, list[tuple[str, float]]]) -> tuple[list[AnchorPool], dict[int, str]]:
    """Anchor pools over in-memory VIDB items; ids are positions in one shared text table."""
    texts: dict[int, str] = {}
    pools = []
    for v in values:
        rows = items[v.key]
        ids = np.arange(len(texts), len(texts) + len(rows))
        texts.update({int(i): t for i, (t, _) in zip(ids, rows)})
        pools.append(AnchorPool(v.key, ids, ids, np.array([x for _, x in rows], dtype=float)))
    return pools, texts


async def score_texts(texts: list[str], values: list[Value], judge: Judge, k: int = 6, m: int = 3, seed: int = 0,
                      mode: str = "upstream", items: dict[str, list[tuple[str, float]]] | None = None) -> list[tuple]:
    """Score rows (item_no, value, utility, se, intensity, intensity_se, used, failed, judge)."""
    pools, anchor_text = pools_from_items(values, items or seed_vidb())
    windows, _ = plan_windows(None, len(texts), pools, k, m, "bucket", seed, chunk_size=10**9)
    by_value: dict[str, list] = {}
    for w in windows:
        by_value.setdefault(w.value, []).append(w)
    rows = []
    for v in values:
        ws = by_value[v.key]
        shown = [[texts[w.item_no] if t is None else anchor_text[t] for t in w.member_text_ids] for w in ws]
        rankings = await judge.rank_windows(v, shown)
        rows += [{"item_no": w.item_no, "value": w.value, "members": w.member_text_ids, "target_pos": w.target_pos,
                  "anchor_intensity": w.anchor_intensity, "state": "done" if r.ok else "failed",
                  "ranking": r.order} for w, r in zip(ws, rankings)]
    return score_rows(rows, mode, judge.name)


def score_texts_sync(*args, **kw) -> list[tuple]:
    return asyncio.run(score_texts(*args, **kw))
