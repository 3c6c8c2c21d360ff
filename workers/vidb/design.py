r"""Window designs for building a VIDB: connected, balanced k-way designs over n texts.

Balanced design (``per_text`` = r, window size k). Each of r rounds draws a random permutation
:math:`\pi` of the n texts and cuts it into :math:`\lceil n/k\rceil` consecutive windows; a short
last window is filled with texts drawn from outside it, so every text appears in r windows (a few
in r + 1). A round is redrawn (up to ``tries`` times) while it repeats a pair already compared, so
with k = 2 and r ≥ 2 no text meets only one opponent. If the comparison graph is still
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


def balanced_design(n: int, k: int, per_text: int, rng: np.random.Generator, tries: int = 20) -> list[np.ndarray]:
    """Windows (arrays of item indices in the order shown) of a connected balanced design.

    Raises ``ValueError`` when n < k, n < 3 with k = 2 (no text could meet two opponents) or
    ``per_text`` < 1.
    """
    if per_text < 1:
        raise ValueError(f"per_text: must be >= 1, got {per_text}")
    if n < k:
        raise ValueError(f"need at least k={k} texts, got {n}")
    if k == 2 and n < 3:
        raise ValueError(f"pairwise design needs at least 3 texts, got {n}")
    seen: set[tuple[int, int]] = set()
    windows: list[np.ndarray] = []
    for _ in range(per_text):
        best, best_rep = None, None
        for _ in range(tries):
            cand = _round(n, k, rng)
            rep = sum(len(_pairs(w) & seen) for w in cand)
            if best_rep is None or rep < best_rep:
                best, best_rep = cand, rep
            if rep == 0:
                break
        for w in best:  # type: ignore[union-attr]
            seen |= _pairs(w)
        windows += best  # type: ignore[operator]
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
