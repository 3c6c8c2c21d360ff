"""Helpers shared by the scale benchmarks: scratch databases, child processes measured by wait4,
a fake OpenAI-compatible judge server in its own process, a judges file pointing at it.

Servers: ``VALUEFLOW_BENCH_PG`` (an admin URL of a PostgreSQL server; default the local one,
``postgresql://postgres@127.0.0.1:5432/test``) and ``VALUEFLOW_BENCH_REDIS`` (default
``redis://127.0.0.1:6399``). Every benchmark creates its own scratch database and drops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADMIN_PG = os.environ.get("VALUEFLOW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
BENCH_REDIS = os.environ.get("VALUEFLOW_BENCH_REDIS", "redis://127.0.0.1:6399")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_db(admin: str = ADMIN_PG) -> tuple[str, str]:
    """A fresh scratch database on the admin URL's server: (url, name)."""
    name = f"vf_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    from workers.infra.urls import with_database

    return with_database(admin, name), name


def drop_db(name: str, admin: str = ADMIN_PG) -> None:
    asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def flush_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


@dataclass
class Measured:
    rc: int
    seconds: float
    peak_rss_mb: float  # the child's own peak resident set (wait4's ru_maxrss)
    stdout: str
    stderr: str


def run_measured(args: list[str], env: dict, timeout: float) -> Measured:
    """Run ``python -m scheduler.cli ARGS`` and measure its wall time and peak RSS (wait4)."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "scheduler.cli", *args], env=env, cwd=ROOT, stdout=out,
                             stderr=err, start_new_session=True)
        killer = threading.Timer(timeout, lambda: os.killpg(p.pid, signal.SIGKILL))
        killer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            killer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)  # we reaped it: tell Popen
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return Measured(p.returncode, seconds, usage.ru_maxrss / 1024, out.read().decode(errors="replace"),
                        err.read().decode(errors="replace"))


def start_fake_openai(delay: float, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """The fake OpenAI-compatible server (tests/fake_openai.py) in its own process."""
    port = port or free_port()
    p = subprocess.Popen([sys.executable, "-m", "tests.fake_openai", str(port), str(delay)], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return p, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise RuntimeError("fake OpenAI server did not start")


def judges_file(path: Path, base_url: str, concurrency: int, name: str = "fake") -> Path:
    path.write_text(f'[judges.{name}]\nkind = "api"\nmodel = "ok"\nbase_url = "{base_url}"\n'
                    f'concurrency = {concurrency}\nstructured = "json_schema"\ntimeout_s = 30\n')
    return path


def start_worker(env: dict, queues: str, log: Path, concurrency: int = 1, pool: str = "solo") -> subprocess.Popen:
    fh = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "scheduler.cli", "worker", "-Q", queues, "-c", str(concurrency),
                             "--pool", pool, "--loglevel", "WARNING"], env=env, cwd=ROOT, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs: list[subprocess.Popen], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
    end = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
