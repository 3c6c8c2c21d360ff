"""VIDB expansion jobs: search → finalize (warm refit, version).

* **plan** (scheduler): the new texts are staged as items, ``items_per_chunk`` per chunk; the
  value must already have fitted items (a build) to search among.
* **search** (the judge's queue): for each new text of the chunk, ``rounds`` windows one after
  another; each shows it with k-1 current items near quantiles of its running utility
  posterior, their standard errors counted, drawn among the near-equivalent ones
  (:mod:`workers.vidb.search`, a noisy binary search: O(log n) windows per text). Window
  ``item_no × rounds + r`` is round r; the utilities of the items shown are snapshotted in the
  window's ``anchor_intensity`` column (utilities, not intensities, for this kind). A redelivered
  task rebuilds every posterior from the windows already stored and continues where it stopped.
  Scoring jobs named with ``from_jobs`` contribute the windows in which they ranked the same texts
  against the value's anchors: to the starting posterior and to the refit.
* **finalize** (``refit``, once, under the value's advisory lock): Plackett–Luce over the value's
  comparisons warm-started from the current utilities and the new texts' search estimates
  (posterior means); the new texts' intensities by isotonic regression on the current items, one
  new version.
"""

from __future__ import annotations

import numpy as np

from schemas.vidb import VidbExpandSpec
from workers.io.inputs import InputRow
from workers.jobs.judge_stage import give_up_windows, judge_windows
from workers.jobs.kind import FinalizeContext, JobKind, Stage, StageContext
from workers.jobs.kinds.vidb_build import EXPORT_COLUMNS, check_corpus, export_rows, judge_queue
from workers.stats.calibration import MIN_REFERENCE_POINTS
from workers.store import Store
from workers.vidb import search as S
from workers.vidb.refit import refit_and_write
from workers.vidb.simulated_judge import ensure_judge
from workers.vidb.versions import agreed

MIN_POOL = 10


async def fitted_pool(conn, value: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vidb item ids, text ids, utilities, standard errors (0 where unknown)) of the value's fitted
    items, by text id."""
    rows = await conn.fetch("SELECT id, text_id, utility, stderr FROM vidb_items WHERE value = $1"
                            " AND utility IS NOT NULL ORDER BY text_id", value)
    return (np.array([r["id"] for r in rows], dtype=np.int64), np.array([r["text_id"] for r in rows], dtype=np.int64),
            np.array([r["utility"] for r in rows], dtype=float),
            np.array([r["stderr"] or 0.0 for r in rows], dtype=float))


async def check_from_jobs(store: Store, job_ids: list[str]) -> None:
    """Refuse a ``--from-job`` that is not a scoring job (only those rank texts against VIDB anchors)."""
    for j in job_ids:
        job = await store.job(j)
        if job is None or job["kind"] != "score":
            raise ValueError(f"--from-job {j}: no scoring job with that id"
                             + (f" (it is a {job['kind']} job)" if job is not None else ""))


def planner(spec: VidbExpandSpec, rows: list[InputRow]):
    async def plan(store: Store, job_id: str) -> tuple[int, int, int]:
        await check_from_jobs(store, spec.from_jobs)
        await check_corpus(store, spec.value, rows, spec.input)
        # the fitted pool (as fitted_pool reads it), its flags only: how many there are, how many agreed
        flags = await store.pool.fetch("SELECT flags FROM vidb_items WHERE value = $1 AND utility IS NOT NULL", spec.value)
        if len(flags) < max(MIN_POOL, spec.k - 1):
            raise ValueError(f"value {spec.value!r} has {len(flags)} fitted VIDB item(s); expansion searches among at "
                             f"least {MIN_POOL}: run 'valueflow vidb build' for it first")
        n_agreed = sum(agreed(r["flags"]) for r in flags)
        if n_agreed < MIN_REFERENCE_POINTS:  # the refit calibrates new texts on them: refuse before judging
            raise ValueError(f"value {spec.value!r} has {n_agreed} fitted VIDB item(s) not flagged implausible or disputed "
                             f"({len(flags) - n_agreed} are); isotonic calibration of the new texts needs at least "
                             f"{MIN_REFERENCE_POINTS}: adjudicate the flagged items ('valueflow vidb review-export')")
        await store.stage_items(job_id, [(i, r.ext_id, r.text) for i, r in enumerate(rows)])
        n_chunks = (len(rows) + spec.items_per_chunk - 1) // spec.items_per_chunk
        await store.stage_windows(job_id, [], [(c, judge_queue(spec)) for c in range(n_chunks)])
        return len(rows), len(rows) * spec.rounds, n_chunks

    return plan


async def _judged(conn, job_id: str, window_ids: list[int]) -> list:
    return await conn.fetch(
        "SELECT w.window_id, w.item_no, w.members, w.target_pos, w.anchor_ids, w.anchor_intensity, c.ranking"
        " FROM windows w JOIN comparisons c ON c.job_id = w.job_id AND c.window_id = w.window_id"
        " WHERE w.job_id = $1 AND w.window_id = ANY($2::int[]) ORDER BY w.window_id", job_id, window_ids)


def _update(logp: np.ndarray, grid: np.ndarray, target_pos: int, ranking: list[int], others_u: list[float],
            others_se: list[float]) -> np.ndarray:
    """Add one judged window to a text's log posterior (``others_u`` and their standard errors
    ``others_se`` in shown order, target skipped)."""
    # the others in rank order: shown position p is index p - 1 of others_u once past the target
    rest = [p - (p > target_pos) for p in ranking if p != target_pos]
    return logp + S.window_loglik(grid, ranking.index(target_pos), np.asarray(others_u, dtype=float)[rest],
                                  np.asarray(others_se, dtype=float)[rest])


def _se(se_of_item: dict, anchor_ids) -> list[float]:
    return [se_of_item.get(a, 0.0) for a in anchor_ids]


async def _folded(conn, spec: VidbExpandSpec, text_ids: list[int]) -> list:
    """Scoring-job windows (of ``from_jobs``) that ranked these texts for the value."""
    if not spec.from_jobs:
        return []
    return await conn.fetch(
        "SELECT w.members[w.target_pos + 1] AS text_id, w.target_pos, w.anchor_ids, c.ranking FROM windows w"
        " JOIN comparisons c ON c.job_id = w.job_id AND c.window_id = w.window_id"
        " WHERE w.job_id = ANY($1::text[]) AND w.value = $2 AND w.members[w.target_pos + 1] = ANY($3::bigint[])"
        " ORDER BY w.job_id, w.window_id", spec.from_jobs, spec.value, text_ids)


def _apply_folded(logp: dict, grid: np.ndarray, folded: list, by_text: dict, u_of_item: dict, se_of_item: dict) -> None:
    """Add the folded scoring windows whose anchors are all fitted items to the texts' posteriors."""
    for f in folded:
        if all(a in u_of_item for a in f["anchor_ids"]):
            no = by_text[f["text_id"]]
            logp[no] = _update(logp[no], grid, f["target_pos"], list(f["ranking"]),
                               [u_of_item[a] for a in f["anchor_ids"]], _se(se_of_item, f["anchor_ids"]))


async def search_estimates(conn, spec: VidbExpandSpec, job_id: str) -> dict[int, float]:
    """text id → posterior mean of each added text after all its judged windows (and folded ones):
    the search's own estimate, where the warm refit starts the text."""
    items = await conn.fetch("SELECT item_no, text_id FROM job_items WHERE job_id = $1", job_id)
    item_ids, _, pool_u, pool_se = await fitted_pool(conn, spec.value)
    if not items or not len(pool_u):
        return {}
    grid = S.make_grid(pool_u)
    prior = S.log_prior(grid, pool_u)
    by_text = {r["text_id"]: r["item_no"] for r in items}
    logp = {no: prior.copy() for no in by_text.values()}
    se_of_item = dict(zip(item_ids.tolist(), pool_se.tolist()))
    _apply_folded(logp, grid, await _folded(conn, spec, list(by_text)), by_text,
                  dict(zip(item_ids.tolist(), pool_u.tolist())), se_of_item)
    for w in await conn.fetch(
            "SELECT w.item_no, w.target_pos, w.anchor_ids, w.anchor_intensity, c.ranking FROM windows w JOIN comparisons c"
            " ON c.job_id = w.job_id AND c.window_id = w.window_id WHERE w.job_id = $1 ORDER BY w.window_id", job_id):
        no = w["item_no"]
        logp[no] = _update(logp[no], grid, w["target_pos"], list(w["ranking"]), list(w["anchor_intensity"]),
                           _se(se_of_item, w["anchor_ids"]))
    return {t: S.mean_sd(grid, logp[no])[0] for t, no in by_text.items()}


async def search_stage(ctx: StageContext) -> None:
    spec: VidbExpandSpec = ctx.spec  # type: ignore[assignment]
    ensure_judge(ctx.resources, spec.judge)
    store, job_id, R = ctx.store, ctx.job["id"], spec.rounds
    lo = ctx.chunk_no * spec.items_per_chunk
    items = await store.pool.fetch("SELECT item_no, text_id FROM job_items WHERE job_id = $1 AND item_no >= $2"
                                   " AND item_no < $3 ORDER BY item_no", job_id, lo, lo + spec.items_per_chunk)
    item_ids, pool_tid, pool_u, pool_se = await fitted_pool(store.pool, spec.value)
    u_of_item = dict(zip(item_ids.tolist(), pool_u.tolist()))
    se_of_item = dict(zip(item_ids.tolist(), pool_se.tolist()))
    grid = S.make_grid(pool_u)
    prior = S.log_prior(grid, pool_u)
    logp = {r["item_no"]: prior.copy() for r in items}
    used: dict[int, set[int]] = {r["item_no"]: set() for r in items}
    pos_of_item = {int(i): p for p, i in enumerate(item_ids.tolist())}
    by_text = {r["text_id"]: r["item_no"] for r in items}
    _apply_folded(logp, grid, await _folded(store.pool, spec, list(by_text)), by_text, u_of_item, se_of_item)
    for r in range(R):
        wids = [no * R + r for no in logp]
        have = {w["window_id"]: w for w in await store.pool.fetch(
            "SELECT window_id, anchor_ids FROM windows WHERE job_id = $1 AND window_id = ANY($2::int[])", job_id, wids)}
        todo = []
        for it in items:
            no = it["item_no"]
            if no * R + r in have:
                used[no] |= {pos_of_item[a] for a in have[no * R + r]["anchor_ids"] if a in pos_of_item}
                continue
            pick = S.choose_opponents(grid, logp[no], pool_u, used[no], spec.k, pool_se,
                                      np.random.default_rng([spec.seed, no, r, 1]))
            if len(pick) < spec.k - 1:
                continue  # every item already shown to this text
            used[no] |= set(pick)
            rng = np.random.default_rng([spec.seed, no, r])
            members = [int(pool_tid[p]) for p in pick]
            target = int(rng.integers(0, spec.k))
            members.insert(target, int(it["text_id"]))
            todo.append((job_id, no * R + r, ctx.chunk_no, spec.value, no, members, target,
                         [int(item_ids[p]) for p in pick], [float(pool_u[p]) for p in pick], spec.seed))
        if todo:
            await store.pool.executemany(
                "INSERT INTO windows (job_id, window_id, chunk_no, value, item_no, members, target_pos, anchor_ids,"
                " anchor_intensity, seed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING", todo)
        await judge_windows(ctx)
        for w in await _judged(store.pool, job_id, wids):
            no = w["item_no"]
            logp[no] = _update(logp[no], grid, w["target_pos"], list(w["ranking"]), list(w["anchor_intensity"]),
                               _se(se_of_item, w["anchor_ids"]))


async def finalize(ctx: FinalizeContext) -> None:
    spec: VidbExpandSpec = ctx.spec  # type: ignore[assignment]
    job_id = ctx.job["id"]
    new = [(r["text_id"], f"fit:{job_id}") for r in
           await ctx.conn.fetch("SELECT text_id FROM job_items WHERE job_id = $1 ORDER BY item_no", job_id)]
    await refit_and_write(ctx.conn, spec.value, job_id, "expand", new, None, "isotonic", spec.prior, warm=True,
                          init_new=await search_estimates(ctx.conn, spec, job_id), from_jobs=spec.from_jobs)


KIND = JobKind(
    name="vidb-expand",
    spec_model=VidbExpandSpec,
    stages=(Stage("search", judge_queue, search_stage, give_up_windows),),
    finalize=finalize,
    window_stage=0,
    export_columns=EXPORT_COLUMNS,
    export_rows=export_rows,
)

