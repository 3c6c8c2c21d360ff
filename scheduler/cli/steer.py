"""``valueflow steer``: steering jobs (generate → judge → score → finalize)."""

from __future__ import annotations

from pathlib import Path

import click

from scheduler.cli.jobs import follow_options, record_vidb_view, submit_and_follow
from scheduler.cli.score import resolve_values


def parse_levels(ctx, param, text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers in -2..2, got {text!r}") from None
    if not levels or any(lv not in (-2, -1, 0, 1, 2) for lv in levels):
        raise click.BadParameter(f"levels must be in -2..2, got {text!r}")
    return list(dict.fromkeys(levels))


@click.command()
@click.option("--queries", "queries_path", required=True, type=click.Path(path_type=Path),
              help="CSV file with a query column (the upstream queries/*.csv, or examples/queries.csv)")
@click.option("--query-field", default="query", show_default=True, help="the column holding the queries")
@click.option("--value", "values", multiple=True, help="a value to steer (repeatable; 'all' = the 32 steerable)")
@click.option("--theory", "theories", multiple=True, type=click.Choice(["pvq", "mft", "duty", "right"]),
              help="every steerable value of a theory (repeatable)")
@click.option("--levels", default="-2,-1,0,1,2", show_default=True, callback=parse_levels,
              help="target levels, comma-separated, in -2..2 (0 = the unsteered baseline); write --levels=-2,...")
@click.option("--regime", "regimes", multiple=True, type=click.Choice(["persona", "exemplars"]),
              help="persona: a system line describing a person at the level; exemplars: VIDB texts of the "
                   "level that the user wrote or agreed with (repeatable) [default: persona]")
@click.option("--combo", "combos", multiple=True,
              help='a multi-value target, e.g. "care-harm:2,fairness-cheating:-1" (repeatable)')
@click.option("--model", default="smollm2", show_default=True,
              help="generation model name (built-in smollm2, or [models.NAME]/[judges.NAME] of VALUEFLOW_JUDGES_FILE)")
@click.option("--samples", default=1, show_default=True, type=click.IntRange(1, 1000), help="responses per prompt")
@click.option("--exemplars", "n_exemplars", default=3, show_default=True, type=click.IntRange(1, 20),
              help="exemplar texts per value (exemplars regime)")
@click.option("--judge", default="embedding", show_default=True, help="judge that scores the responses")
@click.option("--k", default=6, show_default=True, type=click.IntRange(2, 20), help="texts per scoring window")
@click.option("--windows", "m", default=3, show_default=True, type=click.IntRange(1, 50), help="windows per response and value")
@click.option("--mode", default="upstream", show_default=True, type=click.Choice(["upstream", "calibrated"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--gen-chunk", default=16, show_default=True, type=click.IntRange(1), help="generations per task")
@follow_options("export responses and scores here when done")
def steer(queries_path, query_field, values, theories, levels, regimes, combos, model, samples, n_exemplars, judge, k,
          m, mode, seed, gen_chunk, wait, local_worker, output) -> None:
    """Generate responses to queries steered to target intensities of values, and score them."""
    from pydantic import ValidationError

    from schemas.messages import SteerJobSpec
    from workers.generation.config import get_model_config
    from workers.jobs.kinds import steer as steer_kind
    from workers.judges.config import get_judge_config
    from workers.steering.plan import parse_combo, read_queries

    vals = [v.key for v in resolve_values(values, theories)] if (values or theories) else []
    try:
        parsed_combos = [parse_combo(c) for c in combos]
        runs = [get_model_config(model), get_judge_config(judge)]
        read_queries(queries_path, query_field)  # validated whole before the store is touched
    except (ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    if not vals and not parsed_combos:
        raise click.UsageError("give --value, --theory or --combo")
    try:
        spec = SteerJobSpec(queries=str(queries_path), query_field=query_field, values=vals, levels=levels,
                            combos=parsed_combos, regimes=list(regimes) or ["persona"], model=model, samples=samples,
                            exemplars=n_exemplars, gen_chunk=gen_chunk, judge=judge, k=k, windows=m, mode=mode,
                            seed=seed)
    except ValidationError as exc:
        raise click.ClickException(exc.errors()[0]["msg"]) from None
    submit_and_follow(steer_kind.KIND, spec, steer_kind.planner,
                      lambda job, s: f"{job['n_items']} generations with {model} ({len(vals)} values × levels "
                                     f"{levels}, {len(parsed_combos)} combos, regimes {', '.join(s.regimes)}, "
                                     f"{samples} sample(s)); judge {judge}",
                      wait=wait, local_worker=local_worker, output=output, prepare=record_vidb_view, runs=runs)
