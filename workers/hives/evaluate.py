"""HiVES evaluation metrics (numpy; embeddings are unit vectors, similarity is cosine).

Published metrics (top-level keys of :func:`evaluate`):

* **Hierarchical ranking accuracy** (strict) — for each anchor text, candidates come from *all*
  texts (every theory), sorted into five bins: (1) same path and direction; (2) same path,
  opposite direction; (3) same level 2, different level 3; (4) same level 1, different level 2;
  (5) different level 1 (texts of another theory always land here). A tuple draws one candidate
  from each non-empty bin; it is correct when every pair is ordered right,
  sim(bin 1) > sim(bin 2) > … . The accuracy is the share of correct tuples, computed exactly over
  all tuples (no sampling), averaged over anchors with at least two non-empty bins.
* **Similarity correlation** — Pearson between the cosine of every pair and the target
  ``(number of levels l with equal level-l ids) + 0.5 × [same direction]``.
* **Orthogonality** of value directions — per value, the direction is the normalised difference
  of the mean supporting and mean opposing embedding; reported as ``1 − mean |cos|`` over all
  pairs of distinct values (higher is better, 1 = perfectly orthogonal).

Ours (under ``"ours"``): the pairwise ranking accuracy (the share of ordered candidate pairs
over all bin pairs), orthogonality within one theory and across theories, and leave-one-out kNN
accuracy per level (k nearest neighbours by cosine, majority vote on "level-l prefix + direction").
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from workers.hives.data import LEVELS, Row, prefix_ids


def ranking_bins(P: np.ndarray, d: np.ndarray, i: int) -> list[np.ndarray]:
    """Boolean masks of the five candidate bins of anchor ``i`` (all texts but ``i``)."""
    other = np.arange(len(P)) != i
    return [
        other & (P[:, 2] == P[i, 2]) & (d == d[i]),
        other & (P[:, 2] == P[i, 2]) & (d != d[i]),
        other & (P[:, 1] == P[i, 1]) & (P[:, 2] != P[i, 2]),
        other & (P[:, 0] == P[i, 0]) & (P[:, 1] != P[i, 1]),
        other & (P[:, 0] != P[i, 0]),
    ]


def ordered_tuple_share(sims: list[np.ndarray]) -> float:
    """Share of tuples (x_1, …, x_k), x_j drawn from ``sims[j]``, with x_1 > x_2 > … > x_k.

    Exact count by dynamic programming from the last bin: c_k(y) = 1, and
    c_j(x) = Σ_{y ∈ bin j+1, y < x} c_{j+1}(y); the count is Σ_x c_1(x), divided by Π_j |bin j|.
    """
    vals = np.sort(sims[-1])
    cum = np.concatenate([[0.0], np.cumsum(np.ones(len(vals)))])
    for s in reversed(sims[:-1]):
        c = cum[np.searchsorted(vals, s, side="left")]  # Σ counts of strictly smaller values
        order = np.argsort(s, kind="stable")
        vals, cum = s[order], np.concatenate([[0.0], np.cumsum(c[order])])
    return float(cum[-1] / np.prod([float(len(s)) for s in sims]))


def hierarchical_ranking_accuracy(emb: np.ndarray, rows: list[Row]) -> dict:
    """``strict``: the published tuple accuracy; ``pairwise`` (ours): for anchor i and bins a < b,
    the share of candidate pairs (x ∈ a, y ∈ b) with sim(i, x) > sim(i, y), averaged over all
    (anchor, bin pair) tests; ``anchors``: anchors with ≥ 2 non-empty bins."""
    P = prefix_ids(rows)
    d = np.array([r.direction for r in rows])
    sim = emb @ emb.T
    strict, pairwise = [], []
    for i in range(len(rows)):
        sims = [sim[i, b] for b in ranking_bins(P, d, i) if b.any()]
        if len(sims) < 2:
            continue
        strict.append(ordered_tuple_share(sims))
        for a in range(len(sims)):
            for b in range(a + 1, len(sims)):
                pairwise.append(float((sims[a][:, None] > sims[b][None, :]).mean()))
    nan = float("nan")
    return {"strict": float(np.mean(strict)) if strict else nan,
            "pairwise": float(np.mean(pairwise)) if pairwise else nan, "anchors": len(strict)}


def similarity_target(rows: list[Row]) -> np.ndarray:
    """(n, n) target: number of levels with equal ids + 0.5 × [same direction]."""
    P = prefix_ids(rows)
    shared = sum((P[:, l][:, None] == P[:, l][None, :]).astype(float) for l in range(LEVELS))
    d = np.array([r.direction for r in rows])
    return shared + 0.5 * (d[:, None] == d[None, :])


def similarity_correlation(emb: np.ndarray, rows: list[Row]) -> float:
    sim = emb @ emb.T
    iu = np.triu_indices(len(rows), k=1)
    return float(np.corrcoef(sim[iu], similarity_target(rows)[iu])[0, 1])


def value_directions(emb: np.ndarray, rows: list[Row]) -> dict[tuple[str, str], np.ndarray]:
    out = {}
    keys = sorted({(r.theory, r.value) for r in rows})
    for k in keys:
        sup = [i for i, r in enumerate(rows) if (r.theory, r.value) == k and r.direction == "supports"]
        opp = [i for i, r in enumerate(rows) if (r.theory, r.value) == k and r.direction == "opposes"]
        if sup and opp:
            v = emb[sup].mean(0) - emb[opp].mean(0)
            out[k] = v / max(np.linalg.norm(v), 1e-12)
    return out


def orthogonality(emb: np.ndarray, rows: list[Row]) -> dict:
    """1 − mean |cos| between value directions: over all pairs, within a theory, across theories."""
    dirs = value_directions(emb, rows)
    keys = list(dirs)
    within, across = [], []
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            c = abs(float(dirs[keys[a]] @ dirs[keys[b]]))
            (within if keys[a][0] == keys[b][0] else across).append(c)

    def score(cs):
        return 1.0 - float(np.mean(cs)) if cs else float("nan")
    return {"all": score(within + across), "within_theory": score(within), "across_theories": score(across)}


def knn_accuracy(emb: np.ndarray, rows: list[Row], k: int = 5) -> dict:
    P = prefix_ids(rows)
    d = np.array([r.direction for r in rows])
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :k]
    out = {}
    for l in range(LEVELS):
        labels = [f"{P[i, l]}|{d[i]}" for i in range(len(rows))]
        hits = sum(Counter(labels[j] for j in nn[i]).most_common(1)[0][0] == labels[i] for i in range(len(rows)))
        out[f"level_{l + 1}"] = hits / len(rows)
    return out


def evaluate(emb: np.ndarray, rows: list[Row]) -> dict:
    """All metrics in one dictionary (JSON-serialisable): the published ones at the top level,
    ours under ``"ours"``."""
    rank = hierarchical_ranking_accuracy(emb, rows)
    orth = orthogonality(emb, rows)
    return {"hierarchical_ranking_accuracy": rank["strict"],
            "similarity_correlation": similarity_correlation(emb, rows),
            "orthogonality": orth["all"],
            "ours": {"ranking_pairwise_accuracy": rank["pairwise"], "ranking_anchors": rank["anchors"],
                     "orthogonality_within_theory": orth["within_theory"],
                     "orthogonality_across_theories": orth["across_theories"],
                     "knn": knn_accuracy(emb, rows)},
            "n_texts": len(rows)}
