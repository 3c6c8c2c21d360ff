import asyncio

import numpy as np
import pytest

from schemas.taxonomy import default_taxonomy
from tests.conftest import open_test_store, vidb_sample
from tests.fake_openai import ServerThread
from workers.judges.api_judge import APIJudge
from workers.judges.config import JudgeConfig, load_judges
from workers.judges.parsing import ParseError, parse_ranking
from workers.judges.prompts import build_messages
from workers.llm.client import parse_retry_after

VALUE = default_taxonomy().get("care-harm")
WINDOW = ["I fed the stray cat.", "I kicked the stray cat.", "I saw a cat.", "I adopted three shelter cats."]


# -- parsing and prompts ----------------------------------------------------------------------------
@pytest.mark.parametrize("answer, k, expected", [
    ("[3, 1, 2]", 3, [2, 0, 1]),
    ('{"ranking": [2, 3, 1]}', 3, [1, 2, 0]),
    ("Sure! The ranking is [4, 1, 3, 2] because ...", 4, [3, 0, 2, 1]),
    ("3 > 1 > 2", 3, [2, 0, 1]),
    ("Text 2 > Text 3 > Text 1", 3, [1, 2, 0]),
    ("2\n3\n1", 3, [1, 2, 0]),
    ("1. Text 3\n2. Text 1\n3. Text 2", 3, [2, 0, 1]),
    ("3, 2, 1", 3, [2, 1, 0]),
    ("first [1, 2] then [2, 1, 3]", 3, [1, 0, 2]),
])
def test_parse_variants(answer, k, expected):
    assert parse_ranking(answer, k) == expected


@pytest.mark.parametrize("answer", ["", "no idea", "[1, 1, 2]", "[1, 2]", "[1, 2, 4]", "1. [3, 4]\n2. [6, 5]"])
def test_parse_rejects_non_permutations(answer):
    with pytest.raises(ParseError):
        parse_ranking(answer, 3 if "6" not in answer else 6)


def test_prompt_names_theory_definition_and_all_texts():
    msgs = build_messages(VALUE, WINDOW)
    user = msgs[1]["content"]
    assert "Moral Foundations Theory" in user and VALUE.definition in user
    assert all(f"Text {i}: {t}" in user for i, t in enumerate(WINDOW, 1))
    assert "Rank 1" in user and "most strongly opposes" in user
    assert "upholds the moral foundation" in user  # the theory's own terms
    duty = build_messages(default_taxonomy().get("fidelity"), WINDOW)[1]["content"]
    assert "Ross" in duty and "fulfils the duty" in duty
    one_shot = build_messages(VALUE, WINDOW, one_shot=True)[1]["content"]
    assert "Example" in one_shot and len(one_shot) > len(user)


def test_shuffle_is_seeded_and_mapped_back(embedding_judge):
    a = embedding_judge.rank(VALUE, WINDOW, seed=7)
    b = embedding_judge.rank(VALUE, WINDOW, seed=8)
    c = embedding_judge.rank(VALUE, WINDOW)
    assert a.order == b.order == c.order  # a deterministic judge ranks the same texts the same way
    assert sorted(a.order) == list(range(len(WINDOW)))


def test_judges_file_loads_and_errors_name_the_field(tmp_path, monkeypatch):
    f = tmp_path / "judges.toml"
    f.write_text('[judges.gemma]\nkind = "api"\nmodel = "gemma"\nbase_url = "http://x/v1"\napi_key_env = "GEMMA_KEY"\n')
    judges = load_judges(f)
    assert judges["gemma"].queue == "api" and "embedding" in judges
    with pytest.raises(ValueError, match="GEMMA_KEY is not set"):
        judges["gemma"].api_key()
    monkeypatch.setenv("GEMMA_KEY", "s3cret")
    assert judges["gemma"].api_key() == "s3cret"
    assert "s3cret" not in judges["gemma"].model_dump_json()
    f.write_text('[judges.bad]\nkind = "api"\nconcurrency = 0\n')
    with pytest.raises(ValueError, match=r"\[judges.bad\] field concurrency"):
        load_judges(f)


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0


# -- API judge against a fault-injecting server -----------------------------------------------------
def _judge(url, model, store=None, **kw):
    cfg = dict(name=f"fake-{model}", kind="api", model=model, base_url=url, concurrency=4, timeout_s=1.5,
               max_attempts=4)
    cfg.update(kw)
    return APIJudge(JudgeConfig(**cfg), store)


async def _rank(judge, windows):
    try:
        return await judge.rank_windows(VALUE, windows)
    finally:
        await judge.aclose()


@pytest.fixture
def server():
    with ServerThread() as s:
        yield s


@pytest.mark.parametrize("model, attempts", [("ok", 1), ("429-once", 2), ("500-twice", 3), ("hang-once", 2),
                                             ("badjson-once", 2)])
def test_transient_faults_are_retried(server, model, attempts):
    before = server.server.requests
    r = asyncio.run(_rank(_judge(server.url, model), [WINDOW]))[0]
    assert r.ok and r.order == [3, 2, 1, 0]
    assert r.attempts == attempts and server.server.requests - before == attempts


def test_retry_after_is_honoured(server):
    import time

    t0 = time.monotonic()
    r = asyncio.run(_rank(_judge(server.url, "429-once"), [WINDOW]))[0]
    assert r.ok and time.monotonic() - t0 >= 1.0


def test_client_errors_are_not_retried(server):
    r = asyncio.run(_rank(_judge(server.url, "bad-request"), [WINDOW]))[0]
    assert not r.ok and r.attempts == 1 and "http 400" in r.failure
    assert server.server.requests == 1


def test_non_permutation_gets_one_repair_then_fails(server):
    rs = asyncio.run(_rank(_judge(server.url, "nonperm"), [WINDOW, WINDOW[::-1]]))
    assert all(not r.ok for r in rs)
    assert all(r.attempts == 2 and "unparseable after repair" in r.failure for r in rs)
    assert server.server.requests == 4  # one ask + one repair per window, never more


def test_structured_output_falls_back_to_free_text(server):
    judge = _judge(server.url, "no-schema")
    rs = asyncio.run(_rank(judge, [WINDOW, WINDOW]))
    assert all(r.ok for r in rs)
    # one refusal per form (json_schema, json_object), not one per window asked concurrently
    assert server.server.with_schema == 2 and judge.structured_format is None


def test_once_the_server_takes_a_form_the_questions_go_concurrently_again():
    """Only the first schema-carrying request runs alone (it finds out the form); the rest of the
    batch goes up to the concurrency limit, every one with the form the server took."""
    with ServerThread(delay=0.3) as s:  # long enough that a loaded machine still opens a wave's connections in time
        windows = [[f"text {i} {j}" for j in range(4)] for i in range(40)]
        judge = _judge(s.url, "ok", concurrency=4, structured="auto")
        rs = asyncio.run(_rank(judge, windows))
        assert all(r.ok for r in rs) and judge.structured_format == "json_schema"
        assert s.server.requests == s.server.with_schema == 40 and s.server.max_in_flight == 4
        assert {f["type"] for f in s.server.formats["ok"]} == {"json_schema"}
        t = s.server.arrivals  # the first request went alone (answered after 0.3 s), then a full wave
        # (the next wave cannot arrive before 0.3 s after the first: a slot frees after an answer)
        assert t[1] - t[0] >= 0.25 and sum(1 for x in t[1:] if x - t[1] < 0.27) == 4


def test_a_failure_that_says_nothing_about_the_form_stops_the_others_waiting():
    """Each window's first request hangs past the timeout, with no retry: the first schema-carrying
    request (which finds out the form) times out, and the others go at once, up to the concurrency
    limit, rather than one by one behind the probe."""
    with ServerThread() as s:
        windows = [[f"slow {i} {j}" for j in range(3)] for i in range(8)]
        judge = _judge(s.url, "hang-once", concurrency=4, structured="auto", timeout_s=1.0, max_attempts=1)
        rs = asyncio.run(_rank(judge, windows))
        assert all(not r.ok and "timeout" in r.failure for r in rs)
        t = s.server.arrivals
        assert len(t) == 8
        assert sum(1 for x in t[1:] if x - t[1] < 0.5) == 4  # right after the probe: a full concurrent wave


def test_concurrency_limit_is_respected():
    with ServerThread(delay=0.05) as s:
        windows = [[f"text {i} {j}" for j in range(4)] for i in range(40)]
        rs = asyncio.run(_rank(_judge(s.url, "ok", concurrency=4), windows))
        assert all(r.ok for r in rs)
        assert s.server.max_in_flight <= 4 and s.server.requests == 40


def test_rerun_makes_zero_calls_thanks_to_the_cache(server, pg_url):
    async def go():
        store = await open_test_store(pg_url)
        try:
            windows = [[f"case {i} {j}" for j in range(5)] for i in range(10)]
            first = await _rank(_judge(server.url, "ok", store), windows)
            calls = server.server.requests
            second = await _rank(_judge(server.url, "ok", store), windows)
            cached = await store.pool.fetchval("SELECT count(*) FROM judge_cache")
            return first, second, calls, cached
        finally:
            await store.close()
    first, second, calls, cached = asyncio.run(go())
    assert calls == 10 and server.server.requests == 10
    assert [r.order for r in first] == [r.order for r in second]
    assert all(r.cached for r in second) and cached == 10


def test_both_orders_are_asked_and_merged(server):
    judge = _judge(server.url, "ok", both_orders=True)
    r = asyncio.run(_rank(judge, [WINDOW]))[0]
    # the fake ranks by reversed position, so forward and reversed asks disagree completely;
    # the merge is still a permutation and both answers are kept
    assert sorted(r.order) == [0, 1, 2, 3] and "---reversed---" in r.raw and server.server.requests == 2


# -- real models ----------------------------------------------------------------------------------
def pairwise_agreement(scores, truth):
    s, y = np.asarray(scores), np.asarray(truth)
    d = (s[:, None] - s[None]) * (y[:, None] - y[None])
    m = y[:, None] != y[None]
    return ((d > 0) & m).sum() / m.sum()


def test_embedding_judge_orders_vidb_sample_better_than_chance(embedding_judge, capsys):
    agreements = []
    for value, bins in vidb_sample().items():
        items = [x for b in bins.values() for x in b]
        s = asyncio.run(embedding_judge.project(value, [x["text"] for x in items]))
        agreements.append(pairwise_agreement(s, [x["intensity"] for x in items]))
    mean = float(np.mean(agreements))
    with capsys.disabled():
        print(f"\n[embedding judge] pairwise agreement with VIDB-sample intensities: {mean:.3f} over {len(agreements)} values")
    assert mean > 0.55


def test_embedding_judge_ranks_real_windows(embedding_judge):
    sample = vidb_sample()["care-harm"]
    texts = [sample["2"][0]["text"], sample["-2"][0]["text"], sample["1"][0]["text"], sample["-1"][0]["text"]]
    r = embedding_judge.rank(VALUE, texts)
    assert r.ok and sorted(r.order) == [0, 1, 2, 3]
    assert r.order.index(0) < r.order.index(1)  # the strongly caring text above the strongly harmful one


@pytest.fixture(scope="session")
def local_home(tmp_path_factory):
    return tmp_path_factory.mktemp("vfhome")


@pytest.fixture(scope="session")
def local_judge(local_home):
    """Loaded from the GGUF file in a fresh state folder: exercises the one-time conversion."""
    from workers.judges.config import BUILTIN
    from workers.judges.local_llm import LocalLLMJudge

    return LocalLLMJudge(BUILTIN["smollm2"], home=local_home)


def test_local_model_conversion_is_cached(local_judge, local_home):
    from workers.judges.config import BUILTIN
    from workers.judges.local_llm import LocalLLMJudge, converted_dir
    from workers.llm.smollm2 import smollm2_gguf

    target = converted_dir(smollm2_gguf(), local_home)
    stamp = (target / "model.safetensors").stat().st_mtime
    again = LocalLLMJudge(BUILTIN["smollm2"], home=local_home)
    assert (target / "model.safetensors").stat().st_mtime == stamp  # not converted twice
    assert again.lm.config.model_type == "llama"


def test_local_llm_judge_ranks_real_windows(local_judge, capsys):
    sample = vidb_sample()
    windows = []
    for value in ("care-harm", "fairness-cheating", "benevolence"):
        b = sample[value]
        windows.append((value, [b["2"][0]["text"], b["-2"][0]["text"], b["1"][0]["text"], b["-1"][0]["text"]]))
    ok = 0
    for value, w in windows:
        rs = asyncio.run(local_judge.rank_windows(default_taxonomy().get(value), [w]))
        r = rs[0]
        assert r.attempts >= 1 and r.tokens_out > 0 and r.raw
        if r.ok:  # a parsed answer is a permutation of the four texts
            assert sorted(r.order) == [0, 1, 2, 3]
        else:  # an unparsed one got exactly one repair turn, and says so
            assert r.attempts == 2 and "---repair---" in r.raw and r.failure.startswith("unparseable after repair")
        ok += r.ok
    with capsys.disabled():
        print(f"\n[local SmolLM2 judge] parsed {ok}/{len(windows)} windows (free text, one repair)")
