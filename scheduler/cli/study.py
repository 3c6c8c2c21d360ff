"""``valueflow study``: the stability study (rating versus ranking) and its report."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from scheduler.cli.common import console, run_with_store
from scheduler.cli.jobs import record_vidb_view, submit_and_follow
from scheduler.cli.score import value_options
from schemas.settings import load_settings


def load_labelled(path: Path, value: str | None = None) -> dict[str, list[tuple[str, float]]]:
    """Labelled texts per value from a VIDB sample directory (``{theory}.json``), one few-shot JSON
    file, one upstream CSV, or a directory of upstream CSVs. ``value``: the value of a single CSV
    file (as ``vidb import --value``) whose name names none (a name naming another value is
    refused); a directory's CSVs are named by value."""
    from workers.io.vidb_files import read_vidb

    if path.is_dir():
        files = sorted(path.glob("*.json")) + sorted(path.glob("*.csv"))
        if not files:
            raise click.ClickException(f"{path}: no .json or .csv VIDB files in this directory")
        value = None
    else:
        files = [path]
    rows: dict[str, list[tuple[str, float]]] = {}
    for f in files:
        for v, items in read_vidb(f, value).items():
            rows.setdefault(v, []).extend(items)
    return rows


def take(items: list[tuple[str, float]], limit: int | None) -> list[tuple[str, float]]:
    """At most ``limit`` items spread evenly over the intensity order (file order kept)."""
    if limit is None or len(items) <= limit:
        return items
    order = np.argsort([x for _, x in items], kind="stable")
    keep = sorted(order[np.unique(np.linspace(0, len(items) - 1, limit).round().astype(int))])
    return [items[i] for i in keep]


@click.group()
def study() -> None:
    """Studies of a judge: stability of rating versus ranking, position bias."""


@study.command("stability")
@click.option("--judge", default="embedding", show_default=True, help="judge name (built-in or VALUEFLOW_JUDGES_FILE)")
@click.option("--data", "data", required=True, type=click.Path(exists=True, path_type=Path),
              help="labelled texts: the VIDB sample directory, a few-shot JSON, or upstream text,final_rating CSVs")
@value_options
@click.option("--limit", type=click.IntRange(2), default=None, help="at most this many texts per value (spread over intensities)")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 20), help="seeds per method")
@click.option("--paraphrases", default=2, show_default=True, type=click.IntRange(1, 3), help="prompt wordings per method")
@click.option("--k", default=6, show_default=True, type=click.IntRange(2, 20), help="texts per ranking window")
@click.option("--windows", "m", default=3, show_default=True, type=click.IntRange(1, 50), help="ranking windows per text")
@click.option("--mode", default="upstream", show_default=True, type=click.Choice(["upstream", "calibrated"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--chunk-size", default=None, type=click.IntRange(1), help="windows per task [VALUEFLOW_CHUNK_SIZE]")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait for the job and write the report")
@click.option("--local-worker/--no-local-worker", default=None,
              help="run a worker inside this command while waiting [default: on for the embedded default]")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="report directory (stability.csv, stability.md, stability.png, runs.csv) [default: study-JOB]")
def stability(judge, data, values, theories, limit, repeats, paraphrases, k, m, mode, seed, chunk_size, wait,
              local_worker, out_dir) -> None:
    """Rating versus ranking: score labelled texts REPEATS × PARAPHRASES times both ways, through
    the queue, and report stability, accuracy and position bias."""
    from scheduler.cli.score import resolve_values
    from schemas.study import StudySpec
    from workers.io.inputs import InputError
    from workers.jobs.kinds import study as study_kind
    from workers.judges.config import get_judge_config

    if out_dir is not None and not wait:
        raise click.UsageError(f"-o {out_dir} needs --wait (or later: valueflow study report JOB -o {out_dir})")
    chosen = [v.key for v in resolve_values(values, theories)] if values or theories else []
    try:
        cfg = get_judge_config(judge)
        # one CSV file and one --value: the file holds that value's texts (unless named for another)
        labelled = load_labelled(data, chosen[0] if len(chosen) == 1 else None)
    except (ValueError, InputError) as exc:
        raise click.ClickException(str(exc)) from None
    if chosen:
        keys = chosen
        missing = [v for v in keys if v not in labelled]
        if missing:
            raise click.ClickException(f"{data}: no labelled texts for {', '.join(missing)}")
    else:
        keys = sorted(labelled)
    rows = [(v, t, x) for v in keys for t, x in take(labelled[v], limit)]
    prompted = cfg.kind != "embedding"
    if not prompted and paraphrases > 1:
        console.print(f"judge {judge} has no prompt: paraphrases do not apply to it; running 1 wording")
        paraphrases = 1
    settings = load_settings()
    spec = StudySpec(data=str(data), values=keys, judge=judge, repeats=repeats, paraphrases=paraphrases, k=k,
                     windows=m, mode=mode, seed=seed, chunk_size=chunk_size or settings.chunk_size, texts=len(rows),
                     prompted=prompted)
    async def report(store, job_id, _spec):
        await write_report(store, job_id, out_dir or Path(f"study-{job_id}"))

    submit_and_follow(study_kind.KIND, spec, lambda s: study_kind.planner(s, rows),
                      lambda job, s: f"study of {len(rows)} texts × {len(keys)} value(s) × {repeats * paraphrases} "
                                     f"runs ({repeats} repeats × {paraphrases} paraphrases); {job['n_windows']} "
                                     f"ranking windows (k={k}), judge {judge}",
                      wait=wait, local_worker=local_worker, after=report, prepare=record_vidb_view, runs=[cfg])


async def write_report(store, job_id: str, out_dir: Path) -> None:
    from scheduler import jobs as J
    from workers.jobs.kinds.study import report_of
    from workers.study.render import markdown, write_all

    job = await store.job(job_id)
    if job is None or job["kind"] != "study":
        raise click.ClickException(f"no study job {job_id!r}")
    report = await report_of(store, job_id)
    if report is None:
        raise click.ClickException(f"study {job_id} has no report yet (state {job['state']})")
    paths = write_all(out_dir, report)
    await J.export(store, job_id, out_dir / "runs.csv")
    click.echo(markdown(report))
    console.print("wrote " + ", ".join(str(p) for p in [*paths, out_dir / "runs.csv"]))


@study.command("report")
@click.argument("job_id")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="report directory [default: study-JOB]")
def report(job_id: str, out_dir: Path | None) -> None:
    """Write the tables and the figure of a finished study job."""
    run_with_store(lambda store: write_report(store, job_id, out_dir or Path(f"study-{job_id}")))
