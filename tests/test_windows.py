import numpy as np
import pytest

from scheduler.windows import AnchorPool, bucket_members, draw_anchors, plan_windows


def _pool(n=200, seed=0, value="care-harm"):
    rng = np.random.default_rng(seed)
    ids = np.arange(n)
    return AnchorPool(value, ids + 1000, ids + 5000, rng.uniform(-10, 10, n))


def test_bucket_mode_takes_one_anchor_per_equal_width_bin():
    pool = _pool()
    picks = draw_anchors(pool, 500, 5, "bucket", np.random.default_rng(1))
    bins = bucket_members(pool.intensity, 5)
    for j in range(5):
        assert np.isin(picks[:, j], bins[j]).all()
    assert all(len(set(r)) == 5 for r in picks)


def test_empty_bins_borrow_and_rows_stay_distinct():
    x = np.array([-9.0, -8.5, -8.0, 7.0, 8.0, 9.0])  # the middle bins are empty
    pool = AnchorPool("care-harm", np.arange(6), np.arange(6), x)
    picks = draw_anchors(pool, 300, 5, "bucket", np.random.default_rng(2))
    assert all(len(set(r)) == 5 for r in picks)
    with pytest.raises(ValueError, match="has 6 VIDB items; windows of k=8 need at least 7"):
        draw_anchors(pool, 1, 7, "bucket", np.random.default_rng(0))


def test_scored_text_is_never_its_own_anchor_and_random_mode():
    pool = _pool(n=8)
    excl = np.full(400, 5003)  # text id of pool item 3
    for mode in ("bucket", "random"):
        picks = draw_anchors(pool, 400, 5, mode, np.random.default_rng(3), excl)
        assert not (pool.text_ids[picks] == 5003).any()
        assert all(len(set(r)) == 5 for r in picks)


def test_plan_is_seeded_shuffled_and_chunked_by_pair():
    pools = [_pool(seed=1, value="care-harm"), _pool(seed=2, value="fidelity")]
    a, chunks = plan_windows(None, 50, pools, 6, 3, "bucket", seed=7, chunk_size=10)
    b, _ = plan_windows(None, 50, pools, 6, 3, "bucket", seed=7, chunk_size=10)
    c, _ = plan_windows(None, 50, pools, 6, 3, "bucket", seed=8, chunk_size=10)
    assert a == b and a != c
    assert len(a) == 50 * 2 * 3 and [w.window_id for w in a] == list(range(300))
    positions = {w.target_pos for w in a}
    assert positions == set(range(6))  # the scored text is not always shown first
    for w in a:
        assert w.member_text_ids[w.target_pos] is None and len(w.anchor_ids) == 5
    by_pair = {}
    for w in a:
        by_pair.setdefault((w.item_no, w.value), set()).add(w.chunk_no)
    assert all(len(c) == 1 for c in by_pair.values())  # a pair's windows share one chunk
    per_chunk = np.bincount([w.chunk_no for w in a])
    assert per_chunk.max() <= 10 and len(chunks) == per_chunk.size
