"""Pure functions of VIDB expansion and warm refits: opponent choice, the oracle bound, block refits, rank rows."""

from __future__ import annotations

import numpy as np
import pytest

from workers.stats import plackett_luce as pl
from workers.vidb import search as S
from workers.vidb.fit import complete_rows, fit_utilities, only_known, rank_rows


def _posterior_at(grid, centre, sd):
    return -0.5 * ((grid - centre) / sd) ** 2


# -- opponent choice ----------------------------------------------------------------------------------------
def test_opponent_scores_add_the_opponents_variance():
    u, se = np.array([0.0, 1.0, -2.0]), np.array([0.5, 0.0, 1.0])
    assert S.opponent_scores(0.5, u, se).tolist() == pytest.approx([0.25 + 0.25, 0.25, 6.25 + 1.0])
    assert S.opponent_scores(0.5, u).tolist() == pytest.approx([0.25, 0.25, 6.25])


def test_choose_opponents_without_rng_takes_the_nearest_unused_and_prefers_the_better_measured():
    pool = np.array([-1.0, -0.05, 0.05, 0.2, 1.0])
    grid = np.linspace(-5, 5, 401)
    logp = _posterior_at(grid, 0.0, 0.5)
    assert S.choose_opponents(grid, logp, pool, set(), 2) in ([1], [2])
    assert S.choose_opponents(grid, logp, pool, {1, 2}, 2) == [3]
    se = np.array([0.0, 0.6, 0.6, 0.1, 0.0])  # 0.2 ± 0.1 is a better yardstick than ±0.05 ± 0.6
    assert S.choose_opponents(grid, logp, pool, set(), 2, se) == [3]
    assert S.choose_opponents(grid, logp, pool, set(range(5)), 2) == []


def test_choose_opponents_with_rng_spreads_over_near_equivalent_items_only():
    rng = np.random.default_rng(0)
    pool = rng.normal(0, 1.5, 5000)
    grid = S.make_grid(pool)
    logp = _posterior_at(grid, 0.3, 0.4)
    med = S.quantiles(grid, S.posterior(logp), np.array([0.5]))[0]
    picks = [S.choose_opponents(grid, logp, pool, set(), 2, rng=np.random.default_rng(s))[0] for s in range(200)]
    assert len(set(picks)) >= 50  # 200 texts at one estimate meet many different items, not one
    best = np.min((pool - med) ** 2)
    assert np.all((pool[picks] - med) ** 2 <= best + (0.25 * S.mean_sd(grid, logp)[1]) ** 2 + 1e-12)
    # k = 4: one item per quartile target, all different
    three = S.choose_opponents(grid, logp, pool, set(), 4, rng=np.random.default_rng(1))
    targets = S.quantiles(grid, S.posterior(logp), np.array([0.25, 0.5, 0.75]))
    assert len(set(three)) == 3 and np.all(np.abs(pool[three] - targets) < 0.15)


def test_uniform_information_formula_and_oracle_bound():
    theta, pool = np.array([0.0, 2.0]), np.array([0.0, 1.0])
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    want = [np.mean([sig(t - u) * sig(u - t) for u in pool]) for t in theta]
    assert S.uniform_information(theta, pool).tolist() == pytest.approx(want)
    assert S.uniform_information(theta, pool, 2.0).tolist() == pytest.approx(
        [4 * np.mean([sig(2 * (t - u)) * sig(2 * (u - t)) for u in pool]) for t in theta])
    # pool and texts ~ N(0, 1.5²), sharpness 1: even an oracle needs ~0.54× the uniform windows
    rng = np.random.default_rng(0)
    b1 = S.oracle_window_ratio(rng.normal(0, 1.5, 2000), rng.normal(0, 1.5, 2000), 16)
    assert 0.52 <= b1 <= 0.56
    # a sharper judge makes uniform opponents relatively worse: the bound falls
    b2 = S.oracle_window_ratio(rng.normal(0, 3.0, 2000), rng.normal(0, 3.0, 2000), 16)
    assert b2 < b1 - 0.1


# -- block refit --------------------------------------------------------------------------------------------
def _expansion_data(n=400, n_new=20, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 1.5, n + n_new)
    a = rng.integers(0, n, 6 * n)
    b = (a + rng.integers(1, n, a.size)) % n
    base = np.stack([a, b], 1)
    extra = np.stack([np.repeat(np.arange(n, n + n_new), 8), rng.integers(0, n, 8 * n_new)], 1)

    def answer(p):
        win = rng.random(len(p)) < 1 / (1 + np.exp(-(theta[p[:, 0]] - theta[p[:, 1]])))
        return np.where(win[:, None], p, p[:, ::-1])

    return theta, answer(base), answer(extra)


def test_warm_refit_reaches_the_cold_optimum_in_fewer_steps():
    theta, base, extra = _expansion_data(n=1500, n_new=60, seed=3)
    n, N = 1500, 1560
    rows = list(np.concatenate([base, extra]))
    prev = pl.fit(n, base, prior=0.1, tol=1e-8).utilities
    init = np.concatenate([prev, np.zeros(N - n)])
    cold = fit_utilities(N, rows, 0.1)
    warm = fit_utilities(N, rows, 0.1, init)
    assert np.abs(warm.utility - cold.utility).max() < 1e-6
    assert np.abs(warm.stderr - cold.stderr).max() < 1e-6
    assert warm.n_iter < cold.n_iter
    # the rows as one 2-D array (what rank_rows gives a pairwise refit): the same fit
    arr = fit_utilities(N, np.stack(rows), 0.1, init)
    assert np.array_equal(arr.utility, warm.utility) and np.array_equal(arr.stderr, warm.stderr)


# -- rank rows ----------------------------------------------------------------------------------------------
def test_rank_rows_maps_ranked_members_keeps_order_and_skips_unknown():
    keys = np.array([10, 20, 30])
    # flat: members in rank order, comparison after comparison ([20,10], [10,99], [20,30,10], [20,30])
    ranked, lengths = np.array([20, 10, 10, 99, 20, 30, 10, 20, 30]), np.array([2, 2, 3, 2])
    rows = rank_rows(ranked, lengths, keys)
    assert [r.tolist() for r in rows] == [[1, 0], [1, 2, 0], [1, 2]]
    assert complete_rows(np.isin(ranked, keys), lengths).tolist() == [True, False, True, True]
    kept, kept_lengths = only_known(ranked, lengths, keys)
    assert kept.tolist() == [20, 10, 20, 30, 10, 20, 30] and kept_lengths.tolist() == [2, 3, 2]
    assert rank_rows(np.array([], dtype=np.int64), np.array([], dtype=np.int64), keys) == []
    assert rank_rows(np.array([10, 99]), np.array([2]), keys) == []  # nothing known: nothing to fit
    same = rank_rows(np.array([20, 10, 20, 30]), np.array([2, 2]), keys)
    assert isinstance(same, np.ndarray) and same.tolist() == [[1, 0], [1, 2]]  # one size: one array
