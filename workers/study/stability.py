r"""Stability figures of one scoring method over repeated runs: pure numpy.

A method (direct *rating*, or anchor-based *ranking*) scored every labelled text :math:`t` in
every run :math:`(r, p)`: repeat :math:`r = 1..R` (a seed) crossed with prompt paraphrase
:math:`p = 1..P`. Scores are an array ``s`` of shape (T, R, P) with NaN where a run gave no
score; ``ref`` (T,) holds the reference intensities and ``group`` (T,) the value of each text
(pairs are only formed within a value). The figures:

* **mean variance per text** :math:`\bar V = \frac1{|T'|}\sum_{t\in T'} \operatorname{Var}_{(r,p)} s_{t,r,p}`
  (sample variance, ddof = 1, over the text's scored runs; :math:`T'` = texts with two or more).
* **max range** :math:`\max_t \left(\max_{r,p} s_{t,r,p} - \min_{r,p} s_{t,r,p}\right)`.
* **sign-flip rate**: share of texts in :math:`T'` scored above zero in one run and below zero in another.
* **prompt sensitivity** :math:`\frac1{|\{(t,r)\}|}\sum_{t,r} \operatorname{Var}_p s_{t,r,p}`: the
  variance across paraphrases at a fixed seed (same anchors, same layout), averaged over texts and
  repeats; None when :math:`P < 2`. **seed sensitivity** is the same across repeats at a fixed paraphrase.
* **sign accuracy**: per run, the share of texts with :math:`\mathrm{ref}_t \ne 0` and a score whose
  sign equals the reference's (a score of exactly 0 is wrong); averaged over runs.
* **pairwise accuracy**: per run, over pairs of texts of the same value with different reference
  intensities, the share ordered the same way by the score (ties ½); averaged over runs.
* **unscored share**: (text, run) cells without a score.

**Ranking's win rate** (:func:`win_rate`) compares two methods text by text: the share of texts
whose ranking scores vary less across runs than their ratings (ties ½).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from workers.stats.agreement import pair_counts

METRICS = ("mean_variance", "max_range", "sign_flip_rate", "prompt_sensitivity", "seed_sensitivity",
           "sign_accuracy", "pairwise_accuracy", "unscored_share")


@dataclass
class Stability:
    texts: int
    runs: int
    mean_variance: float | None
    max_range: float | None
    sign_flip_rate: float | None
    prompt_sensitivity: float | None
    seed_sensitivity: float | None
    sign_accuracy: float | None
    pairwise_accuracy: float | None
    unscored_share: float

    def as_dict(self) -> dict:
        return asdict(self)


def _flat(s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=float)
    if s.ndim != 3:
        raise ValueError(f"scores: expected shape (texts, repeats, paraphrases), got {s.shape}")
    return s.reshape(s.shape[0], -1)


def per_text_variance(s: np.ndarray) -> np.ndarray:
    """Sample variance (ddof = 1) of each text's scores over its scored runs; NaN below two runs."""
    f = _flat(s)
    n = np.isfinite(f).sum(axis=1)
    out = np.full(f.shape[0], np.nan)
    ok = n >= 2
    if ok.any():
        out[ok] = np.nanvar(f[ok], axis=1, ddof=1)
    return out


def per_text_range(s: np.ndarray) -> np.ndarray:
    """max − min of each text's scores over its scored runs; NaN below two runs."""
    f = _flat(s)
    n = np.isfinite(f).sum(axis=1)
    out = np.full(f.shape[0], np.nan)
    ok = n >= 2
    if ok.any():
        out[ok] = np.nanmax(f[ok], axis=1) - np.nanmin(f[ok], axis=1)
    return out


def sign_flips(s: np.ndarray) -> np.ndarray:
    """Per text: True when some run scored it above zero and another below zero (NaN-safe)."""
    f = _flat(s)
    with np.errstate(invalid="ignore"):
        return (f > 0).any(axis=1) & (f < 0).any(axis=1)


def _axis_variance(s: np.ndarray, axis: int) -> float | None:
    """Mean over cells of the sample variance along ``axis`` (cells with two or more scores)."""
    s = np.asarray(s, dtype=float)
    moved = np.moveaxis(s, axis, -1).reshape(-1, s.shape[axis])
    ok = np.isfinite(moved).sum(axis=1) >= 2
    if s.shape[axis] < 2 or not ok.any():
        return None
    return float(np.nanvar(moved[ok], axis=1, ddof=1).mean())


def sign_accuracy(score: np.ndarray, ref: np.ndarray) -> float | None:
    """Share of texts with ref ≠ 0 and a finite score whose sign equals the reference's."""
    score, ref = np.asarray(score, float), np.asarray(ref, float)
    m = np.isfinite(score) & (ref != 0)
    return float((np.sign(score[m]) == np.sign(ref[m])).mean()) if m.any() else None


def pairwise_accuracy(score: np.ndarray, ref: np.ndarray, group: np.ndarray) -> float | None:
    conc, pairs = pair_counts(score, ref, group)
    return conc / pairs if pairs else None


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def stability(s: np.ndarray, ref: np.ndarray, group: np.ndarray) -> Stability:
    """Every figure of the module docstring for one method's scores ``s`` (T, R, P)."""
    s = np.asarray(s, dtype=float)
    T, R, P = s.shape
    ref, group = np.asarray(ref, float), np.asarray(group)
    if ref.shape != (T,) or group.shape != (T,):
        raise ValueError(f"ref and group must have shape ({T},), got {ref.shape} and {group.shape}")
    var = per_text_variance(s)
    rng = per_text_range(s)
    multi = np.isfinite(var)
    runs = [s[:, r, p] for r in range(R) for p in range(P)]
    return Stability(
        texts=T, runs=R * P,
        mean_variance=float(var[multi].mean()) if multi.any() else None,
        max_range=float(np.nanmax(rng)) if multi.any() else None,
        sign_flip_rate=float(sign_flips(s)[multi].mean()) if multi.any() else None,
        prompt_sensitivity=_axis_variance(s, 2),
        seed_sensitivity=_axis_variance(s, 1),
        sign_accuracy=_mean([sign_accuracy(x, ref) for x in runs]),
        pairwise_accuracy=_mean([pairwise_accuracy(x, ref, group) for x in runs]),
        unscored_share=float((~np.isfinite(s)).mean()) if s.size else 0.0,
    )


def win_rate(challenger: np.ndarray, baseline: np.ndarray) -> tuple[float | None, int]:
    """Share of texts (scored at least twice by both methods) whose scores vary less across runs
    under ``challenger`` than under ``baseline`` (equal variance counts ½), and how many texts."""
    a, b = per_text_variance(challenger), per_text_variance(baseline)
    m = np.isfinite(a) & np.isfinite(b)
    if not m.any():
        return None, 0
    a, b = a[m], b[m]
    close = np.isclose(a, b, rtol=1e-9, atol=1e-12)
    wins = ((a < b) & ~close).sum() + 0.5 * close.sum()
    return float(wins / m.sum()), int(m.sum())
