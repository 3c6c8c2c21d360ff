"""Score a chunk's (text, value) pairs from their judged windows (the body of the refit task)."""

from __future__ import annotations

import numpy as np

from workers.stats.anchored import UPSTREAM_PRIOR, fit_judge_scale, score_anchored, score_calibrated
from workers.stats.calibration import HIGH, LOW
from workers.store import Store


def windows_to_arrays(rows) -> tuple[list[tuple[int, str]], np.ndarray, np.ndarray, dict]:
    """Group judged windows by (item_no, value) → pair index per window and rank-ordered anchor
    intensities (NaN where the scored text was ranked). Failed windows are only counted."""
    pairs: dict[tuple[int, str], int] = {}
    failed: dict[tuple[int, str], int] = {}
    item, x = [], []
    for r in rows:
        key = (r["item_no"], r["value"])
        p = pairs.setdefault(key, len(pairs))
        if r["state"] != "done" or r["ranking"] is None:
            failed[key] = failed.get(key, 0) + 1
            continue
        k = len(r["members"])
        shown = np.empty(k)
        anchors = iter(r["anchor_intensity"])
        for pos in range(k):
            shown[pos] = np.nan if pos == r["target_pos"] else next(anchors)
        item.append(p)
        x.append(shown[list(r["ranking"])])
    keys = list(pairs)
    return keys, np.asarray(item, dtype=np.intp), np.asarray(x, dtype=float).reshape(len(item), -1), failed


def score_rows(rows, mode: str, judge: str, guard_margin: float = 0.5) -> list[tuple]:
    """Rows for :meth:`Store.write_scores`: (item_no, value, utility, se, intensity, intensity_se,
    windows used, windows failed, judge)."""
    keys, item, x, failed = windows_to_arrays(rows)
    used = np.bincount(item, minlength=len(keys)) if len(item) else np.zeros(len(keys), int)
    out = []
    util, se, inten, inten_se = (np.full(len(keys), np.nan) for _ in range(4))
    if len(item):
        if mode == "calibrated":
            try:
                beta, beta_se = fit_judge_scale(x)
            except ValueError:
                beta, beta_se = 1.0, 0.0
            inten, inten_se, res = score_calibrated(item, x, beta, beta_se, n_items=len(keys), guard_margin=guard_margin)
            util, se = res.utility, res.stderr
        else:  # upstream: anchor utilities are their intensities
            res = score_anchored(item, x, n_items=len(keys), prior=UPSTREAM_PRIOR, guard_margin=guard_margin)
            util, se = res.utility, res.stderr
            inten, inten_se = util, se
    for p, (item_no, value) in enumerate(keys):
        ok = used[p] > 0
        out.append((item_no, value,
                    float(util[p]) if ok else None, float(se[p]) if ok else None,
                    float(np.clip(inten[p], LOW, HIGH)) if ok else None, float(inten_se[p]) if ok else None,
                    int(used[p]), int(failed.get((item_no, value), 0)), judge))
    return out


async def score_chunk(store: Store, job_id: str, chunk_no: int) -> bool:
    """Score every pair in the chunk and store it; returns True when this completed the job."""
    job = await store.job(job_id)
    if job is None or job["state"] != "running":
        return False
    rows = await store.chunk_windows_for_scoring(job_id, chunk_no)
    if any(r["state"] == "pending" for r in rows):
        return False  # judging not finished (a stale score task): the judge task will enqueue again
    spec = job["spec"]
    return await store.write_scores(job_id, chunk_no, score_rows(rows, spec.get("mode", "upstream"), spec["judge"]))
