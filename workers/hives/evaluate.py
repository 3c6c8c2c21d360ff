"""HiVES evaluation metrics (numpy; embeddings are unit vectors, similarity is cosine).

* **Hierarchical ranking accuracy** — for each anchor text, candidates come from five bins of
  the anchor's own theory (the hierarchy is per theory; across theories HiVES
  deliberately pulls equivalent concepts together): (1) same path and direction; (2) same path,
  opposite direction; (3) same level 2, different level 3; (4) same level 1, different level 2;
  (5) different level 1. Every pair of non-empty bins i < j is a test "sim(bin i) > sim(bin j)",
  scored over all candidate pairs (the expectation of drawing one candidate per bin).
* **Similarity correlation** — Pearson between the cosine of every pair and its label overlap
  ``(shared path levels / 3) × (+1 same direction, −1 opposite)``.
* **Orthogonality** of value directions — per value, the direction is the normalised difference
  of the mean supporting and mean opposing embedding; reported as the mean |cos| between
  directions of different values of one theory (0 = perfectly orthogonal) and across theories.
* **kNN accuracy per level** — leave-one-out, k nearest neighbours by cosine, majority vote on the
  label "level-l path prefix + direction".
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from workers.hives.data import Row, prefix_ids


def hierarchical_ranking_accuracy(emb: np.ndarray, rows: list[Row]) -> dict:
    """Expected pass rate of the bin-ordering tests, computed over every candidate (no sampling).

    For anchor i and bins a < b: the fraction of candidate pairs (x ∈ a, y ∈ b) with
    sim(i, x) > sim(i, y) — the probability that one candidate drawn from each bin is ordered
    right. ``accuracy`` averages it over all (anchor, bin pair) tests; ``tuple_accuracy`` is the
    share of anchors whose mean similarity per bin falls strictly from bin 1 to bin 5.
    """
    P = prefix_ids(rows)
    d = np.array([r.direction for r in rows])
    theory = np.array([r.theory for r in rows])
    sim = emb @ emb.T
    idx = np.arange(len(rows))
    scores, ordered, anchors = [], 0, 0
    for i in idx:
        other = (idx != i) & (theory == theory[i])
        bins = [
            other & (P[:, 2] == P[i, 2]) & (d == d[i]),
            other & (P[:, 2] == P[i, 2]) & (d != d[i]),
            other & (P[:, 1] == P[i, 1]) & (P[:, 2] != P[i, 2]),
            other & (P[:, 0] == P[i, 0]) & (P[:, 1] != P[i, 1]),
            other & (P[:, 0] != P[i, 0]),
        ]
        sims = [sim[i, b] for b in bins if b.any()]
        if len(sims) < 2:
            continue
        for a in range(len(sims)):
            for b in range(a + 1, len(sims)):
                scores.append(float((sims[a][:, None] > sims[b][None, :]).mean()))
        means = [s.mean() for s in sims]
        ordered += all(x > y for x, y in zip(means, means[1:]))
        anchors += 1
    return {"accuracy": float(np.mean(scores)) if scores else float("nan"),
            "tuple_accuracy": ordered / max(anchors, 1), "tests": len(scores)}


def label_overlap(rows: list[Row]) -> np.ndarray:
    P = prefix_ids(rows)
    shared = sum((P[:, l][:, None] == P[:, l][None, :]).astype(float) for l in range(3)) / 3.0
    d = np.array([r.direction for r in rows])
    sign = np.where(d[:, None] == d[None, :], 1.0, -1.0)
    return shared * sign


def similarity_correlation(emb: np.ndarray, rows: list[Row]) -> float:
    sim = emb @ emb.T
    iu = np.triu_indices(len(rows), k=1)
    return float(np.corrcoef(sim[iu], label_overlap(rows)[iu])[0, 1])


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
    dirs = value_directions(emb, rows)
    keys = list(dirs)
    within, across = [], []
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            c = abs(float(dirs[keys[a]] @ dirs[keys[b]]))
            (within if keys[a][0] == keys[b][0] else across).append(c)
    return {"mean_abs_cos_within_theory": float(np.mean(within)) if within else float("nan"),
            "mean_abs_cos_across_theories": float(np.mean(across)) if across else float("nan")}


def knn_accuracy(emb: np.ndarray, rows: list[Row], k: int = 5) -> dict:
    P = prefix_ids(rows)
    d = np.array([r.direction for r in rows])
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :k]
    out = {}
    for l in range(3):
        labels = [f"{P[i, l]}|{d[i]}" for i in range(len(rows))]
        hits = sum(Counter(labels[j] for j in nn[i]).most_common(1)[0][0] == labels[i] for i in range(len(rows)))
        out[f"level_{l + 1}"] = hits / len(rows)
    return out


def evaluate(emb: np.ndarray, rows: list[Row]) -> dict:
    """All metrics in one dictionary (JSON-serialisable)."""
    return {"hierarchical_ranking": hierarchical_ranking_accuracy(emb, rows),
            "similarity_correlation": similarity_correlation(emb, rows),
            "orthogonality": orthogonality(emb, rows),
            "knn": knn_accuracy(emb, rows), "n_texts": len(rows)}
