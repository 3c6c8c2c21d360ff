"""The embedding judge's multi-task probe (pure math) and the judge itself (cross-fitting, refits)."""

import asyncio
import math

import numpy as np
import pytest

from schemas.seed import seed_vidb
from schemas.taxonomy import default_taxonomy
from workers.stats.anchored import fit_judge_scale
from workers.stats.multitask_ridge import (cap_rows, cross_validate, fit_multitask, fit_multitask_path,
                                           pairwise_accuracy, stratified_folds, task_basis)

INF = math.inf


def synthetic(seed=0, d=40, tasks=16, n=14, residual=0.35, noise=1.0):
    """Tasks whose directions are a shared unit vector plus a small random residual each."""
    rng = np.random.default_rng(seed)
    w_star = rng.normal(size=d)
    w_star /= np.linalg.norm(w_star)
    data, truth = {}, {}
    for t in range(tasks):
        r = rng.normal(size=d)
        r *= residual / np.linalg.norm(r)
        w = 3.0 * (w_star + r)
        X = rng.normal(size=(n, d))
        data[t] = (X, X @ w + rng.normal(scale=noise, size=n) + rng.normal(scale=2.0))
        truth[t] = w
    return w_star, data, truth


def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def brute_force(data, a0, a1):
    """Solve the stacked least-squares problem over (w0, w_1..w_T) directly."""
    keys = list(data)
    d = data[keys[0]][0].shape[1]
    T = len(keys)
    rows, ys = [], []
    for i, k in enumerate(keys):
        X, y = data[k]
        Xc, yc = X - X.mean(0), y - y.mean()
        A = np.zeros((len(y), (T + 1) * d))
        A[:, :d] = Xc
        A[:, (i + 1) * d:(i + 2) * d] = Xc
        rows.append(A)
        ys.append(yc)
    A, y = np.vstack(rows), np.concatenate(ys)
    pen = np.concatenate([np.full(d, a0), np.full(T * d, a1)])
    sol = np.linalg.solve(A.T @ A + np.diag(pen), A.T @ y)
    return sol[:d], {k: sol[:d] + sol[(i + 1) * d:(i + 2) * d] for i, k in enumerate(keys)}


# -- the closed form ------------------------------------------------------------------------------------
def test_closed_form_matches_the_stacked_least_squares_solution():
    _, data, _ = synthetic(seed=1, d=6, tasks=4, n=5)  # n < d: the thin SVD drops null directions
    bases = {k: task_basis(*xy) for k, xy in data.items()}
    for a0, a1 in [(0.5, 2.0), (3.0, 0.2), (1.0, 1.0)]:
        probe = fit_multitask(bases, a0, a1)
        w0, ws = brute_force(data, a0, a1)
        assert np.allclose(probe.shared, w0, atol=1e-9)
        for k, (X, y) in data.items():
            assert np.allclose(probe.weights[k], ws[k], atol=1e-9)
            # intercept: the fit passes through the task's means
            assert probe.predict(k, X.mean(0, keepdims=True))[0] == pytest.approx(y.mean(), abs=1e-9)


def test_limits_are_independent_ridge_and_pooled_ridge():
    _, data, _ = synthetic(seed=2, d=8, tasks=3, n=10)
    bases = {k: task_basis(*xy) for k, xy in data.items()}
    per_task = fit_multitask(bases, INF, 0.7)
    pooled = fit_multitask(bases, 0.7, INF)
    Xs, ys = [], []
    for k, (X, y) in data.items():
        Xc, yc = X - X.mean(0), y - y.mean()
        assert np.allclose(per_task.weights[k], np.linalg.solve(Xc.T @ Xc + 0.7 * np.eye(8), Xc.T @ yc))
        Xs.append(Xc)
        ys.append(yc)
    X, y = np.vstack(Xs), np.concatenate(ys)
    w = np.linalg.solve(X.T @ X + 0.7 * np.eye(8), X.T @ y)
    assert all(np.allclose(pooled.weights[k], w) for k in data) and np.allclose(per_task.shared, 0)
    with pytest.raises(ValueError, match="at least one"):
        fit_multitask(bases, INF, INF)
    with pytest.raises(ValueError, match="> 0"):
        fit_multitask(bases, 0.0, 1.0)


def test_path_equals_separate_fits():
    _, data, _ = synthetic(seed=3, d=10, tasks=5, n=8)
    bases = {k: task_basis(*xy) for k, xy in data.items()}
    for a1 in (0.3, INF):
        path = fit_multitask_path(bases, [0.1, 1.0, 10.0], a1)
        for a0, p in zip([0.1, 1.0, 10.0], path):
            q = fit_multitask(bases, a0, a1)
            assert np.allclose(p.shared, q.shared) and all(np.allclose(p.weights[k], q.weights[k]) for k in data)


# -- recovering a known shared direction ---------------------------------------------------------------
def test_recovers_the_shared_direction_and_beats_independent_probes():
    w_star, data, truth = synthetic(seed=0)
    cv = cross_validate(data, n_folds=5, seed=0)
    assert math.isfinite(cv.alpha_shared) and math.isfinite(cv.alpha_task)  # both components are used
    probe = fit_multitask({k: task_basis(*xy) for k, xy in data.items()}, cv.alpha_shared, cv.alpha_task)
    assert cos(probe.shared, w_star) > 0.95
    multi = np.mean([cos(probe.weights[k], truth[k]) for k in data])
    # independent ridge per task, its penalty also chosen by cross-validation
    single_cv = cross_validate(data, grid_shared=[INF], n_folds=5, seed=0)
    single = fit_multitask({k: task_basis(*xy) for k, xy in data.items()}, INF, single_cv.alpha_task)
    alone = np.mean([cos(single.weights[k], truth[k]) for k in data])
    assert multi > 0.9 and alone < 0.75
    best = {(r["alpha_shared"], r["alpha_task"]): r["pairwise"] for r in cv.table}
    assert best[(cv.alpha_shared, cv.alpha_task)] > max(v for (a0, _), v in best.items() if a0 == INF) + 0.03


def test_out_of_fold_predictions_come_from_probes_that_did_not_see_the_row():
    _, data, _ = synthetic(seed=4, d=12, tasks=4, n=10)
    cv = cross_validate(data, grid_shared=[1.0], grid_task=[0.5], n_folds=5, seed=7)
    rng = np.random.default_rng(7)  # the same fold draw as cross_validate
    folds = {k: stratified_folds(y, 5, rng) for k, (_, y) in data.items()}
    for f in range(5):
        probe = fit_multitask({k: task_basis(X[folds[k] != f], y[folds[k] != f]) for k, (X, y) in data.items()}, 1.0, 0.5)
        for k, (X, _) in data.items():
            test = folds[k] == f
            assert np.allclose(cv.oof[k][test], probe.predict(k, X[test]))


def test_folds_are_balanced_and_span_the_range():
    y = np.repeat(np.arange(6.0), 5)  # 30 rows, 6 levels
    f = stratified_folds(y, 5, np.random.default_rng(0))
    assert np.bincount(f).tolist() == [6] * 5
    assert all(len(set(y[f == k])) == 6 for k in range(5))


def test_pairwise_accuracy_and_cap_rows():
    assert pairwise_accuracy(np.array([1, 2, 3.0]), np.array([10, 20, 30.0])) == 1.0
    assert pairwise_accuracy(np.array([3, 2, 1.0]), np.array([10, 20, 30.0])) == 0.0
    assert pairwise_accuracy(np.array([1, 1, 1.0]), np.array([10, 20, 30.0])) == 0.5
    keep = cap_rows(np.arange(100.0), 10)
    assert len(keep) == 10 and keep[0] == 0 and keep[-1] == 99


# -- the judge -----------------------------------------------------------------------------------------
def _judge(encoder, items, memo=None, **kw):
    from workers.judges.config import BUILTIN
    from workers.judges.embedding_judge import EmbeddingJudge, ItemsAnchors

    j = EmbeddingJudge(BUILTIN["embedding"], anchors=ItemsAnchors(items), encoder=encoder, **kw)
    if memo is not None:
        j._vectors = memo
    return j


def test_anchors_are_scored_out_of_fold_and_new_texts_by_the_full_probe(embedding_judge):
    value = "care-harm"
    anchors = [t for t, _ in seed_vidb()[value]]
    new = ["I carried my neighbour's shopping up four flights of stairs."]
    s = asyncio.run(embedding_judge.project(value, anchors + new))
    fitted = embedding_judge.fitted
    full = fitted.probe.predict(value, asyncio.run(embedding_judge.embed(anchors + new)))
    assert np.allclose(s[:-1], [fitted.oof[value][t] for t in anchors])
    assert s[-1] == pytest.approx(full[-1])
    # the full probe fits its own anchors closer than the out-of-fold probe does
    y = np.array([x for _, x in seed_vidb()[value]])
    assert np.mean((full[:-1] - y) ** 2) < np.mean((s[:-1] - y) ** 2)
    assert fitted.n_anchors[value] == len(anchors) and math.isfinite(fitted.cv.alpha_shared)


def test_refits_when_the_vidb_grows_and_names_thin_values(encoder, embedding_judge):
    items = {v: list(rows) for v, rows in seed_vidb().items()}
    items["justice"] = items["justice"][:2]
    j = _judge(encoder, items, memo=embedding_judge._vectors)
    with pytest.raises(ValueError, match="'justice' has 2 VIDB items; the embedding judge needs at least 3"):
        asyncio.run(j.project("justice", ["I split the bill evenly."]))
    first = j.fitted
    items["justice"] = list(seed_vidb()["justice"])
    j.rank(default_taxonomy().get("justice"), ["I split the bill evenly.", "I kept all the tips."])
    assert j.fitted is not first and "justice" in j.fitted.probe.weights


def test_a_job_pinned_to_a_vidb_version_is_judged_by_that_version_after_the_vidb_changes(encoder, embedding_judge,
                                                                                          pg_url, monkeypatch):
    """The store's embedding judge learns from the VIDB as it is now, and fits again when an
    adjudication changes intensities (no item count changes). A job that planned against version 1
    (and one with ``--vidb-filter agreed``) gets a judge that learns from what the job planned with:
    its scores do not move when the VIDB changes under it."""
    from types import SimpleNamespace

    from schemas.messages import ScoreJobSpec
    from tests.conftest import open_test_store
    from workers.io.vidb_files import ensure_seed
    from workers.jobs.judge_stage import judge_of
    from workers.jobs.kind import Resources
    from workers.judges.config import BUILTIN
    from workers.judges.embedding_judge import EmbeddingJudge, store_anchors
    from workers.vidb import versions as V
    from workers.vidb.adjudicate import adjudicate

    value = "care-harm"
    texts = ["I carried my neighbour's shopping up four flights of stairs.", "I laughed when he tripped.",
             "I left the injured cat by the road."]

    async def go():
        store = await open_test_store(pg_url)
        try:
            await ensure_seed(store)  # every value's version 1
            assert await V.latest_versions(store.pool, [value]) == {value: 1}
            judge = EmbeddingJudge(BUILTIN["embedding"], anchors=store_anchors(store), encoder=encoder)
            judge._vectors = embedding_judge._vectors
            res = Resources()
            res.cached("judge:embedding", lambda: judge)

            def job_judge(**spec):
                ctx = SimpleNamespace(resources=res, store=store,
                                      spec=ScoreJobSpec(input="x", values=[value], judge="embedding", **spec))
                return judge_of(ctx, "embedding")

            assert job_judge() is judge  # nothing pinned, no filter: the worker's judge
            pinned = job_judge(vidb_versions={value: 1})
            assert pinned is not judge and pinned is job_judge(vidb_versions={value: 1})  # one per VIDB view
            base0, pinned0 = await judge.project(value, texts), await pinned.project(value, texts)
            assert np.allclose(base0, pinned0)  # version 1 is the current VIDB so far
            fitted_base, fitted_pinned = judge.fitted, pinned.fitted

            # people move the five most negative items to +6: same item count, new intensities
            items = await store.pool.fetch("SELECT id FROM vidb_items WHERE value = $1 ORDER BY intensity LIMIT 5", value)
            out = await adjudicate(store, [(r["id"], value, 6.0, "ann", n + 2) for n, r in enumerate(items)], 1.0, 3.0,
                                   "sheet.csv")
            assert out[value]["version"] == 2 and out[value]["disputed"] == 5
            base1, pinned1 = await judge.project(value, texts), await pinned.project(value, texts)
            assert judge.fitted is not fitted_base and not np.allclose(base0, base1)  # the worker's judge learned
            assert pinned.fitted is fitted_pinned and np.array_equal(pinned0, pinned1)  # the job's did not

            # a worker keeps the judges of its last VALUEFLOW_JUDGE_VIEWS views (default 8), one per view
            others = [job_judge(vidb_versions={value: 1, "justice": n}) for n in range(1, 9)]
            assert len({id(j) for j in others}) == 8 and job_judge(vidb_versions={value: 1}) is not pinned
            assert job_judge(vidb_versions={value: 1, "justice": 8}) is others[-1]
            monkeypatch.setenv("VALUEFLOW_JUDGE_VIEWS", "2")
            newest = job_judge(vidb_versions={value: 1, "justice": 9})  # the cache shrinks to the 2 newest views
            assert job_judge(vidb_versions={value: 1, "justice": 9}) is newest
            assert job_judge(vidb_versions={value: 1, "justice": 8}) is others[-1]
            assert job_judge(vidb_versions={value: 1, "justice": 7}) is not others[-2]  # kept by 8, not by 2
            monkeypatch.delenv("VALUEFLOW_JUDGE_VIEWS")

            agreed = job_judge(vidb_versions={value: 2}, vidb_filter="agreed")
            n_all = (await judge.anchors.counts())[value]
            assert (await agreed.anchors.counts())[value] == n_all - 5  # the disputed items left out
            await agreed.project(value, texts)
            assert agreed.fitted.n_anchors[value] == n_all - 5
        finally:
            await store.close()

    asyncio.run(go())


def pair_beta(scores_a, x_a, scores_b=None, x_b=None):
    """Bradley–Terry β of the order the scores give to pairs (within one set, or across two)."""
    rows = []
    if scores_b is None:
        for i in range(len(x_a)):
            for j in range(i + 1, len(x_a)):
                if x_a[i] != x_a[j]:
                    rows.append((x_a[i], x_a[j]) if scores_a[i] > scores_a[j] else (x_a[j], x_a[i]))
    else:
        for i in range(len(x_a)):
            for j in range(len(x_b)):
                if x_a[i] != x_b[j]:
                    rows.append((x_a[i], x_b[j]) if scores_a[i] > scores_b[j] else (x_b[j], x_a[i]))
    return fit_judge_scale(np.array(rows))[0]


@pytest.mark.parametrize("cross_fit, lo, hi", [(True, 0.75, 1.33), (False, 2.0, np.inf)])
def test_anchor_order_shows_the_judges_real_sharpness_only_with_cross_fitting(encoder, embedding_judge, capsys, cross_fit,
                                                                              lo, hi):
    """β from anchor–anchor pairs (what calibrated mode fits) against β from held-out text–anchor
    pairs (what scoring a new text depends on), over the 32 values with a fifth of the seed held out."""
    items, held = {}, {}
    for v, rows in seed_vidb().items():
        f = stratified_folds(np.array([x for _, x in rows]), 5, np.random.default_rng(0))
        items[v] = [r for r, k in zip(rows, f) if k != 0]
        held[v] = [r for r, k in zip(rows, f) if k == 0]
    j = _judge(encoder, items, memo=embedding_judge._vectors, cross_fit=cross_fit)
    aa_rows, ta_rows = [], []
    for v in items:
        sa = asyncio.run(j.project(v, [t for t, _ in items[v]]))
        st = asyncio.run(j.project(v, [t for t, _ in held[v]]))
        xa, xt = [x for _, x in items[v]], [x for _, x in held[v]]
        aa_rows.append((sa, xa))
        ta_rows.append((st, xt, sa, xa))
    b_aa = np.mean([pair_beta(s, x) for s, x in aa_rows])
    b_ta = np.mean([pair_beta(s, x, sa, xa) for s, x, sa, xa in ta_rows])
    with capsys.disabled():
        print(f"\n[embedding judge, cross_fit={cross_fit}] β anchor–anchor {b_aa:.3f}, β held-out text–anchor {b_ta:.3f}")
    assert lo < b_aa / b_ta < hi  # cross-fitted: about equal; in-sample: anchor pairs look over twice as sharp


def test_lm_probe_features_depend_on_the_value_and_order_held_out_seed_texts_better(encoder):
    """The ``lm-probe`` judge (value-conditioned SmolLM2 states + MiniLM): features change with the
    value and are deterministic; on seed texts held out of the anchors it orders pairs better than
    the sentence-embedding judge trained on the same anchors."""
    from workers.judges.config import BUILTIN
    from workers.judges.embedding_judge import EmbeddingJudge, ItemsAnchors
    from workers.judges.lm_features import LMFeatureEncoder

    lm = LMFeatureEncoder(sentence_encoder=encoder)
    text = ["I gave my seat on the bus to an old man with a cane."]
    a, b = lm.encode(text, "care-harm"), lm.encode(text, "achievement")
    hidden = lm.lm.config.hidden_size
    assert a.shape == (1, 2 * hidden + 384) and not np.allclose(a[:, :-384], b[:, :-384])
    assert np.array_equal(a, lm.encode(text, "care-harm")) and np.allclose(a[:, -384:], b[:, -384:])

    seed = seed_vidb()
    values = sorted(seed)[::2]  # 16 values: half the cost, every theory represented
    train = {v: [r for i, r in enumerate(seed[v]) if i % 5] for v in values}
    held = {v: [r for i, r in enumerate(seed[v]) if i % 5 == 0] for v in values}

    def held_out_accuracy(judge) -> float:
        accs = []
        for v in values:
            s = asyncio.run(judge.project(v, [t for t, _ in held[v]]))
            accs.append(pairwise_accuracy(s, np.array([x for _, x in held[v]])))
        return float(np.mean(accs))

    lm_acc = held_out_accuracy(EmbeddingJudge(BUILTIN["lm-probe"], anchors=ItemsAnchors(train), encoder=lm))
    st_acc = held_out_accuracy(EmbeddingJudge(BUILTIN["embedding"], anchors=ItemsAnchors(train), encoder=encoder))
    assert lm_acc >= 0.74 and lm_acc > st_acc, (lm_acc, st_acc)  # measured 0.758 vs 0.738


def test_lm_probe_judge_scores_a_job_through_the_queue(env, workers, tmp_path, pg_url):
    """`--judge lm-probe` end to end: a gpu-queue worker builds the judge by name, fits it on the
    store's seed VIDB, and the export orders a caring act above a harmful one on care-harm."""
    import json

    from tests.conftest import run_cli

    texts = {"help": "I stayed up all night with my neighbour's feverish baby so she could sleep.",
             "harm": "I kicked the stray cat off the porch just to hear it yelp."}
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": k, "text": t}) + "\n" for k, t in texts.items()))
    workers.start(queues="gpu,refit")
    out = tmp_path / "scores.jsonl"
    res = run_cli(["score", str(inp), "--value", "care-harm", "--judge", "lm-probe", "--wait", "--no-local-worker",
                   "-o", str(out)], env, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows.keys() == texts.keys() and all(r["judge"] == "lm-probe" and r["windows_used"] == 3 for r in rows.values())
    assert rows["help"]["intensity"] > 0 > rows["harm"]["intensity"], rows
