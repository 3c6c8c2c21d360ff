r"""Adaptive placement of a new text among a value's items: noisy binary search on a grid posterior.

The new text's utility θ has a grid posterior (prior N(mean u, var u) of the current items'
utilities u). A window shows the text with k-1 items of known utility; with the text at rank p
(0 = most supporting) and the other items' utilities :math:`v_0, v_1, \dots` in rank order, the
Plackett–Luce likelihood as a function of θ is

.. math::  \log L(\theta) = [p \le k-2]\,\theta - \sum_{s=0}^{\min(p,\,k-2)} \log\Big(e^{\theta}
           + \sum_{j \ge s} e^{v_j}\Big) + \text{const}.

Each next window takes, for quantiles :math:`q_i = i/k` (i = 1..k-1) of the posterior, an
unused item nearest to that quantile (nearest in expected squared gap, the item's standard error
included; drawn at random among the near-equivalent ones so an expansion spreads over the
value's items): with k = 2 the opponent sits at the posterior median, the noisy version of binary
search, so a text is placed among n items in O(log n) windows.

Limit of any placement rule: a pairwise window with a judge of sharpness β carries at most
:math:`\beta^2/4` of Fisher information about θ (an opponent exactly at θ), against
:math:`E_j[\beta^2\sigma'(\beta(\theta-u_j))]` for a uniformly drawn opponent
(:func:`uniform_information`); the ratio of windows adaptive/uniform to reach one accuracy is
at best about the ratio of the two (:func:`oracle_window_ratio`).
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


def window_loglik(grid: np.ndarray, pos: int, others: np.ndarray, others_se: np.ndarray | None = None) -> np.ndarray:
    r"""log L(θ) of one ranking: the text at rank ``pos``, ``others`` = the other items' utilities in
    rank order (see the module formula).

    ``others_se``: their standard errors. An opponent's utility is an estimate
    :math:`u_j \sim N(\hat u_j, \mathrm{se}_j^2)`, and the likelihood averaged over it is flatter
    than at :math:`\hat u_j`. For a pair, :math:`E[\sigma(\theta - u)] \approx
    \sigma(\kappa(\theta - \hat u))` with :math:`\kappa = (1 + \pi\,\mathrm{se}^2/8)^{-1/2}`
    (the probit approximation); for k > 2 the same κ, with the mean of the :math:`\mathrm{se}_j^2`,
    scales θ and every :math:`\hat u_j` (a tempered Plackett–Luce likelihood). Without it the
    search treats the opponents as exact and grows overconfident against poorly measured items.
    """
    v = np.asarray(others, dtype=float)
    k = len(v) + 1
    if others_se is not None and len(v):
        kappa = 1.0 / np.sqrt(1.0 + np.pi * float(np.mean(np.asarray(others_se, dtype=float) ** 2)) / 8.0)
        grid, v = kappa * np.asarray(grid, dtype=float), kappa * v
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


def opponent_scores(target: float, pool_u: np.ndarray, pool_se: np.ndarray | None = None) -> np.ndarray:
    r"""Expected squared gap between an opponent's true utility and the target quantile t:
    :math:`E[(u^{true}_j - t)^2] = (u_j - t)^2 + \mathrm{se}_j^2` (the opponent's own uncertainty
    counts: a poorly measured item is a worse yardstick than a well measured one at the same
    estimate)."""
    d2 = (np.asarray(pool_u, dtype=float) - target) ** 2
    return d2 if pool_se is None else d2 + np.asarray(pool_se, dtype=float) ** 2


def choose_opponents(grid: np.ndarray, logp: np.ndarray, pool_u: np.ndarray, used: set[int], k: int,
                     pool_se: np.ndarray | None = None, rng: np.random.Generator | None = None,
                     band: float = 0.25) -> list[int]:
    r"""Indices into ``pool_u`` of k-1 unused items, one per posterior quantile :math:`t_i = q_{i/k}`.

    For each target the unused items whose score (:func:`opponent_scores`) is within
    :math:`(\text{band}\cdot\sigma_{post})^2` of the best are equally good yardsticks (the window's
    information about θ changes by a fraction of a percent across them); with ``rng`` one of them
    is drawn at random, so the texts of an expansion do not all meet the same few items (which
    would make their errors share those items' errors and pull those items far in the refit).
    Without ``rng`` (or with ``band=0``) the best-scoring item is taken (ties: lowest index).
    """
    post = posterior(logp)
    _, sd = mean_sd(grid, logp)
    targets = quantiles(grid, post, np.arange(1, k) / k)
    avail = np.ones(len(pool_u), dtype=bool)
    if used:
        avail[np.fromiter(used, dtype=np.intp)] = False
    picked: list[int] = []
    for t in targets:
        score = np.where(avail, opponent_scores(float(t), pool_u, pool_se), np.inf)
        best = float(score.min())
        if not np.isfinite(best):
            break  # every item already shown to this text
        if rng is not None and band > 0:
            cand = np.flatnonzero(score <= best + (band * sd) ** 2)
            j = int(cand[rng.integers(len(cand))])
        else:
            j = int(np.argmin(score))
        picked.append(j)
        avail[j] = False
    return picked


def mean_sd(grid: np.ndarray, logp: np.ndarray) -> tuple[float, float]:
    post = posterior(logp)
    m = float(post @ grid)
    return m, float(np.sqrt(max(post @ (grid - m) ** 2, 0.0)))


def uniform_information(theta: np.ndarray, pool_u: np.ndarray, beta: float = 1.0) -> np.ndarray:
    r"""Fisher information about each θ of one pairwise window against a uniformly drawn item:
    :math:`I_u(\theta) = \frac{1}{n}\sum_j \beta^2 \sigma(\beta(\theta - u_j))\,\sigma(\beta(u_j - \theta))`."""
    d = beta * (np.asarray(theta, dtype=float)[:, None] - np.asarray(pool_u, dtype=float)[None, :])
    p = 1.0 / (1.0 + np.exp(-d))
    return beta ** 2 * (p * (1 - p)).mean(axis=1)


def oracle_window_ratio(theta: np.ndarray, pool_u: np.ndarray, windows: int, beta: float = 1.0) -> float:
    r"""Lower bound on adaptive/uniform windows to one mean squared error, pairwise windows.

    An oracle that always shows the opponent at the true θ gets :math:`\beta^2/4` per window, so its
    MSE after a windows is :math:`1/(\tau + a\beta^2/4)` (τ: prior precision :math:`1/\mathrm{var}\,u`);
    uniform opponents reach the same mean :math:`E_\theta[1/(\tau + b\,I_u(\theta))]` after b
    windows (:func:`uniform_information`). Returns a / b, b found by bisection (Fisher/large-sample
    approximation; no real design does better than the oracle).
    """
    info = uniform_information(theta, pool_u, beta)
    tau = 1.0 / max(float(np.var(pool_u)), 1e-12)
    target = 1.0 / (tau + windows * beta ** 2 / 4)
    lo, hi = float(windows), float(windows) * 1e3
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (tau + mid * info)) > target:
            lo = mid
        else:
            hi = mid
    return windows / hi
