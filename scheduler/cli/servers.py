"""``valueflow up|down|status|worker|db``: the servers, the broker's queues, the workers."""

from __future__ import annotations

import os

import click

from scheduler.cli.common import celery_app, exit_with_parent, resolve_urls, run_with_store
from schemas.settings import load_settings, redact


@click.command()
def up() -> None:
    """Start (or reuse) the embedded PostgreSQL and Redis."""
    settings = load_settings()
    if not settings.embedded:
        raise click.ClickException("VALUEFLOW_DATABASE_URL/VALUEFLOW_BROKER_URL are set: nothing embedded to start")
    db, broker = resolve_urls()
    click.echo(f"database {db}\nbroker   {broker}\nhome     {settings.home}")


@click.command()
def down() -> None:
    """Stop the embedded servers (their data stays in VALUEFLOW_HOME)."""
    from workers.infra.embedded import stop

    click.echo(" ".join(f"{k}={'stopped' if v else 'not running'}" for k, v in stop(load_settings().home).items()))


@click.command()
def status() -> None:
    """Where the database and broker are, whether the embedded ones run, and queue depths."""
    settings = load_settings()
    if settings.embedded:
        from workers.infra.embedded import status as emb_status

        st = emb_status(settings.home)
        for name in ("postgres", "redis"):
            s = st[name]
            click.echo(f"{name:9}{'running' if s['running'] else 'stopped':8} {s['url'] or ''}")
        broker = st["redis"]["url"] if st["redis"]["running"] else None
    else:
        click.echo(f"database {redact(settings.database_url)}\nbroker   {redact(settings.broker_url)}")
        broker = settings.broker_url
    if broker:
        from workers.tasks.app import queue_depths

        try:
            depths = queue_depths(broker)
        except Exception as exc:  # noqa: BLE001 - status must still print what it knows
            click.echo(f"queues   unreachable ({type(exc).__name__})")
            return
        click.echo("queues   " + "  ".join(f"{q}={n}" for q, n in depths.items()))


@click.command()
@click.option("--queues", "-Q", default="default,gpu,api,refit", show_default=True, help="comma-separated queues")
@click.option("--concurrency", "-c", default=1, show_default=True, type=int)
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "solo", "threads"]))
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="serve Prometheus metrics (judge latency, tokens, retries, chunk durations) on this port")
@click.option("--events/--no-events", default=False, show_default=True,
              help="send Celery task events (Flower's per-task history; one event message per task state)")
def worker(queues: str, concurrency: int, pool: str, loglevel: str, metrics_port: int | None, events: bool) -> None:
    """Start a worker consuming the given queues (run on as many machines as you like)."""
    from workers.tasks.app import QUEUES

    exit_with_parent()
    bad = [q for q in queues.split(",") if q not in QUEUES]
    if bad:
        raise click.BadParameter(f"unknown queue(s) {bad}; known: {', '.join(QUEUES)}", param_hint="--queues")
    if metrics_port is not None:
        import tempfile

        # prometheus_client picks its multiprocess mode when first imported: set the folder first
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="valueflow-metrics-")
        from workers.tasks import metrics

        metrics.serve(metrics_port)
    from workers.tasks import heartbeat, sweeper

    settings = load_settings()
    database, broker = resolve_urls()
    heartbeat.start(database, settings.heartbeat_s)
    if settings.sweep_s:
        sweeper.start(database, broker, settings.sweep_s, settings.stall_warn_s)
    app = celery_app(broker)
    app.worker_main(["worker", "-Q", queues, "-c", str(concurrency), "--pool", pool, "-l", loglevel,
                     "-n", f"vf{os.getpid()}@%h", "--without-gossip", "--without-mingle", *(["-E"] if events else [])])


@click.group()
def db() -> None:
    """Schema management."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations (safe to run twice or concurrently)."""
    from workers.store import upgrade

    async def go(store):
        async with store.pool.acquire() as conn:
            return await upgrade(conn)

    applied = run_with_store(go, migrate=False)
    click.echo("schema up to date" if not applied else "applied: " + ", ".join(applied))


COMMANDS = [up, down, status, worker, db]
