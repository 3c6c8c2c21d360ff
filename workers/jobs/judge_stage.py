"""The judge stage shared by every kind that ranks windows (scoring, VIDB building, steering).

It asks the job's judge to rank the chunk's pending windows, value by value, and stores each
answer as a comparison together with its telemetry; windows the judge could not rank are marked
failed with their cause (counted, and retryable with ``jobs resume --retry-failed``). Windows
already judged are not asked again, and a comparison is stored at most once (unique key), so a
redelivered task is harmless.
"""

from __future__ import annotations

from collections import OrderedDict

from schemas.messages import Ranking
from schemas.settings import judge_views
from schemas.taxonomy import default_taxonomy
from workers.jobs.kind import StageContext
from workers.judges.base import Judge
from workers.judges.registry import make_judge


def failure_cause(r: Ranking) -> str:
    """A short class of a failed window's reason, for grouping in ``jobs status`` and metrics."""
    text = (r.failure or "").lower()
    if "unparseable" in text or "parse" in text or "ranking" in text:
        return "unparseable"
    if "timeout" in text or "timed out" in text:
        return "timeout"
    if any(s in text for s in ("http", "connect", "status", "server")):
        return "transport"
    return "judge_error"


def judge_of(ctx: StageContext, name: str) -> Judge:
    """The worker's judge ``name``; for a job that records the VIDB versions it planned against (and
    its ``--vidb-filter``), a judge that learns from the VIDB (the embedding judge) sees it as the
    job planned it, so the job ranks the same way after the VIDB has grown. The worker keeps the
    judges of the last ``VALUEFLOW_JUDGE_VIEWS`` such views (:func:`schemas.settings.judge_views`)."""
    judge = ctx.resources.cached(f"judge:{name}", lambda: make_judge(name, ctx.store))
    versions = {v: n for v, n in (getattr(ctx.spec, "vidb_versions", None) or {}).items() if n > 0}
    agreed = getattr(ctx.spec, "vidb_filter", "all") == "agreed"
    if not hasattr(judge, "for_vidb") or not (versions or agreed):
        return judge
    views: OrderedDict = ctx.resources.cached(f"judge-views:{name}", OrderedDict)
    key = (tuple(sorted(versions.items())), agreed)
    if key not in views:
        views[key] = judge.for_vidb(versions, agreed)
        while len(views) > judge_views():  # a long-lived worker sees ever newer versions
            views.popitem(last=False)
    views.move_to_end(key)
    return views[key]


def telemetry(r: Ranking) -> tuple[float, int, int, int, bool]:
    return (float(r.latency_s), int(r.tokens_in), int(r.tokens_out), int(r.attempts), bool(r.cached))


async def judge_windows(ctx: StageContext, judge_name: str | None = None) -> None:
    """Rank the chunk's pending windows with the job's judge and store the answers."""
    store, job_id = ctx.store, ctx.job["id"]
    judge = judge_of(ctx, judge_name or ctx.spec.judge)  # type: ignore[attr-defined]
    windows = await store.pending_windows(job_id, ctx.chunk_no)
    if not windows:
        return
    bodies = await store.text_bodies([t for w in windows for t in w["members"]])
    taxonomy = default_taxonomy()
    done, failed = [], []
    by_value: dict[str, list] = {}
    for w in windows:
        by_value.setdefault(w["value"], []).append(w)
    for value, ws in by_value.items():
        rankings = await judge.rank_windows(taxonomy.get(value), [[bodies[t] for t in w["members"]] for w in ws])
        for w, r in zip(ws, rankings):
            tel = telemetry(r)
            if r.ok:
                key = bytes.fromhex(r.prompt_hash) if r.prompt_hash else None
                done.append((w["window_id"], value, w["members"], r.order, key, tel))
            else:
                failed.append((w["window_id"], r.failure or "unknown failure", failure_cause(r), tel))
            ctx.report.count_answer(r.attempts, r.tokens_in, r.tokens_out, r.latency_s, r.cached)
    await store.record_rankings(job_id, ctx.chunk_no, judge.name, done, failed)
    ctx.report.done += len(done)
    ctx.report.failed += len(failed)


async def give_up_windows(ctx: StageContext, reason: str) -> None:
    """Redelivery limit passed: the chunk's pending windows fail (counted, retryable); it moves on."""
    ctx.report.failed += await ctx.store.fail_pending_windows(ctx.job["id"], ctx.chunk_no, reason, "redelivery_limit")
