"""Plackett–Luce engine benchmark (one core). Run: ``python benchmarks/plackett_luce.py [--quick]``.

Prints, on synthetic data (10,000 items, log-strengths ~ N(0, 1.5²)):
* wall time for the default fit to reach max|θ − θ*| < 1e-3, where θ* is the same model fitted to
  1e-12 (the MAP at the benchmark prior λ = 0.01: with 10,000 items some never lose, so the plain
  MLE is infinite), Spearman with the truth, and peak memory (tracemalloc) — for 500,000 and
  1,000,000 Bradley–Terry comparisons and 200,000 6-way rankings;
* the same for choix (``ilsr_pairwise``, ``opt_pairwise``) at the same prior (choix's alpha = λ/2),
  each in a subprocess with a time limit, and the speed ratio;
* anchored scoring of 100,000 items × 3 windows × k = 6;
* a warm refit after 1 % more comparisons, as a fraction of the cold fit time.

The last line is one JSON object: the figures, the targets (README, engine table) and whether each
is met.
"""

from __future__ import annotations

import os

os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workers.stats import plackett_luce as pl  # noqa: E402
from workers.stats.anchored import score_anchored  # noqa: E402
from workers.infra.perf import tune_malloc  # noqa: E402
from workers.stats.pl_simulate import simulate_pairs as pairs  # noqa: E402
from workers.stats.pl_simulate import simulate_rankings as rankings  # noqa: E402

PRIOR = 0.01


def pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def timed_fit(n, data, **kw):
    tracemalloc.start()
    t = time.perf_counter()
    res = pl.fit(n, data, prior=PRIOR, **kw)
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return res, dt, peak / 2**20


def _choix_worker(method, n, data, q):
    import choix

    pin_one_core()
    t = time.perf_counter()
    if method == "ilsr_pairwise":
        est = choix.ilsr_pairwise(n, data, alpha=PRIOR / 2, tol=1e-10)
    else:
        est = choix.opt_pairwise(n, data, alpha=PRIOR / 2)
    q.put((time.perf_counter() - t, est))


def run_choix(method, n, data, limit_s):
    q = mp.Queue()
    p = mp.Process(target=_choix_worker, args=(method, n, [tuple(r) for r in data.tolist()], q))
    p.start()
    p.join(limit_s)
    if p.is_alive():
        p.kill()
        p.join()
        return None, None
    if q.empty():
        return None, None
    return q.get()


def bench_fit(label, n, data, theta, choix_limit):
    ref = pl.fit(n, data, prior=PRIOR, tol=1e-12)
    res, dt, peak = timed_fit(n, data)
    err = float(np.abs(res.utilities - ref.utilities).max())
    rho = spearmanr(res.utilities, theta)[0]
    print(f"{label:32} ours   {dt:7.3f} s  max|θ−θ*| {err:.1e}  Spearman {rho:.4f}  peak {peak:6.0f} MB  iters {res.n_iter}")
    best = None
    if choix_limit and data.shape[1] == 2:
        for method in ("ilsr_pairwise", "opt_pairwise"):
            cdt, est = run_choix(method, n, data, choix_limit)
            if cdt is None:
                print(f"{'':32} choix.{method:14} > {choix_limit:.0f} s (stopped)   ratio > {choix_limit / dt:.0f}×")
                best = min(best or np.inf, choix_limit)
                continue
            cerr = float(np.abs(est - ref.utilities).max())
            print(f"{'':32} choix.{method:14} {cdt:7.3f} s  max|θ−θ*| {cerr:.1e}  ratio {cdt / dt:6.0f}×")
            best = min(best or np.inf, cdt)
    out = dict(seconds=round(dt, 3), max_abs_err=err, spearman=round(float(rho), 4), peak_mb=round(peak, 1),
               iterations=res.n_iter)
    if best is not None:
        out["choix_best_seconds_or_limit"] = round(float(best), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the choix runs at full scale")
    ap.add_argument("--choix-limit", type=float, default=600.0, help="seconds allowed to each choix run")
    args = ap.parse_args()
    pin_one_core()
    tune_malloc()
    rng = np.random.default_rng(0)
    n = 10_000
    theta = rng.normal(0, 1.5, n)
    print(f"one core; {n} items; prior λ={PRIOR}\n")
    p500 = pairs(rng, theta, 500_000)
    fits = {
        "bt_500k": bench_fit("BT 500,000 pairs", n, p500, theta, None if args.quick else args.choix_limit),
        "bt_1m": bench_fit("BT 1,000,000 pairs", n, pairs(rng, theta, 1_000_000), theta, None),
        "pl6_200k": bench_fit("PL 200,000 6-way rankings", n, rankings(rng, theta, 200_000, 6), theta, None),
    }
    # choix at a scale where it finishes: a measured ratio
    small_theta = rng.normal(0, 1.5, 1000)
    fits["bt_1k_items_50k"] = bench_fit("BT 1,000 items, 50,000 pairs", 1000, pairs(rng, small_theta, 50_000),
                                        small_theta, args.choix_limit)

    # warm refit after 1 % more comparisons
    more = np.concatenate([p500, pairs(rng, theta, 5_000)])
    base = pl.fit(n, p500, prior=PRIOR)
    t = time.perf_counter()
    warm = pl.fit(n, more, prior=PRIOR, init=base.utilities)
    wdt = time.perf_counter() - t
    t = time.perf_counter()
    pl.fit(n, more, prior=PRIOR)
    cdt = time.perf_counter() - t
    print(f"\nwarm refit after +1 % comparisons: {wdt:.3f} s = {100 * wdt / cdt:.0f} % of the cold fit ({cdt:.3f} s), "
          f"{warm.n_iter} iterations")

    # anchored scoring
    items, m, k = 100_000, 3, 6
    item = np.repeat(np.arange(items), m)
    anchors = rng.uniform(-10, 10, (items * m, k - 1))
    true = rng.uniform(-9, 9, items)
    util = np.concatenate([anchors, true[item][:, None]], 1) * 0.5 + rng.gumbel(size=(items * m, k))
    vals = np.concatenate([anchors, np.full((items * m, 1), np.nan)], 1)
    u = np.take_along_axis(vals, np.argsort(-util, 1), 1)
    t = time.perf_counter()
    res = score_anchored(item, u, items)
    adt = time.perf_counter() - t
    anchored_rho = float(spearmanr(res.utility, true)[0])
    print(f"anchored scoring {items:,} items × {m} windows × k={k}: {adt:.3f} s (Spearman with truth {anchored_rho:.3f})")
    figures = {**fits, "warm_refit": {"seconds": round(wdt, 3), "cold_seconds": round(cdt, 3),
                                      "ratio": round(wdt / cdt, 3), "iterations": warm.n_iter},
               "anchored": {"seconds": round(adt, 3), "spearman": round(anchored_rho, 4)}}
    met = {
        "bt_500k_le_1s": fits["bt_500k"]["seconds"] <= 1.0,
        "bt_500k_lt_1gb": fits["bt_500k"]["peak_mb"] < 1024,
        "bt_1m_le_2s": fits["bt_1m"]["seconds"] <= 2.0,
        "pl6_200k_le_1_5s": fits["pl6_200k"]["seconds"] <= 1.5,
        "accuracy_le_1e-3": all(f["max_abs_err"] < 1e-3 for f in fits.values()),
        "anchored_le_1s": adt <= 1.0,
        "warm_refit_le_40pct": wdt / cdt <= 0.4,
    }
    print(json.dumps({"figures": figures, "targets": {
        "bt_500k_s": 1.0, "bt_500k_peak_mb": 1024, "bt_1m_s": 2.0, "pl6_200k_s": 1.5, "max_abs_err": 1e-3,
        "anchored_s": 1.0, "warm_refit_ratio": 0.4}, "met": met}))


if __name__ == "__main__":
    main()
