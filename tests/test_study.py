"""The stability study (rating versus ranking) and position bias: the statistics, the rating prompt,
and the job end to end through the CLI, the queue and worker subprocesses (embedding judge; an
OpenAI-compatible fake for an LLM judge's rating and ranking)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli, shared_data
from tests.fake_openai import ServerThread, rating_of


# -- statistics ------------------------------------------------------------------------------------------
def test_stability_figures_on_a_hand_computed_example():
    from workers.study.stability import stability, win_rate

    # 3 texts × 2 repeats × 2 paraphrases
    s = np.array([
        [[1.0, 3.0], [1.0, 3.0]],      # varies with the paraphrase only
        [[-2.0, -2.0], [2.0, 2.0]],    # varies with the seed only, flips sign
        [[5.0, np.nan], [5.0, 5.0]],   # constant, one run unscored
    ])
    ref = np.array([2.0, -4.0, 6.0])
    group = np.array(["a", "a", "a"])
    st = stability(s, ref, group)
    var0 = np.var([1, 3, 1, 3], ddof=1)
    var1 = np.var([-2, -2, 2, 2], ddof=1)
    assert st.mean_variance == pytest.approx((var0 + var1 + 0.0) / 3)
    assert st.max_range == 4.0
    assert st.sign_flip_rate == pytest.approx(1 / 3)
    # across paraphrases at a fixed seed: text 0 has var 2 twice, text 1 has 0 twice, text 2 (one cell) 0
    assert st.prompt_sensitivity == pytest.approx((2 + 2 + 0 + 0 + 0) / 5)
    # across seeds at a fixed paraphrase: text 0: 0, 0; text 1: 8, 8; text 2: 0 (one cell)
    assert st.seed_sensitivity == pytest.approx((0 + 0 + 8 + 8 + 0) / 5)
    # sign accuracy per run: run (r0,p0): text1 −2 vs −4 ✓, all 3 ✓ → 1; (r0,p1): 2 of 2 ✓; (r1,p0):
    # text1 +2 vs −4 ✗ → 2/3; (r1,p1): 2/3
    assert st.sign_accuracy == pytest.approx((1 + 1 + 2 / 3 + 2 / 3) / 4)
    # pairwise per run: refs 2, −4, 6 → right order is t2 > t0 > t1
    # (r0,p0) 1,−2,5: 3/3; (r0,p1) 3,−2,nan: 1/1; (r1,p0) 1,2,5: t0>t1 wrong → 2/3; (r1,p1) 3,2,5: 3/3
    assert st.pairwise_accuracy == pytest.approx((1 + 1 + 2 / 3 + 1) / 4)
    assert st.unscored_share == pytest.approx(1 / 12)
    # win rate: ranking constant for every text beats rating on texts 0 and 1, ties on text 2
    wr, n = win_rate(np.zeros_like(s), s)
    assert (wr, n) == (pytest.approx((1 + 1 + 0.5) / 3), 3)


def test_position_bias_of_a_judge_that_always_picks_the_last_shown_text():
    from workers.study.position import position_bias, wilson

    rankings = [[3, 0, 1, 2]] * 40 + [[3, 2, 1, 0]] * 40
    (pb,) = position_bias(rankings)
    assert pb["k"] == 4 and pb["windows"] == 80 and pb["chance"] == 0.25
    assert pb["first_position_win"] == 0.0 and pb["last_position_win"] == 1.0
    assert pb["win_share_by_position"] == [0.0, 0.0, 0.0, 1.0]
    # mean rank of each position: position 0 is ranked 2nd or 4th, position 3 always 1st
    assert pb["mean_rank_by_position"] == [3.0, 3.0, 3.0, 1.0]
    assert pb["chi2"] == pytest.approx(3 * 20 + (80 - 20) ** 2 / 20) and pb["p_value"] < 1e-20
    lo, hi = wilson(0, 80)
    assert (pb["first_position_win_lo"], pb["first_position_win_hi"]) == (lo, hi) and lo == 0 and 0.03 < hi < 0.06


def test_position_bias_is_near_chance_for_random_rankings():
    from workers.study.position import position_bias

    rng = np.random.default_rng(0)
    (pb,) = position_bias([rng.permutation(6).tolist() for _ in range(6000)])
    assert pb["first_position_win_lo"] < 1 / 6 < pb["first_position_win_hi"]
    assert pb["p_value"] > 0.001


# -- the direct-rating prompt ------------------------------------------------------------------------------
def test_rating_prompts_are_three_wordings_of_one_request_and_answers_parse():
    from schemas.taxonomy import default_taxonomy
    from workers.judges.rating import N_PARAPHRASES, RatingParseError, parse_rating, rating_messages

    v = default_taxonomy().get("care-harm")
    text = "I  stayed with a stranger who had fainted until the ambulance came."
    msgs = [rating_messages(v, text, p) for p in range(N_PARAPHRASES)]
    assert N_PARAPHRASES == 3 and len({m[1]["content"] for m in msgs}) == 3
    for m in msgs:
        assert "Text: I stayed with a stranger" in m[1]["content"] and '{"intensity"' in m[1]["content"]
        assert "-10" in m[1]["content"] and "10" in m[1]["content"]
    assert parse_rating('{"intensity": -7.5}') == -7.5
    assert parse_rating("I would say 4 out of 10") == 4.0
    for bad in ("", "no idea", '{"intensity": 12}'):
        with pytest.raises(RatingParseError):
            parse_rating(bad)
    with pytest.raises(ValueError, match="paraphrase"):
        rating_messages(v, text, 3)


def test_ranking_paraphrases_change_only_the_wording():
    from schemas.taxonomy import default_taxonomy
    from workers.judges.parsing import parse_ranking
    from workers.judges.prompts import build_messages, ranking_paraphrase

    v = default_taxonomy().get("care-harm")
    texts = ["I fed the stray cat.", "I kicked the dog.", "I read a book."]
    base = build_messages(v, texts)
    assert build_messages(v, texts, paraphrase=0) == base  # the reference wording is unchanged
    with ranking_paraphrase(2):
        p2 = build_messages(v, texts)
    assert p2 == build_messages(v, texts, paraphrase=2) != base
    assert build_messages(v, texts) == base  # the block ended
    for m in (base, build_messages(v, texts, paraphrase=1), p2):
        assert all(f"Text {i}: {t}" in m[-1]["content"] for i, t in enumerate(texts, 1))
    assert parse_ranking("[2, 3, 1]", 3) == [1, 2, 0]


# -- end to end through the CLI --------------------------------------------------------------------------
def _judges_file(tmp_path, url: str) -> str:
    f = tmp_path / "judges.toml"
    f.write_text(f'[judges.studyllm]\nkind = "api"\nmodel = "study"\nbase_url = "{url}"\nstructured = "auto"\n')
    return str(f)


def _read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _num(x: str) -> float | None:
    return None if x == "" else float(x)


def _figures(rows: list[dict]) -> dict:
    return {r["metric"]: (_num(r["rating"]), _num(r["ranking"])) for r in rows}


def test_study_with_an_llm_judge_rates_and_ranks_over_seeds_and_paraphrases(env, tmp_path):
    out = tmp_path / "report"
    with ServerThread() as srv:
        env["VALUEFLOW_JUDGES_FILE"] = _judges_file(tmp_path, srv.url)
        # --local-worker: the command runs a worker of its own while it waits (it logs into the state
        # folder, which only the embedded default creates by itself)
        Path(env["VALUEFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
        res = run_cli(["study", "stability", "--judge", "studyllm", "--data", str(shared_data() / "vidb-sample"),
                       "--value", "care-harm", "--value", "benevolence", "--limit", "4", "--repeats", "3",
                       "--paraphrases", "2", "--k", "4", "--windows", "2", "--seed", "7", "--chunk-size", "5",
                       "--local-worker", "-o", str(out)], env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        job = res.stdout.strip().splitlines()[-1]
        prompts = [json.loads(p) for (model, p), n in srv.server.seen.items() if model == "study" for _ in range(n)]
    texts, runs = 8, 6
    rows = _read_csv(out / "runs.csv")
    assert len(rows) == texts * runs and {r["value"] for r in rows} == {"care-harm", "benevolence"}
    # every rating is the fake's answer for that text and that run's seed: the seed reached the server
    for r in rows:
        assert float(r["rating"]) == rating_of(r["text"], int(r["seed"]))
        assert r["ranking"] != "" and int(r["windows_used"]) == 2
    # requests: one rating per (text, run) (the two wordings, each sent with three seeds), one ranking
    # per window, ranking prompts in both wordings
    assert len({json.dumps(p) for p in prompts if '"intensity"' in p[-1]["content"]}) == texts * 2
    rating_prompts = [p for p in prompts if '"intensity"' in p[-1]["content"]]
    ranking_prompts = [p for p in prompts if "Text 1:" in p[-1]["content"]]
    assert len(rating_prompts) == texts * runs and len(ranking_prompts) == texts * runs * 2
    assert sum("Put all 4 texts in order" in p[-1]["content"] for p in ranking_prompts) == texts * runs
    # the figures: rating varies by the seed's ±1 only, identically for every text
    by_text: dict[str, list[float]] = {}
    for r in rows:
        by_text.setdefault(r["id"], []).append(float(r["rating"]))
    fig = _figures(_read_csv(out / "stability.csv"))
    expected_var = float(np.mean([np.var(v, ddof=1) for v in by_text.values()]))
    assert fig["mean_variance"][0] == pytest.approx(expected_var)
    assert fig["prompt_sensitivity"][0] == 0.0  # same seed, other wording: the fake answers the same
    seeds = sorted({int(r["seed"]) for r in rows})
    assert len(seeds) == 3
    assert fig["seed_sensitivity"][0] == pytest.approx(np.var([s % 3 - 1 for s in seeds], ddof=1))
    # the fake ranks the shown order reversed: the last shown text always wins, the first never
    assert fig["first_position_win_k4"][1] == 0.0 and fig["last_position_win_k4"][1] == 1.0
    assert fig["position_chi2_p_k4"][1] < 1e-6
    md = (out / "stability.md").read_text()
    assert "| sign-flip rate |" in md and "1: 0.00 · 2: 0.00 · 3: 0.00 · 4: 1.00" in md
    assert (out / "stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the job went through the three stages, and `jobs status` shows them
    st = json.loads(run_cli(["jobs", "status", job, "--json"], env, check=True).stdout)
    assert st["kind"] == "study" and st["state"] == "done"
    assert [s["stage"] for s in st["stages"]] == ["rate", "rank", "score"]
    assert all(s["done"] == s["of"] for s in st["stages"])


def test_study_with_the_embedding_judge_through_the_queue_and_study_report(env, workers, tmp_path, pg_url):
    from tests.test_score_job import _q

    # -o with --no-wait would write nothing: refused before anything is read or submitted
    res = run_cli(["study", "stability", "--data", str(shared_data() / "vidb-sample" / "mft.json"), "--theory", "mft",
                   "--no-wait", "-o", str(tmp_path / "never")], env)
    assert res.returncode == 2 and "needs --wait" in res.stderr and "valueflow study report JOB" in res.stderr
    assert _q(pg_url, "SELECT to_regclass('public.jobs') IS NULL AS untouched")[0]["untouched"]  # not even migrated
    workers.start()
    res = run_cli(["study", "stability", "--data", str(shared_data() / "vidb-sample" / "mft.json"),
                   "--theory", "mft", "--limit", "4", "--repeats", "2", "--paraphrases", "3", "--mode", "calibrated",
                   "--no-wait"], env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "has no prompt: paraphrases do not apply" in res.stderr
    job = res.stdout.strip().splitlines()[-1]
    assert run_cli(["jobs", "wait", job, "--timeout", "900"], env, timeout=960).returncode == 0
    # the study records the VIDB it ranks against (the seed: every value's version 1); its windows
    # draw anchors from those snapshots
    spec = json.loads(_q(pg_url, "SELECT spec::text AS s FROM jobs WHERE id=$1", job)[0]["s"])
    assert len(spec["vidb_versions"]) == 32 and set(spec["vidb_versions"].values()) == {1}
    v1 = {r["item_id"] for r in _q(pg_url, "SELECT item_id FROM vidb_version_items WHERE version = 1")}
    used = {a for r in _q(pg_url, "SELECT anchor_ids FROM windows WHERE job_id=$1", job) for a in r["anchor_ids"]}
    assert used and used <= v1
    out = tmp_path / "rep"
    rep = run_cli(["study", "report", job, "-o", str(out)], env, check=True)
    assert "no prompt" in rep.stdout
    rows = _read_csv(out / "runs.csv")
    assert len(rows) == 6 * 4 * 2  # six mft values × 4 texts × 2 repeats (one wording)
    fig = _figures(_read_csv(out / "stability.csv"))
    # the probe's rating does not depend on the seed: no variance, no flips; no prompt to paraphrase
    assert fig["mean_variance"][0] == 0.0 and fig["sign_flip_rate"][0] == 0.0
    assert fig["prompt_sensitivity"] == (None, None)
    # ranking draws other anchors per repeat: recompute its figures from the exported runs
    per_text: dict[str, list[float]] = {}
    for r in rows:
        per_text.setdefault(r["id"], []).append(float(r["ranking"]))
    var = np.array([np.var(v, ddof=1) for v in per_text.values()])
    assert fig["mean_variance"][1] == pytest.approx(var.mean())
    assert fig["ranking_win_rate"][1] == pytest.approx(0.5 * np.isclose(var, 0).mean())
    ref = {r["id"]: float(r["reference"]) for r in rows}
    rate = {r["id"]: float(r["rating"]) for r in rows}
    signed = [i for i in ref if ref[i] != 0]
    assert fig["sign_accuracy"][0] == pytest.approx(np.mean([math.copysign(1, rate[i]) == math.copysign(1, ref[i])
                                                             for i in signed]))
    st = json.loads(run_cli(["jobs", "status", job, "--json"], env, check=True).stdout)
    assert st["state"] == "done" and len(st["health"]) == 6


def test_study_refuses_bad_data_with_the_file_and_line(env, tmp_path):
    bad = tmp_path / "care-harm_mft_flag_aggregated.csv"
    bad.write_text("text,final_rating\nI helped a friend move house.,4\nI pushed a child over.,minus five\n")
    res = run_cli(["study", "stability", "--data", str(bad)], env)
    assert res.returncode != 0 and f"{bad}:3" in res.stderr and "final_rating" in res.stderr
    res = run_cli(["study", "stability", "--data", str(shared_data() / "vidb-sample" / "mft.json"),
                   "--value", "benevolence"], env)
    assert res.returncode != 0 and "no labelled texts for benevolence" in res.stderr


def test_study_reads_a_csv_whose_name_names_no_value_as_the_one_value_given(env, tmp_path, pg_url):
    """An upstream-format CSV under any name: with one --value its texts are that value's; without,
    a clear refusal. The job is submitted (--no-wait) with the texts spread over the intensities."""
    from tests.test_score_job import _q

    labels = tmp_path / "labels.csv"
    rated = [("I gave my lunch to a classmate who had none.", 6.0), ("I shouted at my mother for no reason.", -5.5),
             ("I walked my neighbour's dog while she was ill.", 4.5), ("I took credit for my friend's idea.", -7.0),
             ("I answered a lost tourist's questions.", 2.0), ("I let my brother take the blame for me.", -8.0)]
    with labels.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "final_rating"])
        w.writerows(rated)
    res = run_cli(["study", "stability", "--data", str(labels), "--no-wait"], env)
    assert res.returncode != 0 and f"{labels}: cannot tell the value from the file name; pass --value" in res.stderr
    # a file named for another value is not read as this one
    other = tmp_path / "care-harm_mft_flag_aggregated.csv"
    other.write_bytes(labels.read_bytes())
    res = run_cli(["study", "stability", "--data", str(other), "--value", "benevolence", "--no-wait"], env)
    assert res.returncode != 0
    assert f"{other}: the file name says value 'care-harm', --value says 'benevolence'" in res.stderr
    res = run_cli(["study", "stability", "--data", str(labels), "--value", "benevolence", "--limit", "3",
                   "--repeats", "1", "--no-wait"], env, check=True, timeout=300)
    job = res.stdout.strip().splitlines()[-1]
    spec = json.loads(_q(pg_url, "SELECT spec::text AS s FROM jobs WHERE id=$1", job)[0]["s"])
    assert (spec["values"], spec["texts"]) == (["benevolence"], 3)
    bodies = {r["body"] for r in _q(pg_url, "SELECT t.body FROM job_items i JOIN texts t ON t.id = i.text_id"
                                            " WHERE i.job_id = $1", job)}
    # --limit spreads over the intensity order (-8, -7, -5.5, 2, 4.5, 6): its ends and the third
    assert bodies == {rated[5][0], rated[1][0], rated[0][0]}
    assert run_cli(["jobs", "cancel", job], env).returncode == 0
