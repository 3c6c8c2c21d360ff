"""Planning ranking windows: each scored text meets k−1 VIDB anchors, m times per value.

Bucket sampling (the published evaluator's scheme): the value's VIDB intensity range is cut into
k−1 equal-width bins and one anchor is drawn from each; an empty bin borrows from the nearest
non-empty one, never repeating an anchor within a window. ``random`` draws k−1 distinct anchors
uniformly. Positions are shuffled per window. All draws come from one generator seeded with
``(seed, value index)``, so a job's plan is reproducible from its spec and the VIDB snapshot.
Windows of one (text, value) pair always share a chunk, so a chunk can be scored once judged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.messages import PlannedWindow


@dataclass(frozen=True)
class AnchorPool:
    """A value's VIDB snapshot: item ids, their text ids and intensities."""

    value: str
    item_ids: np.ndarray
    text_ids: np.ndarray
    intensity: np.ndarray


def bucket_members(intensity: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Indices of the anchors in each of ``n_bins`` equal-width bins over [min, max]."""
    lo, hi = float(intensity.min()), float(intensity.max())
    width = (hi - lo) / n_bins if hi > lo else 1.0
    b = np.minimum(((intensity - lo) / width).astype(int), n_bins - 1)
    return [np.flatnonzero(b == i) for i in range(n_bins)]


def draw_anchors(pool: AnchorPool, n_windows: int, n: int, mode: str, rng: np.random.Generator,
                 exclude_text: np.ndarray | None = None) -> np.ndarray:
    """(n_windows, n) indices into the pool, distinct within each row; in bucket mode column j comes
    from intensity bin j (or its nearest non-empty neighbour).

    ``exclude_text[w]`` is a text id the row must not use (the scored text itself, when it is
    also a VIDB item).
    """
    size = len(pool.item_ids)
    if size < n:
        raise ValueError(f"value {pool.value!r} has {size} VIDB items; windows of k={n + 1} need at least {n}")
    out = np.empty((n_windows, n), dtype=np.intp)
    if mode == "random":
        bins = [np.arange(size)]
        nonempty = [0]
        src = bins * n
    else:
        bins = bucket_members(pool.intensity, n)
        nonempty = [i for i, b in enumerate(bins) if len(b)]
        # an empty bin borrows from its nearest non-empty neighbour
        src = [bins[min(nonempty, key=lambda i: (abs(i - j), i))] for j in range(n)]
    # draw independently, then redraw the entries that repeat an anchor or are the scored text
    out[:] = np.column_stack([b[rng.integers(len(b), size=n_windows)] for b in src])
    bad_text = np.full(n_windows, -1) if exclude_text is None else exclude_text
    for _ in range(50):
        clash = (out[:, :, None] == out[:, None, :]) & np.tri(n, k=-1, dtype=bool)[None]
        redo = clash.any(axis=2) | (pool.text_ids[out] == bad_text[:, None])
        if not redo.any():
            return out
        for j in range(n):
            rows = np.flatnonzero(redo[:, j])
            out[rows, j] = src[j][rng.integers(len(src[j]), size=rows.size)]
    for w in np.flatnonzero(redo.any(axis=1)):  # small bins: fill row by row, spilling to other bins
        out[w] = _draw_row(pool, bins, nonempty, n, rng, int(bad_text[w]))
    return out


def _draw_row(pool: AnchorPool, bins: list[np.ndarray], nonempty: list[int], n: int,
              rng: np.random.Generator, bad: int) -> np.ndarray:
    used: list[int] = []
    for j in range(n):
        for bi in sorted(nonempty, key=lambda i: (abs(i - j), i)):
            cand = [c for c in bins[bi] if c not in used and pool.text_ids[c] != bad]
            if cand:
                used.append(cand[rng.integers(len(cand))])
                break
        else:
            raise ValueError(f"value {pool.value!r}: not enough distinct VIDB items for a window of k={n + 1}")
    return np.asarray(used)


def plan_windows(item_text_ids: np.ndarray | None, n_items: int, pools: list[AnchorPool], k: int, m: int,
                 mode: str, seed: int, chunk_size: int) -> tuple[list[PlannedWindow], list[int]]:
    """Every window of a job, and the chunk numbers.

    ``item_text_ids`` (optional) lets the plan avoid pairing a text with itself as an anchor.
    """
    windows: list[PlannedWindow] = []
    chunk_no, in_chunk, wid = 0, 0, 0
    for vi, pool in enumerate(pools):
        rng = np.random.default_rng([seed, vi])
        excl = None if item_text_ids is None else np.repeat(item_text_ids, m)
        picks = draw_anchors(pool, n_items * m, k - 1, mode, rng, excl)
        perms = rng.permuted(np.tile(np.arange(k), (n_items * m, 1)), axis=1)
        for item_no in range(n_items):
            if in_chunk + m > chunk_size and in_chunk > 0:
                chunk_no, in_chunk = chunk_no + 1, 0
            for j in range(m):
                r = item_no * m + j
                order = perms[r]  # order[pos] = slot; slot k-1 is the scored text
                target_pos = int(np.flatnonzero(order == k - 1)[0])
                anchors = [int(picks[r, s]) for s in order if s != k - 1]
                windows.append(PlannedWindow(
                    window_id=wid, chunk_no=chunk_no, value=pool.value, item_no=item_no,
                    member_text_ids=tuple(None if s == k - 1 else int(pool.text_ids[picks[r, s]]) for s in order),
                    target_pos=target_pos,
                    anchor_ids=tuple(int(pool.item_ids[a]) for a in anchors),
                    anchor_intensity=tuple(float(pool.intensity[a]) for a in anchors),
                    seed=seed))
                wid += 1
            in_chunk += m
    return windows, list(range(chunk_no + 1))
