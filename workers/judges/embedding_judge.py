r"""Embedding judge: ranks texts by their projection on a per-value direction.

For each value a ridge probe is fitted on the value's VIDB anchors: with centred embeddings
:math:`X` (n×d) and intensities :math:`y`, :math:`w = X^\top (X X^\top + \alpha I)^{-1} y` (the dual
form, cheap when n < d). A window is ranked by :math:`X_{\text{window}} w`, highest first.
Deterministic, fast, and needs no LLM: the judge of the embedded default. The encoder is the MiniLM
base by default or a trained HiVES checkpoint (``encoder =`` in the judge's config).
"""

from __future__ import annotations

import asyncio
import json
from typing import Awaitable, Callable

import numpy as np

from schemas.messages import Ranking
from schemas.seed import seed_vidb
from schemas.taxonomy import Value
from workers.judges.base import Judge
from workers.judges.config import JudgeConfig

AnchorSource = Callable[[str], Awaitable[tuple[list[str], list[float]]]]


def ridge_direction(X: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """(w, b) minimising ‖Xw + b − y‖² + α‖w‖²."""
    mx, my = X.mean(axis=0), y.mean()
    Xc, yc = X - mx, y - my
    coef = np.linalg.solve(Xc @ Xc.T + alpha * np.eye(len(Xc)), yc)
    w = Xc.T @ coef
    return w, float(my - mx @ w)


async def seed_anchors(value: str) -> tuple[list[str], list[float]]:
    rows = seed_vidb().get(value)
    if not rows:
        raise ValueError(f"no seed VIDB items for value {value!r}")
    return [t for t, _ in rows], [x for _, x in rows]


def store_anchors(store) -> AnchorSource:
    async def fetch(value: str) -> tuple[list[str], list[float]]:
        rows = await store.vidb(value)
        if len(rows) < 3:
            raise ValueError(f"value {value!r} has {len(rows)} VIDB items; the embedding judge needs at least 3")
        return [r["body"] for r in rows], [float(r["intensity"]) for r in rows]
    return fetch


class EmbeddingJudge(Judge):
    def __init__(self, config: JudgeConfig, anchors: AnchorSource | None = None, encoder=None):
        super().__init__(config)
        from workers.hives.encoder import Encoder

        self.encoder = encoder or Encoder(config.encoder, device=config.device)
        self.anchors = anchors or seed_anchors
        self._probes: dict[str, tuple[int, np.ndarray, float]] = {}
        self._vectors: dict[str, np.ndarray] = {}  # anchors recur in every window: embed each once

    async def embed(self, texts: list[str]) -> np.ndarray:
        """Embeddings with an in-process memo (bounded; cleared when full)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if todo:
            if len(self._vectors) + len(todo) > 200_000:
                self._vectors.clear()
            vecs = await asyncio.to_thread(self.encoder.encode, todo)
            self._vectors.update(zip(todo, vecs))
        return np.stack([self._vectors[t] for t in texts]).astype(np.float64)

    async def probe(self, value: str) -> tuple[np.ndarray, float]:
        texts, y = await self.anchors(value)
        cached = self._probes.get(value)
        if cached is None or cached[0] != len(texts):  # VIDB grew: refit
            X = await self.embed(texts)
            w, b = ridge_direction(X, np.asarray(y, float), self.config.ridge_alpha)
            self._probes[value] = (len(texts), w, b)
        _, w, b = self._probes[value]
        return w, b

    async def project(self, value: str, texts: list[str]) -> np.ndarray:
        """Predicted intensity of each text (the probe's output)."""
        w, b = await self.probe(value)
        return await self.embed(texts) @ w + b

    async def rank_shown(self, value: Value, windows: list[list[str]]) -> list[Ranking]:
        if not windows:
            return []
        flat = [t for w in windows for t in w]
        scores = await self.project(value.key, flat)
        out, pos = [], 0
        for w in windows:
            s = scores[pos : pos + len(w)]
            pos += len(w)
            order = np.argsort(-s, kind="stable").tolist()
            out.append(Ranking(order=order, raw=json.dumps([round(float(v), 4) for v in s]), attempts=1))
        return out
