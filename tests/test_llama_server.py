"""The API judge against a real OpenAI-compatible server: llama.cpp serving SmolLM2 on 127.0.0.1."""

import asyncio
import subprocess
import sys
import time
import urllib.request

import pytest

from schemas.taxonomy import default_taxonomy
from workers.infra.embedded import free_port
from tests.conftest import ROOT, vidb_sample
from workers.judges.api_judge import APIJudge
from workers.judges.config import JudgeConfig
from workers.llm.smollm2 import smollm2_gguf


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "wb")
    # tests/llama_server_main.py: llama_cpp.server with weight repacking off (AMX faults here)
    proc = subprocess.Popen([sys.executable, "-m", "tests.llama_server_main", "--model", str(smollm2_gguf()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                             "--model_alias", "smollm2"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("llama.cpp server did not come up")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _windows():
    sample = vidb_sample()
    out = []
    for value in ("care-harm", "fairness-cheating", "benevolence", "achievement"):
        b = sample[value]
        out.append((value, [b["2"][0]["text"], b["-2"][0]["text"], b["1"][0]["text"], b["-1"][0]["text"],
                            b["2"][1]["text"], b["-1"][1]["text"]]))
    return out


# auto: llama-cpp-python's server takes the json_object form, whose schema forces a permutation, so
# every window parses; off: free text from a 135M model, parsed or not (each outcome checked below)
@pytest.mark.parametrize("structured, form, min_parsed", [("auto", "json_object", 4), ("off", None, 0)])
def test_api_judge_ranks_real_windows_through_llama_cpp(llama_server, structured, form, min_parsed, capsys):
    judge = APIJudge(JudgeConfig(name=f"llama-{structured}", kind="api", model="smollm2", base_url=llama_server,
                                 concurrency=2, timeout_s=120, max_tokens=48, structured=structured))

    async def go():
        try:
            results = []
            for value, w in _windows():
                results += await judge.rank_windows(default_taxonomy().get(value), [w])
            return results
        finally:
            await judge.aclose()

    results = asyncio.run(go())
    parsed = sum(r.ok for r in results)
    with capsys.disabled():
        print(f"\n[llama.cpp server, structured={structured}] parse rate {parsed}/{len(results)}; "
              f"tokens in {sum(r.tokens_in for r in results)}, out {sum(r.tokens_out for r in results)}")
    for r in results:  # parsed: a permutation of the six texts; unparsed: one repair turn, named in the failure
        assert (r.ok and sorted(r.order) == list(range(6))) or (
            not r.ok and r.attempts == 2 and r.failure.startswith("unparseable after repair"))
    assert all(r.tokens_in > 0 for r in results)  # real token accounting from the server
    assert len(results) == 4 and judge.structured_format == form
    assert parsed >= min_parsed
