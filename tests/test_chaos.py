"""The short chaos run in CI: workers SIGKILLed, Redis and PostgreSQL restarted mid-job, then
``jobs resume``; nothing may be lost, duplicated or left unscored (``benchmarks/chaos.py --short``)."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_short_chaos_run_loses_and_duplicates_nothing():
    # the short run's own 150 s budget is for a quiet machine: a slow CI runner gets more time to
    # finish after the resume (the chaos itself still lasts at most 40 s)
    res = subprocess.run([sys.executable, "benchmarks/chaos.py", "--short", "--time-limit", "400"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # the chaos happened: workers killed, both servers restarted mid-job, the job stalled before resume
    assert out["kills"] >= 3
    assert set(out["restart_s"]) == {"redis", "postgres"}
    assert out["reenqueued_by_resume"] >= 1 and out["windows"] == 1200
    # and nothing was lost or duplicated
    assert out["state"] == "done" and out["finalize_runs"] == 1
    assert out["windows_done"] == 1200 and out["windows_failed"] == 0
    assert out["comparisons"] == 1200 and out["lost"] == 0 and out["duplicated"] == 0 and out["mismatched"] == 0
    assert out["scores"] == 400 and out["scores_missing"] == 0 and out["exported_rows"] == 400
    assert all(v for k, v in out["met"].items() if k != "full_size")
