"""``upstream`` mode against a reference written here from the published evaluator's equations.

The reference works on what the published evaluator sees: the shown texts (scored text at position
0, then the anchors in ascending bucket order, as planned by :func:`plan_windows`), the judge's
order of those positions, and the anchors' intensities. For one item with windows w it solves

    S(t) = sum_w sum_j ( [o_wj = 0] - e^t / (e^t + sum_{l in o_w[j:], l != 0} e^{I_wl}) ) - lambda t = 0

over the stages j at which the scored text is still unranked (plain Plackett-Luce, anchors fixed at
their intensities, lambda = 1e-3), by brentq on [-20, 20] (an end when S keeps one sign there). Then
the guard: below every anchor in all windows -> nextafter(lowest anchor met, -inf); above every
anchor -> nextafter(highest, +inf); otherwise clamp to [lowest, highest] and move 1e-6 off an end it
sits on; finally clip to [-10, 10].
"""

import asyncio

import numpy as np
import pytest
from scipy.optimize import brentq

from schemas.taxonomy import default_taxonomy
from workers.jobs.windows import AnchorPool, bucket_index, plan_windows
from workers.judges.base import Completion, LLMJudge
from workers.judges.config import JudgeConfig
from workers.judges.parsing import ParseError, parse_ranking_upstream
from workers.judges.prompts import SYSTEM, build_messages
from workers.stats.anchored import score_anchored

LAMBDA = 1e-3
EPS = 1e-6


def reference_score(orders, intensities):
    """(guarded score, root, guard flag) of one item; ``orders[w]`` lists shown positions from most
    to least supporting, ``intensities[w][p]`` is the anchor intensity at shown position p (p >= 1)."""
    won, rest = 0.0, []
    wins = losses = 0
    met = []
    for order, inten in zip(orders, intensities):
        order = list(order)
        for j in range(len(order)):
            remaining = order[j:]
            if 0 not in remaining:
                break
            won += order[j] == 0
            rest.append(sum(np.exp(inten[p]) for p in remaining if p != 0))
        p0 = order.index(0)
        wins += len(order) - 1 - p0
        losses += p0
        met += [inten[p] for p in order if p != 0]
    rest = np.asarray(rest)

    def S(t):
        return won - np.sum(1.0 / (1.0 + rest * np.exp(-t))) - LAMBDA * t

    if S(-20.0) <= 0:
        root = -20.0
    elif S(20.0) >= 0:
        root = 20.0
    else:
        root = brentq(S, -20.0, 20.0, xtol=1e-13, rtol=1e-15, maxiter=200)
    lo, hi = min(met), max(met)
    if losses > 0 and wins == 0:
        s, flag = np.nextafter(lo, -np.inf), -1
    elif wins > 0 and losses == 0:
        s, flag = np.nextafter(hi, np.inf), 1
    else:
        s, flag = min(max(root, lo), hi), 0
        if abs(s - lo) < 1e-12:
            s = min(hi - EPS, lo + EPS)
        elif abs(s - hi) < 1e-12:
            s = max(lo + EPS, hi - EPS)
    return float(np.clip(s, -10.0, 10.0)), root, flag


def test_upstream_mode_matches_the_published_equations_on_3000_items():
    rng = np.random.default_rng(2026)
    n_items, k, m = 3000, 6, 3
    vidb = np.round(rng.uniform(-10, 10, 2500), 1)  # VIDB intensities are rounded to 0.1
    pool = AnchorPool("care-harm", np.arange(vidb.size), np.arange(vidb.size) + 10_000, vidb)
    windows, _ = plan_windows(None, n_items, [pool], k, m, "bucket", seed=5, chunk_size=10**9)
    assert len(windows) == n_items * m
    # the published layout: scored text first, then one anchor per bucket, lowest bucket first
    bins = bucket_index(vidb, k - 1)
    by_id = dict(zip(pool.item_ids.tolist(), bins.tolist()))
    assert all(w.target_pos == 0 for w in windows)
    assert all([by_id[a] for a in w.anchor_ids] == list(range(k - 1)) for w in windows)

    # a Plackett-Luce judge with utility = intensity (the upstream assumption)
    true = rng.uniform(-12, 12, n_items)  # steered responses reach past the VIDB range
    item = np.array([w.item_no for w in windows])
    shown = np.column_stack([true[item], np.array([w.anchor_intensity for w in windows])])
    orders = np.argsort(-(shown + rng.gumbel(size=shown.shape)), axis=1)

    # what score_anchored takes: intensities in rank order, NaN where the scored text was ranked
    u = np.take_along_axis(np.where(np.arange(k) == 0, np.nan, shown), orders, axis=1)
    res = score_anchored(item, u, n_items)  # the defaults are upstream mode

    ref = np.empty(n_items)
    ref_root = np.empty(n_items)
    ref_flag = np.empty(n_items, dtype=int)
    for i in range(n_items):
        rows = slice(i * m, (i + 1) * m)
        ref[i], ref_root[i], ref_flag[i] = reference_score(orders[rows], shown[rows])

    guarded = ref_flag != 0
    assert guarded.mean() >= 0.15, guarded.mean()
    assert (ref_flag == -1).sum() >= 150 and (ref_flag == 1).sum() >= 150
    np.testing.assert_array_equal(res.guard, ref_flag)
    assert np.abs(res.raw_utility - ref_root).max() <= 1e-6
    assert np.abs(res.utility - ref).max() <= 1e-6
    # guarded items sit exactly one floating-point step beyond the anchor they never beat/lost to
    np.testing.assert_array_equal(res.utility[guarded], ref[guarded])
    low, high = ref_flag == -1, ref_flag == 1
    inner = low & (res.anchor_min > -10)  # below an anchor at -10 the clip to [-10, 10] wins
    assert inner.sum() >= 100
    assert np.all(res.utility[inner] < res.anchor_min[inner])
    assert np.all(np.nextafter(res.utility[inner], np.inf) == res.anchor_min[inner])
    np.testing.assert_array_equal(res.utility[low & ~inner], -10.0)
    # unguarded roots outside the anchors met are clamped and moved 1e-6 inside, exactly as published
    clamped = ~guarded & ((ref_root < res.anchor_min) | (ref_root > res.anchor_max))
    assert clamped.sum() >= 50
    np.testing.assert_array_equal(res.utility[clamped], ref[clamped])
    assert np.all((res.utility[clamped] > res.anchor_min[clamped]) & (res.utility[clamped] < res.anchor_max[clamped]))
    assert res.utility.min() >= -10.0 and res.utility.max() <= 10.0

    # a fixed margin (other modes) moves guarded items by that margin instead, then the clip
    old = score_anchored(item, u, n_items, guard_margin=0.5)
    np.testing.assert_array_equal(old.utility[~guarded], res.utility[~guarded])
    np.testing.assert_allclose(old.utility[low], np.maximum(res.anchor_min[low] - 0.5, -10.0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(old.utility[high], np.minimum(res.anchor_max[high] + 0.5, 10.0), rtol=0, atol=1e-12)


# -- the judge-side switches back to the published evaluator ------------------------------------------
class _Canned(LLMJudge):
    """An LLM judge answering from a list, recording every conversation it was sent."""

    def __init__(self, answers, **cfg):
        super().__init__(JudgeConfig(name="canned", kind="api", model="m", **cfg))
        self.answers, self.sent = list(answers), []

    async def complete(self, conversations, k):
        self.sent += conversations
        return [Completion(self.answers.pop(0)) for _ in conversations]


VALUE = default_taxonomy().get("care-harm")
TEXTS = ["I fed the stray cat.", "I kicked the stray cat.", "I saw a cat."]


def test_published_judge_settings_send_the_generic_system_line_and_never_repair():
    ours = _Canned(["I think 1 > 3 > 2", "[1, 3, 2]"])
    r = asyncio.run(ours.rank_windows(VALUE, [TEXTS]))[0]
    assert r.order == [0, 2, 1] and len(ours.sent) == 1  # the lenient parser reads a chain
    assert ours.sent[0][0] == {"role": "system", "content": SYSTEM}

    pub = _Canned(["I think 1 > 3 > 2", "[1, 3, 2]"], system_prompt="generic", repair=False, parse="upstream",
                  structured="off", temperature=0.0, max_tokens=50)
    r = asyncio.run(pub.rank_windows(VALUE, [TEXTS]))[0]
    assert r.order is None and "no bracketed list" in r.failure  # dropped, as published: no second turn
    assert len(pub.sent) == 1 and pub.answers == ["[1, 3, 2]"]
    assert pub.sent[0][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert pub.sampling(3) == {"temperature": 0.0, "max_tokens": 50}

    bare = build_messages(VALUE, TEXTS, system="none")
    assert [m["role"] for m in bare] == ["user"] and bare[0] == build_messages(VALUE, TEXTS)[1]
    with pytest.raises(ValueError, match="system prompt: expected one of"):
        build_messages(VALUE, TEXTS, system="terse")


@pytest.mark.parametrize("answer, expected", [
    ("[2, 3, 1]", [1, 2, 0]),
    ("ranking: [ 3,1 , 2 ] done", [2, 0, 1]),
    ('{"ranking": [2, 3, 1]}', [1, 2, 0]),
])
def test_upstream_parse_reads_the_first_bracketed_list(answer, expected):
    assert parse_ranking_upstream(answer, 3) == expected


@pytest.mark.parametrize("answer", [
    "[1, 2] then [2, 3, 1]",  # only the first list counts
    "[3 1 2]",
    "3 > 1 > 2",
])
def test_upstream_parse_reads_only_the_first_bracketed_list(answer):
    with pytest.raises(ParseError):
        parse_ranking_upstream(answer, 3)
