"""Steering jobs: generate → judge → score → finalize.

* **generate** (the model's queue: ``gpu`` for a local model, ``api`` for an API model): answer the
  chunk's generations that have no response yet, storing each as it arrives (text, refusal flag,
  telemetry, and a job item ``g<gen_no>`` so it is scored like any text), then plan the scoring
  windows of the chunk's responses — each response on each of its target values, with the scoring
  kind's :func:`~workers.jobs.kinds.score.plan_block` — and insert them into this chunk. Window ids
  are a function of (generation, value, window), so a redelivered stage stores nothing twice.
  Windows are planned here, not at submit, because a window names its members' text ids and the
  response's id exists only once it is generated.
* **judge** (the judge's queue): :func:`workers.jobs.judge_stage.judge_windows`.
* **score** and **finalize**: the scoring kind's own (upstream scores per chunk; calibrated β and
  judge health per value over the whole job).
"""

from __future__ import annotations

import os
import socket
from typing import AsyncIterator

import numpy as np

from schemas.messages import SteerJobSpec
from workers.generation.config import get_model_config
from workers.generation.registry import make_generator
from workers.jobs.judge_stage import give_up_windows, judge_windows
from workers.jobs.kind import JobKind, Stage, StageContext
from workers.jobs.kinds import score
from workers.steering import db
from workers.steering.plan import messages_of, plan_generations, read_queries
from workers.steering.refusal import detect_refusal
from workers.store import Store

EXPORT_COLUMNS = ("id", "query_no", "query", "target", "value", "level", "regime", "sample", "model", "response",
                  "refusal", "intensity", "stderr", "windows_used", "windows_failed", "judge", "error")
PLAN_BATCH = 5_000


# -- planning ----------------------------------------------------------------------------------------
def planner(spec: SteerJobSpec):
    async def plan(store: Store, job_id: str) -> tuple[int, int, int]:
        queries = read_queries(spec.queries, spec.query_field)
        await score.anchor_pools(store, spec.all_values(), spec.k, spec.vidb_versions)  # fails early when a value has too few anchors
        pools: dict[str, list[tuple[str, float]]] = {}
        if "exemplars" in spec.regimes:
            for v in spec.all_values():
                rows = await store.vidb(v)
                bodies = await store.text_bodies([r["text_id"] for r in rows])
                pools[v] = [(bodies[r["text_id"]], float(r["intensity"])) for r in rows]
        gens = plan_generations(spec, queries)
        queue = get_model_config(spec.model).queue
        for s in range(0, len(gens), PLAN_BATCH):
            await db.stage_generations(store, job_id, [
                (g.gen_no, g.chunk_no, g.query_no, g.query, g.target.name, list(g.target.values),
                 list(g.target.levels), g.target.regime, g.sample, g.seed, messages_of(g, spec, pools), spec.model)
                for g in gens[s : s + PLAN_BATCH]])
        n_chunks = gens[-1].chunk_no + 1
        await store.stage_windows(job_id, [], [(c, queue) for c in range(n_chunks)])
        return len(gens), 0, n_chunks

    return plan


# -- generate ----------------------------------------------------------------------------------------
def window_id(gen_no: int, value_index: int, j: int, n_values: int, m: int) -> int:
    """Deterministic id of window ``j`` of a generation's ``value_index``-th value."""
    return (gen_no * n_values + value_index) * m + j


async def plan_chunk_windows(ctx: StageContext) -> int:
    """Plan and insert the scoring windows of the chunk's responses; returns how many were new."""
    spec: SteerJobSpec = ctx.spec  # type: ignore[assignment]
    job_id = ctx.job["id"]
    rows = await db.generated(ctx.store, job_id, ctx.chunk_no)
    if not rows:
        return 0
    sspec = spec.score_spec()
    all_values = sspec.values
    pools = {p.value: p for p in await score.anchor_pools(ctx.store, all_values, spec.k, spec.vidb_versions)}
    out = []
    for vi, value in enumerate(all_values):
        items = [r for r in rows if value in r["values"]]
        if not items:
            continue
        tids = np.array([r["text_id"] for r in items])
        windows, _ = score.plan_block(sspec, [pools[value]], tids, len(items), ctx.chunk_no * len(all_values) + vi,
                                      0, 0, 0)
        seen: dict[int, int] = {}
        for w in windows:
            local = w[3]
            j = seen.get(local, 0)
            seen[local] = j + 1
            gen_no = items[local]["gen_no"]
            members = [int(tids[local]) if t is None else int(t) for t in w[4]]
            out.append((window_id(gen_no, vi, j, len(all_values), spec.windows), ctx.chunk_no, value, gen_no,
                        members, *w[5:]))
    return await db.add_windows(ctx.store, job_id, out)


async def generate_stage(ctx: StageContext) -> None:
    spec: SteerJobSpec = ctx.spec  # type: ignore[assignment]
    job_id = ctx.job["id"]
    todo = await db.pending_generations(ctx.store, job_id, ctx.chunk_no)
    if todo:
        gen = ctx.resources.cached(f"generator:{spec.model}", lambda: make_generator(spec.model, ctx.store))
        worker = f"{socket.gethostname()}:{os.getpid()}"
        async for group in gen.stream([r["messages"] for r in todo], [r["seed"] for r in todo]):
            for i, r in group:
                gen_no = todo[i]["gen_no"]
                if r.error is not None or r.text is None:
                    await db.store_failure(ctx.store, job_id, gen_no, r.error or "no text", r.attempts)
                    ctx.report.failed += 1
                    continue
                refusal, match = detect_refusal(r.text)
                await db.store_response(ctx.store, job_id, gen_no, r.text, refusal, match,
                                        (r.tokens_in, r.tokens_out, r.latency_s, r.attempts, r.attempts == 0), worker)
                ctx.report.done += 1
                ctx.report.count_answer(r.attempts, r.tokens_in, r.tokens_out, r.latency_s, cached=r.attempts == 0)
    await plan_chunk_windows(ctx)


# -- export ------------------------------------------------------------------------------------------
async def export_rows(store: Store, job_id: str) -> AsyncIterator[list[dict]]:
    rows = await db.steer_rows(store, job_id)
    yield [{"id": f"g{r['gen_no']}", **{c: r[c] for c in EXPORT_COLUMNS if c != "id"}} for r in rows]


def model_queue(spec: SteerJobSpec, chunk_no: int = 0) -> str:
    return get_model_config(spec.model).queue


KIND = JobKind(
    name="steer",
    spec_model=SteerJobSpec,
    stages=(Stage("generate", model_queue, generate_stage),
            Stage("judge", score.judge_queue, judge_windows, give_up_windows),
            Stage("score", lambda spec, chunk_no: "refit", score.score_stage)),
    finalize=score.finalize,
    window_stage=1,
    reset_failed_items=db.reset_failed_generations,
    status_counts=db.generation_counts,
    export_columns=EXPORT_COLUMNS,
    export_rows=export_rows,
)
