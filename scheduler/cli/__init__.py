"""``valueflow``: the scheduler's command line (plans and enqueues work; workers do it)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from schemas.settings import ConfigError, load_settings, redact

console = Console(stderr=True)


# -- connection -----------------------------------------------------------------------------------
def resolve_urls() -> tuple[str, str]:
    """Configured URLs, or the embedded servers (started or reused); exported for child processes."""
    settings = load_settings()
    if settings.embedded:
        from workers.infra.embedded import ensure_running

        with console.status("starting the embedded PostgreSQL and Redis…"):
            env = ensure_running(settings.home)
        os.environ.update(env)
        return env["VALUEFLOW_DATABASE_URL"], env["VALUEFLOW_BROKER_URL"]
    return settings.database_url, settings.broker_url  # type: ignore[return-value]


def celery_app(broker_url: str):
    from workers.tasks.app import app, configure

    configure(broker_url)
    return app


async def _with_store(fn, *args):
    from workers.store import open_store

    db, _ = resolve_urls()
    store = await open_store(db)
    try:
        return await fn(store, *args)
    finally:
        await store.close()


def run_with_store(fn, *args):
    return asyncio.run(_with_store(fn, *args))


class Main(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=Main)
@click.version_option(package_name="valueflow")
def main() -> None:
    """ValueFlow: measure and steer how strongly text expresses human values."""


# -- servers and workers ---------------------------------------------------------------------------
@main.command()
def up() -> None:
    """Start (or reuse) the embedded PostgreSQL and Redis."""
    settings = load_settings()
    if not settings.embedded:
        raise click.ClickException("VALUEFLOW_DATABASE_URL/VALUEFLOW_BROKER_URL are set: nothing embedded to start")
    db, broker = resolve_urls()
    click.echo(f"database {db}\nbroker   {broker}\nhome     {settings.home}")


@main.command()
def down() -> None:
    """Stop the embedded servers (their data stays in VALUEFLOW_HOME)."""
    from workers.infra.embedded import stop

    click.echo(" ".join(f"{k}={'stopped' if v else 'not running'}" for k, v in stop(load_settings().home).items()))


@main.command()
def status() -> None:
    """Where the database and broker are, and whether the embedded ones run."""
    settings = load_settings()
    if not settings.embedded:
        click.echo(f"database {redact(settings.database_url)}\nbroker   {redact(settings.broker_url)}")
        return
    from workers.infra.embedded import status as emb_status

    st = emb_status(settings.home)
    for name in ("postgres", "redis"):
        s = st[name]
        click.echo(f"{name:9}{'running' if s['running'] else 'stopped':8} {s['url'] or ''}")


@main.command()
@click.option("--queues", "-Q", default="default,gpu,api,refit", show_default=True, help="comma-separated queues")
@click.option("--concurrency", "-c", default=1, show_default=True, type=int)
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "solo", "threads"]))
@click.option("--loglevel", default="INFO", show_default=True)
def worker(queues: str, concurrency: int, pool: str, loglevel: str) -> None:
    """Start a worker consuming the given queues."""
    from workers.tasks.app import QUEUES

    bad = [q for q in queues.split(",") if q not in QUEUES]
    if bad:
        raise click.BadParameter(f"unknown queue(s) {bad}; known: {', '.join(QUEUES)}", param_hint="--queues")
    _, broker = resolve_urls()
    app = celery_app(broker)
    app.worker_main(["worker", "-Q", queues, "-c", str(concurrency), "--pool", pool, "-l", loglevel,
                     "-n", f"vf{os.getpid()}@%h", "--without-gossip", "--without-mingle"])


def spawn_worker(queues: str = "default,gpu,api,refit", concurrency: int = 1, log: Path | None = None) -> subprocess.Popen:
    """A worker subprocess of this CLI (used by ``score --wait`` on the embedded default)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "scheduler.cli", "worker", "-Q", queues, "-c", str(concurrency),
                             "--loglevel", "WARNING"], stdout=out, stderr=out, env=os.environ.copy(),
                            start_new_session=True)


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# -- database ------------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Schema management."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (safe to run twice or concurrently)."""
    from workers.store import upgrade

    async def go(store):
        async with store.pool.acquire() as conn:
            return await upgrade(conn)

    applied = run_with_store(go)  # opening the store already upgrades; report what this call did
    click.echo("schema up to date" if not applied else "applied: " + ", ".join(applied))


# -- scoring -------------------------------------------------------------------------------------
@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--value", "values", multiple=True, help="value to score (repeatable; 'all' = the 32 steerable)")
@click.option("--theory", "theories", multiple=True, type=click.Choice(["pvq", "mft", "duty", "right"]),
              help="score every steerable value of a theory (repeatable)")
@click.option("--judge", default="embedding", show_default=True, help="judge name (built-in or VALUEFLOW_JUDGES_FILE)")
@click.option("--k", default=6, show_default=True, type=click.IntRange(2, 20), help="texts per window")
@click.option("--windows", "m", default=3, show_default=True, type=click.IntRange(1, 50), help="windows per text and value")
@click.option("--anchors", default="bucket", show_default=True, type=click.Choice(["bucket", "random"]))
@click.option("--mode", default="upstream", show_default=True, type=click.Choice(["upstream", "calibrated"]),
              help="upstream: anchors' utility = intensity; calibrated: fit the judge's scale β")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--id-field", default="id", show_default=True)
@click.option("--text-field", default="text", show_default=True)
@click.option("--chunk-size", default=None, type=click.IntRange(1), help="windows per task [VALUEFLOW_CHUNK_SIZE]")
@click.option("--wait/--no-wait", default=False, help="wait for the job, with a progress bar")
@click.option("--local-worker/--no-local-worker", default=None,
              help="run a worker inside this command while waiting [default: on for the embedded default]")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="export scores here when done (.jsonl/.csv/.parquet)")
def score(input_path, values, theories, judge, k, m, anchors, mode, seed, id_field, text_field, chunk_size, wait,
          local_worker, output) -> None:
    """Score INPUT's texts for value intensity in [-10, 10] through the queue."""
    from workers.io.inputs import InputError, read_inputs
    from schemas.messages import ScoreJobSpec
    from schemas.taxonomy import UnknownValueError, default_taxonomy
    from workers.judges.config import get_judge_config

    # Everything is validated before the store is touched: bad input writes nothing.
    if not values and not theories:
        raise click.UsageError("give --value (or 'all') and/or --theory")
    try:
        vals = default_taxonomy().resolve_values(list(values), list(theories))
        get_judge_config(judge)
        rows = read_inputs(input_path, id_field, text_field)
    except (UnknownValueError, InputError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if output is not None and output.suffix.lower() not in (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".pq"):
        raise click.BadParameter("use .jsonl, .csv or .parquet", param_hint="--output")
    settings = load_settings()
    spec = ScoreJobSpec(input=str(input_path), values=[v.key for v in vals], judge=judge, k=k, windows=m,
                        anchors=anchors, seed=seed, mode=mode, chunk_size=chunk_size or settings.chunk_size)
    db_url, broker = resolve_urls()
    app = celery_app(broker)
    if local_worker is None:
        local_worker = settings.embedded and wait

    async def go(store):
        from scheduler import jobs
        from workers.io.vidb_files import ensure_seed

        await ensure_seed(store)
        try:
            job_id = await jobs.submit_score_job(store, app, spec, rows, vals)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        console.print(f"job [bold]{job_id}[/]: {len(rows)} texts × {len(vals)} values × {m} windows (k={k}, judge {judge})")
        if not wait:
            click.echo(job_id)
            return
        proc = spawn_worker(log=settings.home / "worker.log") if local_worker else None
        try:
            state = await jobs.wait(store, job_id)
        finally:
            if proc is not None:
                stop_worker(proc)
        console.print(f"job {job_id}: {state}")
        if output is not None:
            n = await jobs.export(store, job_id, output)
            console.print(f"wrote {n} scores to {output}")
        await print_summary(store, job_id)
        click.echo(job_id)

    run_with_store(go)


async def print_summary(store, job_id: str) -> None:
    rows = await store.pool.fetch(
        "SELECT value, count(*) AS n, avg(intensity) AS mean, avg(intensity_se) AS se,"
        " sum(windows_failed) AS failed FROM scores WHERE job_id=$1 GROUP BY value ORDER BY value", job_id)
    t = Table(title=f"job {job_id}")
    for c in ("value", "texts", "mean intensity", "mean s.e.", "windows failed"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["value"], str(r["n"]), f"{(r['mean'] or 0):+.2f}", f"{(r['se'] or 0):.2f}", str(r["failed"]))
    console.print(t)


# -- jobs ----------------------------------------------------------------------------------------
@main.group()
def jobs() -> None:
    """Inspect and operate jobs."""


@jobs.command("list")
@click.option("--limit", default=20, show_default=True)
def jobs_list(limit: int) -> None:
    async def go(store):
        click.echo(f"{'job':24} {'kind':6} {'state':10} {'texts':>8} {'windows':>9}  created")
        for j in await store.jobs(limit):
            click.echo(f"{j['id']:24} {j['kind']:6} {j['state']:10} {j['n_items']:>8} {j['n_windows']:>9}  "
                       f"{j['created_at']:%Y-%m-%d %H:%M:%S}")
    run_with_store(go)


@jobs.command("status")
@click.argument("job_id")
@click.option("--wait/--no-wait", default=False, help="follow with a live progress bar until it finishes")
def jobs_status(job_id: str, wait: bool) -> None:
    async def go(store):
        from scheduler import jobs as J

        job = await store.job(job_id)
        if job is None:
            raise click.ClickException(f"no job {job_id!r}")
        if wait:
            await J.wait(store, job_id)
        p = await store.job_progress(job_id)
        job = await store.job(job_id)
        click.echo(f"{job_id} {job['state']}: windows {p['done']} done, {p['failed']} failed of {p['total']}; "
                   f"{p['scored']} scores")
    run_with_store(go)


@jobs.command("resume")
@click.argument("job_id")
@click.option("--retry-failed", is_flag=True, help="also retry windows that failed")
def jobs_resume(job_id: str, retry_failed: bool) -> None:
    """Re-enqueue only what is missing."""
    async def go(store):
        from scheduler import jobs as J

        _, broker = resolve_urls()
        try:
            n = await J.resume(store, celery_app(broker), job_id, retry_failed)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"re-enqueued {n} chunk(s) of {job_id}")
    run_with_store(go)


@jobs.command("cancel")
@click.argument("job_id")
def jobs_cancel(job_id: str) -> None:
    async def go(store):
        if await store.job(job_id) is None:
            raise click.ClickException(f"no job {job_id!r}")
        await store.set_job_state(job_id, "cancelled")
        click.echo(f"cancelled {job_id}; queued tasks of it will be skipped")
    run_with_store(go)


@jobs.command("export")
@click.argument("job_id")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path))
def jobs_export(job_id: str, output: Path) -> None:
    async def go(store):
        from scheduler import jobs as J

        if await store.job(job_id) is None:
            raise click.ClickException(f"no job {job_id!r}")
        try:
            n = await J.export(store, job_id, output)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"wrote {n} rows to {output}")
    run_with_store(go)


# -- VIDB ----------------------------------------------------------------------------------------
@main.group()
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

    async def go(store):
        for p, rows in parsed:
            added = await import_rows(store, rows, f"import:{p.name}")
            click.echo(f"{p}: {sum(added.values())} new items over {len(added)} values")
    run_with_store(go)


@vidb.command("stats")
def vidb_stats() -> None:
    async def go(store):
        from workers.io.vidb_files import ensure_seed

        await ensure_seed(store)
        for v, n in sorted((await store.vidb_counts()).items()):
            click.echo(f"{v:35} {n}")
    run_with_store(go)


from scheduler.cli.hives import hives  # noqa: E402  (registered last: heavy imports stay lazy)

main.add_command(hives)

if __name__ == "__main__":
    main()
