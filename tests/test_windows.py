import numpy as np
import pytest

from workers.jobs.windows import AnchorPool, bucket_edges, bucket_index, bucket_members, draw_anchors, plan_windows


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


def test_bucket_edges_are_right_closed_with_the_lowest_edge_included():
    # edges -10, -6, -2, 2, 6, 10: a value on an edge belongs to the bin below it, -10 to bin 0
    x = np.array([-10.0, -6.0, -5.9, -2.0, -1.9, 2.0, 6.0, 6.1, 10.0])
    assert bucket_edges(x, 5).tolist() == [-10.0, -6.0, -2.0, 2.0, 6.0, 10.0]
    assert bucket_index(x, 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 4]
    # edges that are not round numbers: every edge value itself still goes to the bin below
    y = np.array([-9.7, 0.3, 9.9])
    e = bucket_edges(y, 5)
    assert bucket_index(np.r_[e, np.nextafter(e[1:4], np.inf)], 5).tolist() == [0, 0, 1, 2, 3, 4, 1, 2, 3]
    assert bucket_index(np.full(4, 3.0), 5).tolist() == [0, 0, 0, 0]  # one intensity: all in bin 0
    assert [b.tolist() for b in bucket_members(x, 5)] == [[0, 1], [2, 3], [4, 5], [6], [7, 8]]


def test_empty_bins_fill_and_rows_stay_distinct():
    x = np.array([-9.0, -8.5, -8.0, 7.0, 8.0, 9.0])  # the middle bins are empty
    pool = AnchorPool("care-harm", np.arange(6), np.arange(6), x)
    for fill in ("uniform", "nearest"):
        picks = draw_anchors(pool, 300, 5, "bucket", np.random.default_rng(2), empty_bucket=fill)
        assert all(len(set(r)) == 5 for r in picks)
    with pytest.raises(ValueError, match="has 6 VIDB items; windows of k=8 need at least 7"):
        draw_anchors(pool, 1, 7, "bucket", np.random.default_rng(0))


def test_empty_bucket_uniform_draws_from_the_whole_vidb_nearest_from_the_nearest_bin():
    # 20 items in bin 0, 20 in bin 4, bins 1-3 empty
    x = np.r_[np.round(np.linspace(-10, -8, 20), 1), np.round(np.linspace(8, 10, 20), 1)]
    pool = AnchorPool("fidelity", np.arange(40), np.arange(40), x)
    n_w = 4000
    uni = draw_anchors(pool, n_w, 5, "bucket", np.random.default_rng(4), empty_bucket="uniform")
    assert np.all(uni[:, 0] < 20) and np.all(uni[:, 4] >= 20)  # full bins keep their own anchors
    counts = np.bincount(uni[:, 2], minlength=40)  # an empty slot: every VIDB item, about equally often
    assert counts.min() >= 0.5 * n_w / 40 and counts.max() <= 1.5 * n_w / 40
    assert 0.4 <= np.mean(uni[:, 1:4] >= 20) <= 0.6
    near = draw_anchors(pool, n_w, 5, "bucket", np.random.default_rng(4), empty_bucket="nearest")
    # bin 1 -> bin 0; bin 2 is as far from bin 0 as from bin 4 -> the lower; bin 3 -> bin 4
    assert np.all(near[:, :3] < 20) and np.all(near[:, 3:] >= 20)
    for picks in (uni, near):
        assert all(len(set(r)) == 5 for r in picks)
    with pytest.raises(ValueError, match="empty_bucket: expected one of 'uniform', 'nearest', got 'mean'"):
        draw_anchors(pool, 1, 5, "bucket", np.random.default_rng(0), empty_bucket="mean")


def test_scored_text_is_never_its_own_anchor_and_random_mode():
    pool = _pool(n=8)
    excl = np.full(400, 5003)  # text id of pool item 3
    for mode, fill in (("bucket", "uniform"), ("bucket", "nearest"), ("random", "uniform")):
        picks = draw_anchors(pool, 400, 5, mode, np.random.default_rng(3), excl, empty_bucket=fill)
        assert not (pool.text_ids[picks] == 5003).any()
        assert all(len(set(r)) == 5 for r in picks)


def test_plan_is_seeded_shuffled_and_chunked_by_pair():
    pools = [_pool(seed=1, value="care-harm"), _pool(seed=2, value="fidelity")]
    a, chunks = plan_windows(None, 50, pools, 6, 3, "bucket", seed=7, chunk_size=10, layout="shuffled")
    b, _ = plan_windows(None, 50, pools, 6, 3, "bucket", seed=7, chunk_size=10, layout="shuffled")
    c, _ = plan_windows(None, 50, pools, 6, 3, "bucket", seed=8, chunk_size=10, layout="shuffled")
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


def test_upstream_layout_shows_the_text_first_then_anchors_lowest_bucket_first():
    pools = [_pool(seed=1, value="care-harm"), _pool(seed=2, value="fidelity")]
    up, _ = plan_windows(None, 40, pools, 6, 3, "bucket", seed=7, chunk_size=10)  # the default layout
    sh, _ = plan_windows(None, 40, pools, 6, 3, "bucket", seed=7, chunk_size=10, layout="shuffled")
    for pool in pools:
        bins = dict(zip(pool.item_ids.tolist(), bucket_index(pool.intensity, 5).tolist()))
        ws = [w for w in up if w.value == pool.value]
        for w in ws:
            assert w.target_pos == 0 and w.member_text_ids[0] is None
            assert [bins[a] for a in w.anchor_ids] == [0, 1, 2, 3, 4]
            assert list(w.anchor_intensity) == sorted(w.anchor_intensity)
            assert list(w.member_text_ids[1:]) == [int(a) + 4000 for a in w.anchor_ids]
    # same anchors drawn either way; only their places differ
    assert [sorted(w.anchor_ids) for w in up] == [sorted(w.anchor_ids) for w in sh]
    with pytest.raises(ValueError, match="layout: expected one of 'upstream', 'shuffled', got 'sorted'"):
        plan_windows(None, 1, pools, 6, 3, "bucket", seed=7, chunk_size=10, layout="sorted")
