"""``valueflow report JOB -o DIR``: PNG plots, CSV/Markdown tables and one index.html for a job."""

from __future__ import annotations

from pathlib import Path

import click

from scheduler.cli.common import console, run_with_store


@click.command()
@click.argument("job_id")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="folder for the report (created)")
@click.option("--refusals", type=click.Choice(["include", "exclude"]), default="include", show_default=True,
              help="steering jobs: keep refused responses in the intensity figures, or drop them")
@click.option("--rho-min", type=float, default=None, help="steering verdict: Spearman needed for 'easy' [0.5]")
@click.option("--delta-min", type=float, default=None, help="steering verdict: |Δ(±2)| needed for 'easy' [2.0]")
def report(job_id: str, out: Path, refusals: str, rho_min: float | None, delta_min: float | None) -> None:
    """Write a report of a finished steering or scoring job to a folder (open its index.html)."""
    from workers.steering import db
    from workers.steering.report import score_report, steer_report
    from workers.steering.stats import DELTA_MIN, RHO_MIN

    async def go(store):
        job = await store.job(job_id)
        if job is None:
            raise click.ClickException(f"no job {job_id!r}")
        if job["state"] != "done":
            raise click.ClickException(f"job {job_id} is {job['state']}; a report needs a finished job")
        if job["kind"] == "steer":
            rows = await db.steer_rows(store, job_id)
            path = steer_report(rows, out, job_id, job["spec"]["model"], include_refusals=refusals == "include",
                                rho_min=RHO_MIN if rho_min is None else rho_min,
                                delta_min=DELTA_MIN if delta_min is None else delta_min)
        elif job["kind"] == "score":
            rows = [r async for batch in store.iter_scores(job_id) for r in batch]
            path = score_report(rows, out, job_id, job["spec"]["judge"])
        else:
            raise click.ClickException(f"no report for jobs of kind {job['kind']!r} (steer and score have one)")
        console.print(f"report of {job_id} written to {out}")
        click.echo(str(path))

    run_with_store(go)
