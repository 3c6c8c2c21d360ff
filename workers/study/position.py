r"""Position bias of a ranking judge, measured against the shuffled layout.

In a study every window is shown in a random order (``layout = "shuffled"``), so which text sits
at position :math:`j` is independent of its content and an unbiased judge ranks the text at each
position first with probability :math:`1/k`. From the judged windows (rankings as positions into
the texts as shown, most supporting first) this module reports, per window size :math:`k`:

* :math:`\hat p_j = \frac1W \#\{w : \text{position } j \text{ ranked first}\}` for every position;
* the **first-position win rate** :math:`\hat p_1` with a Wilson 95 % interval, against chance
  :math:`1/k`, and the **last-position win rate** :math:`\hat p_k`;
* the mean rank given to each position (1 = ranked first; :math:`(k+1)/2` by chance);
* Pearson's :math:`\chi^2 = \sum_j (n_j - W/k)^2 / (W/k)` on the first-place counts with
  :math:`k-1` degrees of freedom and its p-value: a small p-value means position, not content,
  decides which text wins.
"""

from __future__ import annotations

import math

import numpy as np


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def position_bias(rankings: list[list[int]] | np.ndarray) -> list[dict]:
    """One report per window size found in ``rankings`` (each a permutation of 0..k-1)."""
    from scipy.stats import chi2

    by_k: dict[int, list] = {}
    for r in rankings:
        by_k.setdefault(len(r), []).append(list(r))
    out = []
    for k, rs in sorted(by_k.items()):
        a = np.asarray(rs, dtype=int)
        W = len(a)
        first = np.bincount(a[:, 0], minlength=k)
        rank_of = np.empty_like(a)
        rank_of[np.arange(W)[:, None], a] = np.arange(k)[None, :]
        expected = W / k
        stat = float(((first - expected) ** 2 / expected).sum())
        lo, hi = wilson(int(first[0]), W)
        out.append({
            "k": k, "windows": W, "chance": 1 / k,
            "first_position_win": float(first[0] / W), "first_position_win_lo": lo, "first_position_win_hi": hi,
            "last_position_win": float(first[k - 1] / W),
            "win_share_by_position": [float(x / W) for x in first],
            "mean_rank_by_position": [float(x) for x in rank_of.mean(axis=0) + 1],
            "chi2": stat, "p_value": float(chi2.sf(stat, k - 1)),
        })
    return out
