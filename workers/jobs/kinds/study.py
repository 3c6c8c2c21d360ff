"""Stability study jobs: rate → rank → score → finalize (rating versus ranking, position bias).

Every labelled text is scored in ``repeats × paraphrases`` runs by two methods; a job item is one
(text, run), item number ``run_no * texts + text_no``, described in ``study_items``.

* **plan** (scheduler): per run and value, the scoring kind's :func:`~workers.jobs.kinds.score.plan_block`
  lays out the anchor windows (``layout = "shuffled"``, so position bias can be read off); one
  seed per (repeat, value) is shared by every paraphrase, so paraphrases differ in wording only.
  A chunk holds windows of one run and one value.
* **rate** (the judge's queue): the judge gives each of the chunk's texts an intensity directly
  (:func:`workers.judges.rating.rate_texts`, the run's paraphrase and seed); idempotent, a rating
  is stored once per item.
* **rank** (the judge's queue): the shared judge stage ranks the chunk's windows, with the ranking
  prompt in the run's paraphrase.
* **score** (``refit``): the scoring kind's score stage (the anchor-based evaluator, upstream mode).
* **finalize** (``refit``, once): calibrated-mode scores (β per value and run), the judge health
  per value, and the study's figures (:mod:`workers.study`) written to ``study_reports``.
"""

from __future__ import annotations

from typing import AsyncIterator, Sequence

import numpy as np

from schemas.study import StudySpec
from schemas.messages import ScoreJobSpec
from schemas.taxonomy import default_taxonomy
from workers.jobs.judge_stage import give_up_windows, judge_of, judge_windows
from workers.jobs.kind import FinalizeContext, JobKind, Stage, StageContext
from workers.jobs.kinds import score as score_kind
from workers.judges.prompts import ranking_paraphrase
from workers.judges.rating import rate_texts
from workers.store import Store
from workers.study.position import position_bias
from workers.study.stability import per_text_range, stability, win_rate

EXPORT_COLUMNS = ("id", "value", "text", "reference", "repeat", "paraphrase", "seed", "rating", "rating_failure",
                  "ranking", "ranking_stderr", "windows_used", "windows_failed")
Labelled = Sequence[tuple[str, str, float]]  # (value, text, reference), grouped by value


def run_seed(seed: int, repeat: int, value_index: int | None = None) -> int:
    """Seed of a repeat (the rating's sampling seed) or of a (repeat, value) window plan."""
    key = [seed, repeat] if value_index is None else [seed, repeat, value_index + 1]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def runs(spec: StudySpec) -> list[tuple[int, int]]:
    """(repeat, paraphrase) of each run, in run order."""
    return [(r, p) for r in range(spec.repeats) for p in range(spec.paraphrases)]


def group_labelled(rows: Labelled, values: Sequence[str]) -> list[tuple[str, str, float]]:
    """The labelled rows of ``values``, grouped by value in that order (text order kept)."""
    return [row for v in values for row in rows if row[0] == v]


# -- planning ----------------------------------------------------------------------------------------
def planner(spec: StudySpec, labelled: Labelled):
    rows = group_labelled(labelled, spec.values)
    if len(rows) != spec.texts:
        raise ValueError(f"{spec.data}: {len(rows)} labelled texts for the study's values, spec says {spec.texts}")

    async def plan(store: Store, job_id: str) -> tuple[int, int, int]:
        if not rows:
            raise ValueError(f"{spec.data}: no labelled texts for {', '.join(spec.values)}")
        pools = await score_kind.anchor_pools(store, spec.values, spec.k, spec.vidb_versions)
        queue = score_kind.judge_queue(spec)  # type: ignore[arg-type]
        n = len(rows)
        spans = {}
        for i, (v, _, _) in enumerate(rows):
            lo, _hi = spans.get(v, (i, i))
            spans[v] = (lo, i + 1)
        n_windows = n_chunks = 0
        for run_no, (r, p) in enumerate(runs(spec)):
            base = run_no * n
            tids = np.asarray(await store.stage_items(
                job_id, [(base + t, f"{v}/{t}/r{r}p{p}", text) for t, (v, text, _) in enumerate(rows)]))
            seed_r = run_seed(spec.seed, r)
            await store.pool.copy_records_to_table(
                "study_items", columns=["job_id", "item_no", "text_no", "run_no", "repeat", "paraphrase", "run_seed",
                                        "value", "reference"],
                records=[(job_id, base + t, t, run_no, r, p, seed_r, v, float(ref)) for t, (v, _, ref) in enumerate(rows)])
            for vi, value in enumerate(spec.values):
                if value not in spans:
                    continue
                lo, hi = spans[value]
                sspec = ScoreJobSpec(input=spec.data, values=[value], judge=spec.judge, k=spec.k, windows=spec.windows,
                                     seed=run_seed(spec.seed, r, vi), mode=spec.mode, layout="shuffled",
                                     chunk_size=spec.chunk_size)
                windows, chunks = score_kind.plan_block(sspec, [pools[vi]], tids[lo:hi], hi - lo, 0, base + lo,
                                                        n_windows, n_chunks)
                windows = [(w[0], w[1], w[2], w[3], [int(tids[w[3] - base]) if m is None else m for m in w[4]], *w[5:])
                           for w in windows]
                await store.stage_windows(job_id, windows, [(c, queue) for c in chunks])
                n_windows += len(windows)
                n_chunks += len(chunks)
        return n * len(runs(spec)), n_windows, n_chunks

    return plan


# -- stages --------------------------------------------------------------------------------------------
async def _chunk_items(store: Store, job_id: str, chunk_no: int, unrated_only: bool) -> list:
    return await store.pool.fetch(
        "SELECT s.item_no, s.value, s.paraphrase, s.run_seed, t.body FROM study_items s"
        " JOIN job_items i ON i.job_id = s.job_id AND i.item_no = s.item_no JOIN texts t ON t.id = i.text_id"
        " WHERE s.job_id = $1 AND s.item_no IN (SELECT item_no FROM windows WHERE job_id = $1 AND chunk_no = $2)"
        + (" AND NOT EXISTS (SELECT 1 FROM study_ratings r WHERE r.job_id = s.job_id AND r.item_no = s.item_no)"
           if unrated_only else "") + " ORDER BY s.item_no", job_id, chunk_no)


async def _store_ratings(store: Store, job_id: str, rows: list[tuple]) -> None:
    if rows:
        await store.pool.executemany(
            "INSERT INTO study_ratings (job_id, item_no, intensity, raw, failure, latency_s, tokens_in, tokens_out,"
            " attempts, cached) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            [(job_id, *r) for r in rows])


async def rate_stage(ctx: StageContext) -> None:
    """The judge rates each not yet rated text of the chunk directly (the run's paraphrase and seed)."""
    spec: StudySpec = ctx.spec  # type: ignore[assignment]
    job_id = ctx.job["id"]
    items = await _chunk_items(ctx.store, job_id, ctx.chunk_no, unrated_only=True)
    if not items:
        return
    judge = judge_of(ctx, spec.judge)
    taxonomy = default_taxonomy()
    groups: dict[tuple, list] = {}
    for it in items:
        groups.setdefault((it["value"], it["paraphrase"], it["run_seed"]), []).append(it)
    out = []
    for (value, para, seed), its in groups.items():
        ratings = await rate_texts(judge, taxonomy.get(value), [it["body"] for it in its],
                                   paraphrase=para if spec.prompted else 0, seed=int(seed))
        for it, r in zip(its, ratings):
            out.append((it["item_no"], r.intensity, r.raw, r.failure, r.latency_s, r.tokens_in, r.tokens_out,
                        r.attempts, r.cached))
            ctx.report.count_answer(r.attempts, r.tokens_in, r.tokens_out, r.latency_s, r.cached)
            ctx.report.done += r.intensity is not None
            ctx.report.failed += r.intensity is None
    await _store_ratings(ctx.store, job_id, out)


async def give_up_ratings(ctx: StageContext, reason: str) -> None:
    """Redelivery limit passed: the chunk's unrated texts get a failed rating; the chunk moves on."""
    items = await _chunk_items(ctx.store, ctx.job["id"], ctx.chunk_no, unrated_only=True)
    await _store_ratings(ctx.store, ctx.job["id"], [(it["item_no"], None, "", reason, None, None, None, None, None)
                                                   for it in items])
    ctx.report.failed += len(items)


async def rank_stage(ctx: StageContext) -> None:
    """The shared judge stage, with the ranking prompt in the chunk's run's paraphrase."""
    spec: StudySpec = ctx.spec  # type: ignore[assignment]
    para = await ctx.store.pool.fetchval(
        "SELECT s.paraphrase FROM windows w JOIN study_items s ON s.job_id = w.job_id AND s.item_no = w.item_no"
        " WHERE w.job_id = $1 AND w.chunk_no = $2 LIMIT 1", ctx.job["id"], ctx.chunk_no)
    with ranking_paraphrase(int(para or 0) if spec.prompted else 0):
        await judge_windows(ctx)


# -- finalize ------------------------------------------------------------------------------------------
async def finalize(ctx: FinalizeContext) -> None:
    spec: StudySpec = ctx.spec  # type: ignore[assignment]
    job_id, conn = ctx.job["id"], ctx.conn
    n = spec.texts
    health = []
    for value in await ctx.store.job_values(job_id):
        wa = score_kind.WindowArrays()
        by_run: dict[int, list] = {}
        async for rows in ctx.store.value_windows(job_id, value):
            wa.add(rows)
            for r in rows:
                by_run.setdefault(r["item_no"] // n, []).append(r)
        if spec.mode == "calibrated":
            for rows in by_run.values():
                await ctx.store.write_scores(job_id, score_kind.score_windows(rows, "calibrated", spec.judge), conn)
        health.append(score_kind.health_row(value, spec.judge, wa, score_kind.judge_scale(wa.x), spec.k))
    await ctx.store.write_health(conn, job_id, health)
    cells = await conn.fetch(
        "SELECT s.text_no, s.repeat, s.paraphrase, s.value, s.reference, r.intensity AS rating, sc.intensity AS ranking"
        " FROM study_items s LEFT JOIN study_ratings r ON r.job_id = s.job_id AND r.item_no = s.item_no"
        " LEFT JOIN scores sc ON sc.job_id = s.job_id AND sc.item_no = s.item_no"
        " WHERE s.job_id = $1", job_id)
    rankings = [list(r["ranking"]) for r in await conn.fetch(
        "SELECT ranking FROM comparisons WHERE job_id = $1 ORDER BY window_id", job_id)]
    report = study_report(spec, cells, rankings)
    report["health"] = [{k: v for k, v in h.items()} for h in health]
    await conn.execute("INSERT INTO study_reports (job_id, report) VALUES ($1, $2)"
                       " ON CONFLICT (job_id) DO UPDATE SET report = EXCLUDED.report, created_at = now()", job_id, report)


def arrays(spec: StudySpec, cells) -> dict:
    """Score arrays (texts, repeats, paraphrases) of both methods, references and values."""
    shape = (spec.texts, spec.repeats, spec.paraphrases)
    rating, ranking = np.full(shape, np.nan), np.full(shape, np.nan)
    ref = np.full(spec.texts, np.nan)
    value = np.empty(spec.texts, dtype=object)
    for c in cells:
        t, r, p = c["text_no"], c["repeat"], c["paraphrase"]
        ref[t], value[t] = c["reference"], c["value"]
        if c["rating"] is not None:
            rating[t, r, p] = c["rating"]
        if c["ranking"] is not None:
            ranking[t, r, p] = c["ranking"]
    return {"rating": rating, "ranking": ranking, "reference": ref, "value": value}


def study_report(spec: StudySpec, cells, rankings: list[list[int]]) -> dict:
    """The study's figures as a JSON-ready dict (see :mod:`workers.study.stability`)."""
    a = arrays(spec, cells)
    out = {"judge": spec.judge, "texts": spec.texts, "values": len(set(a["value"].tolist())),
           "repeats": spec.repeats, "paraphrases": spec.paraphrases, "prompted": spec.prompted, "k": spec.k,
           "windows": spec.windows, "mode": spec.mode, "data": spec.data}
    for method in ("rating", "ranking"):
        out[method] = _clean(stability(a[method], a["reference"], a["value"]).as_dict())
        if not spec.prompted:
            out[method]["prompt_sensitivity"] = None  # no prompt to paraphrase
    out["per_text"] = {f"{m}_range": [None if not np.isfinite(x) else float(x) for x in per_text_range(a[m])]
                       for m in ("rating", "ranking")}
    wr, n_wr = win_rate(a["ranking"], a["rating"])
    out["ranking_win_rate"], out["win_rate_texts"] = wr, n_wr
    out["position_bias"] = [_clean(b) for b in position_bias(rankings)]
    return out


def _clean(d: dict) -> dict:
    """NaN → None, numpy scalars → Python (JSON)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (float, np.floating)):
            out[k] = None if not np.isfinite(v) else float(v)
        elif isinstance(v, np.integer):
            out[k] = int(v)
        else:
            out[k] = v
    return out


async def report_of(store: Store, job_id: str) -> dict | None:
    return await store.pool.fetchval("SELECT report FROM study_reports WHERE job_id = $1", job_id)


async def export_rows(store: Store, job_id: str) -> AsyncIterator[list[dict]]:
    """One row per (labelled text, run): the rating and the ranking score side by side."""
    async with store.pool.acquire() as conn, conn.transaction():
        cur = conn.cursor(
            "SELECT s.value || '/' || s.text_no AS id, s.value, t.body AS text, s.reference, s.repeat, s.paraphrase,"
            " s.run_seed AS seed, r.intensity AS rating, r.failure AS rating_failure, sc.intensity AS ranking,"
            " sc.intensity_se AS ranking_stderr, sc.windows_used, sc.windows_failed FROM study_items s"
            " JOIN job_items i ON i.job_id = s.job_id AND i.item_no = s.item_no JOIN texts t ON t.id = i.text_id"
            " LEFT JOIN study_ratings r ON r.job_id = s.job_id AND r.item_no = s.item_no"
            " LEFT JOIN scores sc ON sc.job_id = s.job_id AND sc.item_no = s.item_no"
            " WHERE s.job_id = $1 ORDER BY s.text_no, s.run_no", job_id, prefetch=10_000)
        rows: list[dict] = []
        async for r in cur:
            rows.append(dict(r))
            if len(rows) >= 10_000:
                yield rows
                rows = []
        if rows:
            yield rows


def judge_queue(spec: StudySpec, chunk_no: int = 0) -> str:
    return score_kind.judge_queue(spec)  # type: ignore[arg-type]


KIND = JobKind(
    name="study",
    spec_model=StudySpec,
    stages=(Stage("rate", judge_queue, rate_stage, give_up_ratings),
            Stage("rank", judge_queue, rank_stage, give_up_windows),
            Stage("score", lambda spec, chunk_no: "refit", score_kind.score_stage)),
    finalize=finalize,
    window_stage=1,
    export_columns=EXPORT_COLUMNS,
    export_rows=export_rows,
)
