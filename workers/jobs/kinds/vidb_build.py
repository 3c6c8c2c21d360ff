"""VIDB build jobs: judge → finalize (fit, calibrate, write a version).

* **plan** (scheduler): the corpus texts and the reference items (``--reference`` file, or up to
  ``max_references`` of the value's VIDB items spread over its intensity range) are laid out in a
  connected balanced design (:mod:`workers.vidb.design`); nothing is planned if the value is
  unknown, the corpus is empty or repeats a text, a text is already in the value's VIDB, or there
  are too few references for isotonic calibration.
* **judge** (the judge's queue): the shared judge stage ranks every window.
* **finalize** (``refit``, once): under the value's advisory lock, Plackett–Luce over the value's
  comparisons, isotonic map to [-10, 10], one new immutable version (:mod:`workers.vidb.refit`).
"""

from __future__ import annotations

import asyncio

from typing import AsyncIterator

import numpy as np

from schemas.vidb import VidbBuildSpec
from workers.io.inputs import InputRow
from workers.jobs.judge_stage import give_up_windows, judge_windows
from workers.jobs.kind import FinalizeContext, JobKind, Stage, StageContext
from workers.stats.calibration import MIN_REFERENCE_POINTS
from workers.store import Store, text_hash
from workers.vidb.design import balanced_design, check_design_size
from workers.vidb.refit import refit_and_write
from workers.vidb.simulated_judge import ensure_judge, is_simulated
from workers.vidb.versions import agreed

EXPORT_COLUMNS = ("id", "value", "intensity", "utility", "stderr", "version")


def queue_of_judge(name: str) -> str:
    """Simulated judges run on any worker (``default``); a configured judge on its config's queue."""
    if is_simulated(name):
        return "default"
    from workers.judges.config import get_judge_config

    return get_judge_config(name).queue


def judge_queue(spec, chunk_no: int = 0) -> str:
    return queue_of_judge(spec.judge)


def steerable_value(value: str) -> str:
    """The value's key; ValueError naming it when it is not one of the 32 steerable values."""
    from schemas.taxonomy import default_taxonomy

    try:
        v = default_taxonomy().get(value)
    except KeyError as exc:
        raise ValueError(str(exc).strip("'\"")) from None
    if not v.steerable:
        raise ValueError(f"value {value!r} is not one of the 32 steerable values")
    return v.key


async def check_corpus(store: Store, value: str, rows: list[InputRow], what: str) -> None:
    """Refuse an empty corpus, a repeated text, or a text already in the value's VIDB."""
    if not rows:
        raise ValueError(f"{what}: no texts (empty corpus)")
    seen: dict[bytes, InputRow] = {}
    for r in rows:
        h = text_hash(r.text)
        if h in seen:
            raise ValueError(f"{what}:{r.line}: field 'text': same text as line {seen[h].line}")
        seen[h] = r
    hits = await store.pool.fetch(
        "SELECT t.sha256 FROM vidb_items v JOIN texts t ON t.id = v.text_id WHERE v.value = $1"
        " AND t.sha256 = ANY($2::bytea[])", value, list(seen))
    if hits:
        r = min((seen[bytes(h["sha256"])] for h in hits), key=lambda x: x.line)
        raise ValueError(f"{what}:{r.line}: field 'text': already in the VIDB of {value!r} (id {r.ext_id!r}; {len(hits)} such text(s))")


def spread(intensity: np.ndarray, m: int) -> np.ndarray:
    """Indices of at most m items spread evenly over the intensity order."""
    order = np.argsort(intensity, kind="stable")
    if len(order) <= m:
        return order
    return order[np.unique(np.linspace(0, len(order) - 1, m).round().astype(int))]


def planner(spec: VidbBuildSpec, rows: list[InputRow], references: list[tuple[str, float]] | None):
    """``references``: parsed ``--reference`` rows, or None to take them from the value's VIDB."""

    async def plan(store: Store, job_id: str) -> tuple[int, int, int]:
        await check_corpus(store, spec.value, rows, spec.input)
        corpus = {text_hash(r.text): r for r in rows}
        fixes = ["import a VIDB for the value ('valueflow vidb import')", "pass --reference FILE (text,final_rating)"]
        if references is not None:
            n_refs, have = len(references), f"{spec.reference} has {len(references)} reference row(s)"
        else:
            everything = await store.vidb(spec.value)
            cur = [r for r in everything if agreed(r["flags"])]  # a doubted intensity calibrates nothing
            n_vidb = len(cur)
            n_refs = min(spec.max_references, n_vidb)
            have = f"value {spec.value!r} has {n_vidb} VIDB item(s)"
            if len(everything) > n_vidb:
                have += f" not flagged implausible or disputed ({len(everything) - n_vidb} are)"
            if n_refs < n_vidb:
                have += f", of which --max-references takes {n_refs}"
                fixes.insert(0, "raise --max-references")
        if spec.scale == "isotonic" and n_refs < MIN_REFERENCE_POINTS:
            raise ValueError(f"{have}; isotonic calibration needs at least {MIN_REFERENCE_POINTS} reference items: "
                             f"{', '.join(fixes)}, or use --scale minmax")
        try:  # before anything is stored: texts and references together must admit a design
            check_design_size(len(rows) + n_refs, spec.k, spec.per_text)
        except ValueError as exc:
            raise ValueError(f"{spec.input}: {len(rows)} text(s) and {n_refs} reference(s): {exc} (--k {spec.k})") from None
        if references is not None:
            clash = [corpus[text_hash(t)] for t, _ in references if text_hash(t) in corpus]
            if clash:
                raise ValueError(f"{spec.input}:{clash[0].line}: field 'text': also a reference text in {spec.reference}")
            ref_ids = await store.intern_texts([t for t, _ in references])
            refs = [(tid, x, f"reference:{spec.reference}") for tid, (_, x) in zip(ref_ids, references)]
        else:
            pick = spread(np.array([r["intensity"] for r in cur], dtype=float), spec.max_references) if cur else []
            refs = [(cur[i]["text_id"], cur[i]["intensity"], "vidb") for i in pick]
        # the design needs only the number of texts: it is drawn while the database stores them
        design_job = asyncio.create_task(asyncio.to_thread(
            balanced_design, len(rows) + len(refs), spec.k, spec.per_text, np.random.default_rng(spec.seed)))
        try:
            text_ids = await store.stage_items(job_id, [(i, r.ext_id, r.text) for i, r in enumerate(rows)])
        except BaseException:
            await asyncio.gather(design_job, return_exceptions=True)  # let the thread finish; keep this error
            raise
        design = await design_job
        universe = list(text_ids) + [t for t, _, _ in refs]
        ids = np.asarray(universe, dtype=np.int64)
        windows = [(w, w // spec.chunk_size, spec.value, ids[members].tolist(), spec.seed)
                   for w, members in enumerate(design)]
        n_chunks = (len(windows) + spec.chunk_size - 1) // spec.chunk_size
        async with store.pool.acquire() as conn:
            await conn.copy_records_to_table("vidb_job_refs", columns=["job_id", "text_id", "intensity", "source"],
                                             records=[(job_id, t, float(x), s) for t, x, s in refs])
        await store.stage_windows(job_id, windows, [(c, judge_queue(spec)) for c in range(n_chunks)],
                                  columns=("window_id", "chunk_no", "value", "members", "seed"))
        return len(rows), len(windows), n_chunks

    return plan


async def judge_stage(ctx: StageContext) -> None:
    ensure_judge(ctx.resources, ctx.spec.judge)  # type: ignore[attr-defined]
    await judge_windows(ctx)


async def finalize(ctx: FinalizeContext) -> None:
    spec: VidbBuildSpec = ctx.spec  # type: ignore[assignment]
    job_id = ctx.job["id"]
    new = [(r["text_id"], f"fit:{job_id}") for r in
           await ctx.conn.fetch("SELECT text_id FROM job_items WHERE job_id = $1 ORDER BY item_no", job_id)]
    refs = {r["text_id"]: (r["intensity"], r["source"]) for r in
            await ctx.conn.fetch("SELECT text_id, intensity, source FROM vidb_job_refs WHERE job_id = $1", job_id)}
    await refit_and_write(ctx.conn, spec.value, job_id, "build", new, refs or None, spec.scale, spec.prior,
                          warm=False)


async def export_rows(store: Store, job_id: str) -> AsyncIterator[list[dict]]:
    rows = await store.pool.fetch(
        "SELECT i.ext_id AS id, v.value, v.intensity, v.utility, v.stderr, v.version FROM job_items i"
        " JOIN (SELECT value, max(version) AS version FROM vidb_versions WHERE job_id = $1 GROUP BY value) vv ON true"
        " JOIN vidb_version_items v ON v.value = vv.value AND v.version = vv.version AND v.text_id = i.text_id"
        " WHERE i.job_id = $1 ORDER BY i.item_no", job_id)
    yield [dict(r) for r in rows]


KIND = JobKind(
    name="vidb-build",
    spec_model=VidbBuildSpec,
    stages=(Stage("judge", judge_queue, judge_stage, give_up_windows),),
    finalize=finalize,
    window_stage=0,
    export_columns=EXPORT_COLUMNS,
    export_rows=export_rows,
)
