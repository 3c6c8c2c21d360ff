r"""Fitting a value's VIDB: comparisons → Plackett–Luce utilities with standard errors → intensities.

* Utilities: MAP Plackett–Luce (:func:`workers.stats.plackett_luce.fit`) with a Gaussian prior of
  precision λ (keeps texts that won or lost every window finite); standard errors from the
  inverse Fisher information (:func:`workers.stats.plackett_luce.standard_errors`).
* Intensities: isotonic regression :math:`g` of the reference items' known intensities on their
  fitted utilities (:func:`workers.stats.calibration.fit_isotonic`), :math:`s_i = g(\theta_i)`;
  or, with no references and ``scale='minmax'``, :math:`s_i = -10 + 20\,(\theta_i - \min\theta)/
  (\max\theta - \min\theta)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.stats import plackett_luce as pl
from workers.stats.calibration import HIGH, LOW, fit_isotonic


def complete_rows(member_ok: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per comparison (flat layout: ``lengths`` consecutive members each, every length ≥ 1),
    whether all its members pass ``member_ok``."""
    if not len(lengths):
        return np.zeros(0, dtype=bool)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.add.reduceat((~member_ok).astype(np.int64), starts) == 0


def only_known(ranked: np.ndarray, lengths: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flat comparisons (``ranked``, ``lengths``) whose members are all in ``keys`` (sorted)."""
    ranked, lengths, keys = (np.asarray(a, dtype=np.int64) for a in (ranked, lengths, keys))
    if not len(lengths) or not len(keys):
        return ranked[:0], lengths[:0]
    at = np.searchsorted(keys, ranked).clip(0, len(keys) - 1)
    ok = complete_rows(keys[at] == ranked, lengths)
    return ranked[np.repeat(ok, lengths)], lengths[ok]


def rank_rows(ranked: np.ndarray, lengths: np.ndarray, keys: np.ndarray) -> np.ndarray | list[np.ndarray]:
    """Flat comparisons (members in rank order, best first, one comparison after another;
    ``lengths`` = members per comparison; :func:`workers.vidb.versions.gather_comparisons`) →
    rows of item indices for the fit, item i being ``keys[i]`` (sorted text ids). Comparisons with
    a member outside ``keys`` are skipped (:func:`only_known`). When every comparison has one size
    (a pairwise build) the rows come as one 2-D array, which the fit takes as is; otherwise a list
    of 1-D arrays."""
    ranked, lengths = only_known(ranked, lengths, keys)
    if not len(lengths):
        return []
    idx = np.searchsorted(np.asarray(keys, dtype=np.int64), ranked).astype(np.intp)
    if (lengths == lengths[0]).all():
        return idx.reshape(len(lengths), int(lengths[0]))
    return np.split(idx, np.cumsum(lengths)[:-1])


@dataclass
class ValueFit:
    utility: np.ndarray
    stderr: np.ndarray
    n_comparisons: int
    n_iter: int


def fit_utilities(n: int, rows: np.ndarray | list[np.ndarray], prior: float, init: np.ndarray | None = None,
                  max_iter: int = 100) -> ValueFit:
    """MAP utilities and standard errors of n items from rank rows (see the module docstring).

    Warm refit: ``init`` = the previous utilities (new items at their search estimates); the fit
    runs from there to the same tolerance as a cold fit, so the result is the same optimum.
    (Settling the items the new windows reach first, with the rest held, saved no window-passes
    for 200 new texts and cost 25 % more than a cold fit for 1,000: README, VIDB benchmark.)
    ``max_iter`` caps the Newton steps (benchmarks: what a budget of a few steps costs in
    accuracy; jobs keep the default).
    """
    if len(rows) == 0:
        raise ValueError("no comparisons to fit")
    if not isinstance(rows, np.ndarray) and len({len(r) for r in rows}) == 1:
        rows = np.stack(rows)
    res = pl.fit(n, rows, prior=prior, init=init, tol=1e-8, max_iter=max_iter)
    return ValueFit(res.utilities, pl.standard_errors(res), len(rows), res.n_iter)


def minmax(u: np.ndarray) -> np.ndarray:
    """s = -10 + 20 (θ - min θ) / (max θ - min θ) (clipped: rounding may not overshoot the range)."""
    lo, hi = float(u.min()), float(u.max())
    if hi - lo <= 0:
        return np.zeros_like(u)
    return np.clip(LOW + (HIGH - LOW) * (u - lo) / (hi - lo), LOW, HIGH)


def isotonic(u: np.ndarray, ref: np.ndarray, ref_intensity: np.ndarray) -> np.ndarray:
    """s = g(θ) with g the isotonic fit of the references' intensities on their utilities."""
    g = fit_isotonic(u[ref], ref_intensity)
    return g(u)
