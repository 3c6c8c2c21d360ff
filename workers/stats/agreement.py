r"""Pairwise agreement of scores with reference intensities.

Among the pairs :math:`(i, j)` of one group (a value) with :math:`y_i \ne y_j` and both scores
finite, a pair is concordant when :math:`\mathrm{sign}(s_i - s_j) = \mathrm{sign}(y_i - y_j)`; a
tied score counts ½. Pairwise accuracy is concordant pairs / pairs.
"""

from __future__ import annotations

import numpy as np


def pair_counts(score, ref, group=None) -> tuple[float, int]:
    """(concordant pairs, ties counted ½; pairs) over pairs of the same group (default: one group)
    with different reference and both scores finite."""
    score, ref = np.asarray(score, float), np.asarray(ref, float)
    group = np.zeros(len(score), dtype=int) if group is None else np.asarray(group)
    conc, pairs = 0.0, 0
    for g in np.unique(group):
        m = (group == g) & np.isfinite(score)
        s, y = score[m], ref[m]
        i, j = np.triu_indices(len(s), 1)
        dy = np.sign(y[i] - y[j])
        ds = np.sign(s[i] - s[j])
        use = dy != 0
        conc += float((ds[use] == dy[use]).sum() + 0.5 * (ds[use] == 0).sum())
        pairs += int(use.sum())
    return conc, pairs
