import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import shared_data
from workers.hives.data import load_cross_anchors, read_rows, seed_rows, vidb_sample_rows
from workers.hives.evaluate import evaluate, hierarchical_ranking_accuracy
from workers.hives.losses import anchor_infonce, hierarchical_supcon


def _unit(*vecs):
    v = torch.tensor(vecs, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def _supcon_by_hand(E, pos_mask, opp, tau, pen):
    """Direct transcription of the level loss, one anchor at a time."""
    n = len(E)
    losses = []
    for i in range(n):
        P = [p for p in range(n) if p != i and pos_mask[i][p]]
        if not P:
            continue
        denom = sum(math.exp(float(E[i] @ E[a]) / tau + pen * opp[i][a]) for a in range(n) if a != i)
        losses.append(-sum(float(E[i] @ E[p]) / tau - math.log(denom) for p in P) / len(P))
    return sum(losses) / len(losses), bool(losses)


def test_hierarchical_supcon_matches_hand_computation():
    E = _unit([1.0, 0.2], [0.9, 0.4], [0.1, 1.0], [-0.3, 0.8], [-1.0, -0.1])
    levels = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [1, 2, 3]])
    direction = torch.tensor([0, 0, 1, 0, 0])
    tau, pen = 0.1, 1.0
    opp = [[float(direction[i] != direction[j]) for j in range(5)] for i in range(5)]
    expected, floor, used = 0.0, None, 0
    for l in range(3):
        pos = [[bool(levels[i, l] == levels[j, l] and direction[i] == direction[j]) for j in range(5)] for i in range(5)]
        loss, ok = _supcon_by_hand(E, pos, opp, tau, pen)
        if not ok:
            continue
        loss = loss if floor is None else max(loss, floor)
        floor = loss
        expected += 2 ** (1 / (l + 1)) * loss
        used += 1
    expected /= used
    got = hierarchical_supcon(E, levels, direction, tau, pen)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_hierarchy_constraint_and_penalty_effects():
    E = _unit([1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.1])
    levels = torch.tensor([[0, 0, 0], [0, 1, 1], [0, 0, 2], [0, 1, 1]])
    d = torch.tensor([0, 0, 0, 1])
    no_pen = hierarchical_supcon(E, levels, d, 0.1, 0.0)
    with_pen = hierarchical_supcon(E, levels, d, 0.1, 2.0)
    assert float(with_pen) > float(no_pen)  # opposite-direction pairs weigh more in the denominator
    # embeddings that respect the hierarchy give a lower loss than shuffled ones
    good = _unit([1, 0.05], [1, -0.05], [0.6, 0.8], [-1, 0])
    lv = torch.tensor([[0, 0, 0], [0, 0, 0], [0, 1, 1], [1, 2, 2]])
    dd = torch.tensor([0, 0, 0, 0])
    bad = good[[0, 3, 2, 1]]
    assert float(hierarchical_supcon(good, lv, dd)) < float(hierarchical_supcon(bad, lv, dd))


def test_anchor_infonce_matches_hand_computation():
    X = _unit([1.0, 0.1], [0.2, 1.0], [0.9, -0.3])
    C = _unit([1.0, 0.0], [0.0, 1.0])
    target = torch.tensor([0, 1, -1])
    tau = 0.07
    expected = 0.0
    for i, t in enumerate([0, 1]):
        logits = [float(X[i] @ C[c]) / tau for c in range(2)]
        expected += -(logits[t] - math.log(sum(math.exp(z) for z in logits)))
    expected /= 2
    assert float(anchor_infonce(X, C, target, tau)) == pytest.approx(expected, rel=1e-10)


def test_rows_from_seed_vidb_and_sample():
    rows = seed_rows()
    assert len(rows) >= 32 * 12 and {r.theory for r in rows} == {"pvq", "mft", "duty", "right"}
    care = next(r for r in rows if r.value == "care-harm" and r.direction == "supports")
    assert care.levels == ("care/harm", "care/harm", "care/harm") and care.cross_anchor == "care:supports"
    fid = next(r for r in rows if r.value == "fidelity")
    assert fid.levels == ("fidelity",) * 3  # the theory's single top node is not a level
    civ = next(r for r in rows if r.value == "civil_rights")
    assert civ.levels == ("first_generation", "civil_rights", "civil_rights")
    ben = next(r for r in rows if r.value == "benevolence" and r.direction == "opposes")
    assert ben.levels == ("growth", "self-transcendence", "benevolence") and ben.individual_anchor == "pvq:benevolence:opposes"
    sample = vidb_sample_rows(shared_data() / "vidb-sample")
    assert len(sample) == 384


def test_user_rows_file_and_errors(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"text": "I kept my word.", "value": "fidelity", "direction": "supports"}\n'
                 '{"text": "I broke it.", "value": "fidelity", "direction": "against"}\n')
    with pytest.raises(ValueError, match="rows.jsonl:2: field 'direction'"):
        read_rows(f)
    f.write_text('{"text": "x", "value": "fidelty", "direction": "supports"}\n')
    with pytest.raises(ValueError, match="rows.jsonl:1: field 'value'.*fidelity"):
        read_rows(f)
    c = tmp_path / "rows.csv"
    c.write_text("text,value,direction\nI gave to charity,beneficence,supports\n")
    assert read_rows(c)[0].cross_anchor == "care:supports"


def test_cross_anchor_table_is_valid():
    anchors = load_cross_anchors()
    members = [m for a in anchors for m in a.members]
    assert len(members) == len(set(members))  # a value belongs to one concept at most
    assert any("mft:care-harm" in a.members and "pvq:benevolence" in a.members for a in anchors)


def test_metrics_reward_a_perfect_embedding():
    rows = vidb_sample_rows(shared_data() / "vidb-sample")
    # an oracle embedding: one-hot of (value, direction) plus a level-1 component
    keys = sorted({(r.value, r.direction) for r in rows})
    l1 = sorted({r.level_1 for r in rows})
    E = np.zeros((len(rows), len(keys) + len(l1)))
    for i, r in enumerate(rows):
        E[i, keys.index((r.value, r.direction))] = 1.0
        E[i, len(keys) + l1.index(r.level_1)] = 0.5
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=E.shape)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    good, rand = evaluate(E, rows), evaluate(noise, rows)
    assert good["similarity_correlation"] > 0.25 and abs(rand["similarity_correlation"]) < 0.05
    assert good["knn"]["level_3"] > 0.9 and rand["knn"]["level_3"] < 0.2
    assert hierarchical_ranking_accuracy(E, rows)["accuracy"] > hierarchical_ranking_accuracy(noise, rows)["accuracy"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short two-stage run from the MiniLM base on the seed VIDB (well under 10 min on 2 CPUs)."""
    from workers.hives.train import TrainConfig, train

    out = tmp_path_factory.mktemp("hives") / "ckpt"
    cfg = TrainConfig(stage1_steps=HIVES_STEPS[0], stage2_steps=HIVES_STEPS[1], lr=HIVES_LR, checkpoint_every=20)
    return train(seed_rows(), out, cfg, cross=load_cross_anchors(), progress=False)


HIVES_STEPS = (60, 40)
HIVES_LR = 2e-5


def test_training_improves_held_out_metrics(trained, encoder, capsys):
    from workers.hives.encoder import Encoder

    rows = vidb_sample_rows(shared_data() / "vidb-sample")
    base = evaluate(encoder.encode([r.text for r in rows]), rows)
    tuned = evaluate(Encoder(trained).encode([r.text for r in rows]), rows)
    with capsys.disabled():
        print("\n[HiVES on the VIDB sample, held out]   base    trained")
        for name, get in [("hierarchical ranking accuracy", lambda m: m["hierarchical_ranking"]["accuracy"]),
                          ("ordered-bins (tuple) accuracy", lambda m: m["hierarchical_ranking"]["tuple_accuracy"]),
                          ("similarity correlation", lambda m: m["similarity_correlation"]),
                          ("kNN accuracy level 1", lambda m: m["knn"]["level_1"]),
                          ("kNN accuracy level 3", lambda m: m["knn"]["level_3"]),
                          ("direction |cos| within theory", lambda m: m["orthogonality"]["mean_abs_cos_within_theory"])]:
            print(f"  {name:32} {get(base):.3f}   {get(tuned):.3f}")
    assert tuned["similarity_correlation"] > base["similarity_correlation"] + 0.01
    assert tuned["hierarchical_ranking"]["accuracy"] > base["hierarchical_ranking"]["accuracy"]


def test_checkpoint_has_config_and_training_resumes(trained, tmp_path):
    from workers.hives.train import train

    meta = json.loads((trained / "hives_config.json").read_text())
    assert meta["stage"] == 2 and meta["config"]["stage1_steps"] == HIVES_STEPS[0]
    last = trained / "last"
    assert (last / "optimizer.pt").exists()
    mid = json.loads((last / "hives_config.json").read_text())
    resumed = train(seed_rows()[:200], tmp_path / "resumed", resume=last, progress=False)
    hist = json.loads((resumed / "hives_config.json").read_text())["config"]["history"]
    assert hist[-1]["stage"] == 2 and hist[-1]["step"] == HIVES_STEPS[1]
    assert len(hist) == sum(HIVES_STEPS)  # steps before the checkpoint kept, the rest run once
    assert mid["step"] < HIVES_STEPS[0] or mid["stage"] == 2


def test_extract_and_profile(encoder):
    from workers.hives.extract import build_prototypes, extract, profile

    texts = ["I sat with my dying grandmother every night to comfort her.",
             "I kicked the dog because it annoyed me.",
             "I cheated on the exam to get ahead."]
    res = extract(encoder.encode(texts), build_prototypes(encoder), top_k=3)
    assert set(res[0]) == {"pvq", "mft", "duty", "right"} and len(res[0]["mft"]) == 3
    hit = res[0]["mft"][0]
    assert set(hit) == {"value", "direction", "similarity"} and hit["direction"] in ("supports", "opposes")
    prof = profile(res, {"care-harm": [5.0, -6.0]})
    assert prof["n_texts"] == 3 and all(0 < v["touched_by"] <= 1 for v in prof["values"].values())
    if "care-harm" in prof["values"]:
        assert prof["values"]["care-harm"]["mean_intensity"] == pytest.approx(-0.5)


def test_embed_task_runs_through_a_gpu_queue_worker(env, workers, pg_url):
    import asyncio

    import asyncpg

    from workers.celery_app import app, configure

    workers.start(queues="gpu")
    configure(env["VALUEFLOW_BROKER_URL"])
    texts = ["I helped a stranger.", "I hurt a stranger.", "I helped a stranger."]
    res = app.send_task("valueflow.gpu.embed", kwargs={"texts": texts}, queue="gpu", ignore_result=False).get(timeout=300)
    v = np.asarray(res["vectors"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4) and np.allclose(v[0], v[2])
    assert res["computed"] == 2 and res["device"] in ("cpu", "cuda")
    again = app.send_task("valueflow.gpu.embed", kwargs={"texts": texts}, queue="gpu", ignore_result=False).get(timeout=300)
    assert again["computed"] == 0 and np.allclose(np.asarray(again["vectors"]), v, atol=1e-6)  # served from the cache

    async def count():
        conn = await asyncpg.connect(pg_url)
        try:
            return await conn.fetchval("SELECT count(*) FROM embeddings")
        finally:
            await conn.close()
    assert asyncio.run(count()) == 2


def test_hives_cli_extract_profile_eval(tmp_path):
    import os

    from tests.conftest import ROOT, run_cli

    e = dict(os.environ, VALUEFLOW_HOME=str(tmp_path / "home"))
    out = tmp_path / "ext.jsonl"
    run_cli(["hives", "extract", str(ROOT / "examples" / "texts.jsonl"), "--top-k", "2", "-o", str(out)], e, check=True)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 20 and lines[0]["id"] == "t01" and len(lines[0]["values"]["duty"]) == 2
    prof = tmp_path / "profile.json"
    run_cli(["hives", "profile", str(ROOT / "examples" / "texts.jsonl"), "-o", str(prof)], e, check=True)
    assert json.loads(prof.read_text())["n_texts"] == 20
    metrics = tmp_path / "m.json"
    run_cli(["hives", "eval", "--vidb-json", str(shared_data() / "vidb-sample"), "-o", str(metrics)], e, check=True)
    m = json.loads(metrics.read_text())
    assert m["n_texts"] == 384 and 0 < m["hierarchical_ranking"]["accuracy"] < 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\n')
    res = run_cli(["hives", "extract", str(bad)], e)
    assert res.returncode != 0 and "bad.jsonl:1: field 'text': empty text" in res.stderr
