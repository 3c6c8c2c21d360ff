"""HiVES evaluation metrics (numpy; embeddings are unit vectors, similarity is cosine).

* **Hierarchical ranking accuracy** — for each anchor text, one candidate is drawn from each of
  five bins of the anchor's own theory (the hierarchy is per theory; across theories HiVES
  deliberately pulls equivalent concepts together): (1) same path and direction; (2) same path,
  opposite direction; (3) same level 2, different level 3; (4) same level 1, different level 2;
  (5) different level 1. Every pair of non-empty bins i < j is a test "sim(bin i) > sim(bin j)";
  the accuracy is the fraction passed (``tuple_accuracy``: all of an anchor's tests passed).
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

from workers.hives.data import Row


def _prefix_ids(rows: list[Row]) -> np.ndarray:
    """(n, 3) ids of the level-1/2/3 path prefixes (theory included)."""
    out = np.zeros((len(rows), 3), dtype=int)
    for l in range(3):
        keys = [(r.theory,) + r.levels[: l + 1] for r in rows]
        uniq = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        out[:, l] = [uniq[k] for k in keys]
    return out


def hierarchical_ranking_accuracy(emb: np.ndarray, rows: list[Row], seed: int = 0, anchors: int | None = None) -> dict:
    rng = np.random.default_rng(seed)
    P = _prefix_ids(rows)
    d = np.array([r.direction for r in rows])
    theory = np.array([r.theory for r in rows])
    sim = emb @ emb.T
    n = len(rows)
    idx = np.arange(n)
    order = rng.permutation(n)[: anchors or n]
    passed = tests = tuples_ok = tuples = 0
    for i in order:
        other = (idx != i) & (theory == theory[i])
        bins = [
            other & (P[:, 2] == P[i, 2]) & (d == d[i]),
            other & (P[:, 2] == P[i, 2]) & (d != d[i]),
            other & (P[:, 1] == P[i, 1]) & (P[:, 2] != P[i, 2]),
            other & (P[:, 0] == P[i, 0]) & (P[:, 1] != P[i, 1]),
            other & (P[:, 0] != P[i, 0]),
        ]
        picks = [rng.choice(np.flatnonzero(b)) if b.any() else None for b in bins]
        s = [None if p is None else sim[i, p] for p in picks]
        live = [x for x in s if x is not None]
        if len(live) < 2:
            continue
        ok_all = True
        for a in range(len(live)):
            for b in range(a + 1, len(live)):
                tests += 1
                good = live[a] > live[b]
                passed += good
                ok_all &= good
        tuples += 1
        tuples_ok += ok_all
    return {"accuracy": passed / max(tests, 1), "tuple_accuracy": tuples_ok / max(tuples, 1), "tests": tests}


def label_overlap(rows: list[Row]) -> np.ndarray:
    P = _prefix_ids(rows)
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
    P = _prefix_ids(rows)
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


def evaluate(emb: np.ndarray, rows: list[Row], seed: int = 0) -> dict:
    """All metrics in one dictionary (JSON-serialisable)."""
    return {"hierarchical_ranking": hierarchical_ranking_accuracy(emb, rows, seed),
            "similarity_correlation": similarity_correlation(emb, rows),
            "orthogonality": orthogonality(emb, rows),
            "knn": knn_accuracy(emb, rows), "n_texts": len(rows)}
