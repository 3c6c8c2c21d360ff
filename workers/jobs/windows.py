"""Planning ranking windows: each scored text meets k−1 VIDB anchors, m times per value.

Bucket sampling (the published evaluator's scheme): the value's VIDB intensity range
:math:`[x_{min}, x_{max}]` is cut at :math:`e_i = x_{min} + i\,(x_{max}-x_{min})/(k-1)`,
:math:`i = 0..k-1`, into k−1 right-closed bins :math:`(e_i, e_{i+1}]` with the lowest edge included
(bin 0 is :math:`[e_0, e_1]`), as ``pandas.cut(..., include_lowest=True)`` does; VIDB intensities
are rounded to 0.1, so many sit exactly on an edge and belong to the bin below it. One anchor is
drawn uniformly from each bin. An empty bin is filled (``empty_bucket``) by a uniform draw from the
value's whole VIDB (``"uniform"``, published) or from the nearest non-empty bin (``"nearest"``).
``random`` draws k−1 distinct anchors uniformly. Two rules of ours on top of the published draw:
the anchors of one window are distinct and never the scored text itself (a row breaking either
is drawn again whole, so a row is the published draw conditioned on both).

Layout (``layout``): ``"upstream"`` shows the scored text first, then the anchors in ascending
bucket order (lowest intensity first), as published; ``"shuffled"`` permutes each window
(position-bias control). All draws come from one generator seeded with ``(seed, value index)``, so
a job's plan is reproducible from its spec and the VIDB snapshot. Windows of one (text, value)
pair always share a chunk, so a chunk can be scored once judged.
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


LAYOUTS = ("upstream", "shuffled")
EMPTY_BUCKET_FILLS = ("uniform", "nearest")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")


def bucket_edges(intensity: np.ndarray, n_bins: int) -> np.ndarray:
    """The ``n_bins + 1`` equal-width edges :math:`e_i = x_{min} + i\,(x_{max}-x_{min})/n`
    (``numpy.linspace(min, max, n_bins + 1)``, the published evaluator's edges)."""
    x = np.asarray(intensity, dtype=float)
    return np.linspace(float(x.min()), float(x.max()), n_bins + 1)


def bucket_index(intensity: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each intensity: :math:`b(x) = i` for :math:`e_i < x \le e_{i+1}`, and :math:`b(e_0) = 0`
    (right-closed, lowest edge included, like ``pandas.cut(..., include_lowest=True)``).
    When every intensity is equal all fall in bin 0."""
    x = np.asarray(intensity, dtype=float)
    if n_bins < 1:
        raise ValueError(f"n_bins: must be >= 1, got {n_bins}")
    edges = bucket_edges(x, n_bins)
    if edges[0] == edges[-1]:
        return np.zeros(x.shape, dtype=np.intp)
    return np.clip(np.searchsorted(edges, x, side="left") - 1, 0, n_bins - 1)


def bucket_members(intensity: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Indices of the anchors in each of ``n_bins`` bins (see :func:`bucket_index`)."""
    b = bucket_index(intensity, n_bins)
    return [np.flatnonzero(b == i) for i in range(n_bins)]


def draw_anchors(pool: AnchorPool, n_windows: int, n: int, mode: str, rng: np.random.Generator,
                 exclude_text: np.ndarray | None = None, empty_bucket: str = "uniform") -> np.ndarray:
    """(n_windows, n) indices into the pool, distinct within each row; in bucket mode column j comes
    from intensity bin j, or, when bin j is empty, from the whole pool (``empty_bucket="uniform"``,
    published) or from the nearest non-empty bin (``"nearest"``, ties to the lower bin).

    ``exclude_text[w]`` is a text id row w must not use (the scored text itself, when it is also a
    VIDB item). Rows that repeat an anchor or use the excluded text are drawn again whole; a row
    still failing after 50 rounds (tiny bins) is filled slot by slot from what is left.
    """
    _check_choice("empty_bucket", empty_bucket, EMPTY_BUCKET_FILLS)
    if mode not in ("bucket", "random"):
        raise ValueError(f"anchor mode: expected 'bucket' or 'random', got {mode!r}")
    size = len(pool.item_ids)
    if size < n:
        raise ValueError(f"value {pool.value!r} has {size} VIDB items; windows of k={n + 1} need at least {n}")
    everything = np.arange(size)
    if mode == "random":
        bins = [everything] * n
        src = bins
    else:
        bins = bucket_members(pool.intensity, n)
        nonempty = [i for i, b in enumerate(bins) if len(b)]
        if empty_bucket == "uniform":
            src = [b if len(b) else everything for b in bins]
        else:
            src = [bins[min(nonempty, key=lambda i: (abs(i - j), i))] for j in range(n)]
    bad_text = np.full(n_windows, -1) if exclude_text is None else np.asarray(exclude_text)
    out = np.empty((n_windows, n), dtype=np.intp)
    rows = np.arange(n_windows)
    for _ in range(50):
        if rows.size == 0:
            return out
        out[rows] = np.column_stack([b[rng.integers(len(b), size=rows.size)] for b in src])
        sub = out[rows]
        clash = ((sub[:, :, None] == sub[:, None, :]) & np.tri(n, k=-1, dtype=bool)[None]).any(axis=(1, 2))
        clash |= (pool.text_ids[sub] == bad_text[rows, None]).any(axis=1)
        rows = rows[clash]
    for w in rows:  # small bins: fill slot by slot from what is left
        out[w] = _draw_row(pool, src, n, rng, int(bad_text[w]), mode, empty_bucket, bins)
    return out


def _draw_row(pool: AnchorPool, src: list[np.ndarray], n: int, rng: np.random.Generator, bad: int,
              mode: str, empty_bucket: str, bins: list[np.ndarray]) -> np.ndarray:
    """One row, slot by slot: a slot whose source has nothing left is filled like an empty bin."""
    size = len(pool.item_ids)
    used: list[int] = []

    def left(cands) -> list[int]:
        return [int(c) for c in cands if int(c) not in used and pool.text_ids[c] != bad]

    for j in range(n):
        cand = left(src[j])
        if not cand and mode == "bucket":
            if empty_bucket == "uniform":
                cand = left(range(size))
            else:
                for bi in sorted((i for i, b in enumerate(bins) if len(b)), key=lambda i: (abs(i - j), i)):
                    if cand := left(bins[bi]):
                        break
        if not cand:
            raise ValueError(f"value {pool.value!r}: not enough distinct VIDB items for a window of k={n + 1}")
        used.append(cand[rng.integers(len(cand))])
    return np.asarray(used, dtype=np.intp)


def plan_windows(item_text_ids: np.ndarray | None, n_items: int, pools: list[AnchorPool], k: int, m: int,
                 mode: str, seed: int, chunk_size: int, layout: str = "upstream",
                 empty_bucket: str = "uniform") -> tuple[list[PlannedWindow], list[int]]:
    """Every window of a job, and the chunk numbers.

    ``item_text_ids`` (optional) lets the plan avoid pairing a text with itself as an anchor.
    ``layout``: ``"upstream"`` (scored text first, then anchors in ascending bucket order; the
    published layout) or ``"shuffled"`` (each window permuted). ``empty_bucket``: ``"uniform"``
    (published) or ``"nearest"``; see :func:`draw_anchors`.
    """
    _check_choice("layout", layout, LAYOUTS)
    _check_choice("empty_bucket", empty_bucket, EMPTY_BUCKET_FILLS)
    windows: list[PlannedWindow] = []
    chunk_no, in_chunk, wid = 0, 0, 0
    for vi, pool in enumerate(pools):
        rng = np.random.default_rng([seed, vi])
        excl = None if item_text_ids is None else np.repeat(item_text_ids, m)
        picks = draw_anchors(pool, n_items * m, k - 1, mode, rng, excl, empty_bucket=empty_bucket)
        if layout == "upstream":  # order[pos] = slot; slot k-1 is the scored text
            perms = np.tile(np.r_[k - 1, np.arange(k - 1)], (n_items * m, 1))
        else:
            perms = rng.permuted(np.tile(np.arange(k), (n_items * m, 1)), axis=1)
        for item_no in range(n_items):
            if in_chunk + m > chunk_size and in_chunk > 0:
                chunk_no, in_chunk = chunk_no + 1, 0
            for j in range(m):
                r = item_no * m + j
                order = perms[r]
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
