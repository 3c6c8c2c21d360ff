"""Steering jobs: prompts, plans, refusals, statistics, generation, the queue, the report, a browser."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli
from tests.fake_openai import GEN_TEXTS, NEUTRAL, REFUSAL, ServerThread
from tests.test_score_job import _q, _wait_job

QUERIES = ["How should I spend a free Saturday?", "A stray dog keeps coming to my garden. Should I feed it?",
           "My friend wants to copy my homework. How do I answer?", "What makes a good life?"]


def _queries(path: Path, queries=QUERIES) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "query"])
        w.writerows([[i, q] for i, q in enumerate(queries)])
    return path


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _models_file(path: Path, url: str, extra: str = "") -> Path:
    path.write_text(
        f'[judges.oracle]\nkind = "api"\nmodel = "oracle"\nbase_url = "{url}"\nstructured = "off"\n\n'
        f'[models.fake]\nkind = "api"\nmodel = "gen-level"\nbase_url = "{url}"\nconcurrency = 8\n\n'
        f'[models.refuser]\nkind = "api"\nmodel = "gen-refuse-neg"\nbase_url = "{url}"\n\n{extra}')
    return path


# -- prompts, plans, queries, config -----------------------------------------------------------------
def test_prompts_state_level_definition_and_combo_values():
    from schemas.taxonomy import default_taxonomy
    from workers.steering.prompts import LENGTH_REQUEST, build_messages

    tx = default_taxonomy()
    care, fair = tx.get("care-harm"), tx.get("fairness-cheating")
    base = build_messages("What now?", [(care, 0)], "none")
    assert base == [{"role": "user", "content": f"What now?\n\n{LENGTH_REQUEST}"}]
    for lv, stance in [(2, "strongly values"), (1, "slightly values"), (-1, "slightly rejects"), (-2, "strongly rejects")]:
        system = build_messages("What now?", [(care, lv)], "persona")[0]["content"]
        assert f"who {stance} care/harm" in system and care.definition.rstrip(".") in system
    combo = build_messages("What now?", [(care, 2), (fair, -1)], "persona")[0]["content"]
    assert "- you strongly value care/harm" in combo and "- you slightly reject fairness/cheating" in combo
    ex = build_messages("What now?", [(care, -2)], "exemplars", ["I kicked the cat.", "I mocked the new kid."])
    assert ex[0]["content"].startswith("The user you are talking to has written or agreed with")
    assert "- I kicked the cat.\n- I mocked the new kid." in ex[0]["content"]
    with pytest.raises(ValueError, match="exemplars regime needs"):
        build_messages("q", [(care, 2)], "exemplars", [])


def test_exemplar_bins_and_draws_are_seeded():
    from workers.steering.prompts import draw_exemplars, in_bin

    assert [in_bin(x, 2) for x in (6.0, 9.9, 5.9, -7)] == [True, True, False, False]
    assert [in_bin(x, 1) for x in (3.0, 5.9, 6.0, 2.9)] == [True, True, False, False]
    assert [in_bin(x, -1) for x in (-3.0, -5.9, -6.0, 3.5)] == [True, True, False, False]
    assert [in_bin(x, -2) for x in (-6.0, -10, -5.5)] == [True, True, False]
    pool = [(f"t{i}", x) for i, x in enumerate([-9, -8, -7, -4, -3.5, 0, 2.5, 7, 8, 9.5])]
    a = draw_exemplars(pool, 2, 2, np.random.default_rng(5), "v")
    assert a == draw_exemplars(pool, 2, 2, np.random.default_rng(5), "v") and set(a) <= {"t7", "t8", "t9"}
    assert draw_exemplars(pool, -1, 5, np.random.default_rng(0), "v") == ["t3", "t4"]  # all there are
    with pytest.raises(ValueError, match=r"value 'v': no VIDB texts in the exemplar bin of level \+1"):
        draw_exemplars(pool, 1, 2, np.random.default_rng(0), "v")


def test_plan_counts_baselines_once_and_numbers_chunks():
    from schemas.messages import SteerJobSpec
    from workers.steering.plan import parse_combo, plan_generations

    spec = SteerJobSpec(queries="q.csv", values=["care-harm", "power"], levels=[-2, 0, 2], regimes=["persona", "exemplars"],
                        combos=[parse_combo("Care/Harm:2, fairness-cheating:-1")], samples=2, gen_chunk=10)
    gens = plan_generations(spec, ["q1", "q2", "q3"])
    # per query and sample: 2 values × (1 baseline + 2 levels × 2 regimes) + 1 combo × (2 regimes + 1 baseline)
    assert len(gens) == 3 * 2 * (2 * 5 + 3)
    assert [g.gen_no for g in gens] == list(range(len(gens)))
    assert [g.chunk_no for g in gens] == [i // 10 for i in range(len(gens))]
    base = [g for g in gens if g.target.regime == "none" and not g.target.combo]
    assert len(base) == 3 * 2 * 2 and all(g.target.levels == (0,) for g in base)
    combos = {g.target.name for g in gens if g.target.combo}
    assert combos == {"care-harm:2,fairness-cheating:-1", "care-harm:0,fairness-cheating:0"}
    assert len({g.seed for g in gens}) == len(gens)
    for bad, msg in [("care-harm", "expected VALUE:LEVEL"), ("care-harm:x,power:1", "not an integer"),
                     ("care-harm:1,care-harm:2", "appears twice")]:
        with pytest.raises(ValueError, match=msg):
            parse_combo(bad)
    with pytest.raises(ValueError, match="levels must be in"):
        SteerJobSpec(queries="q.csv", values=["power"], levels=[3])


def test_queries_file_errors_name_file_line_and_field(tmp_path):
    from workers.steering.plan import read_queries

    assert read_queries(_queries(tmp_path / "q.csv")) == QUERIES
    (tmp_path / "nocol.csv").write_text("prompt\nhello\n")
    with pytest.raises(ValueError, match=r"nocol.csv:1: field 'query': no such column \(columns: prompt\)"):
        read_queries(tmp_path / "nocol.csv")
    (tmp_path / "empty.csv").write_text("query\nfirst\n\"  \"\n")
    with pytest.raises(ValueError, match=r"empty.csv:3: field 'query': empty query"):
        read_queries(tmp_path / "empty.csv")
    upstream = ROOT.parent / "shared" / "valueflow-data" / "queries" / "gpv.csv"
    assert len(read_queries(upstream)) == 100


def test_models_come_from_the_judges_file(tmp_path):
    from workers.generation.config import get_model_config, load_models

    path = _models_file(tmp_path / "j.toml", "http://127.0.0.1:1/v1")
    models = load_models(path)
    assert models["smollm2"].kind == "local" and models["smollm2"].queue == "gpu"
    assert models["fake"].queue == "api" and models["fake"].temperature == 1.0
    assert models["oracle"].model == "oracle" and models["oracle"].temperature == 1.0  # a judge entry reused
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.x]\nkind = "api"\nconcurrency = 0\n')
    with pytest.raises(ValueError, match=r"bad.toml: \[models.x\] field concurrency"):
        load_models(bad)
    with pytest.raises(ValueError, match="unknown generation model 'nope'"):
        get_model_config("nope", path)


# -- refusals and statistics -------------------------------------------------------------------------
@pytest.mark.parametrize("text", [REFUSAL, "I cannot assist with that request.", "I’m sorry, but I won’t write that.",
                                  "I must decline to answer.", "As an AI language model, I can't share opinions.",
                                  "I am unable to help with this."])
def test_refusals_are_detected(text):
    from workers.steering.refusal import detect_refusal

    assert detect_refusal(text)[0] is True


@pytest.mark.parametrize("text", [NEUTRAL, GEN_TEXTS["care/harm"][-2], "I can't wait to see the sea again!",
                                  "Sure. I can help with that: start early and pack water.", ""])
def test_answers_are_not_refusals(text):
    from workers.steering.refusal import detect_refusal

    assert detect_refusal(text) == (False, None)


def test_steerability_figures_match_their_formulas():
    from scipy.stats import spearmanr, ttest_ind

    from workers.steering.stats import mean_ci, spearman, steerability, verdict

    rng = np.random.default_rng(0)
    lv = np.repeat([-2, -1, 0, 1, 2], 30)
    y = np.where(lv > 0, 3.0 * lv, 0.2 * lv) + rng.normal(0, 1.5, len(lv))  # moves up, barely down
    s = steerability(lv, y)
    assert s.rho == pytest.approx(spearmanr(lv, y)[0], abs=1e-12)
    assert spearman(np.array([1, 1, 2, 2]), np.array([3.0, 3.0, 1.0, 1.0])) == pytest.approx(-1.0)
    for L in (-2, -1, 1, 2):
        assert s.delta[L] == pytest.approx(y[lv == L].mean() - y[lv == 0].mean())
        t = ttest_ind(y[lv == L], y[lv == 0], equal_var=False)
        assert s.delta_se[L] == pytest.approx(abs(s.delta[L] / t.statistic))
    m, lo, hi = mean_ci(y[lv == 2])
    assert lo < m < hi and (hi - lo) / 2 == pytest.approx(2.045 * y[lv == 2].std(ddof=1) / np.sqrt(30), rel=1e-3)
    a = (abs(s.delta[2]) - abs(s.delta[-2])) / (abs(s.delta[2]) + abs(s.delta[-2]))
    assert s.asymmetry == pytest.approx(a) and s.asymmetry > 0.6
    assert s.verdict == "one-directional"
    assert verdict(0.9, 5.0, -4.0) == "easy" and verdict(0.2, 5.0, -4.0) == "hard" and verdict(0.9, 1.5, -1.5) == "hard"


# -- generation -------------------------------------------------------------------------------------
def test_api_generation_is_cached_capped_and_carries_the_seed(pg_url):
    import asyncio

    from tests.conftest import open_test_store
    from workers.generation.api import APIGenerator
    from workers.generation.base import cap_words
    from workers.generation.config import ModelConfig

    assert cap_words("one two  three\nfour five", 3) == "one two  three"
    assert cap_words(" a b ", 5) == "a b"
    with ServerThread() as srv:
        async def go():
            store = await open_test_store(pg_url)
            gen = APIGenerator(ModelConfig(name="fake", kind="api", model="gen-level", base_url=srv.url, max_words=5),
                               store)
            try:
                convs = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "hi"}]]
                first = await gen.generate(convs, [1, 2])
                assert [r.text for r in first] == [" ".join(NEUTRAL.split()[:5])] * 2  # capped at 5 words
                assert gen.calls == 2 and srv.server.requests == 2
                again = await gen.generate(convs, [1, 2])
                assert [r.attempts for r in again] == [0, 0] and gen.calls == 2 and srv.server.requests == 2
                await gen.generate(convs[:1], [3])  # another seed is another question
                assert srv.server.requests == 3
            finally:
                await gen.aclose()
                await store.close()

        asyncio.run(go())


def test_api_generation_keeps_each_answer_before_its_slot_frees(pg_url):
    """A killed worker loses at most ``concurrency`` answers: every answer is cached before its
    request's slot is given to the next request, even when the cache write is slow."""
    import asyncio

    from tests.conftest import open_test_store
    from workers.generation.api import APIGenerator
    from workers.generation.config import ModelConfig

    with ServerThread(delay=0.02) as srv:
        async def go():
            store = await open_test_store(pg_url)
            gen = APIGenerator(ModelConfig(name="fake", kind="api", model="gen-level", base_url=srv.url,
                                           concurrency=2), store)
            cached, started, at_risk = [0], [0], []
            put, post = store.cache_put, gen.client._post

            async def slow_put(name, rows):
                await asyncio.sleep(0.15)  # a slow database: answers arrive faster than they are kept
                await put(name, rows)
                cached[0] += len(rows)

            async def counted_post(body):
                at_risk.append(started[0] - cached[0])  # requests begun before this one whose answers are not kept
                started[0] += 1
                return await post(body)

            store.cache_put, gen.client._post = slow_put, counted_post
            try:
                convs = [[{"role": "user", "content": f"question {i}"}] for i in range(12)]
                out = await gen.generate(convs, list(range(12)))
                assert all(r.text for r in out) and cached[0] == 12 and started[0] == 12
                assert max(at_risk) == 1  # one other request in flight (concurrency 2), every finished one kept
            finally:
                await gen.aclose()
                await store.close()

        asyncio.run(go())


def test_seeded_gumbel_max_draws_from_the_softmax():
    import torch

    from workers.generation.local import SeededGumbel

    z = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    for temp in (1.0, 2.0):
        proc = SeededGumbel([3], temp)
        draws = np.bincount([int(proc(None, z).argmax()) for _ in range(20000)], minlength=4) / 20000
        assert draws == pytest.approx(torch.softmax(z / temp, 1)[0].numpy(), abs=0.012)
    assert torch.equal(SeededGumbel([3], 0.0)(None, z), z)  # temperature 0: greedy
    a, b = SeededGumbel([5, 6], 1.0), SeededGumbel([6], 1.0)
    assert torch.equal(a(None, z.repeat(2, 1))[1], b(None, z)[0])  # a row's noise ignores its batch


def test_local_sampling_is_seeded_per_conversation_not_per_batch(tmp_path):
    from workers.generation.config import ModelConfig
    from workers.generation.local import LocalGenerator

    gen = LocalGenerator(ModelConfig(name="smollm2", kind="local", model="SmolLM2-135M-Instruct", batch_size=3),
                         home=tmp_path / "home")
    convs = [[{"role": "user", "content": q}] for q in QUERIES[:3]]
    batch = gen.generate_batch(convs, [11, 12, 13], max_new_tokens=10)
    alone = gen.generate_batch(convs[1:2], [12], max_new_tokens=10)
    other_seed = gen.generate_batch(convs[1:2], [99], max_new_tokens=10)
    assert alone[0].text == batch[1].text and alone[0].text
    assert other_seed[0].text != alone[0].text
    assert all(r.tokens_out <= 10 and r.tokens_in > 0 for r in batch)


# -- through the queue and the CLI -------------------------------------------------------------------
def _steer(env, *args) -> str:
    res = run_cli(["steer", *args], env, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip().splitlines()[-1]


def test_steer_runs_its_own_worker_or_leaves_the_job_to_the_workers(env, tmp_path, pg_url):
    """steer --wait --local-worker: no worker runs anywhere, the command runs one while it waits and
    the job finishes; steer --no-wait: submitted, nothing generated or scored until a worker comes."""
    from pathlib import Path

    with ServerThread() as srv:
        env["VALUEFLOW_JUDGES_FILE"] = str(_models_file(tmp_path / "judges.toml", srv.url))
        Path(env["VALUEFLOW_HOME"]).mkdir(parents=True, exist_ok=True)  # the local worker logs there
        common = ["--queries", str(_queries(tmp_path / "q.csv")), "--value", "care-harm", "--levels=-1,1",
                  "--regime", "persona", "--model", "fake", "--judge", "oracle", "--samples", "1", "--windows", "1"]
        out = tmp_path / "steer.csv"
        job = _steer(env, *common, "--wait", "--local-worker", "-o", str(out))
        rows = _read_csv(out)
        assert len(rows) == 4 * 2 and all(r["intensity"] not in ("", None) for r in rows)  # queries × levels
        assert _q(pg_url, "SELECT state FROM jobs WHERE id=$1", job)[0]["state"] == "done"
        later = _steer(env, *common, "--no-wait")
        assert _q(pg_url, "SELECT state FROM jobs WHERE id=$1", later)[0]["state"] == "running"
        assert _q(pg_url, "SELECT count(*) AS n FROM scores WHERE job_id=$1", later)[0]["n"] == 0
        assert run_cli(["jobs", "cancel", later], env).returncode == 0


def test_fake_model_dose_response_is_monotone_through_the_queue(env, workers, tmp_path, pg_url):
    """A model that writes texts of the requested level, scored by a judge that knows them: the
    report's dose–response must be monotone, so the level travels from the CLI to the score."""
    with ServerThread() as srv:
        env["VALUEFLOW_JUDGES_FILE"] = str(_models_file(tmp_path / "judges.toml", srv.url))
        workers.start()
        out = tmp_path / "steer.csv"
        job = _steer(env, "--queries", str(_queries(tmp_path / "q.csv")), "--value", "care-harm",
                     "--levels=-2,-1,0,1,2", "--regime", "persona", "--regime", "exemplars", "--exemplars", "2",
                     "--model", "fake", "--judge", "oracle", "--samples", "2", "--gen-chunk", "10", "--windows", "2",
                     "--wait", "--no-local-worker", "-o", str(out))
    rows = _read_csv(out)
    n_gen = 4 * 2 * (1 + 4 * 2)  # queries × samples × (baseline + 4 levels × 2 regimes)
    assert len(rows) == n_gen and {r["value"] for r in rows} == {"care-harm"}
    assert all(r["intensity"] not in ("", None) and r["windows_used"] == "2" for r in rows)
    persona = [r for r in rows if r["regime"] == "persona"]
    assert all(r["response"] == GEN_TEXTS["care/harm"][int(r["level"])] for r in persona)
    assert all(r["response"] == NEUTRAL for r in rows if r["regime"] == "none")
    # prompts as planned: the persona line names the level, exemplars come from the level's bin
    msgs = _q(pg_url, "SELECT levels, regime, messages FROM generations WHERE job_id=$1", job)
    for m in msgs:
        conv = json.loads(m["messages"])
        if m["regime"] == "persona":
            assert {2: "strongly values", 1: "slightly values", -1: "slightly rejects",
                    -2: "strongly rejects"}[m["levels"][0]] in conv[0]["content"]
        elif m["regime"] == "exemplars":
            assert conv[0]["content"].count("\n- ") == 2
        else:
            assert len(conv) == 1
    # the job records the VIDB it scores against (the seed: every value's version 1) and draws its
    # anchors from that version's snapshot, so they stay put while the VIDB grows
    spec = json.loads(_q(pg_url, "SELECT spec::text AS s FROM jobs WHERE id=$1", job)[0]["s"])
    assert len(spec["vidb_versions"]) == 32 and spec["vidb_versions"]["care-harm"] == 1
    v1 = {r["item_id"] for r in _q(pg_url, "SELECT item_id FROM vidb_version_items WHERE value='care-harm' AND version=1")}
    used = {a for r in _q(pg_url, "SELECT anchor_ids FROM windows WHERE job_id=$1", job) for a in r["anchor_ids"]}
    assert used and used <= v1
    rep = tmp_path / "report"
    res = run_cli(["report", job, "-o", str(rep)], env, check=True)
    assert res.stdout.strip().endswith("index.html")
    steer_rows = _read_csv(rep / "steerability.csv")
    assert {r["regime"] for r in steer_rows} == {"persona", "exemplars"}
    for r in steer_rows:
        assert float(r["spearman"]) >= 0.9, r
        assert float(r["delta_+2"]) > float(r["delta_+1"]) > 0 > float(r["delta_-1"]) > float(r["delta_-2"])
        assert r["verdict"] == "easy" and r["model"] == "fake"
    for flag, value in (("--rho-min", "1.01"), ("--delta-min", "50")):  # the verdict thresholds are options
        run_cli(["report", job, "-o", str(tmp_path / flag), flag, value], env, check=True)
        assert {r["verdict"] for r in _read_csv(tmp_path / flag / "steerability.csv")} == {"hard"}
    dose = _read_csv(rep / "dose_response.csv")
    assert len(dose) == 2 * 5 and all(int(d["n"]) == 8 for d in dose)
    persona_means = {int(d["level"]): float(d["mean"]) for d in dose if d["regime"] == "persona"}
    assert persona_means == pytest.approx({-2: -8.0, -1: -4.0, 0: 0.0, 1: 4.0, 2: 8.0}, abs=2.0)
    for png in ("dose_response.png", "delta_heatmap.png", "refusals.png"):
        assert (rep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (rep / "composition.png").exists()  # no combos in this job
    assert _q(pg_url, "SELECT count(*) AS n FROM generations WHERE job_id=$1 AND worker IS NOT NULL", job)[0]["n"] == n_gen


def test_combo_scores_each_value_and_refusals_are_reported(env, workers, tmp_path, pg_url):
    with ServerThread() as srv:
        env["VALUEFLOW_JUDGES_FILE"] = str(_models_file(tmp_path / "judges.toml", srv.url))
        workers.start()
        job = _steer(env, "--queries", str(_queries(tmp_path / "q.csv", QUERIES[:2])), "--value", "care-harm",
                     "--levels=-1,0,2", "--combo", "care-harm:2,fairness-cheating:1",
                     "--combo", "care-harm:1,fairness-cheating:-2", "--model", "refuser", "--judge", "oracle",
                     "--windows", "1", "--wait", "--no-local-worker")
        assert run_cli(["jobs", "status", job], env, check=True).returncode == 0
    gens = _q(pg_url, "SELECT gen_no, target, levels, refusal, refusal_match FROM generations WHERE job_id=$1", job)
    # 2 queries × (care-harm: 3 levels + 2 combos (persona) + 1 baseline shared by the combos)
    assert len(gens) == 2 * (3 + 2 + 1)
    for g in gens:
        assert g["refusal"] is (min(g["levels"]) < 0), g
        assert (g["refusal_match"] is not None) is g["refusal"]
    scores = _q(pg_url, "SELECT g.target, s.value, s.intensity FROM generations g JOIN scores s ON s.job_id = g.job_id"
                        " AND s.item_no = g.gen_no WHERE g.job_id=$1 AND g.target LIKE '%,%'", job)
    by = {}
    for s in scores:
        by.setdefault(s["target"], {}).setdefault(s["value"], []).append(s["intensity"])
    assert set(by) == {"care-harm:2,fairness-cheating:1", "care-harm:1,fairness-cheating:-2",
                       "care-harm:0,fairness-cheating:0"}
    for target, vals in by.items():
        assert set(vals) == {"care-harm", "fairness-cheating"} and all(len(v) == 2 for v in vals.values())
    # the combo that was obeyed reaches each value's own level (oracle: 4 × level)
    assert np.mean(by["care-harm:2,fairness-cheating:1"]["care-harm"]) > 6
    assert 2 < np.mean(by["care-harm:2,fairness-cheating:1"]["fairness-cheating"]) < 6
    rep_in, rep_out = tmp_path / "with", tmp_path / "without"
    run_cli(["report", job, "-o", str(rep_in)], env, check=True)
    run_cli(["report", job, "-o", str(rep_out), "--refusals", "exclude"], env, check=True)
    refusals = {(r["target"], r["regime"], r["level"]): r for r in _read_csv(rep_in / "refusals.csv")}
    assert refusals[("care-harm", "persona", "-1")]["rate"] == "1.0"
    assert refusals[("care-harm", "persona", "2")]["rate"] == "0.0"
    assert refusals[("care-harm:1,fairness-cheating:-2", "persona", "1")]["refusals"] == "2"
    comp = {(r["combo"], r["value"]): r for r in _read_csv(rep_in / "composition.csv")}
    assert comp[("care-harm:2,fairness-cheating:1", "fairness-cheating")]["target_level"] == "1"
    assert (rep_in / "composition.png").is_file()
    dose_in = {(r["level"]): int(r["n"]) for r in _read_csv(rep_in / "dose_response.csv")}
    dose_out = {(r["level"]): int(r["n"]) for r in _read_csv(rep_out / "dose_response.csv")}
    assert dose_in == {"-1": 2, "0": 2, "2": 2} and dose_out == {"0": 2, "2": 2}  # refused level -1 dropped
    assert "excluded from" in (rep_out / "index.html").read_text()


def test_steer_options_reach_the_plan_and_bad_input_is_refused(env, tmp_path, pg_url):
    from workers.steering.plan import gen_seed

    qfile = tmp_path / "q.csv"
    with qfile.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["prompt"], ["What makes a good life?"]])
    job = _steer(env, "--queries", str(qfile), "--query-field", "prompt", "--theory", "mft", "--levels=2",
                 "--regime", "exemplars", "--k", "4", "--mode", "calibrated", "--seed", "7")
    spec = json.loads(_q(pg_url, "SELECT spec FROM jobs WHERE id=$1", job)[0]["spec"])
    assert spec["values"] == ["care-harm", "fairness-cheating", "loyalty-betrayal", "authority-subversion",
                              "sanctity-degradation", "liberty-oppression"]
    assert (spec["k"], spec["mode"], spec["seed"], spec["layout"], spec["regimes"]) == (4, "calibrated", 7, "shuffled",
                                                                                       ["exemplars"])
    gens = _q(pg_url, "SELECT gen_no, seed, query, messages FROM generations WHERE job_id=$1 ORDER BY gen_no", job)
    assert len(gens) == 6 and [g["seed"] for g in gens] == [gen_seed(7, g["gen_no"]) for g in gens]
    assert all(g["query"] == "What makes a good life?" and "agreed with" in g["messages"] for g in gens)
    for args, message in [(["--levels=3"], "levels must be in -2..2"),
                          (["--model", "nope"], "unknown generation model 'nope'"),
                          (["--query-field", "query"], "field 'query': no such column"),
                          (["--combo", "care-harm:2"], "a combo names at least two values"),
                          (["--value", "nonsense"], "nonsense"), ([], "give --value, --theory or --combo")]:
        base = ["steer", "--queries", str(qfile)] + ([] if "--query-field" in args else ["--query-field", "prompt"])
        if not any(a in args for a in ("--value", "--combo")) and args:
            base += ["--value", "power"]
        res = run_cli(base + args, env)
        assert res.returncode != 0 and message in res.stderr, (args, res.stderr)
    assert _q(pg_url, "SELECT count(*) AS n FROM jobs")[0]["n"] == 1  # nothing stored by the refused commands


def test_a_killed_worker_mid_generation_resumes_without_generating_twice(env, workers, tmp_path, pg_url):
    n = 40
    with ServerThread(delay=0.4) as srv:
        env["VALUEFLOW_JUDGES_FILE"] = str(_models_file(
            tmp_path / "judges.toml", srv.url,
            f'[models.slow]\nkind = "api"\nmodel = "gen-level"\nbase_url = "{srv.url}"\nconcurrency = 2\n'))
        qs = [f"Question number {i}: what would you do?" for i in range(n // 5)]
        w1 = workers.start()
        job = _steer(env, "--queries", str(_queries(tmp_path / "q.csv", qs)), "--value", "care-harm",
                     "--model", "slow", "--judge", "oracle", "--gen-chunk", "100", "--windows", "1")
        deadline = time.monotonic() + 300
        stored = 0
        while time.monotonic() < deadline and stored < 6:
            stored = _q(pg_url, "SELECT count(*) AS n FROM generations WHERE job_id=$1 AND text_id IS NOT NULL", job)[0]["n"]
            time.sleep(0.2)
        workers.kill(w1)
        at_kill = {r["gen_no"]: r["worker"] for r in _q(
            pg_url, "SELECT gen_no, worker FROM generations WHERE job_id=$1 AND text_id IS NOT NULL", job)}
        assert 0 < len(at_kill) < n, "the kill must land mid-generation"
        workers.start()
        res = run_cli(["jobs", "resume", job], env, check=True)
        assert "re-enqueued 1" in res.stdout
        assert _wait_job(pg_url, job) == "done"
        gens = _q(pg_url, "SELECT gen_no, worker, messages FROM generations WHERE job_id=$1", job)
        seen = dict(srv.server.seen)
    assert len(gens) == n and all(g["worker"] for g in gens)
    assert len({g["worker"] for g in gens}) == 2  # the killed worker's and the new one's
    for g in gens:
        asked = seen[("gen-level", json.dumps(json.loads(g["messages"])))]
        if g["gen_no"] in at_kill:
            assert g["worker"] == at_kill[g["gen_no"]] and asked == 1, "a stored response was generated again"
        else:
            assert asked <= 2  # at most once more: the request in flight when the worker died
    assert sum(v for (m, _), v in seen.items() if m == "gen-level") <= n + 2  # concurrency 2: ≤ 2 lost in flight
    assert _q(pg_url, "SELECT count(*) AS n FROM scores WHERE job_id=$1", job)[0]["n"] == n


def test_resume_retry_failed_sends_failed_generations_back_to_the_model(env, workers, tmp_path, pg_url):
    """The model is down for its first 4 requests (no retries): 4 of 6 generations fail and the job
    finishes with the others; ``jobs resume --retry-failed`` generates exactly those 4, once each,
    and scores them."""
    with ServerThread() as srv:
        env["VALUEFLOW_JUDGES_FILE"] = str(_models_file(
            tmp_path / "judges.toml", srv.url,
            f'[models.flaky]\nkind = "api"\nmodel = "gen-level-down-first-4"\nbase_url = "{srv.url}"\n'
            'concurrency = 1\nmax_attempts = 1\n'))
        workers.start()
        out = tmp_path / "first.csv"
        job = _steer(env, "--queries", str(_queries(tmp_path / "q.csv", QUERIES[:2])), "--value", "care-harm",
                     "--levels=-1,0,1", "--model", "flaky", "--judge", "oracle", "--gen-chunk", "2", "--windows", "1",
                     "--wait", "--no-local-worker", "-o", str(out))
        first = _read_csv(out)
        assert len(first) == 6 and sum(1 for r in first if r["response"]) == 2
        assert sum(1 for r in first if r["error"] and not r["response"]) == 4
        st = run_cli(["jobs", "status", job], env, check=True).stdout
        assert "generations: 2 done, 4 failed, 0 pending" in st, st
        failed_chunks = {r["chunk_no"] for r in _q(
            pg_url, "SELECT chunk_no FROM generations WHERE job_id=$1 AND text_id IS NULL", job)}
        res = run_cli(["jobs", "resume", job, "--retry-failed"], env, check=True)
        assert f"re-enqueued {len(failed_chunks)} task(s)" in res.stdout, res.stdout
        assert run_cli(["jobs", "wait", job, "--timeout", "300"], env, check=True).stdout.strip().endswith(f"{job} done")
        seen = {k: v for k, v in srv.server.seen.items() if k[0] == "gen-level-down-first-4"}
    assert "generations: 6 done, 0 failed, 0 pending" in run_cli(["jobs", "status", job], env, check=True).stdout
    again = tmp_path / "again.csv"
    run_cli(["jobs", "export", job, "-o", str(again)], env, check=True)
    rows = _read_csv(again)
    assert len(rows) == 6 and all(r["response"] and not r["error"] and r["intensity"] != "" for r in rows)
    # each generation asked at most twice (failed once, then answered), 4 + 6 requests in all
    assert sum(seen.values()) == 10 and all(v <= 2 for v in seen.values())
    per_gen = _q(pg_url, "SELECT count(*) AS n FROM job_items WHERE job_id=$1 GROUP BY item_no", job)
    assert len(per_gen) == 6 and all(r["n"] == 1 for r in per_gen)
    windows = _q(pg_url, "SELECT count(*) AS n, count(DISTINCT window_id) AS d FROM comparisons WHERE job_id=$1", job)[0]
    assert windows["n"] == windows["d"] == 6
    assert _q(pg_url, "SELECT finalize_runs FROM jobs WHERE id=$1", job)[0]["finalize_runs"] == 2


def test_real_local_smollm2_job_end_to_end_with_report(env, workers, tmp_path, pg_url):
    """SmolLM2 generates through the gpu queue, the embedding judge scores, the report is written."""
    (tmp_path / "judges.toml").write_text('[models.smollm2-short]\nkind = "local"\nmodel = "SmolLM2-135M-Instruct"\n'
                                          'max_tokens = 24\nbatch_size = 16\n')
    env["VALUEFLOW_JUDGES_FILE"] = str(tmp_path / "judges.toml")
    env["VALUEFLOW_TORCH_THREADS"] = "2"
    workers.start()
    job = _steer(env, "--queries", str(_queries(tmp_path / "q.csv", QUERIES[:2])), "--value", "care-harm",
                 "--levels=-2,-1,0,1,2", "--model", "smollm2-short", "--wait", "--no-local-worker")
    rows = _q(pg_url, "SELECT g.gen_no, g.regime, g.tokens_out, t.body, s.intensity FROM generations g"
                      " JOIN texts t ON t.id = g.text_id JOIN scores s ON s.job_id = g.job_id AND s.item_no = g.gen_no"
                      " WHERE g.job_id=$1 ORDER BY g.gen_no", job)
    assert len(rows) == 2 * 5 and all(r["body"].strip() and 0 < r["tokens_out"] <= 24 for r in rows)
    assert all(-10 <= r["intensity"] <= 10 for r in rows)
    assert len({r["body"] for r in rows}) >= 8  # seeded sampling: different prompts, different answers
    rep = tmp_path / "report"
    run_cli(["report", job, "-o", str(rep)], env, check=True)
    html = (rep / "index.html").read_text()
    pngs = sorted(p.name for p in rep.glob("*.png"))
    assert pngs == ["delta_heatmap.png", "dose_response.png", "refusals.png"]
    assert html.count("<img src='data:image/png;base64,") == len(pngs)
    from PIL import Image

    for p in pngs:
        with Image.open(rep / p) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    steer_rows = _read_csv(rep / "steerability.csv")
    assert len(steer_rows) == 1 and steer_rows[0]["model"] == "smollm2-short" and steer_rows[0]["n"] == "10"


# -- the report of a scoring job, and the report in a real browser ------------------------------------
def test_report_of_a_scoring_job(env, workers, tmp_path, pg_url):
    from tests.test_lifecycle import TEXTS
    from tests.test_score_job import _submit, _write_inputs

    _write_inputs(tmp_path / "t.jsonl", TEXTS)
    workers.start()
    job = _submit(env, tmp_path / "t.jsonl", "--value", "care-harm", "--value", "benevolence")
    assert _wait_job(pg_url, job) == "done"
    run_cli(["report", job, "-o", str(tmp_path / "rep")], env, check=True)
    summary = {r["value"]: r for r in _read_csv(tmp_path / "rep" / "summary.csv")}
    assert set(summary) == {"care-harm", "benevolence"}
    scores = _q(pg_url, "SELECT value, intensity FROM scores WHERE job_id=$1", job)
    for v, r in summary.items():
        ys = [s["intensity"] for s in scores if s["value"] == v]
        assert int(r["texts"]) == len(TEXTS) and float(r["mean"]) == pytest.approx(np.mean(ys))
    assert (tmp_path / "rep" / "histograms.png").is_file() and (tmp_path / "rep" / "summary.md").is_file()
    res = run_cli(["report", "nope", "-o", str(tmp_path / "x")], env)
    assert res.returncode != 0 and "no job 'nope'" in res.stderr


def _synthetic_rows() -> list[dict]:
    rng = np.random.default_rng(1)
    rows, g = [], 0
    for reg in ("persona", "exemplars"):
        for v in ("care-harm", "power"):
            for lv in (-2, -1, 0, 1, 2):
                for _ in range(6):
                    refused = reg == "persona" and lv == -2 and g % 2 == 0
                    rows.append(dict(gen_no=g, target=v, value=v, level=lv, regime="none" if lv == 0 else reg,
                                     response=REFUSAL if refused else "text", refusal=refused,
                                     intensity=float(np.clip(3 * lv + rng.normal(0, 1), -10, 10))))
                    g += 1
    for _ in range(6):
        for target, levels in (("care-harm:2,power:-1", (2, -1)), ("care-harm:0,power:0", (0, 0))):
            for v, lv in zip(("care-harm", "power"), levels):
                rows.append(dict(gen_no=g, target=target, value=v, level=lv,
                                 regime="persona" if target[-1] != "0" else "none", response="t", refusal=False,
                                 intensity=float(3 * lv + rng.normal(0, 1))))
            g += 1
    return rows


def test_report_index_html_loads_every_image_in_a_headless_browser(tmp_path):
    from workers.steering.report import steer_report

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed for this test (.ci/run installs it)"
    rep = tmp_path / "report"
    index = steer_report(_synthetic_rows(), rep, "job-x", "model-x")
    pngs = sorted(p.name for p in rep.glob("*.png"))
    assert pngs == ["composition.png", "delta_heatmap.png", "dose_response.png", "refusals.png"]
    # a copy of the page whose script writes every image's natural width into the DOM once loaded
    probe = rep / "probe.html"
    probe.write_text(index.read_text().replace(
        "</body>", "<script>window.addEventListener('load', () => { const p = document.createElement('pre');"
                   " p.id = 'widths'; p.textContent = JSON.stringify([...document.images].map(i => i.naturalWidth));"
                   " document.body.appendChild(p); });</script></body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    widths = json.loads(dom.stdout.split("<pre id=\"widths\">", 1)[1].split("</pre>", 1)[0])
    assert len(widths) == len(pngs) and all(w > 0 for w in widths), widths
    import os

    shots = Path(os.environ.get("VALUEFLOW_TEST_ARTIFACTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / "steering_report.png"
    subprocess.run([chromium, *flags, "--window-size=1280,2400", f"--screenshot={shot}", index.as_uri()],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        assert len(set(im.convert("L").resize((64, 120)).getdata())) > 20  # not a blank page
