"""``valueflow jobs list|status|wait|resume|cancel|export``: every job kind, one set of commands."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from pathlib import Path

import click
from rich.table import Table

from scheduler.cli.common import (celery_app, check_broker, console, default_local_worker, local_worker_while,
                                  resolve_urls, run_with_store)


@click.group()
def jobs() -> None:
    """Inspect and operate jobs of every kind."""


@jobs.command("list")
@click.option("--limit", default=20, show_default=True)
def jobs_list(limit: int) -> None:
    async def go(store):
        click.echo(f"{'job':24} {'kind':10} {'state':10} {'items':>8} {'windows':>9}  created")
        for j in await store.jobs(limit):
            click.echo(f"{j['id']:24} {j['kind']:10} {j['state']:10} {j['n_items']:>8} {j['n_windows']:>9}  "
                       f"{j['created_at']:%Y-%m-%d %H:%M:%S}")
    run_with_store(go)


def _fmt(x, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


async def print_status(store, job_id: str, as_json: bool = False) -> dict:
    from scheduler import jobs as J

    st = await J.status(store, job_id)
    if as_json:
        click.echo(json.dumps(st, default=str, indent=2))
        return st
    w = st["windows"]
    click.echo(f"{job_id} [{st['kind']}] {st['state']}: windows {w['done']} done, {w['failed']} failed of "
               f"{w['total']}; {st['scored']} scores" + (f"\n  error: {st['error']}" if st["error"] else ""))
    for s in st["stages"]:
        click.echo(f"  stage {s['stage']:10} {s['done']:>7}/{s['of']} chunks done"
                   + (f", {s['pending']} pending" if s["pending"] else "") + (f", {s['failed']} failed" if s["failed"] else ""))
    for name, counts in st["counts"].items():
        click.echo(f"  {name}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    t = st["telemetry"]
    rate = f"{t['windows_per_s']:.1f} windows/s" if t["windows_per_s"] else "—"
    click.echo(f"  judge: {t['calls']} calls ({t['cached']} cached), tokens {t['tokens_in']} in / {t['tokens_out']} out, "
               f"latency p50 {_fmt(t['p50'], '.3f')} s p95 {_fmt(t['p95'], '.3f')} s, {rate}")
    if t["failures"]:
        click.echo("  failures: " + ", ".join(f"{c} {n}" for c, n in t["failures"].items()))
    if st["health"]:
        tab = Table(title="judge health (anchor-order agreement)")
        for c in ("value", "judge", "windows", "failed", "tau [95% CI]", "beta", "shown order", "1st pos wins", "verdict"):
            tab.add_column(c)
        for h in st["health"]:
            tab.add_row(h["value"], h["judge"], str(h["windows"]), str(h["windows_failed"]),
                        f"{_fmt(h['anchor_tau'], '+.2f')} [{_fmt(h['anchor_tau_lo'], '+.2f')}, {_fmt(h['anchor_tau_hi'], '+.2f')}]",
                        _fmt(h["beta"]), _fmt(h["shown_order_share"], ".0%"), _fmt(h["first_position_win"], ".0%"),
                        h["verdict"])
        console.print(tab)
        for h in st["health"]:
            if h["verdict"] != "ok":
                click.secho(f"WARNING {h['value']} / {h['judge']}: {h['verdict'][6:]}", fg="red", bold=True, err=True)
    return st


@jobs.command("status")
@click.argument("job_id")
@click.option("--wait/--no-wait", default=False, help="follow with a live progress bar until it finishes")
@click.option("--json", "as_json", is_flag=True, help="print the status as JSON")
def jobs_status(job_id: str, wait: bool, as_json: bool) -> None:
    """State, progress per stage, judge telemetry and judge health of a job."""
    async def go(store):
        from scheduler import jobs as J

        if await store.job(job_id) is None:
            raise click.ClickException(f"no job {job_id!r}")
        if wait:
            await J.wait(store, job_id, show=not as_json)
        await print_status(store, job_id, as_json)
    run_with_store(go)


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=float, default=None, help="give up after this many seconds (exit 1)")
@click.option("--resume-stalled", is_flag=True,
              help="each time the job has not moved for VALUEFLOW_STALL_WARN_S seconds, re-enqueue what is lost: chunks "
                   "no worker started whose task is no longer in its queue (tasks a restarted Redis lost), chunks whose "
                   "worker process died (its heartbeat expired), a lost finalize; a chunk a live worker runs, or one "
                   "waiting in its queue behind others, is left alone (workers also do this themselves every VALUEFLOW_SWEEP_S seconds)")
@click.option("--local-worker/--no-local-worker", default=None,
              help="run a worker inside this command while waiting [default: on for the embedded default]")
def jobs_wait(job_id: str, timeout: float | None, resume_stalled: bool, local_worker: bool | None) -> None:
    """Block until the job finishes; exit 1 if it failed or was cancelled."""
    local_worker = default_local_worker(local_worker)

    async def go(store):
        from scheduler import jobs as J
        from schemas.settings import load_settings
        from schemas.states import FINISHED
        from workers.tasks.sweeper import resend_lost

        job = await store.job(job_id)
        if job is None:
            raise click.ClickException(f"no job {job_id!r}")
        broker = resolve_urls()[1] if resume_stalled else ""
        app = celery_app(broker) if resume_stalled else None

        async def resume() -> tuple[str, bool]:
            sent = await resend_lost(store, app, broker, [job_id], lost_after_s=load_settings().stall_warn_s)
            n = sent.get(job_id, 0)
            return f"re-enqueued {n} task(s) of {job_id}", n == 0  # nothing lost yet: look again next stall
        with local_worker_while(local_worker and job["state"] not in FINISHED), left_running_hint(job_id):
            state = await J.wait(store, job_id, timeout_s=timeout, on_stall=resume if resume_stalled else None)
        click.echo(f"{job_id} {state}")
        if state != "done":
            raise SystemExit(1)
    run_with_store(go)


@jobs.command("resume")
@click.argument("job_id")
@click.option("--retry-failed", is_flag=True, help="also retry windows and chunks that failed")
def jobs_resume(job_id: str, retry_failed: bool) -> None:
    """Re-enqueue only what is missing."""
    async def go(store):
        from scheduler import jobs as J

        _, broker = resolve_urls()
        n = await J.resume(store, celery_app(broker), job_id, retry_failed)
        click.echo(f"re-enqueued {n} task(s) of {job_id}")
    run_with_store(go)


@jobs.command("cancel")
@click.argument("job_id")
def jobs_cancel(job_id: str) -> None:
    async def go(store):
        from scheduler import jobs as J

        await J.cancel(store, job_id)
        click.echo(f"cancelled {job_id}; queued tasks of it will be skipped")
    run_with_store(go)


@jobs.command("export")
@click.argument("job_id")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path))
def jobs_export(job_id: str, output: Path) -> None:
    async def go(store):
        from scheduler import jobs as J

        n = await J.export(store, job_id, output)
        click.echo(f"wrote {n} rows to {output}")
    run_with_store(go)


@contextlib.contextmanager
def left_running_hint(job_id: str):
    """Interrupted while following a job (Ctrl-C): say that the job goes on and how to follow it."""
    try:
        yield
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print(f"job {job_id} goes on without this command: `valueflow jobs wait {job_id}` follows it again "
                      f"(and runs a worker on the embedded default); `valueflow jobs cancel {job_id}` stops it")
        raise


async def wait_and_export(store, job_id: str, output: Path | None, local_worker: bool) -> str:
    """Follow a job to its end (running a local worker meanwhile if asked), export, print status."""
    from scheduler import jobs as J

    with local_worker_while(local_worker), left_running_hint(job_id):
        state = await J.wait(store, job_id)
    console.print(f"job {job_id}: {state}")
    await print_status(store, job_id)
    if state == "failed":
        job = await store.job(job_id)
        raise click.ClickException(f"job {job_id} failed: {job['error']}")
    if output is not None:
        n = await J.export(store, job_id, output)
        console.print(f"wrote {n} rows to {output}")
    return state


async def record_vidb_view(store, spec):
    """``spec`` with the VIDB it ranks against recorded (``vidb_versions``: every value's latest
    version), so its anchors and a judge that learns from the VIDB stay put while the VIDB grows."""
    from workers.vidb.versions import vidb_view

    values = spec.all_values() if hasattr(spec, "all_values") else spec.values
    return spec.model_copy(update={"vidb_versions": await vidb_view(store.pool, values)})


def _export_path(ctx, param, value: Path | None) -> Path | None:
    from scheduler import jobs as J

    if value is not None and value.suffix.lower() not in J.EXPORT_SUFFIXES:
        raise click.BadParameter(f"{value}: use .jsonl, .csv or .parquet")
    return value


def follow_options(output_help: str | None):
    """``--wait``, ``--local-worker`` and (with ``output_help``) ``-o``: what a command that submits a
    job offers. The export's format is checked before anything is submitted."""
    def deco(command):
        @functools.wraps(command)
        def f(*args, **kw):
            output = kw.get("output")
            if output is not None and kw.get("dry_run"):
                raise click.UsageError(f"-o {output}: a dry run submits nothing to export")
            if output is not None and not kw.get("wait"):  # before the command reads or stores anything
                raise click.UsageError(f"-o {output} needs --wait (or export later: valueflow jobs export JOB -o {output})")
            return command(*args, **kw)

        if output_help is not None:
            f = click.option("-o", "--output", type=click.Path(path_type=Path), callback=_export_path,
                             help=f"{output_help} (.jsonl/.csv/.parquet; needs --wait)")(f)
        f = click.option("--local-worker/--no-local-worker", default=None,
                         help="run a worker inside this command while waiting [default: on for the embedded default]")(f)
        return click.option("--wait/--no-wait", default=False, help="wait for the job, with a progress bar")(f)
    return deco


def submit_and_follow(kind, spec, plan, describe, *, wait: bool, local_worker: bool | None,
                      output: Path | None = None, seed_vidb: bool = True, prepare=None, after=None,
                      runs=()) -> None:
    """What every job-submitting command does: submit a job of ``kind``, print ``describe(job, spec)``,
    with ``--wait`` follow it to the end (a local worker by default on the embedded servers) and
    export to ``output``; the job id is the last line printed.

    ``prepare(store, spec) -> spec`` completes the spec from the store (e.g. VIDB versions) and
    ``plan`` is then ``plan(spec)``; ``after(store, job_id, spec)`` runs once a waited job finished.
    ``seed_vidb`` imports the shipped seed VIDB first (anchors for jobs that score). ``runs``: the
    judge and model configs the job's workers load; when this command runs the worker, one that
    cannot be loaded here (the default SmolLM2 without the ``llm`` extra) is refused before
    anything is stored.
    """
    from scheduler import jobs as J

    local_worker = wait and default_local_worker(local_worker)  # without --wait no worker runs here
    if local_worker and runs:
        from workers.llm.smollm2 import missing_here

        for cfg in runs:
            if (why := missing_here(cfg)) is not None:
                raise click.ClickException(f"{cfg.what} {cfg.name!r}: {why} (this command runs the job's worker "
                                           f"here; --no-local-worker leaves the job to workers that have it)")
    _, broker = resolve_urls()
    app = celery_app(broker)
    check_broker(app)  # before anything is stored

    async def go(store):
        job_spec = spec
        if seed_vidb:
            from workers.io.vidb_files import ensure_seed

            await ensure_seed(store)
        if prepare is not None:
            job_spec = await prepare(store, spec)
        job_id = await J.submit(store, app, kind, job_spec, plan(job_spec) if prepare is not None else plan)
        console.print(f"job [bold]{job_id}[/]: {describe(await store.job(job_id), job_spec)}")
        if wait:
            await wait_and_export(store, job_id, output, local_worker)
            if after is not None:
                await after(store, job_id, job_spec)
        click.echo(job_id)

    run_with_store(go)

