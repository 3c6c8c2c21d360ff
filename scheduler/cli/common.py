"""What every command group shares: the console, connections, a worker subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import click
from rich.console import Console

console = Console(stderr=True)
ID_FIELD_HELP = "field/column holding each text's id; named, it must be there [default: id where present, else line-N]"


def resolve_urls() -> tuple[str, str]:
    """Configured URLs, or the embedded servers (started or reused, with a spinner)."""
    from workers.infra.urls import resolve_urls as resolve

    return resolve(lambda: console.status("starting the embedded PostgreSQL and Redis…"))


def celery_app(broker_url: str):
    from workers.tasks.app import app_for

    return app_for(broker_url)


def unreachable(server: str, exc: BaseException) -> click.ClickException:
    """One line for a server a command cannot reach (``server``: "database" or "broker"): which
    one, where it was configured, and why."""
    from schemas.settings import load_settings, redact
    from workers.infra.transient import describe

    settings = load_settings()
    var, url = (("VALUEFLOW_DATABASE_URL", settings.database_url) if server == "database"
                else ("VALUEFLOW_BROKER_URL", settings.broker_url))
    if settings.embedded:
        where = f"the embedded {'PostgreSQL' if server == 'database' else 'Redis'} under {settings.home}"
    else:
        where = f"{redact(url or '')} ({var})"
    return click.ClickException(f"cannot reach the {server}, {where}: {describe(exc)}")


def _connect_errors() -> tuple[type[BaseException], ...]:
    """What connecting to PostgreSQL raises when the server is not there or refuses us."""
    from asyncpg import exceptions as pgx

    return (OSError, asyncio.TimeoutError, pgx.InvalidCatalogNameError, pgx.InvalidAuthorizationSpecificationError,
            pgx.CannotConnectNowError, pgx.TooManyConnectionsError)


async def _with_store(fn, *args, migrate: bool = True):
    from workers.store import open_store

    db, _ = resolve_urls()
    try:
        store = await open_store(db, migrate=migrate)
    except _connect_errors() as exc:
        raise unreachable("database", exc) from None
    try:
        return await fn(store, *args)
    finally:
        await store.close()


def check_broker(app) -> None:
    """Fail now, in one line, when the broker cannot be reached (before a job is stored that could
    not be sent); a reachable broker costs one connection."""
    from kombu.exceptions import OperationalError

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=0)  # one try, no back-off sleep
    except OperationalError as exc:
        raise unreachable("broker", exc) from None


def run_with_store(fn, *args, migrate: bool = True):
    """Run ``fn(store, *args)``; a ValueError becomes a one-line CLI error."""
    try:
        return asyncio.run(_with_store(fn, *args, migrate=migrate))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def spawn_worker(queues: str = "default,gpu,api,refit", concurrency: int = 1, log: Path | None = None) -> subprocess.Popen:
    """A worker subprocess of this CLI (used by ``--wait`` on the embedded default)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    # the worker stops when this command dies, even by SIGKILL (an orphan would take other jobs' tasks)
    env = dict(os.environ, VALUEFLOW_PARENT_PID=str(os.getpid()))
    try:
        return subprocess.Popen([sys.executable, "-m", "scheduler.cli", "worker", "-Q", queues, "-c", str(concurrency),
                                 "--loglevel", "WARNING"], stdout=out, stderr=out, env=env, start_new_session=True)
    finally:
        if log:
            out.close()  # the worker has its own copy


def default_local_worker(flag: bool | None) -> bool:
    """``--local-worker/--no-local-worker`` as given, else on for the embedded default."""
    from schemas.settings import load_settings

    return load_settings().embedded if flag is None else flag


@contextlib.contextmanager
def local_worker_while(enabled: bool):
    """A worker subprocess (logging to ``VALUEFLOW_HOME/worker.log``) for the duration of the block,
    when ``enabled``; stopped however the block ends."""
    if not enabled:
        yield
        return
    from schemas.settings import load_settings

    home = load_settings().home
    home.mkdir(parents=True, exist_ok=True)
    proc = spawn_worker(log=home / "worker.log")
    try:
        yield
    finally:
        stop_worker(proc)


def _process_state(pid: int) -> str:
    """A Linux process's state letter (R, S, Z...), or "gone"."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "gone"


def exit_with_parent() -> None:
    """In a worker that :func:`spawn_worker` started: get SIGTERM when the spawning command dies
    (Linux ``PR_SET_PDEATHSIG``; Celery then stops after its current task), and stop now if it is
    already gone. Elsewhere, or without ``VALUEFLOW_PARENT_PID``, a no-op. (The signal follows the
    thread that started the worker: :func:`spawn_worker` runs on the command's main thread.)"""
    parent = os.environ.pop("VALUEFLOW_PARENT_PID", None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    if not parent.isdigit():
        console.print(f"worker: VALUEFLOW_PARENT_PID={parent!r} is not a process id; ignored")
        return
    if os.getppid() != int(parent):
        if os.getppid() == 1 or _process_state(int(parent)) in ("gone", "Z"):  # it died (maybe not reaped yet)
            raise SystemExit(f"worker: the command that started it (pid {parent}) is gone")
        console.print(f"worker: VALUEFLOW_PARENT_PID={parent} is not this worker's parent; ignored")
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # it died between the check and the prctl
        raise SystemExit(f"worker: the command that started it (pid {parent}) is gone")


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
