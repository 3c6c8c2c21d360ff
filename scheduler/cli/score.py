"""``valueflow score``: the batch scoring job (judge → score → finalize)."""

from __future__ import annotations

import itertools
from pathlib import Path

import click

from scheduler.cli.common import ID_FIELD_HELP
from scheduler.cli.jobs import follow_options, submit_and_follow
from schemas.settings import load_settings


def value_options(f):
    f = click.option("--theory", "theories", multiple=True, type=click.Choice(["pvq", "mft", "duty", "right"]),
                     help="every steerable value of a theory (repeatable)")(f)
    return click.option("--value", "values", multiple=True, help="a value (repeatable; 'all' = the 32 steerable)")(f)


def resolve_values(values, theories):
    from schemas.taxonomy import UnknownValueError, default_taxonomy

    if not values and not theories:
        raise click.UsageError("give --value (or 'all') and/or --theory")
    try:
        return default_taxonomy().resolve_values(list(values), list(theories))
    except UnknownValueError as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@value_options
@click.option("--judge", default="embedding", show_default=True, help="judge name (built-in or VALUEFLOW_JUDGES_FILE)")
@click.option("--k", default=6, show_default=True, type=click.IntRange(2, 20), help="texts per window")
@click.option("--windows", "m", default=3, show_default=True, type=click.IntRange(1, 50), help="windows per text and value")
@click.option("--anchors", default="bucket", show_default=True, type=click.Choice(["bucket", "random"]))
@click.option("--mode", default="upstream", show_default=True, type=click.Choice(["upstream", "calibrated"]),
              help="upstream: the published evaluator; calibrated: fit the judge's scale β per value")
@click.option("--layout", type=click.Choice(["upstream", "shuffled"]), default=None,
              help="upstream: scored text first, anchors ascending (published); shuffled: random positions "
                   "[default: upstream in upstream mode, shuffled in calibrated mode]")
@click.option("--empty-bucket", type=click.Choice(["uniform", "nearest"]), default="uniform", show_default=True,
              help="an empty anchor bucket is filled by a uniform draw from the value's VIDB (published) or "
                   "from the nearest non-empty bucket")
@click.option("--vidb-filter", type=click.Choice(["all", "agreed"]), default="all", show_default=True,
              help="agreed: use only VIDB anchors no judge panel flagged implausible and no person disputed")
@click.option("--vidb-version", "vidb_pins", multiple=True, metavar="VALUE=N",
              help="plan VALUE's windows against version N of its VIDB, and let a judge that learns from the "
                   "VIDB learn VALUE from it (reproduce an earlier job after the VIDB grew; any value) "
                   "[default: each value's latest]; repeatable")
@click.option("--min-anchor-tau", type=click.FloatRange(-1, 1), default=None,
              help="fail the job if the judge orders the VIDB anchors worse than this Kendall tau")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--id-field", default=None, help=ID_FIELD_HELP)
@click.option("--text-field", default="text", show_default=True)
@click.option("--chunk-size", default=None, type=click.IntRange(1), help="windows per task [VALUEFLOW_CHUNK_SIZE]")
@click.option("--dry-run", is_flag=True, help="print what the job would cost (windows, calls, tokens); store nothing")
@follow_options("export scores here when done")
def score(input_path, values, theories, judge, k, m, anchors, mode, layout, empty_bucket, vidb_filter, vidb_pins,
          min_anchor_tau, seed, id_field, text_field, chunk_size, dry_run, wait, local_worker, output) -> None:
    """Score INPUT's texts for value intensity in [-10, 10] through the queue."""
    from schemas.messages import ScoreJobSpec
    from workers.io.inputs import InputError, iter_input_batches
    from workers.jobs.kinds import score as score_kind
    from workers.judges.config import get_judge_config

    vals = resolve_values(values, theories)
    pins = _version_pins(vidb_pins)
    try:
        cfg = get_judge_config(judge)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    settings = load_settings()
    spec = ScoreJobSpec(input=str(input_path), values=[v.key for v in vals], judge=judge, k=k, windows=m,
                        anchors=anchors, seed=seed, mode=mode, layout=layout, empty_bucket=empty_bucket, vidb_filter=vidb_filter, min_anchor_tau=min_anchor_tau,
                        chunk_size=chunk_size or settings.chunk_size)
    batches = iter_input_batches(input_path, id_field, text_field)
    try:
        first = next(batches, [])  # small inputs are validated whole before the store is touched
    except InputError as exc:
        raise click.ClickException(str(exc)) from None
    if not first:
        raise click.ClickException(f"{input_path}: no texts to score")
    if dry_run:
        from workers.jobs.estimate import estimate_score_job

        try:
            est = estimate_score_job(spec, itertools.chain([first], batches))
        except InputError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(est.render())
        return
    async def with_versions(store, spec):
        from scheduler.cli.jobs import record_vidb_view
        from workers.vidb.versions import version_exists

        spec = await record_vidb_view(store, spec)
        versions = spec.vidb_versions
        for value, n in pins.items():
            if not await version_exists(store.pool, value, n):
                raise click.BadParameter(f"value {value!r} has no VIDB version {n} (latest: {versions.get(value, 0)})",
                                         param_hint="--vidb-version")
        return spec.model_copy(update={"vidb_versions": {**versions, **pins}})

    submit_and_follow(score_kind.KIND, spec, lambda s: score_kind.planner(s, itertools.chain([first], batches)),
                      lambda job, s: f"{job['n_items']} texts × {len(vals)} values × {m} windows "
                                     f"(k={k}, judge {judge}, mode {mode}, layout {s.layout})",
                      wait=wait, local_worker=local_worker, output=output, prepare=with_versions, runs=[cfg])


def _version_pins(pins: tuple[str, ...]) -> dict[str, int]:
    """``VALUE=N`` options → {value key: version}, N ≥ 1. A value the job does not score may be
    pinned too: a judge that learns from the VIDB (the embedding judge) learns from every value."""
    out: dict[str, int] = {}
    for pin in pins:
        name, sep, num = pin.partition("=")
        if not sep or not num.strip().isdigit() or int(num) < 1:
            raise click.BadParameter(f"{pin!r}: expected VALUE=N with a version N >= 1", param_hint="--vidb-version")
        try:
            keys = [v.key for v in resolve_values((name.strip(),), ())]
        except click.ClickException:
            keys = []
        if len(keys) != 1:
            raise click.BadParameter(f"{pin!r}: {name.strip()!r} is not one steerable value", param_hint="--vidb-version")
        out[keys[0]] = int(num)
    return out
