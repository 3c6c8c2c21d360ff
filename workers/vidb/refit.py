"""The refit a VIDB job's finalize step runs: lock the value, fit every comparison it counts, write a version.

Which comparisons count: those of the value from its source jobs (earlier builds and expansions,
scoring jobs folded in with ``--from-job``) and from the job being finalized, whose members are
all current items of the value or texts this job adds. Which items get new numbers: every item
in those comparisons gets a new utility and standard error; current items keep their intensity
(the scale scoring jobs anchor on does not move under them), added texts (and those an earlier
finalize of the same job added, when ``resume --retry-failed`` runs it again) get
``g(utility)`` with g the isotonic map fitted on the references (build: the references it was
planned with; expand: the value's current items, less those flagged ``implausible`` or
``disputed``), or the min–max map with ``scale='minmax'``.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import numpy as np

from workers.jobs.kind import JobFailure
from workers.stats.calibration import MIN_REFERENCE_POINTS
from workers.vidb import versions as V
from workers.vidb.fit import fit_utilities, isotonic, minmax, only_known, rank_rows


@dataclass
class RefitResult:
    version: int
    added: int
    skipped: int  # added texts left out: none of their windows was judged
    n_comparisons: int


async def refit_and_write(conn: asyncpg.Connection, value: str, job_id: str, kind: str,
                          new: list[tuple[int, str]], refs: dict[int, tuple[float, str]] | None,
                          scale: str, prior: float, warm: bool, init_new: dict[int, float] | None = None,
                          from_jobs: list[str] | None = None) -> RefitResult:
    """``new``: (text_id, source) of the texts to add; ``refs``: text_id → (intensity, source) of the
    build's reference items (None: the value's current items are the references). ``warm``: start
    from the current utilities, added texts at ``init_new`` (text_id → search estimate; else 0)."""
    await V.value_lock(conn, value)
    before = {r["text_id"]: r for r in await V.current_items(conn, value)}
    # an earlier finalize of this job added texts already (``jobs resume --retry-failed`` runs it again
    # once failed windows are judged): they are fitted and calibrated again as the job's new texts,
    # so the result is the one a run without failures gives; those people adjudicated meanwhile stay
    own = f"fit:{job_id}"
    again = {t for t, r in before.items() if r["source"] == own and "adjudicated" not in (r["flags"] or ())}
    current = {t: r for t, r in before.items() if t not in again}
    new = [(t, src) for t, src in new if not (t in current and current[t]["source"] == own)]
    clash = [t for t, _ in new if t in current]
    if clash:
        raise JobFailure(f"{len(clash)} text(s) of this job were added to the VIDB of {value!r} by another job "
                         f"meanwhile (e.g. text id {clash[0]}); nothing written")
    new_src = dict(new)
    refs = refs or {}
    candidates = set(current) | set(new_src) | set(refs)
    ranked, lengths = await V.gather_comparisons(conn, value, [job_id, *(from_jobs or [])])
    ranked, lengths = only_known(ranked, lengths, np.array(sorted(candidates), dtype=np.int64))
    tids = np.unique(ranked)
    if not len(tids):
        raise JobFailure(f"no judged comparisons for {value!r}: every window failed (jobs resume --retry-failed)")
    index = {t: i for i, t in enumerate(tids.tolist())}
    rows = rank_rows(ranked, lengths, tids)
    init = None
    if warm:
        init = np.zeros(len(tids))
        for t, i in index.items():
            if t in before and before[t]["utility"] is not None:
                init[i] = before[t]["utility"]
            elif init_new and t in init_new:
                init[i] = init_new[t]
    fit = fit_utilities(len(tids), rows, prior, init)
    u, se = fit.utility, fit.stderr
    # references: the build's, or every current item that was fitted and is agreed (an intensity the
    # audit or people doubt does not calibrate new texts)
    doubted = 0
    if refs:
        ref_t = [t for t in refs if t in index]
        ref_y = np.array([refs[t][0] for t in ref_t])
    else:
        ref_t = [t for t in current if t in index and V.agreed(current[t]["flags"])]
        doubted = sum(1 for t in current if t in index) - len(ref_t)
        ref_y = np.array([current[t]["intensity"] for t in ref_t])
    ref_mask = np.array([index[t] for t in ref_t], dtype=np.intp)
    if scale == "isotonic":
        if len(ref_t) < MIN_REFERENCE_POINTS:
            left_out = f" ({doubted} flagged implausible or disputed left out)" if doubted else ""
            raise JobFailure(f"{value!r}: only {len(ref_t)} reference items were compared{left_out}; isotonic "
                             f"calibration needs at least {MIN_REFERENCE_POINTS} (or use --scale minmax)")
        try:
            inten = isotonic(u, ref_mask, ref_y)
        except ValueError as exc:
            raise JobFailure(f"{value!r}: {exc}") from None
    else:
        inten = minmax(u)
    items, added = [], 0
    for t, i in index.items():
        if t in current:
            items.append(dict(text_id=t, intensity=current[t]["intensity"], utility=u[i], stderr=se[i],
                              source=current[t]["source"]))
        elif t in refs:
            items.append(dict(text_id=t, intensity=refs[t][0], utility=u[i], stderr=se[i], source=refs[t][1]))
        else:
            items.append(dict(text_id=t, intensity=float(inten[i]), utility=u[i], stderr=se[i], source=new_src[t]))
            added += 1
    skipped = sum(1 for t in new_src if t not in index)
    notes = [f"{skipped} text(s) without a judged window left out"] if skipped else []
    earlier = await conn.fetchval("SELECT max(version) FROM vidb_versions WHERE value = $1 AND job_id = $2",
                                  value, job_id)
    if earlier is not None:
        notes.append(f"refit again after resume --retry-failed (this job's earlier version: {earlier})")
    version = await V.write_version(conn, value, kind, job_id, items, len(rows), scale,
                                    note="; ".join(notes) or None, n_new=len(again & index.keys()))
    await V.add_sources(conn, value, [job_id, *(from_jobs or [])])
    return RefitResult(version, added, skipped, len(rows))
