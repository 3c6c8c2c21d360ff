r"""Anchored Plackett–Luce scoring: utilities of new items ranked among anchors of fixed utility.

Each window holds one free item (the scored text) and k−1 anchors with known utilities
:math:`u`. Windows are given in rank order (most to least supporting) as an array ``u`` of shape
``(W, k)`` holding the anchors' utilities and ``NaN`` where the free item was ranked (position
:math:`q_w`). For an item with utility :math:`\theta` the window log-likelihood is, up to a
constant,

.. math:: \ell_w(\theta) = [q_w \le k-2]\,\theta - \sum_{s=0}^{\min(q_w,k-2)}
          \log\!\big(e^{\theta} + R_{ws}\big),\qquad R_{ws} = \sum_{l\ge s,\,l\ne q_w} e^{u_{wl}},

and the MAP utility with prior :math:`\mathcal N(0, 1/\lambda)` is the root of the score equation

.. math:: S(\theta) = \sum_w \Big([q_w\le k-2] - \sum_{s\le\min(q_w,k-2)}
          \sigma(\theta - \log R_{ws})\Big) - \lambda\theta = 0,

strictly decreasing, so the root is unique; it is found for all items at once by safeguarded
Newton (bisection whenever a Newton step leaves the bracket). The standard error is
:math:`(-S'(\hat\theta))^{-1/2}`.

Window guard (:func:`apply_guard`, as in the published evaluator): with :math:`a_-, a_+` the lowest
and highest anchor utility an item met, an item ranked below every anchor in all its windows gets
:math:`\operatorname{nextafter}(a_-, -\infty)` (one floating-point step below), one ranked above every
anchor in all its windows :math:`\operatorname{nextafter}(a_+, +\infty)`; any other item gets its
root clamped to :math:`[a_-, a_+]`, moved ``edge_nudge`` inside when it sits on an end; the result is
clipped to ``clip_range`` ([-10, 10], the intensity scale). Other modes may replace the one-step move
by a fixed ``guard_margin``.

Judge scale: a judge that ranks anchors of intensities :math:`x` behaves like PL with
:math:`u = \beta x`; :func:`fit_judge_scale` estimates :math:`\beta` by maximum likelihood from
the anchors' order among themselves (the marginal of PL on a subset is PL), so a sharp and a
noisy judge score on one intensity scale (:func:`score_calibrated`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UPSTREAM_PRIOR = 1e-3
UPSTREAM_BOUNDS = (-20.0, 20.0)
UPSTREAM_RANGE = (-10.0, 10.0)  # final clip: the intensity scale
UPSTREAM_EDGE_NUDGE = 1e-6  # the published "strictly inside" nudge off the anchor span's ends
EDGE_TOL = 1e-12  # a clamped value this close to an end counts as on it (as published)


@dataclass
class AnchoredScores:
    utility: np.ndarray  # (n_items,) after the guard
    stderr: np.ndarray
    raw_utility: np.ndarray  # root of the score equation before the guard
    n_windows: np.ndarray
    anchor_min: np.ndarray
    anchor_max: np.ndarray
    guard: np.ndarray  # -1 below all anchors, +1 above all, 0 otherwise


def _validate(item: np.ndarray, u: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    item = np.asarray(item)
    u = np.asarray(u, dtype=float)
    if u.ndim != 2 or u.shape[1] < 2:
        raise ValueError(f"anchor utilities: expected shape (windows, k>=2), got {u.shape}")
    if u.shape[0] == 0:
        raise ValueError("anchor utilities: empty input (no windows)")
    if item.shape != (u.shape[0],):
        raise ValueError(f"item: expected shape ({u.shape[0]},), got {item.shape}")
    if item.dtype.kind not in "iu":
        raise ValueError("item: expected integer indices")
    bad = np.flatnonzero((item < 0) | (item >= n_items))
    if bad.size:
        raise ValueError(f"item: row {bad[0]} has index {item[bad[0]]} outside [0, {n_items})")
    free = np.isnan(u)
    nfree = free.sum(axis=1)
    bad = np.flatnonzero(nfree != 1)
    if bad.size:
        raise ValueError(f"anchor utilities: row {bad[0]} must mark exactly one free position with NaN, has {nfree[bad[0]]}")
    bad = np.flatnonzero(np.isinf(u).any(axis=1))
    if bad.size:
        raise ValueError(f"anchor utilities: row {bad[0]} holds an infinite utility")
    return item.astype(np.intp), u


def _log_rest(u: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log R_{ws} for live stages s <= min(q, k-2); mask of live stages; win indicator."""
    W, k = u.shape
    ua = np.where(np.isnan(u), -np.inf, u)
    shift = ua.max(axis=1, keepdims=True)
    e = np.exp(ua - shift)
    R = np.cumsum(e[:, ::-1], axis=1)[:, ::-1][:, : k - 1]  # R_s = sum_{l>=s, l!=q} e_l
    s = np.arange(k - 1)[None, :]
    live = s <= np.minimum(q, k - 2)[:, None]
    with np.errstate(divide="ignore"):
        logR = np.where(live, np.log(R) + shift, np.inf)
    win = (q <= k - 2).astype(float)
    return logR, live, win


def score_equation(theta_w: np.ndarray, logR: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-window Σ_s σ(θ − log R_s) and Σ_s σ(1−σ); ``logR`` is (k−1, W), dead stages +inf → σ = 0."""
    z = theta_w[None, :] - logR
    sig = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
    return sig.sum(axis=0), (sig * (1.0 - sig)).sum(axis=0)


def _score(theta, item, logR, wins, prior, n_items):
    s1, s2 = score_equation(theta[item], logR)
    S = wins - np.bincount(item, weights=s1, minlength=n_items) - prior * theta
    dS = -np.bincount(item, weights=s2, minlength=n_items) - prior
    return S, dS


def apply_guard(theta: np.ndarray, flag: np.ndarray, amin: np.ndarray, amax: np.ndarray,
                margin: float | None = None, edge_nudge: float = UPSTREAM_EDGE_NUDGE,
                clip_range: tuple[float, float] | None = UPSTREAM_RANGE) -> np.ndarray:
    r"""The window guard, item by item.

    With :math:`a_-, a_+` the lowest and highest anchor an item met and :math:`\hat\theta` its root:

    .. math:: g = \begin{cases}
              a_- - \delta_- & \text{ranked below every anchor in all its windows (flag } -1)\\
              a_+ + \delta_+ & \text{ranked above every anchor in all its windows (flag } +1)\\
              c & \text{otherwise,}\ c = \min(\max(\hat\theta, a_-), a_+)
              \end{cases}

    where :math:`a_- - \delta_- = \operatorname{nextafter}(a_-, -\infty)` and
    :math:`a_+ + \delta_+ = \operatorname{nextafter}(a_+, +\infty)` (one floating-point step, the
    published rule) when ``margin`` is None, else :math:`\delta_\pm` = ``margin``. With
    ``edge_nudge`` :math:`\varepsilon > 0`, a clamped value within ``EDGE_TOL`` of :math:`a_-` becomes
    :math:`\min(a_+ - \varepsilon, a_- + \varepsilon)`, else one within ``EDGE_TOL`` of :math:`a_+`
    becomes :math:`\max(a_- + \varepsilon, a_+ - \varepsilon)` (published). Finally :math:`g` is
    clipped to ``clip_range`` when given.
    """
    theta, amin, amax = (np.asarray(a, dtype=float) for a in (theta, amin, amax))
    flag = np.asarray(flag)
    if margin is None:
        below, above = np.nextafter(amin, -np.inf), np.nextafter(amax, np.inf)
    else:
        if not np.isfinite(margin) or margin < 0:
            raise ValueError(f"guard_margin: must be None (one ulp) or a finite number >= 0, got {margin!r}")
        below, above = amin - margin, amax + margin
    c = np.clip(theta, amin, amax)
    if edge_nudge:
        if not np.isfinite(edge_nudge) or edge_nudge < 0:
            raise ValueError(f"edge_nudge: must be a finite number >= 0, got {edge_nudge!r}")
        at_lo = np.abs(c - amin) < EDGE_TOL
        at_hi = ~at_lo & (np.abs(c - amax) < EDGE_TOL)
        c = np.where(at_lo, np.minimum(amax - edge_nudge, amin + edge_nudge),
                     np.where(at_hi, np.maximum(amin + edge_nudge, amax - edge_nudge), c))
    g = np.where(flag == -1, below, np.where(flag == 1, above, c))
    if clip_range is not None:
        lo, hi = map(float, clip_range)
        if not lo <= hi:
            raise ValueError(f"clip_range: expected (low, high) with low <= high, got {clip_range!r}")
        g = np.clip(g, lo, hi)
    return g


def score_anchored(item, u, n_items: int | None = None, prior: float = UPSTREAM_PRIOR,
                   bounds: tuple[float, float] = UPSTREAM_BOUNDS, guard: bool = True,
                   guard_margin: float | None = None, tol: float = 1e-10, max_iter: int = 100,
                   edge_nudge: float = UPSTREAM_EDGE_NUDGE,
                   clip_range: tuple[float, float] | None = UPSTREAM_RANGE) -> AnchoredScores:
    """MAP utility and standard error of every free item; see the module docstring.

    The defaults are the published evaluator (``upstream`` mode): prior λ = 1e-3, root on
    [-20, 20], guard with a one-ulp step (``guard_margin=None``), the 1e-6 edge nudge and a final
    clip to [-10, 10]. ``guard_margin`` (a number) replaces the one-ulp step by a fixed margin,
    ``edge_nudge=0`` drops the nudge, ``clip_range=None`` the final clip (see :func:`apply_guard`).
    ``guard=False`` returns the roots unguarded and unclipped.
    """
    if n_items is None:
        n_items = int(np.max(item)) + 1 if len(item) else 0
    item, u = _validate(item, u, n_items)
    if not np.isfinite(prior) or prior < 0:
        raise ValueError(f"prior: must be finite and >= 0, got {prior!r}")
    lo_b, hi_b = map(float, bounds)
    q = np.argmax(np.isnan(u), axis=1)
    logR, _, win = _log_rest(u, q)
    logR = np.ascontiguousarray(logR.T)  # (k-1, W): sums over stages become row adds
    wins = np.bincount(item, weights=win, minlength=n_items)
    nwin = np.bincount(item, minlength=n_items)

    # Roots outside the bounds sit on them (S is decreasing): settle those first.
    S_lo, _ = _score(np.full(n_items, lo_b), item, logR, wins, prior, n_items)
    S_hi, _ = _score(np.full(n_items, hi_b), item, logR, wins, prior, n_items)
    theta = np.where(S_lo <= 0, lo_b, np.where(S_hi >= 0, hi_b, np.clip(0.0, lo_b, hi_b)))
    active = (S_lo > 0) & (S_hi < 0)
    lo = np.full(n_items, lo_b)
    hi = np.full(n_items, hi_b)
    # Newton on the items still moving, with the windows of those items only.
    ids = np.flatnonzero(active)
    for _ in range(max_iter):
        if ids.size == 0:
            break
        wmask = active[item]
        sub_item = np.searchsorted(ids, item[wmask])
        S, dS = _score(theta[ids], sub_item, logR[:, wmask], wins[ids], prior, ids.size)
        t = theta[ids]
        lo[ids] = np.where(S > 0, t, lo[ids])
        hi[ids] = np.where(S < 0, t, hi[ids])
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = t - S / dS
        inside = np.isfinite(newton) & (newton > lo[ids]) & (newton < hi[ids])
        nxt = np.where(inside, newton, 0.5 * (lo[ids] + hi[ids]))
        nxt = np.where(S == 0, t, nxt)
        theta[ids] = nxt
        done = np.abs(nxt - t) < tol
        active[ids[done]] = False
        ids = ids[~done]
    raw = theta.copy()

    ua = np.where(np.isnan(u), np.nan, u)
    amin = np.full(n_items, np.inf)
    amax = np.full(n_items, -np.inf)
    np.minimum.at(amin, item, np.nanmin(ua, axis=1))
    np.maximum.at(amax, item, np.nanmax(ua, axis=1))
    k = u.shape[1]
    last = np.bincount(item, weights=(q == k - 1).astype(float), minlength=n_items)
    first = np.bincount(item, weights=(q == 0).astype(float), minlength=n_items)
    gflag = np.zeros(n_items, dtype=np.int8)
    seen = nwin > 0
    gflag[seen & (last == nwin)] = -1
    gflag[seen & (first == nwin)] = 1
    if guard:
        with np.errstate(invalid="ignore"):  # items with no window: amin = +inf, amax = -inf
            theta = np.where(seen, apply_guard(theta, gflag, amin, amax, guard_margin, edge_nudge, clip_range), raw)
    _, s2 = score_equation(theta[item], logR)
    info = np.bincount(item, weights=s2, minlength=n_items) + prior
    with np.errstate(divide="ignore"):
        se = 1.0 / np.sqrt(info)
    return AnchoredScores(theta, se, raw, nwin, amin, amax, gflag)


def fit_judge_scale(x, max_iter: int = 50, tol: float = 1e-10) -> tuple[float, float]:
    r"""ML judge sharpness :math:`\beta` and its standard error from anchors' mutual order.

    ``x``: ``(W, k)`` anchor intensities in the judge's rank order; ``NaN`` entries (the scored
    item, or missing anchors) are dropped, keeping the anchors' relative order. Log-likelihood
    :math:`\ell(\beta)=\sum_w\sum_s[\beta x_s-\log\sum_{l\ge s}e^{\beta x_l}]` is concave;
    :math:`\ell'=\sum(x_s-\mathbb E_s x)`, :math:`\ell''=-\sum\mathrm{Var}_s x`.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"anchor intensities: expected a non-empty (windows, k) array, got shape {x.shape}")
    if np.isinf(x).any():
        raise ValueError(f"anchor intensities: row {np.flatnonzero(np.isinf(x).any(axis=1))[0]} holds inf")
    # compact each row: move NaNs to the end, keep order
    order = np.argsort(np.isnan(x), axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    n = (~np.isnan(xs)).sum(axis=1)
    xs = xs[n >= 2]
    n = n[n >= 2]
    if xs.shape[0] == 0:
        raise ValueError("anchor intensities: no window ranks two or more anchors")
    k = xs.shape[1]
    valid = ~np.isnan(xs)
    xz = np.where(valid, xs, 0.0)
    live = np.arange(k)[None, :] <= (n[:, None] - 2)
    beta = 1.0
    for _ in range(max_iter):
        z = np.where(valid, beta * xz, -np.inf)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        Z = np.cumsum(e[:, ::-1], axis=1)[:, ::-1]
        with np.errstate(divide="ignore", invalid="ignore"):  # padded tails have Z = 0, masked below
            ex = np.cumsum((e * xz)[:, ::-1], axis=1)[:, ::-1] / Z
            ex2 = np.cumsum((e * xz * xz)[:, ::-1], axis=1)[:, ::-1] / Z
        g = float(np.where(live, xz - ex, 0.0).sum())
        h = float(np.where(live, ex2 - ex * ex, 0.0).sum())
        if h <= 0:
            raise ValueError("anchor intensities: all anchors in every window share one intensity; β is not identified")
        step = g / h
        new = beta + step
        if new <= 0:
            new = beta / 2  # β must stay positive: a judge that inverts the scale is not usable
        if abs(new - beta) < tol:
            beta = new
            break
        beta = new
    return beta, 1.0 / np.sqrt(h)


def score_calibrated(item, x, beta: float, beta_se: float = 0.0, n_items: int | None = None,
                     prior: float = UPSTREAM_PRIOR, guard_margin: float | None = 0.5, edge_nudge: float = 0.0,
                     clip_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray, AnchoredScores]:
    r"""Score in intensity units: anchors get :math:`u=\beta x`; intensity :math:`\hat\theta/\beta`.

    Standard error by the delta method,
    :math:`\mathrm{se}^2 = \mathrm{se}_\theta^2/\beta^2 + (\hat\theta/\beta)^2\,\mathrm{se}_\beta^2/\beta^2`.
    ``guard_margin``, ``edge_nudge`` and ``clip_range`` are given in intensity units
    (``guard_margin=None``: one floating-point step in utility units); the defaults are this
    project's ``calibrated`` mode (0.5 margin, no nudge, no clip).
    """
    if not beta > 0:
        raise ValueError(f"beta: must be > 0, got {beta!r}")
    res = score_anchored(item, np.asarray(x, float) * beta, n_items=n_items, prior=prior,
                         bounds=(UPSTREAM_BOUNDS[0] * beta, UPSTREAM_BOUNDS[1] * beta),
                         guard_margin=None if guard_margin is None else guard_margin * beta,
                         edge_nudge=edge_nudge * beta,
                         clip_range=None if clip_range is None else (clip_range[0] * beta, clip_range[1] * beta))
    intensity = res.utility / beta
    se = np.sqrt((res.stderr / beta) ** 2 + (intensity * beta_se / beta) ** 2)
    return intensity, se, res
