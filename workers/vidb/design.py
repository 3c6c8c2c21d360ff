r"""Window designs for building a VIDB: connected, balanced k-way designs over n texts.

Balanced design (``per_text`` = r, window size k). Each of r rounds draws a random permutation
:math:`\pi` of the n texts and cuts it into :math:`\lceil n/k\rceil` consecutive windows; a short
last window is filled with texts drawn from outside it, so every text appears in r windows (a few
in r + 1). Members are then swapped between windows of the round (up to ``tries`` attempts per window) while
that lowers the number of pairs already compared, so with k = 2 a text meets r different
opponents (no text only against one other). If the comparison graph is still
disconnected, one bridging window per extra component joins a member of each component to the
largest one. Published VIDB builds use pairwise windows (k = 2); k up to 6 is allowed.
"""

from __future__ import annotations

import numpy as np


def _pairs(w: np.ndarray) -> set[tuple[int, int]]:
    return {(int(min(a, b)), int(max(a, b))) for i, a in enumerate(w) for b in w[i + 1:]}


def _round(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    out = [perm[i:i + k] for i in range(0, n, k)]
    last = out[-1]
    if len(last) < k:
        outside = np.setdiff1d(np.arange(n), last)
        fill = rng.choice(outside, size=k - len(last), replace=False)
        out[-1] = np.concatenate([last, fill])
    return out


def _repeats(w: np.ndarray, seen: set[tuple[int, int]]) -> int:
    return len(_pairs(w) & seen)


def _repair(ws: list[np.ndarray], seen: set[tuple[int, int]], rng: np.random.Generator, tries: int) -> list[np.ndarray]:
    """Swap members between windows of one round while that lowers the pairs already compared."""
    if len(ws) < 2:
        return ws
    for i in range(len(ws)):
        for _ in range(tries):
            if _repeats(ws[i], seen) == 0:
                break
            j = int(rng.integers(len(ws) - 1))
            j += j >= i
            a, b = int(rng.integers(len(ws[i]))), int(rng.integers(len(ws[j])))
            wi, wj = ws[i].copy(), ws[j].copy()
            wi[a], wj[b] = ws[j][b], ws[i][a]
            if len(set(wi.tolist())) < len(wi) or len(set(wj.tolist())) < len(wj):
                continue
            if _repeats(wi, seen) + _repeats(wj, seen) < _repeats(ws[i], seen) + _repeats(ws[j], seen):
                ws[i], ws[j] = wi, wj
    return ws


def components(n: int, windows: list[np.ndarray]) -> np.ndarray:
    """Connected-component label of each of n items under the windows (union–find)."""
    parent = np.arange(n)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for w in windows:
        r0 = find(int(w[0]))
        for b in w[1:]:
            rb = find(int(b))
            if rb != r0:
                parent[rb] = r0
    return np.array([find(i) for i in range(n)])


def check_design_size(n: int, k: int, per_text: int) -> None:
    """``ValueError`` when no connected balanced design exists: n < k, n < 3 with k = 2 (no text
    could meet two opponents), or ``per_text`` < 1."""
    if per_text < 1:
        raise ValueError(f"per_text: must be >= 1, got {per_text}")
    if n < k:
        raise ValueError(f"need at least k={k} texts, got {n}")
    if k == 2 and n < 3:
        raise ValueError(f"pairwise design needs at least 3 texts, got {n}")


def balanced_design(n: int, k: int, per_text: int, rng: np.random.Generator, tries: int = 20) -> list[np.ndarray]:
    """Windows (arrays of item indices in the order shown) of a connected balanced design.

    Raises ``ValueError`` as :func:`check_design_size` does.
    """
    check_design_size(n, k, per_text)
    seen: set[tuple[int, int]] = set()
    windows: list[np.ndarray] = []
    for _ in range(per_text):
        cand = _repair(_round(n, k, rng), seen, rng, tries)
        for w in cand:
            seen |= _pairs(w)
        windows += cand
    labels = components(n, windows)
    roots = np.unique(labels)
    if len(roots) > 1:
        sizes = {r: int((labels == r).sum()) for r in roots}
        main = max(roots, key=lambda r: sizes[r])
        for r in roots:
            if r != main:
                a = rng.choice(np.flatnonzero(labels == main))
                b = rng.choice(np.flatnonzero(labels == r))
                windows.append(np.array([a, b]) if k == 2 else
                               np.concatenate([[a, b], rng.choice(np.setdiff1d(np.arange(n), [a, b]), k - 2, replace=False)]))
    return [np.asarray(w, dtype=np.intp) for w in windows]
