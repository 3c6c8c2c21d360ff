import choix
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import spearmanr

from workers.stats import plackett_luce as pl
from workers.stats.anchored import apply_guard, fit_judge_scale, score_anchored, score_calibrated
from workers.stats.calibration import fit_isotonic
from workers.stats.pl_simulate import simulate_pairs as sim_pairs
from workers.stats.pl_simulate import simulate_rankings as sim_rankings


def test_recovers_synthetic_truth_at_scale():
    rng = np.random.default_rng(0)
    theta = rng.normal(0, 1.5, 10_000)
    data = sim_pairs(rng, theta, 500_000)
    res = pl.fit(10_000, data, prior=0.01)
    assert res.converged
    assert spearmanr(res.utilities, theta)[0] >= 0.98


@pytest.mark.parametrize("alpha", [0.01, 0.5])
def test_equals_choix_pairwise_and_rankings(alpha):
    rng = np.random.default_rng(1)
    theta = rng.normal(0, 1, 40)
    pairs = sim_pairs(rng, theta, 2000)
    ours = pl.fit(40, pairs, prior=2 * alpha, tol=1e-12).utilities
    ref = choix.opt_pairwise(40, [tuple(p) for p in pairs], alpha=alpha, tol=1e-12)
    assert np.abs(ours - ref).max() <= 1e-6
    ranks = sim_rankings(rng, theta, 800, 5)
    ours = pl.fit(40, ranks, prior=2 * alpha, tol=1e-12).utilities
    ref = choix.opt_rankings(40, [list(r) for r in ranks], alpha=alpha, tol=1e-12)
    assert np.abs(ours - ref).max() <= 1e-6


def test_mle_without_prior_equals_centred_choix():
    rng = np.random.default_rng(2)
    theta = rng.normal(0, 1, 30)
    pairs = sim_pairs(rng, theta, 3000)
    ours = pl.fit(30, pairs, tol=1e-12).utilities
    ref = choix.opt_pairwise(30, [tuple(p) for p in pairs], alpha=0, tol=1e-12)
    assert abs(ours.mean()) < 1e-10
    assert np.abs(ours - (ref - ref.mean())).max() <= 1e-6


def test_kway_and_pairwise_fits_agree():
    rng = np.random.default_rng(3)
    theta = rng.normal(0, 1, 200)
    pairs = sim_pairs(rng, theta, 60_000)
    ranks = sim_rankings(rng, theta, 12_000, 6)
    a = pl.fit(200, pairs).utilities
    b = pl.fit(200, ranks).utilities
    se = pl.standard_errors(pl.fit(200, ranks))
    assert np.corrcoef(a, b)[0, 1] > 0.97
    assert np.mean(np.abs(a - b)) < 2 * se.mean()
    # ragged input: pairs padded beside 3-way rankings equal the same data fitted row by row
    mixed = [list(p) for p in pairs[:3000]] + [list(r[:3]) for r in ranks[:2000]]
    ragged = pl.fit(200, mixed, prior=0.1)
    lp = pl.loglik(200, pairs[:3000], ragged.utilities) + pl.loglik(200, ranks[:2000, :3], ragged.utilities)
    assert lp == pytest.approx(pl.loglik(200, mixed, ragged.utilities), rel=1e-12)
    grad = pl.gradient(200, pairs[:3000], ragged.utilities) + pl.gradient(200, ranks[:2000, :3], ragged.utilities)
    assert np.abs(grad + 0.1 * ragged.utilities).max() < 1e-6  # stationary for the combined objective


def test_weights_equal_repetition():
    rng = np.random.default_rng(4)
    theta = rng.normal(0, 1, 20)
    pairs = sim_pairs(rng, theta, 500)
    w = rng.integers(1, 4, len(pairs)).astype(float)
    a = pl.fit(20, pairs, weights=w, prior=0.1).utilities
    b = pl.fit(20, np.repeat(pairs, w.astype(int), axis=0), prior=0.1).utilities
    assert np.abs(a - b).max() < 1e-8


def test_warm_start_reaches_the_same_optimum_in_fewer_iterations():
    rng = np.random.default_rng(5)
    theta = rng.normal(0, 1.5, 2000)
    data = sim_pairs(rng, theta, 100_000)
    cold = pl.fit(2000, data, prior=0.01)
    more = np.concatenate([data, sim_pairs(rng, theta, 1000)])
    warm = pl.fit(2000, more, prior=0.01, init=cold.utilities)
    ref = pl.fit(2000, more, prior=0.01)
    assert np.abs(warm.utilities - ref.utilities).max() < 1e-6
    assert warm.n_iter < ref.n_iter


def test_deflated_newton_solve_equals_the_dense_solve_and_beats_plain_cg():
    """The constant direction is an exact eigenvector of the posterior Hessian (eigenvalue λ):
    solving it apart gives the dense solution, with fewer Hessian products than plain PCG."""
    rng = np.random.default_rng(8)
    n, prior = 300, 0.1
    theta = rng.normal(0, 1.5, n)
    data = pl.prepare(n, sim_rankings(rng, theta, 3000, 3))
    at = rng.normal(0, 1, n)
    H = pl.hessian_dense(data, at, prior)
    assert np.allclose(H @ np.ones(n), prior)
    ker = pl._Kernel(data, at)
    b = rng.normal(0.5, 1, n)  # a right-hand side with a large constant part
    counts = {}
    for lam in (0.0, prior):
        calls = []

        def hvp(v):
            calls.append(1)
            return ker.hvp(v) + prior * v

        x = pl._pcg(hvp, b, ker.hess_diag() + prior, rtol=1e-10, max_iter=500, const_eig=lam)
        assert np.abs(x - np.linalg.solve(H, b)).max() < 1e-7
        counts[lam] = len(calls)
    assert counts[prior] < counts[0.0]


def test_fit_deflates_its_newton_solves_with_a_prior(monkeypatch):
    rng = np.random.default_rng(9)
    theta = rng.normal(0, 0.5, 200)  # close utilities: every item wins and loses (the plain MLE exists)
    data = sim_pairs(rng, theta, 8000)
    seen = []
    real = pl._pcg

    def spy(*a, const_eig=0.0, **kw):
        seen.append(const_eig)
        return real(*a, const_eig=const_eig, **kw)

    monkeypatch.setattr(pl, "_pcg", spy)
    pl.fit(200, data, prior=0.1)
    assert seen and set(seen) == {0.1}
    seen.clear()
    pl.fit(200, data)  # no prior: the constant direction is the null space, nothing to deflate
    assert seen and set(seen) == {0.0}


def test_disconnected_graph_is_reported_and_prior_makes_it_defined():
    data = np.array([[0, 1], [1, 0], [2, 3], [3, 2]])
    with pytest.raises(ValueError, match="disconnected into 2 components"):
        pl.fit(4, data)
    comps = pl.components(4, data)
    assert sorted(map(sorted, (c.tolist() for c in comps))) == [[0, 1], [2, 3]]
    res = pl.fit(4, data, prior=1.0)
    assert np.all(np.isfinite(res.utilities))
    with pytest.raises(ValueError, match="not strongly connected"):
        pl.fit(3, np.array([[0, 1], [1, 2], [0, 2]]))


def test_standard_errors_cover_truth_at_nominal_rate():
    rng = np.random.default_rng(6)
    hits = total = 0
    for _ in range(40):
        theta = rng.normal(0, 1, 60)
        theta -= theta.mean()
        data = sim_rankings(rng, theta, 600, 4)
        res = pl.fit(60, data)
        se = pl.standard_errors(res)
        hits += int(np.sum(np.abs(res.utilities - theta) <= 1.96 * se))
        total += 60
    assert 0.92 <= hits / total <= 0.98


def test_approximate_standard_errors_close_to_exact_on_well_mixed_graph():
    rng = np.random.default_rng(7)
    theta = rng.normal(0, 1, 300)
    res = pl.fit(300, sim_pairs(rng, theta, 30_000), prior=0.01)
    exact = pl.standard_errors(res, exact=True)
    approx = pl.standard_errors(res, exact=False)
    assert np.median(np.abs(approx / exact - 1)) < 0.1


@pytest.mark.parametrize("bad, match", [
    (np.array([[0, 5]]), "row 0 has item index 5"),
    (np.array([[0, 1], [2, 2]]), "row 1 repeats an item"),
    ([[0, 1], [3]], "row 1 ranks fewer than 2"),
    (np.zeros((0, 2), dtype=int), "empty input"),
    ([], "empty input"),
])
def test_bad_observations_raise_naming_the_row(bad, match):
    with pytest.raises(ValueError, match=match):
        pl.fit(4, bad, prior=1.0)


def test_bad_weights_raise_naming_the_row():
    with pytest.raises(ValueError, match="weights: row 1"):
        pl.fit(3, np.array([[0, 1], [1, 2]]), weights=[1.0, np.nan], prior=1)
    with pytest.raises(ValueError, match="weights: row 0"):
        pl.fit(3, np.array([[0, 1], [1, 2]]), weights=[np.inf, 1.0], prior=1)


# -- anchored scoring -----------------------------------------------------------------------------
def _anchored_problem(rng, n=200, m=3, k=6, beta=0.5, true=None, anchors=None):
    item = np.repeat(np.arange(n), m)
    anchors = rng.uniform(-10, 10, (n * m, k - 1)) if anchors is None else anchors
    true = rng.uniform(-9, 9, n) if true is None else true
    u = np.empty((n * m, k))
    for w in range(n * m):
        vals = np.append(anchors[w], np.nan)
        util = np.append(anchors[w], true[item[w]]) * beta + rng.gumbel(size=k)
        u[w] = vals[np.argsort(-util)]
    return item, u, true


def _reference_root(rows, prior=1e-3, lo=-20.0, hi=20.0):
    k = rows.shape[1]

    def S(t):
        tot = -prior * t
        for r in rows:
            q = int(np.flatnonzero(np.isnan(r))[0])
            tot += 1.0 if q <= k - 2 else 0.0
            for s in range(min(q, k - 2) + 1):
                R = sum(np.exp(r[l]) for l in range(s, k) if l != q)
                tot -= 1 / (1 + R * np.exp(-t))
        return tot

    if S(lo) < 0:
        return lo
    if S(hi) > 0:
        return hi
    return brentq(S, lo, hi, xtol=1e-12)


def test_anchored_upstream_mode_equals_per_item_reference():
    rng = np.random.default_rng(8)
    item, u, _ = _anchored_problem(rng, n=150)
    res = score_anchored(item, u, 150)
    ref = np.array([_reference_root(u[item == i]) for i in range(150)])
    assert np.abs(res.raw_utility - ref).max() <= 1e-4
    # the guard: below every anchor everywhere -> one floating-point step below the lowest anchor met
    guarded = np.flatnonzero(res.guard == -1)
    assert guarded.size >= 5
    for i in guarded:
        assert res.utility[i] == np.nextafter(np.nanmin(u[item == i]), -np.inf)
    inside = res.guard == 0
    assert np.all(res.utility[inside] >= res.anchor_min[inside]) and np.all(res.utility[inside] <= res.anchor_max[inside])


def test_anchored_guard_cases():
    # one item always last, one always first, one in the middle, one landing on its highest anchor
    u = np.array([[3.0, 1.0, np.nan], [2.0, -4.0, np.nan],
                  [np.nan, 3.0, 1.0], [np.nan, 5.0, 0.0],
                  [3.0, np.nan, 1.0],
                  [np.nan, 1.0, 0.0], [np.nan, 1.0, 0.0], [1.0, np.nan, 0.0]])
    item = np.array([0, 0, 1, 1, 2, 3, 3, 3])
    res = score_anchored(item, u, 4)  # upstream: one ulp, 1e-6 edge nudge, clip to [-10, 10]
    assert res.guard.tolist() == [-1, 1, 0, 0]
    assert res.utility[0] == np.nextafter(-4.0, -np.inf) and res.utility[1] == np.nextafter(5.0, np.inf)
    assert 1.0 < res.utility[2] < 3.0
    assert res.raw_utility[3] > 1.0 and res.utility[3] == 1.0 - 1e-6  # clamped to 1, nudged inside
    fixed = score_anchored(item, u, 4, guard_margin=0.5, edge_nudge=0.0)
    assert fixed.utility[0] == -4.5 and fixed.utility[1] == 5.5 and fixed.utility[3] == 1.0
    off = score_anchored(item, u, 4, guard=False)
    np.testing.assert_array_equal(off.utility, off.raw_utility)
    # the final clip: an item below an anchor at -10 stays at -10, with a margin too
    edge = np.array([[-9.0, -10.0, np.nan]])
    assert score_anchored(np.array([0]), edge, 1).utility[0] == -10.0
    assert score_anchored(np.array([0]), edge, 1, guard_margin=0.5).utility[0] == -10.0
    assert score_anchored(np.array([0]), edge, 1, guard_margin=0.5, clip_range=None).utility[0] == -10.5


def test_apply_guard_formula_and_bad_options():
    theta = np.array([0.0, 0.0, 7.0, -7.0, 2.0, 2.0])
    flag = np.array([-1, 1, 0, 0, 0, 0])
    amin = np.array([-3.0, -3.0, -1.0, -1.0, 2.0, -1.0])
    amax = np.array([4.0, 4.0, 5.0, 5.0, 2.0, 2.0])
    g = apply_guard(theta, flag, amin, amax)
    assert g.tolist() == [np.nextafter(-3.0, -np.inf), np.nextafter(4.0, np.inf), 5.0 - 1e-6, -1.0 + 1e-6,
                          2.0 - 1e-6, 2.0 - 1e-6]  # a one-point span goes below its end, as published
    assert apply_guard(theta, flag, amin, amax, margin=0.25, edge_nudge=0.0, clip_range=(-2.0, 4.5)).tolist() == \
        [-2.0, 4.25, 5.0 - 0.5, -1.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="guard_margin: must be None"):
        apply_guard(theta, flag, amin, amax, margin=-1.0)
    with pytest.raises(ValueError, match="edge_nudge"):
        apply_guard(theta, flag, amin, amax, edge_nudge=float("nan"))
    with pytest.raises(ValueError, match="clip_range"):
        apply_guard(theta, flag, amin, amax, clip_range=(1.0, -1.0))


def test_judge_scale_recovered_and_calibrated_scores_agree_across_judges():
    rng = np.random.default_rng(9)
    for beta in (0.2, 0.8):
        x = rng.uniform(-10, 10, (3000, 5))
        ranked = np.take_along_axis(x, np.argsort(-(beta * x + rng.gumbel(size=x.shape)), axis=1), axis=1)
        b, se = fit_judge_scale(ranked)
        assert abs(b / beta - 1) < 0.10 and se > 0
    # a sharp and a noisy judge score the same items on one scale
    true = rng.uniform(-9, 9, 300)
    anchors = rng.uniform(-10, 10, (1500, 5))
    item, u_sharp, _ = _anchored_problem(rng, n=300, m=5, beta=1.0, true=true, anchors=anchors)
    _, u_noisy, _ = _anchored_problem(rng, n=300, m=5, beta=0.25, true=true, anchors=anchors)
    out = []
    for u in (u_sharp, u_noisy):
        b, bse = fit_judge_scale(u)
        inten, se, _ = score_calibrated(item, u, b, bse, n_items=300)
        out.append((inten, se))
    assert np.corrcoef(out[0][0], true)[0, 1] > 0.9 and np.corrcoef(out[1][0], true)[0, 1] > 0.6
    assert abs(np.median(out[0][0] - out[1][0])) < 1.0
    assert np.median(out[1][1]) > np.median(out[0][1])  # the noisy judge is honestly less certain


def test_anchored_bad_input():
    with pytest.raises(ValueError, match="row 1 must mark exactly one free"):
        score_anchored(np.array([0, 0]), np.array([[1.0, np.nan], [1.0, 2.0]]), 1)
    with pytest.raises(ValueError, match="row 0 has index 3"):
        score_anchored(np.array([3]), np.array([[1.0, np.nan]]), 2)
    with pytest.raises(ValueError, match="row 0 holds an infinite"):
        score_anchored(np.array([0]), np.array([[np.inf, np.nan]]), 1)
    with pytest.raises(ValueError, match="empty input"):
        score_anchored(np.zeros(0, dtype=int), np.zeros((0, 3)), 1)
    with pytest.raises(ValueError, match="row 0 holds inf"):
        fit_judge_scale(np.array([[np.inf, 1.0]]))


# -- calibration ----------------------------------------------------------------------------------
def test_isotonic_map_is_monotone_clipped_and_reports_residuals():
    rng = np.random.default_rng(11)
    u = rng.normal(0, 2, 200)
    y = np.clip(4 * u + rng.normal(0, 2, 200), -12, 12)
    cmap = fit_isotonic(u, y)
    grid = np.linspace(-20, 20, 500)
    out = cmap(grid)
    assert np.all(np.diff(out) >= 0)
    assert out.min() >= -10 and out.max() <= 10
    assert cmap.residuals.shape == (200,) and cmap.rmse < 3


def test_isotonic_refuses_too_few_points_and_bad_values():
    with pytest.raises(ValueError, match="at least 10 reference points"):
        fit_isotonic(np.arange(5.0), np.arange(5.0))
    with pytest.raises(ValueError, match="intensities: row 2"):
        fit_isotonic(np.arange(12.0), np.r_[0, 1, np.nan, np.arange(9.0)])
