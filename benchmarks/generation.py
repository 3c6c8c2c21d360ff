"""Generation throughput. Run: ``python benchmarks/generation.py [--quick]``.

* **local, CPU**: SmolLM2-135M (the offline default) answers the same ``--n`` conversations with the
  same per-conversation seeds twice: one conversation at a time, then in batches of ``--batch``
  (left padding). Per-conversation seeding makes both runs produce the same tokens, so tokens/s are
  comparable. Target: batched ≥ 3 × unbatched.
* **API**: a local OpenAI-compatible server (``tests/fake_openai.py``, its own process) answers every
  request after ``--delay`` seconds; one generator with concurrency ``--concurrency`` sends
  ``--calls`` seeded generations through the shared chat client, no cache. The bound is
  concurrency / delay; target ≥ 85 % of it.

The last line printed is one JSON object with the figures, the targets and whether each is met.
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

QUERIES = ["How should I spend a free Saturday?", "A stray dog keeps coming to my garden. Should I feed it?",
           "My friend wants to copy my homework. How do I answer?", "What makes a good life?",
           "Is it ever right to break a promise?", "Should I tell my sister that her partner is lying to her?",
           "Our team lead takes credit for other people's work. What would you do?",
           "I found a wallet with cash on the bus. What now?"]


def local(n: int, batch: int, tokens: int, threads: int | None) -> dict:
    import torch

    from schemas.settings import load_settings
    from workers.generation.config import ModelConfig
    from workers.generation.local import LocalGenerator

    if threads:
        torch.set_num_threads(threads)
    gen = LocalGenerator(ModelConfig(name="smollm2", kind="local", model="SmolLM2-135M-Instruct", device="cpu",
                                     batch_size=batch), home=load_settings().home)
    convs = [[{"role": "system", "content": "You are a person who strongly values kindness."},
              {"role": "user", "content": QUERIES[i % len(QUERIES)] + f" (case {i})"}] for i in range(n)]
    seeds = list(range(1000, 1000 + n))
    gen.generate_batch(convs[:2], seeds[:2], max_new_tokens=4)  # warm-up
    t0 = time.perf_counter()
    one = [gen.generate_batch([c], [s], max_new_tokens=tokens)[0] for c, s in zip(convs, seeds)]
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    many = [r for s in range(0, n, batch) for r in gen.generate_batch(convs[s:s + batch], seeds[s:s + batch],
                                                                       max_new_tokens=tokens)]
    t_many = time.perf_counter() - t0
    tok_one, tok_many = sum(r.tokens_out for r in one), sum(r.tokens_out for r in many)
    same = sum(a.text == b.text for a, b in zip(one, many))
    return {"local_n": n, "local_batch": batch, "local_max_new_tokens": tokens, "torch_threads": torch.get_num_threads(),
            "unbatched_tokens_per_s": round(tok_one / t_one, 1), "batched_tokens_per_s": round(tok_many / t_many, 1),
            "batched_speedup": round((tok_many / t_many) / (tok_one / t_one), 2), "same_text_batched_vs_alone": same}


async def _api(url: str, calls: int, concurrency: int) -> tuple[float, int]:
    from workers.generation.api import APIGenerator
    from workers.generation.config import ModelConfig

    gen = APIGenerator(ModelConfig(name="bench", kind="api", model="gen-level", base_url=url, concurrency=concurrency,
                                   timeout_s=30))
    convs = [[{"role": "user", "content": f"{QUERIES[i % len(QUERIES)]} (case {i})"}] for i in range(calls)]
    await gen.generate(convs[:concurrency], list(range(concurrency)))  # warm the connection pool
    t0 = time.perf_counter()
    out = await gen.generate(convs, list(range(calls)))
    wall = time.perf_counter() - t0
    await gen.aclose()
    return wall, sum(r.text is not None for r in out)


def api(calls: int, concurrency: int, delay: float) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), str(port), str(delay)])
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=0.5)
            except urllib.error.HTTPError:
                break  # 405 to a GET: it is up
            except OSError:
                time.sleep(0.1)
        wall, ok = asyncio.run(_api(f"http://127.0.0.1:{port}/v1", calls, concurrency))
    finally:
        server.terminate()
        server.wait(10)
    bound = concurrency / delay
    return {"api_calls": calls, "api_concurrency": concurrency, "api_delay_s": delay, "api_ok": ok,
            "api_per_s": round(calls / wall, 1), "api_bound_per_s": round(bound, 1),
            "api_fraction_of_bound": round(calls / wall / bound, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer conversations and calls")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--delay", type=float, default=0.05)
    args = ap.parse_args()
    if args.quick:
        args.n, args.tokens, args.calls = 16, 24, 640
    res = {**local(args.n, args.batch, args.tokens, args.threads), **api(args.calls, args.concurrency, args.delay)}
    print(f"local CPU: unbatched {res['unbatched_tokens_per_s']} tok/s, batched ×{args.batch} "
          f"{res['batched_tokens_per_s']} tok/s = {res['batched_speedup']}× (target ≥ 3×); "
          f"{res['same_text_batched_vs_alone']}/{args.n} identical texts batched vs alone")
    print(f"API: {res['api_per_s']} generations/s = {100 * res['api_fraction_of_bound']:.1f} % of the "
          f"{res['api_bound_per_s']}/s bound (target ≥ 85 %)")
    targets = {"batched_speedup": 3.0, "api_fraction_of_bound": 0.85}
    res["targets"] = targets
    res["met"] = {k: bool(res[k] >= v) for k, v in targets.items()}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
