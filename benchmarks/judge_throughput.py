"""API judge throughput. Run: ``python benchmarks/judge_throughput.py [--calls 4000]``.

A local OpenAI-compatible server (``tests/fake_openai.py``, its own process) answers every request
after 50 ms; one judge process with concurrency 32 ranks windows through it with no cache. The
bound is 32 / 0.05 s = 640 calls/s; the target is ≥ 85 % of it. Prints calls/s, the fraction of the
bound, and the judge process's CPU milliseconds per call; the last line is one JSON object with
the figures, the targets and whether each is met (every answer parsed, too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.infra.embedded import free_port  # noqa: E402
from schemas.taxonomy import default_taxonomy  # noqa: E402
from workers.judges.api_judge import APIJudge  # noqa: E402
from workers.judges.config import JudgeConfig  # noqa: E402

TARGET_FRACTION = 0.85  # of the concurrency / delay bound


async def run(url: str, calls: int, concurrency: int) -> tuple[float, float, int]:
    judge = APIJudge(JudgeConfig(name="bench", kind="api", model="ok", base_url=url, concurrency=concurrency,
                                 timeout_s=30, structured="off"))
    value = default_taxonomy().get("care-harm")
    windows = [[f"window {i} text {j}: I did something to someone." for j in range(6)] for i in range(calls)]
    await judge.rank_windows(value, windows[:concurrency])  # warm the connection pool
    cpu0, t0 = time.process_time(), time.perf_counter()
    results = await judge.rank_windows(value, windows)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await judge.aclose()
    return wall, cpu, sum(r.ok for r in results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--delay", type=float, default=0.05)
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), str(port), str(args.delay)])
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=0.5)
            except urllib.error.HTTPError:
                break  # 405 to a GET: it is up
            except OSError:
                time.sleep(0.1)
        wall, cpu, ok = asyncio.run(run(f"http://127.0.0.1:{port}/v1", args.calls, args.concurrency))
    finally:
        server.terminate()
        server.wait(10)
    bound = args.concurrency / args.delay
    rate = args.calls / wall
    print(f"{args.calls} calls, concurrency {args.concurrency}, server delay {args.delay * 1000:.0f} ms")
    print(f"throughput {rate:.0f} calls/s = {100 * rate / bound:.1f} % of the {bound:.0f} calls/s bound "
          f"(target ≥ 85 %); {ok} parsed; judge CPU {1000 * cpu / args.calls:.2f} ms per call")
    print(json.dumps({"calls": args.calls, "concurrency": args.concurrency, "delay_s": args.delay,
                      "calls_per_s": round(rate, 1), "bound_per_s": bound, "fraction_of_bound": round(rate / bound, 3),
                      "parsed": ok, "judge_cpu_ms_per_call": round(1000 * cpu / args.calls, 3),
                      "targets": {"fraction_of_bound": TARGET_FRACTION, "parsed": args.calls},
                      "met": {"fraction_of_bound": rate / bound >= TARGET_FRACTION, "parsed": ok == args.calls}}))


if __name__ == "__main__":
    main()
