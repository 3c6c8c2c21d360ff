r"""Judge health from the windows a job already judged: how the judge ordered anchors it knows.

Every scoring window holds anchors of known intensity, so each answer is also a test of the judge.
For one window with anchors in the judge's rank order (most supporting first) and intensities
:math:`x_1, \dots, x_a` (the scored text dropped), the anchor-order agreement is Kendall's

.. math:: \tau_w = \frac{C_w - D_w}{C_w + D_w},\qquad C_w = \#\{i<j : x_i > x_j\},\;
          D_w = \#\{i<j : x_i < x_j\}

(pairs of equal intensity left out). The job's figure is the mean over windows with a normal 95 %
interval :math:`\bar\tau \pm 1.96\,s/\sqrt{n}`. A judge that orders anchors no better than chance
has :math:`\bar\tau \approx 0`: its scores mean nothing. Two presentation checks come with it:
the share of windows answered exactly in the order shown (a model copying the list) and the share
whose first-shown text was ranked first (position bias; :math:`1/k` by chance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Health:
    windows: int
    anchor_tau: float | None
    anchor_tau_lo: float | None
    anchor_tau_hi: float | None
    shown_order_share: float | None
    first_position_win: float | None

    def verdict(self, k: int, beta: float | None = None) -> str:
        """``ok``, or ``warn: …`` naming what is wrong."""
        problems = []
        if self.anchor_tau is None:
            problems.append("no window ranked two anchors of different intensity")
        elif self.anchor_tau_lo is not None and self.anchor_tau_lo <= 0.0:
            problems.append(f"anchors ordered no better than chance (tau {self.anchor_tau:+.2f}, 95% CI "
                            f"{self.anchor_tau_lo:+.2f}..{self.anchor_tau_hi:+.2f}): these scores mean nothing")
        if self.shown_order_share is not None and self.windows >= 5 and self.shown_order_share >= 0.5:
            problems.append(f"{self.shown_order_share:.0%} of windows answered in the order shown")
        if self.first_position_win is not None and self.windows >= 20 and self.first_position_win >= min(1.0, 2.5 / k):
            problems.append(f"first-shown text ranked first in {self.first_position_win:.0%} of windows (chance {1 / k:.0%})")
        return "ok" if not problems else "warn: " + "; ".join(problems)


def anchor_tau(x: np.ndarray) -> np.ndarray:
    """Per-window Kendall tau of anchor intensities in judged order; ``x`` is (W, k) with NaN for
    the scored text (or a missing anchor). NaN where a window has no untied anchor pair."""
    x = np.asarray(x, dtype=float)
    k = x.shape[1]
    i, j = np.triu_indices(k, 1)
    d = x[:, i] - x[:, j]  # earlier-ranked minus later-ranked
    valid = ~np.isnan(d) & (d != 0)
    c = np.where(valid, np.sign(d), 0.0).sum(axis=1)
    n = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, c / np.maximum(n, 1), np.nan)


def judge_health(x: np.ndarray, rankings: np.ndarray) -> Health:
    """Health of a judge from ``x`` (W, k) anchor intensities in judged order (NaN = scored text)
    and ``rankings`` (W, k): the judged order as positions into the texts as shown."""
    x = np.asarray(x, dtype=float)
    W = x.shape[0]
    if W == 0:
        return Health(0, None, None, None, None, None)
    tau = anchor_tau(x)
    tau = tau[~np.isnan(tau)]
    if tau.size:
        m = float(tau.mean())
        half = 1.96 * float(tau.std(ddof=1)) / np.sqrt(tau.size) if tau.size > 1 else np.inf
        lo, hi = max(-1.0, m - half), min(1.0, m + half)
    else:
        m = lo = hi = None  # type: ignore[assignment]
    r = np.asarray(rankings)
    shown = float((r == np.arange(r.shape[1])[None, :]).all(axis=1).mean())
    first = float((r[:, 0] == 0).mean())
    return Health(W, m, lo, hi, shown, first)
