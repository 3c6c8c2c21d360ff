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
from typing import Iterable, Sequence

import numpy as np

from workers.stats import plackett_luce as pl
from workers.stats.calibration import HIGH, LOW, fit_isotonic


def rank_rows(comparisons: Iterable[tuple[Sequence[int], Sequence[int]]], index: dict[int, int]) -> list[np.ndarray]:
    """Comparisons (members as text ids in shown order, ranking = positions, best first) → rows of
    item indices in rank order. Comparisons with a member outside ``index`` are skipped."""
    rows = []
    for members, ranking in comparisons:
        try:
            rows.append(np.array([index[members[p]] for p in ranking], dtype=np.intp))
        except KeyError:
            continue
    return rows


@dataclass
class ValueFit:
    utility: np.ndarray
    stderr: np.ndarray
    n_comparisons: int
    n_iter: int


def fit_utilities(n: int, rows: list[np.ndarray], prior: float, init: np.ndarray | None = None) -> ValueFit:
    """MAP utilities and standard errors of n items from rank rows (see the module docstring)."""
    if not rows:
        raise ValueError("no comparisons to fit")
    res = pl.fit(n, rows, prior=prior, init=init, tol=1e-8)
    return ValueFit(res.utilities, pl.standard_errors(res), len(rows), res.n_iter)


def minmax(u: np.ndarray) -> np.ndarray:
    """s = -10 + 20 (θ - min θ) / (max θ - min θ)."""
    lo, hi = float(u.min()), float(u.max())
    if hi - lo <= 0:
        return np.zeros_like(u)
    return LOW + (HIGH - LOW) * (u - lo) / (hi - lo)


def isotonic(u: np.ndarray, ref: np.ndarray, ref_intensity: np.ndarray) -> np.ndarray:
    """s = g(θ) with g the isotonic fit of the references' intensities on their utilities."""
    g = fit_isotonic(u[ref], ref_intensity)
    return g(u)
