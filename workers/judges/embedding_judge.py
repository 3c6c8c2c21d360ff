r"""Embedding judge: ranks texts by a linear probe on sentence embeddings, per value.

**Probe** (``probe="multitask"``, the default): one direction shared by every value plus a residual
per value, fitted on the VIDB anchors of all values at once (:mod:`workers.stats.multitask_ridge`):
for value :math:`v` the predicted intensity of a text with embedding :math:`x` is
:math:`(x - \bar x_v)^\top (w_0 + w_v) + \bar y_v`, with penalties :math:`\alpha_0` on the shared
direction and :math:`\alpha_1` on the residuals chosen by K-fold cross-validation on the anchors
(highest mean within-value pairwise accuracy). A dozen anchors per value cannot pin down a
384-dimensional direction; the shared part pools what all values agree on (supporting versus
opposing, harm versus help). ``probe="ridge"`` is the earlier independent ridge per value with the
configured ``ridge_alpha`` (no cross-validation).

**Cross-fitting** (``cross_fit=True``, the default): the anchors are the probe's training data, so
the full probe scores them better than it can score any new text; an anchor then sits closer to
its known intensity than the scored text does, which compresses the text's position and makes the
anchors' mutual order look sharper than the judge really is (the calibrated mode's :math:`\beta`,
fitted on that order, comes out too large). With cross-fitting each anchor is scored by the probe
of the cross-validation fold that did not contain it (its out-of-fold prediction); any other text
is scored by the probe fitted on all anchors. Anchors and new texts are then scored with the same
kind of error, and :math:`\beta` fitted on anchors describes new texts too.

**Features**: the encoder's sentence embedding of the text (``features = "sentence"``), or with
``features = "lm"`` (the built-in ``lm-probe`` judge) value-conditioned hidden states of a causal LM
beside it (:mod:`workers.judges.lm_features`), every column z-scored on the anchors.

A window is ranked by these scores, highest first. Deterministic (the folds are seeded) and needs
no LLM: the judge of the embedded default. The encoder is the MiniLM base by default or a trained
HiVES checkpoint (``encoder =`` in the judge's config). Options that ``JudgeConfig`` does not carry
are constructor arguments (a config field of the same name wins when present).
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from schemas.messages import Ranking
from schemas.seed import seed_vidb
from schemas.taxonomy import Value
from workers.judges.base import Judge
from workers.judges.config import JudgeConfig
from workers.stats.multitask_ridge import (DEFAULT_GRID, CVResult, MultiTaskProbe, cap_rows, cross_validate,
                                           fit_multitask, task_basis)
from workers.vidb.versions import latest_versions, view_items

MIN_ANCHORS = 3


class AnchorSource(Protocol):
    """Where the probe's training anchors come from: the VIDB of every value."""

    async def counts(self) -> dict[str, int]:
        """Items per value."""

    async def state(self) -> tuple:
        """What the anchors are now (cheap to ask): the probe is fitted again when it changes."""

    async def fetch(self, value: str) -> tuple[list[str], list[float]]:
        """A value's anchor texts and intensities."""


class ItemsAnchors:
    """Anchors from an in-memory VIDB ``{value: [(text, intensity)]}``."""

    def __init__(self, items: dict[str, list[tuple[str, float]]]):
        self.items = items

    async def counts(self) -> dict[str, int]:
        return {v: len(rows) for v, rows in self.items.items()}

    async def state(self) -> tuple:
        return tuple(sorted((await self.counts()).items()))

    async def fetch(self, value: str) -> tuple[list[str], list[float]]:
        rows = self.items.get(value) or []
        return [t for t, _ in rows], [float(x) for _, x in rows]


class SeedAnchors(ItemsAnchors):
    """The shipped seed VIDB (the default when no store is given)."""

    def __init__(self):
        super().__init__(seed_vidb())


class StoreAnchors:
    """The VIDB in the store, as a job sees it: each value in ``versions`` (value → version ≥ 1) as
    that version's snapshot, every other value as its current items; with ``only_agreed``, no item
    flagged implausible or disputed. A scoring job passes the versions it planned against and its
    ``--vidb-filter``, so its judge learns from the anchors its windows were drawn from, and ranks
    them the same way after the VIDB has grown."""

    def __init__(self, store, versions: dict[str, int] | None = None, only_agreed: bool = False):
        self.store = store
        self.versions = {v: n for v, n in (versions or {}).items() if n > 0}
        self.only_agreed = only_agreed

    async def counts(self) -> dict[str, int]:
        return dict(Counter(r["value"] for r in await view_items(self.store.pool, None, self.versions,
                                                                  self.only_agreed)))

    async def state(self) -> tuple:
        """The pinned versions, and every other value's latest version: every change to a value's
        items writes a version (a fit, an audit, an adjudication, an import; migration 9 gave the
        older imports theirs), so this small table says whether anything the probe learns from
        changed, without counting the items."""
        latest = await latest_versions(self.store.pool)
        return tuple(sorted((v, self.versions.get(v, n), v in self.versions) for v, n in latest.items()))

    async def fetch(self, value: str) -> tuple[list[str], list[float]]:
        rows = await view_items(self.store.pool, [value], self.versions, self.only_agreed)
        bodies = await self.store.text_bodies([r["text_id"] for r in rows])
        return [bodies[r["text_id"]] for r in rows], [float(r["intensity"]) for r in rows]


def store_anchors(store, versions: dict[str, int] | None = None, only_agreed: bool = False) -> StoreAnchors:
    return StoreAnchors(store, versions, only_agreed)


@dataclass
class FittedProbe:
    """The probe of one VIDB snapshot, and each anchor's out-of-fold score (cross-fitting)."""

    fingerprint: tuple
    probe: MultiTaskProbe
    scale: tuple[np.ndarray, np.ndarray] | None = None  # column means and scales (standardised features)
    oof: dict[str, dict[str, float]] = field(default_factory=dict)  # value → anchor text → score
    cv: CVResult | None = None
    n_anchors: dict[str, int] = field(default_factory=dict)


class EmbeddingJudge(Judge):
    def __init__(self, config: JudgeConfig, anchors: AnchorSource | None = None, encoder=None, *,
                 probe: Literal["multitask", "ridge"] = "multitask", cross_fit: bool = True,
                 cv_folds: int = 5, max_probe_items: int = 1000):
        super().__init__(config)
        from workers.hives.encoder import Encoder

        if encoder is None and config.features == "lm":
            from workers.judges.lm_features import LMFeatureEncoder

            encoder = LMFeatureEncoder(Encoder(config.encoder, device=config.device), config.lm_model,
                                       tuple(config.lm_layers), config.device, config.batch_size)
        self.encoder = encoder or Encoder(config.encoder, device=config.device)
        # value-conditioned features (LMFeatureEncoder): embedded per (value, text), columns z-scored
        self.conditioned = bool(getattr(self.encoder, "conditioned", False))
        self.anchors: AnchorSource = anchors if anchors is not None else SeedAnchors()
        self.probe_kind = getattr(config, "probe", probe)
        self.cross_fit = bool(getattr(config, "cross_fit", cross_fit))
        self.cv_folds = int(getattr(config, "cv_folds", cv_folds))
        self.max_probe_items = int(getattr(config, "max_probe_items", max_probe_items))
        if self.probe_kind not in ("multitask", "ridge"):
            raise ValueError(f"judge {config.name!r}: probe must be 'multitask' or 'ridge', got {self.probe_kind!r}")
        if self.cv_folds < 2:
            raise ValueError(f"judge {config.name!r}: cv_folds must be >= 2, got {self.cv_folds}")
        self.fitted: FittedProbe | None = None
        self._vectors: dict[tuple[str | None, str], np.ndarray] = {}  # anchors recur in every window: embed once

    async def embed(self, texts: list[str], value: str | None = None) -> np.ndarray:
        """Embeddings with an in-process memo (bounded; cleared when full); ``value`` matters only
        to a value-conditioned encoder."""
        v = value if self.conditioned else None
        # what the memo holds now, kept here: another coroutine may clear the memo while this one
        # waits for the encoder (the judges of several jobs share it, see for_vidb)
        got = {t: self._vectors[(v, t)] for t in dict.fromkeys(texts) if (v, t) in self._vectors}
        todo = [t for t in dict.fromkeys(texts) if t not in got]
        if todo:
            if self.conditioned:
                vecs = await asyncio.to_thread(self.encoder.encode, todo, value)
            else:
                vecs = await asyncio.to_thread(self.encoder.encode, todo)
            if len(self._vectors) + len(todo) > 200_000:
                self._vectors.clear()
            got.update(zip(todo, vecs))
            self._vectors.update(((v, t), x) for t, x in zip(todo, vecs))
        return np.stack([got[t] for t in texts]).astype(np.float64)

    def for_vidb(self, versions: dict[str, int], only_agreed: bool) -> "EmbeddingJudge":
        """This judge (same encoder, options and embedding memo) learning from the VIDB as a job
        planned it (:class:`StoreAnchors`); itself when its anchors are not the store's."""
        if not isinstance(self.anchors, StoreAnchors):
            return self
        twin = copy.copy(self)
        twin.anchors, twin.fitted = StoreAnchors(self.anchors.store, versions, only_agreed), None
        return twin

    async def fit(self) -> FittedProbe:
        """The probe of the anchors as they are now; fitted again when they change
        (:meth:`AnchorSource.state`)."""
        fp = await self.anchors.state()
        if self.fitted is not None and self.fitted.fingerprint == fp:
            return self.fitted
        counts = await self.anchors.counts()
        texts: dict[str, list[str]] = {}
        ys: dict[str, np.ndarray] = {}
        for value, n in sorted(counts.items()):
            if n < MIN_ANCHORS:
                continue
            t, y = await self.anchors.fetch(value)
            keep = cap_rows(y, self.max_probe_items)
            texts[value] = [t[i] for i in keep]
            ys[value] = np.asarray(y, float)[keep]
        if not texts:
            raise ValueError(f"no value has {MIN_ANCHORS} or more VIDB items; the embedding judge has nothing to fit")
        if self.conditioned:
            tasks = {v: (await self.embed(texts[v], v), ys[v]) for v in texts}
        else:
            vecs = await self.embed([t for v in texts for t in texts[v]])
            tasks, pos = {}, 0
            for v in texts:
                tasks[v] = (vecs[pos:pos + len(texts[v])], ys[v])
                pos += len(texts[v])
        self.fitted = await asyncio.to_thread(self._fit_tasks, fp, texts, tasks)
        return self.fitted

    def _fit_tasks(self, fp: tuple, texts: dict[str, list[str]], tasks: dict) -> FittedProbe:
        scale = None
        if self.conditioned:  # z-score every column on the anchors, then 1/sqrt(d): unit mean row norm
            X = np.vstack([x for x, _ in tasks.values()])
            scale = (X.mean(axis=0), (X.std(axis=0) + 1e-6) * np.sqrt(X.shape[1]))
            tasks = {v: ((x - scale[0]) / scale[1], y) for v, (x, y) in tasks.items()}
        if self.probe_kind == "multitask":
            grid_shared, grid_task = DEFAULT_GRID, DEFAULT_GRID
        else:
            grid_shared, grid_task = (math.inf,), (float(self.config.ridge_alpha),)
        cv = None
        if self.cross_fit or len(grid_shared) * len(grid_task) > 1:
            cv = cross_validate(tasks, grid_shared, grid_task, n_folds=self.cv_folds)
            alphas = (cv.alpha_shared, cv.alpha_task)
        else:
            alphas = (grid_shared[0], grid_task[0])
        probe = fit_multitask({v: task_basis(*xy) for v, xy in tasks.items()}, *alphas)
        oof: dict[str, dict[str, float]] = {}
        if self.cross_fit and cv is not None:
            for v, pred in cv.oof.items():
                acc: dict[str, list[float]] = {}
                for t, p in zip(texts[v], pred):
                    if np.isfinite(p):
                        acc.setdefault(t, []).append(float(p))
                oof[v] = {t: float(np.mean(ps)) for t, ps in acc.items()}
        return FittedProbe(fp, probe, scale, oof, cv, {v: len(t) for v, t in texts.items()})

    async def project(self, value: str, texts: list[str]) -> np.ndarray:
        """Score of each text for ``value``: an anchor's out-of-fold prediction under cross-fitting,
        otherwise the prediction of the probe fitted on all anchors."""
        fitted = await self.fit()
        if value not in fitted.probe.weights:
            n = (await self.anchors.counts()).get(value, 0)
            raise ValueError(f"value {value!r} has {n} VIDB items; the embedding judge needs at least {MIN_ANCHORS}")
        x = await self.embed(texts, value)
        if fitted.scale is not None:
            x = (x - fitted.scale[0]) / fitted.scale[1]
        scores = fitted.probe.predict(value, x)
        held = fitted.oof.get(value)
        if held:
            scores = np.array([held.get(t, s) for t, s in zip(texts, scores)])
        return scores

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
