r"""Adaptive placement of a new text among a value's items: noisy binary search on a grid posterior.

The new text's utility θ has a grid posterior (prior N(mean u, var u) of the current items'
utilities u). A window shows the text with k-1 items of known utility; with the text at rank p
(0 = most supporting) and the other items' utilities :math:`v_0, v_1, \dots` in rank order, the
Plackett–Luce likelihood as a function of θ is

.. math::  \log L(\theta) = [p \le k-2]\,\theta - \sum_{s=0}^{\min(p,\,k-2)} \log\Big(e^{\theta}
           + \sum_{j \ge s} e^{v_j}\Big) + \text{const}.

Each next window takes, for quantiles :math:`q_i = i/k` (i = 1..k-1) of the posterior, the
unused item nearest to that quantile: with k = 2 the opponent sits at the posterior median, the
noisy version of binary search, so a text is placed among n items in O(log n) windows.
"""

from __future__ import annotations

import numpy as np

GRID_POINTS = 401


def make_grid(utilities: np.ndarray, margin: float = 4.0, points: int = GRID_POINTS) -> np.ndarray:
    """Evenly spaced θ values covering the items' utilities plus ``margin`` on each side."""
    u = np.asarray(utilities, dtype=float)
    return np.linspace(float(u.min()) - margin, float(u.max()) + margin, points)


def log_prior(grid: np.ndarray, utilities: np.ndarray) -> np.ndarray:
    """log N(θ; mean u, var u) on the grid (unnormalised)."""
    u = np.asarray(utilities, dtype=float)
    sd = max(float(u.std()), 0.5)
    return -0.5 * ((grid - u.mean()) / sd) ** 2


def window_loglik(grid: np.ndarray, pos: int, others: np.ndarray) -> np.ndarray:
    """log L(θ) of one ranking: the text at rank ``pos``, ``others`` = the other items' utilities in
    rank order (see the module formula)."""
    v = np.asarray(others, dtype=float)
    k = len(v) + 1
    tail = np.cumsum(np.exp(v)[::-1])[::-1]  # tail[s] = Σ_{j ≥ s} e^{v_j}
    out = grid.copy() if pos <= k - 2 else np.zeros_like(grid)
    for s in range(min(pos, k - 2) + 1):
        out -= np.logaddexp(grid, np.log(tail[s]))
    return out


def posterior(logp: np.ndarray) -> np.ndarray:
    p = np.exp(logp - logp.max())
    return p / p.sum()


def quantiles(grid: np.ndarray, post: np.ndarray, qs: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(post)
    return np.interp(qs, cdf, grid)


def choose_opponents(grid: np.ndarray, logp: np.ndarray, pool_u: np.ndarray, used: set[int], k: int) -> list[int]:
    """Indices into ``pool_u`` of the k-1 unused items nearest to the posterior's i/k quantiles."""
    post = posterior(logp)
    targets = quantiles(grid, post, np.arange(1, k) / k)
    order = np.argsort(pool_u, kind="stable")
    su = pool_u[order]
    picked: list[int] = []
    taken = set(used)
    for t in targets:
        j = int(np.searchsorted(su, t))
        lo, hi = j - 1, j
        best = None
        while lo >= 0 or hi < len(su):  # walk outwards to the nearest item not yet taken
            cands = []
            if lo >= 0:
                cands.append((abs(su[lo] - t), lo))
            if hi < len(su):
                cands.append((abs(su[hi] - t), hi))
            d, idx = min(cands)
            if int(order[idx]) not in taken:
                best = int(order[idx])
                break
            if idx == lo:
                lo -= 1
            else:
                hi += 1
        if best is None:
            break
        picked.append(best)
        taken.add(best)
    return picked


def mean_sd(grid: np.ndarray, logp: np.ndarray) -> tuple[float, float]:
    post = posterior(logp)
    m = float(post @ grid)
    return m, float(np.sqrt(max(post @ (grid - m) ** 2, 0.0)))
