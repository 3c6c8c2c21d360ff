"""The scoring pipeline without queue or database: plan → judge → anchored PL, in this process.

Used by ``hives profile --judge``, benchmarks and tests as the reference for the queue: it runs
exactly the library functions the workers run (:func:`workers.jobs.kinds.score.plan_block`,
the judge, :func:`workers.jobs.kinds.score.score_windows`), so the two paths cannot drift apart.
"""

from __future__ import annotations

import asyncio

import numpy as np

from schemas.messages import ScoreJobSpec
from schemas.seed import seed_vidb
from schemas.taxonomy import Value
from workers.jobs.kinds.score import PLAN_BLOCK, plan_block, score_windows
from workers.jobs.windows import AnchorPool
from workers.judges.base import Judge


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
                      mode: str = "upstream", items: dict[str, list[tuple[str, float]]] | None = None,
                      layout: str | None = None, anchors: str = "bucket") -> list[tuple]:
    """Score rows (item_no, value, utility, se, intensity, intensity_se, used, failed, judge)."""
    spec = ScoreJobSpec(input="<memory>", values=[v.key for v in values], judge=judge.name, k=k, windows=m,
                        anchors=anchors, seed=seed, mode=mode, layout=layout)
    pools, anchor_text = pools_from_items(values, items or seed_vidb())
    by_value: dict[str, list] = {}
    for block, start in enumerate(range(0, len(texts), PLAN_BLOCK)):
        n = min(PLAN_BLOCK, len(texts) - start)
        windows, _ = plan_block(spec, pools, None, n, block, start, 0, 0)
        for w in windows:
            by_value.setdefault(w[2], []).append(w)
    rows = []
    for v in values:
        ws = sorted(by_value.get(v.key, []), key=lambda w: (w[3], w[0]))
        shown = [[texts[w[3]] if t is None else anchor_text[t] for t in w[4]] for w in ws]
        rankings = await judge.rank_windows(v, shown)
        rows += [{"item_no": w[3], "value": w[2], "members": w[4], "target_pos": w[5], "anchor_intensity": w[7],
                  "state": "done" if r.ok else "failed", "ranking": r.order} for w, r in zip(ws, rankings)]
    return score_windows(rows, mode, judge.name)


def score_texts_sync(*args, **kw) -> list[tuple]:
    return asyncio.run(score_texts(*args, **kw))
