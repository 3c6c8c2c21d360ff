"""Synthetic Plackett–Luce data with known utilities (tests, benchmarks, power analyses)."""

from __future__ import annotations

import numpy as np


def simulate_pairs(rng: np.random.Generator, theta: np.ndarray, m: int) -> np.ndarray:
    """m Bradley–Terry comparisons between uniformly drawn distinct items, winner first."""
    n = len(theta)
    a = rng.integers(0, n, m)
    b = (a + rng.integers(1, n, m)) % n
    win = rng.random(m) < 1 / (1 + np.exp(theta[b] - theta[a]))
    return np.stack([np.where(win, a, b), np.where(win, b, a)], 1)


def simulate_rankings(rng: np.random.Generator, theta: np.ndarray, m: int, k: int) -> np.ndarray:
    """m full rankings of k distinct items each (Gumbel trick: PL = argsort of θ + Gumbel noise)."""
    n = len(theta)
    items = rng.integers(0, n, (m, k))
    for _ in range(100):  # redraw rows that repeat an item
        s = np.sort(items, 1)
        bad = (s[:, 1:] == s[:, :-1]).any(1)
        if not bad.any():
            break
        items[bad] = rng.integers(0, n, (int(bad.sum()), k))
    g = theta[items] + rng.gumbel(size=items.shape)
    return np.take_along_axis(items, np.argsort(-g, 1), 1)
