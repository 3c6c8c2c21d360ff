r"""Multi-task ridge regression: one direction shared by all tasks plus a residual per task.

Tasks :math:`v` (values) have rows :math:`X_v` (:math:`n_v \times d`) and targets :math:`y_v`;
both are centred per task (the intercept of task :math:`v` is :math:`\bar y_v - \bar x_v^\top w`).
The probe of task :math:`v` is :math:`w_0 + w_v`, fitted by

.. math:: \min_{w_0, \{w_v\}} \sum_v \lVert \tilde y_v - \tilde X_v (w_0 + w_v) \rVert^2
          + \alpha_0 \lVert w_0 \rVert^2 + \alpha_1 \sum_v \lVert w_v \rVert^2 .

With the thin SVD :math:`\tilde X_v = P_v\,\mathrm{diag}(s_v)\,Q_v^\top` and
:math:`p_v = P_v^\top \tilde y_v`, the stationarity conditions give
:math:`\alpha_0 w_0 = \alpha_1 \sum_v w_v` and

.. math:: \Big[\alpha_0 I + \alpha_1 \sum_v Q_v\,\mathrm{diag}\!\big(\tfrac{s^2}{s^2+\alpha_1}\big)Q_v^\top\Big] w_0
          = \alpha_1 \sum_v Q_v\,\mathrm{diag}\!\big(\tfrac{s}{s^2+\alpha_1}\big)p_v ,
   \qquad
   w_v = Q_v\,\frac{s \circ p_v - s^2 \circ Q_v^\top w_0}{s^2 + \alpha_1} ,

one :math:`d \times d` solve whatever the number of rows. Limits: :math:`\alpha_0 = \infty` is an
independent ridge per task (:math:`w_0 = 0`); :math:`\alpha_1 = \infty` is one pooled ridge
(:math:`(\alpha_0 I + \sum_v \tilde X_v^\top \tilde X_v)\,w_0 = \sum_v \tilde X_v^\top \tilde y_v`, :math:`w_v = 0`).

:func:`cross_validate` picks :math:`(\alpha_0, \alpha_1)` on a grid by K-fold cross-validation
(folds stratified by target within each task) and returns the out-of-fold predictions, which the
embedding judge uses to score anchors with a probe that never saw them (cross-fitting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Hashable, Iterable, Sequence

import numpy as np

from workers.stats.agreement import pair_counts

INF = math.inf
DEFAULT_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, INF)


@dataclass(frozen=True)
class TaskBasis:
    """Sufficient statistics of one task: means, and the thin SVD of its centred rows."""

    mean_x: np.ndarray  # (d,)
    mean_y: float
    Q: np.ndarray  # (d, r) right singular vectors
    s: np.ndarray  # (r,) singular values > 0
    p: np.ndarray  # (r,) P^T ỹ
    n: int


def task_basis(X: np.ndarray, y: np.ndarray) -> TaskBasis:
    """Centre ``X`` (n×d) and ``y`` (n,) and keep the non-null part of the thin SVD of X̃."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"task rows: expected X (n, d) and y (n,), got {X.shape} and {y.shape}")
    if X.shape[0] == 0:
        raise ValueError("task rows: empty task")
    mx, my = X.mean(axis=0), float(y.mean())
    P, s, Vt = np.linalg.svd(X - mx, full_matrices=False)
    keep = s > 1e-10 * max(float(s.max(initial=0.0)), 1e-300)
    return TaskBasis(mx, my, Vt[keep].T.copy(), s[keep], P[:, keep].T @ (y - my), X.shape[0])


@dataclass
class MultiTaskProbe:
    """Fitted probe: ``weights[v] = w_0 + w_v`` and ``intercept[v]``; ``predict(v, X) = X w + b``."""

    alpha_shared: float
    alpha_task: float
    shared: np.ndarray  # w_0 (d,)
    weights: dict = field(default_factory=dict)
    intercept: dict = field(default_factory=dict)

    def predict(self, task: Hashable, X: np.ndarray) -> np.ndarray:
        if task not in self.weights:
            raise KeyError(f"no probe for task {task!r}")
        return np.asarray(X, dtype=float) @ self.weights[task] + self.intercept[task]


def fit_multitask(bases: dict[Hashable, TaskBasis], alpha_shared: float, alpha_task: float) -> MultiTaskProbe:
    """Closed-form fit of the module docstring's objective; ``inf`` switches a component off."""
    return fit_multitask_path(bases, [alpha_shared], alpha_task)[0]


def fit_multitask_path(bases: dict[Hashable, TaskBasis], alphas_shared: Sequence[float],
                       alpha_task: float) -> list[MultiTaskProbe]:
    r"""Probes for several :math:`\alpha_0` at one :math:`\alpha_1`, from one eigendecomposition
    :math:`\sum_v Q_v\,\mathrm{diag}(\cdot)\,Q_v^\top = V \Lambda V^\top`, so that
    :math:`w_0(\alpha_0) = V (\alpha_0 I + \Lambda)^{-1} V^\top r`."""
    if not bases:
        raise ValueError("multi-task ridge: no tasks")
    for a in (*alphas_shared, alpha_task):
        if not a > 0:
            raise ValueError(f"multi-task ridge: penalties must be > 0, got {a!r}")
    if math.isinf(alpha_task) and any(math.isinf(a) for a in alphas_shared):
        raise ValueError("multi-task ridge: at least one of the two penalties must be finite")
    bl = list(bases.values())
    d = bl[0].mean_x.shape[0]
    W0 = np.zeros((d, len(alphas_shared)))
    finite = [i for i, a in enumerate(alphas_shared) if not math.isinf(a)]
    if finite:
        s = np.concatenate([b.s for b in bl])
        p = np.concatenate([b.p for b in bl])
        Q = np.hstack([b.Q for b in bl])
        if math.isinf(alpha_task):  # pooled: α₁ s²/(s²+α₁) → s², α₁ s/(s²+α₁) → s
            gain, lift = s ** 2, s
        else:
            gain, lift = alpha_task * s ** 2 / (s ** 2 + alpha_task), alpha_task * s / (s ** 2 + alpha_task)
        B = Q * np.sqrt(gain)
        lam, V = np.linalg.eigh(B @ B.T)
        r = V.T @ (Q @ (lift * p))
        a0 = np.asarray([alphas_shared[i] for i in finite], float)
        W0[:, finite] = V @ (r[:, None] / (a0[None, :] + np.maximum(lam, 0.0)[:, None]))
    probes = [MultiTaskProbe(a, alpha_task, W0[:, j].copy()) for j, a in enumerate(alphas_shared)]
    for key, b in bases.items():
        W = W0.copy()
        if not math.isinf(alpha_task):
            W += b.Q @ (((b.s * b.p)[:, None] - (b.s ** 2)[:, None] * (b.Q.T @ W0)) / (b.s ** 2 + alpha_task)[:, None])
        icpt = b.mean_y - b.mean_x @ W
        for j, probe in enumerate(probes):
            probe.weights[key] = W[:, j]
            probe.intercept[key] = float(icpt[j])
    return probes


def stratified_folds(y: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id per row: rows sorted by target are dealt round-robin in blocks of ``n_folds``
    (a random permutation of the folds per block), so every fold spans the target range."""
    y = np.asarray(y, dtype=float)
    order = np.lexsort((rng.random(len(y)), y))
    folds = np.empty(len(y), dtype=np.intp)
    for start in range(0, len(y), n_folds):
        block = order[start:start + n_folds]
        folds[block] = rng.permutation(n_folds)[: len(block)]
    return folds


def pairwise_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    r"""Share of pairs with :math:`y_i \ne y_j` ordered the same way by ``pred`` (ties count ½;
    :mod:`workers.stats.agreement`); NaN when no pair differs."""
    conc, pairs = pair_counts(pred, y)
    return conc / pairs if pairs else math.nan


@dataclass
class CVResult:
    alpha_shared: float
    alpha_task: float
    table: list[dict]  # one row per grid point: alphas, pairwise (mean over tasks), mse
    oof: dict  # task → out-of-fold predictions at the chosen alphas, in row order


def cross_validate(tasks: dict[Hashable, tuple[np.ndarray, np.ndarray]], grid_shared: Iterable[float] = DEFAULT_GRID,
                   grid_task: Iterable[float] = DEFAULT_GRID, n_folds: int = 5, seed: int = 0) -> CVResult:
    """K-fold choice of (α₀, α₁): the grid point with the highest mean within-task pairwise
    accuracy of the pooled out-of-fold predictions (ties: lower mean squared error, then the
    larger penalties). Tasks with fewer than ``n_folds`` rows are always in the training part."""
    rng = np.random.default_rng(seed)
    keys = list(tasks)
    data = {k: (np.asarray(tasks[k][0], float), np.asarray(tasks[k][1], float)) for k in keys}
    folds = {k: stratified_folds(y, n_folds, rng) if len(y) >= n_folds else np.full(len(y), -1)
             for k, (_, y) in data.items()}
    points = [(a0, a1) for a0 in grid_shared for a1 in grid_task if not (math.isinf(a0) and math.isinf(a1))]
    if not points:
        raise ValueError("multi-task ridge: empty grid")
    oof = {pt: {k: np.full(len(data[k][1]), np.nan) for k in keys} for pt in points}
    for f in range(n_folds):
        bases = {k: task_basis(X[folds[k] != f], y[folds[k] != f]) for k, (X, y) in data.items()
                 if (folds[k] != f).sum() >= 2}
        for a1 in dict.fromkeys(a1 for _, a1 in points):
            a0s = [a0 for a0, b1 in points if b1 == a1]
            for a0, probe in zip(a0s, fit_multitask_path(bases, a0s, a1)):
                for k, (X, _) in data.items():
                    test = folds[k] == f
                    if test.any() and k in probe.weights:
                        oof[(a0, a1)][k][test] = probe.predict(k, X[test])
    table = []
    for pt in points:
        accs, sq, n = [], 0.0, 0
        for k, (_, y) in data.items():
            pred = oof[pt][k]
            ok = ~np.isnan(pred)
            if ok.sum() >= 2:
                a = pairwise_accuracy(pred[ok], y[ok])
                if not math.isnan(a):
                    accs.append(a)
            sq += float(((pred[ok] - y[ok]) ** 2).sum())
            n += int(ok.sum())
        table.append({"alpha_shared": pt[0], "alpha_task": pt[1],
                      "pairwise": float(np.mean(accs)) if accs else math.nan, "mse": sq / max(n, 1)})
    best = max(table, key=lambda r: (r["pairwise"], -r["mse"], min(r["alpha_shared"], 1e300), min(r["alpha_task"], 1e300)))
    pt = (best["alpha_shared"], best["alpha_task"])
    return CVResult(pt[0], pt[1], table, oof[pt])


def cap_rows(y: Sequence[float], cap: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``cap`` rows, spread evenly over the target order (deterministic)."""
    n = len(y)
    if n <= cap:
        return np.arange(n)
    order = np.lexsort((np.random.default_rng(seed).random(n), np.asarray(y, float)))
    return np.sort(order[np.linspace(0, n - 1, cap).round().astype(int)])
