"""``valueflow vidb ...``: the Value Intensity DataBase.

Lifecycle: ``build`` (ranking windows → Plackett–Luce → isotonic map, a new version) → ``expand``
(adaptive insertion, warm refit, next version) → ``audit`` (judge panel flags, next version) →
``review-export`` / ``adjudicate`` (human ratings merged, next version) → ``versions`` / ``diff`` /
``export``. ``import`` loads upstream files (a version when it adds items; the seed is version 1)
and ``stats`` counts items.
"""

from __future__ import annotations

from pathlib import Path

import click

from scheduler.cli.common import ID_FIELD_HELP, console, run_with_store
from scheduler.cli.jobs import follow_options


@click.group()
def vidb() -> None:
    """The Value Intensity DataBase."""


@vidb.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--value", default=None, help="value of a CSV whose name does not say it")
def vidb_import(paths, value) -> None:
    """Load upstream VIDB files (per-value CSV text,final_rating or few-shot JSON)."""
    from workers.io.inputs import InputError
    from workers.io.vidb_files import import_rows, read_vidb

    try:
        parsed = [(p, read_vidb(p, value)) for p in paths]  # all files validated before any write
    except InputError as exc:
        raise click.ClickException(str(exc)) from None
    seen: dict[tuple[str, str], tuple[float, Path]] = {}
    for p, rows in parsed:  # one text of a value, rated differently by two files
        for key, items in rows.items():
            for text, x in items:
                y, q = seen.setdefault((key, text), (x, p))
                if y != x:
                    raise click.ClickException(f"{p}: field 'text': {text[:60]!r} of {key!r} is rated {x:g} here and "
                                               f"{y:g} in {q}; nothing imported")

    async def go(store):
        for p, rows in parsed:
            added = await import_rows(store, rows, f"import:{p.name}")
            click.echo(f"{p}: {sum(added.values())} new items over {len(added)} values")
    run_with_store(go)


@vidb.command("stats")
def vidb_stats() -> None:
    """Items per value in the VIDB (the shipped seed is imported first, as scoring does)."""

    async def go(store):
        from workers.io.vidb_files import ensure_seed

        await ensure_seed(store)
        for v, n in sorted((await store.vidb_counts()).items()):
            click.echo(f"{v:35} {n}")
    run_with_store(go)


# -- helpers -------------------------------------------------------------------------------------------
def _value(value: str) -> str:
    from workers.jobs.kinds.vidb_build import steerable_value

    try:
        return steerable_value(value)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _judge(name: str) -> str:
    _judge_config(name)
    return name


def _judge_config(name: str):
    """The config of judge ``name`` (None for a simulated judge), or a one-line error."""
    from workers.vidb.simulated_judge import is_simulated, parse_name

    try:
        if is_simulated(name):
            parse_name(name)
            return None
        from workers.judges.config import get_judge_config

        return get_judge_config(name)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _runs(judges: list[str]) -> list:
    """The configs of the judges a job's workers load (simulated ones load nothing)."""
    return [c for c in map(_judge_config, judges) if c is not None]


def _corpus(path: Path, id_field: str, text_field: str):
    from workers.io.inputs import InputError, read_inputs

    try:
        return read_inputs(path, id_field, text_field)
    except InputError as exc:
        msg = str(exc)
        raise click.ClickException(msg + " (empty corpus)" if msg.endswith("no rows") else msg) from None


def _submit(kind, spec, plan, wait: bool, local_worker: bool | None, output: Path | None, what: str) -> None:
    from scheduler.cli.jobs import submit_and_follow

    async def show_version(store, job_id, spec):
        v = await store.pool.fetchrow("SELECT version, n_items, n_new FROM vidb_versions WHERE job_id = $1"
                                      " ORDER BY version DESC LIMIT 1", job_id)
        if v is not None:
            console.print(f"{spec.value}: version {v['version']}, {v['n_items']} items ({v['n_new']} new)")

    # the value's own VIDB is the subject here: the seed is not imported into it
    submit_and_follow(kind, spec, plan, lambda job, s: f"{what} ({job['n_items']} texts, {job['n_windows']} windows)",
                      wait=wait, local_worker=local_worker, output=output, seed_vidb=False, after=show_version,
                      runs=_runs([spec.judge]))


def job_options(f):
    f = follow_options("export the job's items when done")(f)
    f = click.option("--text-field", default="text", show_default=True)(f)
    f = click.option("--id-field", default=None, help=ID_FIELD_HELP)(f)
    f = click.option("--seed", default=0, show_default=True, type=int)(f)
    f = click.option("--prior", default=0.1, show_default=True, type=click.FloatRange(min=0, min_open=True),
                     help="precision λ of the Gaussian prior on utilities (MAP fit)")(f)
    f = click.option("--k", default=2, show_default=True, type=click.IntRange(2, 6),
                     help="texts per window (2 = pairwise, as published)")(f)
    f = click.option("--judge", default="embedding", show_default=True, help="judge name")(f)
    return click.option("--value", required=True, help="the value (one of the 32 steerable)")(f)


# -- build and expand ------------------------------------------------------------------------------------
@vidb.command("build")
@click.argument("corpus", type=click.Path(path_type=Path))
@job_options
@click.option("--comparisons-per-text", "per_text", default=10, show_default=True, type=click.IntRange(2, 200),
              help="windows each text appears in (k = 2: comparisons per text)")
@click.option("--reference", type=click.Path(path_type=Path),
              help="reference items (upstream CSV text,final_rating) for the isotonic map [default: the value's VIDB]")
@click.option("--max-references", default=100, show_default=True, type=click.IntRange(1),
              help="VIDB items used as references, spread over the intensity range")
@click.option("--scale", type=click.Choice(["isotonic", "minmax"]), default="isotonic", show_default=True,
              help="isotonic: map utilities on reference intensities; minmax: stretch the fitted range to [-10, 10]")
@click.option("--chunk-size", default=None, type=click.IntRange(1), help="windows per task [VALUEFLOW_CHUNK_SIZE]")
def vidb_build(corpus, value, judge, k, prior, seed, id_field, text_field, wait, local_worker, output, per_text,
               reference, max_references, scale, chunk_size) -> None:
    """Build a value's VIDB from judge rankings of CORPUS (a new version)."""
    from schemas.settings import load_settings
    from schemas.vidb import VidbBuildSpec
    from workers.io.inputs import InputError
    from workers.io.vidb_files import read_vidb_csv
    from workers.jobs.kinds import vidb_build as kind
    from workers.store import text_hash

    key, judge = _value(value), _judge(judge)
    rows = _corpus(corpus, id_field, text_field)
    refs = None
    if reference is not None:
        if not reference.is_file():
            raise click.ClickException(f"{reference}: no such file")
        try:
            ref_rows = read_vidb_csv(reference, key, lines=True)[key]
        except InputError as exc:
            raise click.ClickException(str(exc)) from None
        if not ref_rows:
            raise click.ClickException(f"{reference}: no reference rows")
        in_corpus = {text_hash(r.text): r.line for r in rows}
        for text, _, line in ref_rows:
            if text_hash(text) in in_corpus:
                raise click.ClickException(f"{reference}:{line}: field 'text': also in the corpus "
                                           f"({corpus}:{in_corpus[text_hash(text)]}); a reference must not be rebuilt")
        refs = [(t, x) for t, x, _ in ref_rows]
    spec = VidbBuildSpec(input=str(corpus), value=key, judge=judge, k=k, per_text=per_text,
                         reference=None if reference is None else str(reference), max_references=max_references,
                         scale=scale, prior=prior, seed=seed, chunk_size=chunk_size or load_settings().chunk_size)
    _submit(kind.KIND, spec, kind.planner(spec, rows, refs), wait, local_worker, output,
            f"build {key}, judge {judge}, k={k}, {per_text} windows per text")


@vidb.command("expand")
@click.argument("new", required=False, type=click.Path(path_type=Path))
@job_options
@click.option("--rounds", default=None, type=click.IntRange(1, 200),
              help="windows per new text [default: ⌈log2 n⌉ + 2 for n fitted items]")
@click.option("--from-job", "from_jobs", multiple=True,
              help="a scoring job whose comparisons of these texts are folded in (its texts, when NEW is omitted)")
@click.option("--items-per-chunk", default=64, show_default=True, type=click.IntRange(1))
def vidb_expand(new, value, judge, k, prior, seed, id_field, text_field, wait, local_worker, output, rounds, from_jobs,
                items_per_chunk) -> None:
    """Insert NEW texts into a value's VIDB adaptively (O(log n) windows each), then refit warm."""
    import math

    from schemas.vidb import VidbExpandSpec
    from workers.io.inputs import InputRow
    from workers.jobs.kinds import vidb_expand as kind

    key, judge = _value(value), _judge(judge)
    if new is None and not from_jobs:
        raise click.UsageError("give NEW texts and/or --from-job JOB")

    async def fetch(store):
        n = await store.pool.fetchval("SELECT count(*) FROM vidb_items WHERE value = $1 AND utility IS NOT NULL", key)
        got = []
        await kind.check_from_jobs(store, list(from_jobs))  # before any text is read from them
        if new is None:
            for j in from_jobs:
                got += await store.pool.fetch(
                    "SELECT i.ext_id, t.body FROM job_items i JOIN texts t ON t.id = i.text_id WHERE i.job_id = $1"
                    " ORDER BY i.item_no", j)
        return n, got
    n, job_rows = run_with_store(fetch)
    if new is not None:
        rows = _corpus(new, id_field, text_field)
    else:
        rows = [InputRow(i + 1, r["ext_id"], r["body"]) for i, r in enumerate(job_rows)]
    rounds = rounds or (math.ceil(math.log2(max(n, 2))) + 2)
    spec = VidbExpandSpec(input=str(new) if new is not None else "from-job:" + ",".join(from_jobs), value=key,
                          judge=judge, k=k, rounds=rounds, from_jobs=list(from_jobs), prior=prior, seed=seed,
                          items_per_chunk=items_per_chunk)
    _submit(kind.KIND, spec, kind.planner(spec, rows), wait, local_worker, output,
            f"expand {key}, judge {judge}, k={k}, {rounds} windows per text among {n} items")


# -- versions ----------------------------------------------------------------------------------------------
@vidb.command("versions")
@click.option("--value", default=None)
def vidb_versions(value) -> None:
    """Every version of a value (or of all values)."""
    from workers.vidb import versions as V

    key = _value(value) if value else None

    async def go(store):
        rows = await V.versions(store.pool, key)
        click.echo(f"{'value':28} {'ver':>4} {'kind':10} {'items':>7} {'new':>6} {'comps':>8} {'scale':8} {'job':24} created")
        for r in rows:
            click.echo(f"{r['value']:28} {r['version']:>4} {r['kind']:10} {r['n_items']:>7} {r['n_new']:>6} "
                       f"{r['n_comparisons']:>8} {r['scale']:8} {r['job_id'] or '—':24} {r['created_at']:%Y-%m-%d %H:%M:%S}")
    run_with_store(go)


@vidb.command("diff")
@click.option("--value", required=True)
@click.argument("old", type=int)
@click.argument("new", type=int)
@click.option("--min-change", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="list items whose intensity moved by more than this (a change of flags is always listed)")
def vidb_diff(value, old, new, min_change) -> None:
    """Items added, removed and changed between versions OLD and NEW."""
    import json

    from workers.vidb import versions as V

    key = _value(value)

    async def go(store):
        d = await V.diff(store.pool, key, old, new, min_change)
        click.echo(f"{key} v{old} → v{new}: {len(d['added'])} added, {len(d['removed'])} removed, "
                   f"{len(d['changed'])} changed")
        for r in d["added"]:
            click.echo(json.dumps({"added": r["text"], "intensity": r["intensity"]}, ensure_ascii=False))
        for r in d["removed"]:
            click.echo(json.dumps({"removed": r["text"], "intensity": r["intensity"]}, ensure_ascii=False))
        for r in d["changed"]:
            click.echo(json.dumps({"changed": r["text"], "from": r["from"], "to": r["to"], "flags": r["flags_to"]},
                                  ensure_ascii=False))
    run_with_store(go)


@vidb.command("export")
@click.option("--value", required=True)
@click.option("--version", type=click.IntRange(1), default=None, help="a version [default: the current items]")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help=".csv (upstream text,final_rating), .jsonl or .parquet (utility, stderr, flags, source)")
def vidb_export(value, version, output) -> None:
    """Write a value's VIDB (a version, or the current items)."""
    from workers.io.inputs import InputError
    from workers.io.vidb_files import EXPORT_SUFFIXES, write_vidb_export
    from workers.vidb import versions as V

    key = _value(value)
    if output.suffix.lower() not in EXPORT_SUFFIXES:
        raise click.BadParameter("use .csv, .jsonl or .parquet", param_hint="--output")

    async def go(store):
        rows = await V.version_items(store.pool, key, version)
        ver = version if version is not None else await V.latest_version(store.pool, key) or None
        try:
            n = write_vidb_export(output, key, ver, rows)
        except InputError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"wrote {n} items of {key} (version {version if version else 'current'}) to {output}")
    run_with_store(go)


# -- audit and adjudication ----------------------------------------------------------------------------------
@vidb.command("audit")
@click.option("--value", required=True)
@click.option("--panel", required=True, help="comma-separated judge names")
@click.option("--min-weird", default=2, show_default=True, type=click.IntRange(1),
              help="'implausible' votes that flag an item")
@click.option("--margin", default=3.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="ranking judges: neighbours this far below and above the item's intensity")
@click.option("--items-per-chunk", default=256, show_default=True, type=click.IntRange(1),
              help="items per task (each task is one judge's votes on them)")
@follow_options("export the audited items when done")
def vidb_audit(value, panel, min_weird, margin, items_per_chunk, wait, local_worker, output) -> None:
    """Ask a judge panel whether each item's intensity is plausible; flag the doubtful ones (a job:
    one task per judge and block of items, on the judge's queue; finalize sets the flags)."""
    from pydantic import ValidationError

    from scheduler.cli.jobs import submit_and_follow
    from schemas.vidb import VidbAuditSpec
    from workers.jobs.kinds import vidb_audit as kind
    from workers.vidb.audit import audit_summary

    key = _value(value)
    judges = [_judge(j.strip()) for j in panel.split(",") if j.strip()]
    if not judges:
        raise click.BadParameter("name at least one judge", param_hint="--panel")
    try:  # the spec checks the panel: no judge twice, --min-weird no larger than the panel
        spec = VidbAuditSpec(value=key, panel=judges, min_weird=min_weird, margin=margin,
                             items_per_chunk=items_per_chunk)
    except ValidationError as exc:
        raise click.UsageError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None

    async def summary(store, job_id, spec):
        if (await store.job(job_id))["state"] != "done":
            return
        s = await audit_summary(store.pool, job_id, min_weird)
        click.echo(f"audit {job_id} of {key}: {s['items']} items × {len(judges)} judges, {s['votes']} votes; "
                   f"{s['flagged']} flagged implausible (≥ {min_weird} votes)"
                   + (f"; {s['unanswered']} item(s) got no usable vote" if s["unanswered"] else ""))

    submit_and_follow(kind.KIND, spec, kind.planner(spec),
                      lambda job, s: f"audit {key}, panel {', '.join(judges)} ({job['n_items']} items, "
                                     f"{job['n_chunks']} tasks)",
                      wait=wait, local_worker=local_worker, output=output, seed_vidb=False, after=summary,
                      runs=_runs(judges))


@vidb.command("review-export")
@click.option("--value", required=True)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path))
def vidb_review_export(value, output) -> None:
    """Write the value's flagged items to a CSV for people to rate (human_rating, rater)."""
    from workers.io.vidb_files import write_review
    from workers.vidb.audit import flagged_items

    key = _value(value)

    async def go(store):
        n = write_review(output, await flagged_items(store, key))
        click.echo(f"wrote {n} flagged item(s) of {key} to {output}")
    run_with_store(go)


@vidb.command("adjudicate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--weight", "weight", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="λ in s* = (1 − λ)·model + λ·mean(human)")
@click.option("--disagree", default=3.0, show_default=True, type=click.FloatRange(min=0),
              help="mark items 'disputed' when mean(human) and model differ by more than this")
def vidb_adjudicate(path, weight, disagree) -> None:
    """Merge a filled-in review sheet into the VIDB (a new version per value)."""
    from workers.io.inputs import InputError
    from workers.io.vidb_files import read_review
    from workers.vidb.adjudicate import adjudicate

    try:
        rows = read_review(path)
    except InputError as exc:
        raise click.ClickException(str(exc)) from None

    async def go(store):
        out = await adjudicate(store, rows, weight, disagree, str(path.resolve()))
        for v, s in out.items():
            if s["version"] is None:
                click.echo(f"{v}: nothing new (this sheet's ratings are merged already, with this weight)")
            else:
                click.echo(f"{v}: {s['items']} item(s), {s['ratings']} rating(s), {s['disputed']} disputed"
                           f" → version {s['version']}")
    run_with_store(go)
