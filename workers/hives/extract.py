"""Which values a text touches (``extract``) and the value profile of a set of texts (``profile``).

Each steerable value has two prototypes in the embedding space: the mean embedding of its VIDB texts
that support it and of those that oppose it. A text's similarity to a value is its best cosine to
either prototype; the prototype that wins gives the direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.seed import seed_vidb
from schemas.taxonomy import THEORIES, default_taxonomy


@dataclass
class Prototypes:
    keys: list[tuple[str, str, str]]  # (theory, value, direction)
    vectors: np.ndarray  # unit rows


def build_prototypes(encoder, items: dict[str, list[tuple[str, float]]] | None = None) -> Prototypes:
    items = items or seed_vidb()
    tax = default_taxonomy()
    keys, vecs = [], []
    for value, rows in items.items():
        v = tax.get(value)
        emb = encoder.encode([t for t, _ in rows])
        x = np.array([i for _, i in rows])
        for direction, mask in (("supports", x > 0), ("opposes", x < 0)):
            if mask.any():
                c = emb[mask].mean(0)
                keys.append((v.theory, v.key, direction))
                vecs.append(c / max(np.linalg.norm(c), 1e-12))
    return Prototypes(keys, np.asarray(vecs))


def extract(emb: np.ndarray, protos: Prototypes, top_k: int = 3) -> list[dict[str, list[dict]]]:
    """Per text: theory → top-k ``{value, direction, similarity}`` (best direction per value)."""
    sims = emb @ protos.vectors.T
    out = []
    for row in sims:
        per_theory: dict[str, list[dict]] = {}
        for t in THEORIES:
            best: dict[str, tuple[float, str]] = {}
            for j, (theory, value, direction) in enumerate(protos.keys):
                if theory == t and (value not in best or row[j] > best[value][0]):
                    best[value] = (float(row[j]), direction)
            ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:top_k]
            per_theory[t] = [{"value": v, "direction": d, "similarity": round(s, 4)} for v, (s, d) in ranked]
        out.append(per_theory)
    return out


def profile(extracted: list[dict[str, list[dict]]], scores: dict[str, list[float]] | None = None) -> dict:
    """Aggregate extractions of a set of texts into a per-value profile.

    For every value that appears in some text's top-k: how many texts touch it, the share that
    support it, mean similarity, and (when evaluator ``scores`` are given: value → intensities)
    the mean intensity with its standard error.
    """
    n = len(extracted)
    acc: dict[str, dict] = {}
    for per_theory in extracted:
        for t, hits in per_theory.items():
            for h in hits:
                a = acc.setdefault(h["value"], {"theory": t, "texts": 0, "supports": 0, "similarity": 0.0})
                a["texts"] += 1
                a["supports"] += h["direction"] == "supports"
                a["similarity"] += h["similarity"]
    values = {}
    for v, a in sorted(acc.items(), key=lambda kv: -kv[1]["texts"]):
        entry = {"theory": a["theory"], "touched_by": a["texts"] / n, "support_share": a["supports"] / a["texts"],
                 "direction": "supports" if a["supports"] * 2 >= a["texts"] else "opposes",
                 "mean_similarity": a["similarity"] / a["texts"]}
        if scores and scores.get(v):
            s = np.asarray(scores[v], dtype=float)
            entry["mean_intensity"] = float(s.mean())
            entry["intensity_se"] = float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else None
        values[v] = entry
    return {"n_texts": n, "values": values}
