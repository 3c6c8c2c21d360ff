"""Scoring jobs: judge → score → finalize.

* **judge** (the judge's queue): rank each window of VIDB anchors (see :mod:`workers.jobs.judge_stage`).
* **score** (``refit``): in ``upstream`` mode every (text, value) is scored from its own windows
  (anchors fixed at their intensities), so chunks score independently.
* **finalize** (``refit``, once): per value over *all* of the job's windows, the judge health
  report (anchor-order agreement, β, presentation checks) and, in ``calibrated`` mode, the judge's
  scale β fitted once and every text scored with it, so scores do not depend on the chunking.

The in-process scorer (:mod:`scheduler.inprocess`) calls the same :func:`plan_block` and
:func:`score_value`, so the queue and the in-process path give the same numbers.
"""

from __future__ import annotations

from typing import AsyncIterator, Iterable, Sequence

import numpy as np

from schemas.messages import ScoreJobSpec
from workers.io.inputs import InputRow
from workers.jobs.judge_stage import give_up_windows, judge_windows
from workers.jobs.kind import FinalizeContext, JobFailure, JobKind, Stage, StageContext
from workers.jobs.windows import AnchorPool, plan_windows
from workers.judges.config import get_judge_config
from workers.stats.anchored import UPSTREAM_PRIOR, fit_judge_scale, score_anchored, score_calibrated
from workers.stats.calibration import HIGH, LOW
from workers.stats.judge_health import judge_health
from workers.store import Store
from workers.vidb.versions import view_items

PLAN_BLOCK = 10_000  # input rows planned together; fixed, so a plan never depends on read batching
EXPORT_COLUMNS = ("id", "value", "intensity", "stderr", "utility", "utility_se", "windows_used", "windows_failed",
                  "judge")


# -- planning ----------------------------------------------------------------------------------------
def block_seed(seed: int, block: int) -> int:
    """Seed of planning block ``block``: block 0 keeps the job's seed."""
    return seed if block == 0 else int(np.random.SeedSequence([seed, block]).generate_state(1)[0])


def plan_block(spec: ScoreJobSpec, pools: list[AnchorPool], item_text_ids: np.ndarray | None, n_items: int,
               block: int, item_offset: int, window_offset: int, chunk_offset: int) -> tuple[list[tuple], list[int]]:
    """Windows (rows of :data:`workers.store.jobs.WINDOW_COLUMNS` without job_id, the scored text's
    id left None) and chunk numbers of one block of input rows."""
    windows, chunks = plan_windows(item_text_ids, n_items, pools, spec.k, spec.windows, spec.anchors,
                                   block_seed(spec.seed, block), spec.chunk_size, layout=spec.layout,
                                   empty_bucket=spec.empty_bucket)
    out = [(window_offset + w.window_id, chunk_offset + w.chunk_no, w.value, item_offset + w.item_no,
            list(w.member_text_ids), w.target_pos, list(w.anchor_ids), list(w.anchor_intensity), spec.seed)
           for w in windows]
    return out, [chunk_offset + c for c in chunks]


async def anchor_pools(store: Store, values: Sequence[str], k: int,
                       versions: dict[str, int] | None = None, only_agreed: bool = False) -> list[AnchorPool]:
    """Each value's anchors: its current VIDB items, or the snapshot of the version in ``versions``
    (a job planned against version v plans the same windows after the VIDB has grown). With
    ``only_agreed``, items flagged implausible by a judge panel or disputed by people are left out."""
    by_value: dict[str, list] = {v: [] for v in values}
    for r in await view_items(store.pool, values, versions, only_agreed):
        by_value[r["value"]].append(r)
    pools = []
    for v in values:
        rows = by_value[v]
        if len(rows) < k - 1:
            raise ValueError(f"value {v!r} has {len(rows)} VIDB items; windows of k={k} need at least {k - 1} "
                             "(import more with 'valueflow vidb import')")
        pools.append(AnchorPool(v, np.array([r["id"] for r in rows]), np.array([r["text_id"] for r in rows]),
                                np.array([r["intensity"] for r in rows], dtype=float)))
    return pools


def planner(spec: ScoreJobSpec, batches: Iterable[list[InputRow]]):
    """The scoring planner: stream input batches into staged items, windows and chunks."""

    async def plan(store: Store, job_id: str) -> tuple[int, int, int]:
        pools = await anchor_pools(store, spec.values, spec.k, spec.vidb_versions, spec.vidb_filter == "agreed")
        queue = get_judge_config(spec.judge).queue
        n_items = n_windows = n_chunks = 0
        block: list[InputRow] = []

        async def flush(rows: list[InputRow], block_no: int) -> None:
            nonlocal n_items, n_windows, n_chunks
            text_ids = await store.stage_items(job_id, [(n_items + i, r.ext_id, r.text) for i, r in enumerate(rows)])
            tids = np.asarray(text_ids)
            windows, chunks = plan_block(spec, pools, tids, len(rows), block_no, n_items, n_windows, n_chunks)
            windows = [(w[0], w[1], w[2], w[3], [int(tids[w[3] - n_items]) if m is None else m for m in w[4]], *w[5:])
                       for w in windows]
            await store.stage_windows(job_id, windows, [(c, queue) for c in chunks])
            n_items += len(rows)
            n_windows += len(windows)
            n_chunks += len(chunks)

        block_no = 0
        for batch in batches:
            block += batch
            while len(block) >= PLAN_BLOCK:
                await flush(block[:PLAN_BLOCK], block_no)
                block, block_no = block[PLAN_BLOCK:], block_no + 1
        if block or n_items == 0:
            if not block:
                raise ValueError(f"{spec.input}: no texts to score")
            await flush(block, block_no)
        return n_items, n_windows, n_chunks

    return plan


# -- scoring -----------------------------------------------------------------------------------------
class WindowArrays:
    """Judged windows of one value gathered as arrays: item index per window and the anchors'
    intensities in the judge's rank order (NaN where the scored text was ranked)."""

    def __init__(self) -> None:
        self.keys: dict[int, int] = {}  # item_no → index
        self.failed: dict[int, int] = {}
        self._item: list[np.ndarray] = []
        self._x: list[np.ndarray] = []
        self._rank: list[np.ndarray] = []

    def add(self, rows: Iterable) -> None:
        item, x, rank = [], [], []
        for r in rows:
            p = self.keys.setdefault(r["item_no"], len(self.keys))
            if r["state"] != "done" or r["ranking"] is None:
                self.failed[p] = self.failed.get(p, 0) + 1
                continue
            k = len(r["members"])
            shown = np.empty(k)
            anchors = iter(r["anchor_intensity"])
            for pos in range(k):
                shown[pos] = np.nan if pos == r["target_pos"] else next(anchors)
            order = list(r["ranking"])
            item.append(p)
            x.append(shown[order])
            rank.append(order)
        if item:
            self._item.append(np.asarray(item, dtype=np.intp))
            self._x.append(np.asarray(x, dtype=float))
            self._rank.append(np.asarray(rank, dtype=np.int16))

    @property
    def item(self) -> np.ndarray:
        return np.concatenate(self._item) if self._item else np.zeros(0, np.intp)

    @property
    def x(self) -> np.ndarray:
        return np.concatenate(self._x) if self._x else np.zeros((0, 2))

    @property
    def rankings(self) -> np.ndarray:
        return np.concatenate(self._rank) if self._rank else np.zeros((0, 2), np.int16)


def judge_scale(x: np.ndarray) -> tuple[float, float] | None:
    """β and its standard error from the anchors' mutual order, or None when not identified."""
    if len(x) == 0:
        return None
    try:
        beta, se = fit_judge_scale(x)
    except ValueError:
        return None
    # a judge that orders every window's anchors perfectly has an unbounded β: not identified
    return (beta, se) if np.isfinite(beta) and beta > 0 and np.isfinite(se) else None


def score_value(value: str, wa: WindowArrays, mode: str, judge: str,
                scale: tuple[float, float] | None = None) -> list[tuple]:
    """Score rows (item_no, value, utility, se, intensity, intensity_se, used, failed, judge) of one
    value's texts. ``calibrated`` uses ``scale`` = (β, se) fitted over the whole value; a text
    whose windows all failed gets a row with no score and its failures counted."""
    n = len(wa.keys)
    item, x = wa.item, wa.x
    used = np.bincount(item, minlength=n) if len(item) else np.zeros(n, int)
    util = se = inten = inten_se = np.full(n, np.nan)
    if len(item):
        if mode == "calibrated":
            beta, beta_se = scale if scale is not None else (1.0, 0.0)
            inten, inten_se, res = score_calibrated(item, x, beta, beta_se, n_items=n)
            util, se = res.utility, res.stderr
        else:  # upstream: anchor utilities are their intensities
            res = score_anchored(item, x, n_items=n, prior=UPSTREAM_PRIOR)
            util, se = res.utility, res.stderr
            inten, inten_se = util, se
    out = []
    for item_no, p in wa.keys.items():
        ok = used[p] > 0
        out.append((item_no, value,
                    float(util[p]) if ok else None, float(se[p]) if ok else None,
                    float(np.clip(inten[p], LOW, HIGH)) if ok else None, float(inten_se[p]) if ok else None,
                    int(used[p]), int(wa.failed.get(p, 0)), judge))
    return out


def score_windows(rows: Iterable, mode: str, judge: str) -> list[tuple]:
    """Score rows of any mix of values (each value scored over all of its given windows)."""
    by_value: dict[str, list] = {}
    for r in rows:
        by_value.setdefault(r["value"], []).append(r)
    out = []
    for value, rs in by_value.items():
        wa = WindowArrays()
        wa.add(rs)
        out += score_value(value, wa, mode, judge, judge_scale(wa.x) if mode == "calibrated" else None)
    return out


# -- stages --------------------------------------------------------------------------------------------
async def score_stage(ctx: StageContext) -> None:
    spec: ScoreJobSpec = ctx.spec  # type: ignore[assignment]
    if spec.mode == "calibrated":
        return  # needs β over the whole value: scored in finalize
    rows = await ctx.store.chunk_windows_for_scoring(ctx.job["id"], ctx.chunk_no)
    if any(r["state"] == "pending" for r in rows):
        raise RuntimeError(f"chunk {ctx.chunk_no}: windows still pending after the judge stage")
    scores = score_windows(rows, "upstream", spec.judge)
    await ctx.store.write_scores(ctx.job["id"], scores)
    ctx.report.done += len(scores)


def health_row(value: str, judge: str, wa: WindowArrays, scale: tuple[float, float] | None, k: int) -> dict:
    h = judge_health(wa.x, wa.rankings)
    return {"value": value, "judge": judge, "windows": h.windows + sum(wa.failed.values()),
            "windows_failed": sum(wa.failed.values()), "anchor_tau": h.anchor_tau, "anchor_tau_lo": h.anchor_tau_lo,
            "anchor_tau_hi": h.anchor_tau_hi, "beta": None if scale is None else scale[0],
            "beta_se": None if scale is None else scale[1], "shown_order_share": h.shown_order_share,
            "first_position_win": h.first_position_win, "verdict": h.verdict(k, None if scale is None else scale[0])}


async def finalize(ctx: FinalizeContext) -> None:
    spec: ScoreJobSpec = ctx.spec  # type: ignore[assignment]
    job_id = ctx.job["id"]
    health = []
    for value in await ctx.store.job_values(job_id):
        wa = WindowArrays()
        async for rows in ctx.store.value_windows(job_id, value):
            wa.add(rows)
        scale = judge_scale(wa.x)
        if spec.mode == "calibrated":
            await ctx.store.write_scores(job_id, score_value(value, wa, "calibrated", spec.judge, scale), ctx.conn)
        health.append(health_row(value, spec.judge, wa, scale, spec.k))
    await ctx.store.write_health(ctx.conn, job_id, health)
    if spec.min_anchor_tau is not None:
        bad = [h for h in health if h["anchor_tau"] is None or h["anchor_tau"] < spec.min_anchor_tau]
        if bad:
            what = ", ".join(f"{h['value']} tau {'n/a' if h['anchor_tau'] is None else format(h['anchor_tau'], '+.2f')}"
                             for h in bad)
            raise JobFailure(f"judge {spec.judge} ordered the VIDB anchors below --min-anchor-tau "
                             f"{spec.min_anchor_tau:+.2f} ({what}); its scores are not trustworthy, none are kept")


async def export_rows(store: Store, job_id: str) -> AsyncIterator[list[dict]]:
    async for rows in store.iter_scores(job_id):
        yield rows


def judge_queue(spec: ScoreJobSpec, chunk_no: int = 0) -> str:
    return get_judge_config(spec.judge).queue


KIND = JobKind(
    name="score",
    spec_model=ScoreJobSpec,
    stages=(Stage("judge", judge_queue, judge_windows, give_up_windows),
            Stage("score", lambda spec, chunk_no: "refit", score_stage)),
    finalize=finalize,
    window_stage=0,
    export_columns=EXPORT_COLUMNS,
    export_rows=export_rows,
)

