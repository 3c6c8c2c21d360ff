r"""Monotone calibration of fitted utilities onto the VIDB intensity scale [-10, 10].

Given reference points :math:`(u_i, y_i)` (items with a known intensity: imported VIDB rows, human
adjudications), isotonic regression finds the non-decreasing :math:`g` minimising
:math:`\sum_i w_i (y_i - g(u_i))^2` (pool-adjacent-violators). New utilities are mapped by linear
interpolation between the fitted block centres, constant beyond the ends, then clipped to
[-10, 10].

Fewer than :data:`MIN_REFERENCE_POINTS` reference points, or fewer than 3 distinct utilities,
make the map refuse: a scale invented from a handful of points is worse than none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_REFERENCE_POINTS = 10
LOW, HIGH = -10.0, 10.0


def pav(y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Weighted isotonic (non-decreasing) least-squares fit of ``y`` in its given order."""
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    means, weights, sizes = [], [], []
    for yi, wi in zip(y, w):
        means.append(yi); weights.append(wi); sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m2, w2, s2 = means.pop(), weights.pop(), sizes.pop()
            wt = weights[-1] + w2
            means[-1] = (means[-1] * weights[-1] + m2 * w2) / wt
            weights[-1] = wt
            sizes[-1] += s2
    return np.repeat(means, sizes)


@dataclass
class IsotonicMap:
    knots_u: np.ndarray
    knots_y: np.ndarray
    residuals: np.ndarray  # y - g(u) at the reference points, in input order

    def __call__(self, u) -> np.ndarray:
        u = np.asarray(u, dtype=float)
        return np.clip(np.interp(u, self.knots_u, self.knots_y), LOW, HIGH)

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean(self.residuals ** 2)))


def fit_isotonic(utilities, intensities, weights=None, min_points: int = MIN_REFERENCE_POINTS) -> IsotonicMap:
    """Fit the monotone map utility → intensity; raises ``ValueError`` on bad or too little data."""
    u = np.asarray(utilities, dtype=float)
    y = np.asarray(intensities, dtype=float)
    if u.shape != y.shape or u.ndim != 1:
        raise ValueError(f"utilities and intensities: expected two 1-D arrays of one length, got {u.shape} and {y.shape}")
    for name, arr in (("utilities", u), ("intensities", y)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"{name}: row {bad[0]} is {arr[bad[0]]!r}")
    w = None if weights is None else np.asarray(weights, dtype=float)
    if w is not None:
        bad = np.flatnonzero(~np.isfinite(w) | (w <= 0))
        if bad.size:
            raise ValueError(f"weights: row {bad[0]} is {w[bad[0]]!r} (must be finite and > 0)")
    if u.size < min_points or np.unique(u).size < 3:
        raise ValueError(
            f"calibration needs at least {min_points} reference points with 3 distinct utilities, got "
            f"{u.size} points ({np.unique(u).size} distinct): import more VIDB items or adjudications")
    order = np.argsort(u, kind="stable")
    fitted = pav(y[order], None if w is None else w[order])
    # collapse ties in u to one knot so interpolation is a function
    ku, inv = np.unique(u[order], return_inverse=True)
    ky = np.bincount(inv, weights=fitted) / np.bincount(inv)
    g = np.empty_like(y)
    g[order] = fitted
    return IsotonicMap(ku, np.clip(ky, LOW, HIGH), y - g)
