"""Fixtures: the real PostgreSQL and Redis of this machine, worker subprocesses, shared models.

Each test that needs a database gets a fresh one (``CREATE DATABASE`` on the server named by
``VALUEFLOW_TEST_PG``, default ``postgresql://postgres@127.0.0.1:5432/test``); Redis tests use a
dedicated logical database that is flushed first.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from workers.infra.urls import with_database

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "valueflow-data"
ADMIN_PG = os.environ.get("VALUEFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
TEST_REDIS = os.environ.get("VALUEFLOW_TEST_REDIS", "redis://127.0.0.1:6379")

for var in ("VALUEFLOW_DATABASE_URL", "VALUEFLOW_BROKER_URL"):
    os.environ.pop(var, None)  # tests choose their servers explicitly


def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"upstream reference data missing at {SHARED}")
    return SHARED


def vidb_sample() -> dict:
    """The upstream VIDB sample of all four theories: value → bin → [{text, intensity}]."""
    import json

    data = {}
    for t in ("pvq", "mft", "duty", "right"):
        data.update(json.loads((shared_data() / "vidb-sample" / f"{t}.json").read_text()))
    return data


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_PG)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _db_url(name: str) -> str:
    return with_database(ADMIN_PG, name)


@pytest.fixture
def pg_url():
    """A fresh, empty database on the real server; dropped afterwards."""
    name = f"vf_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield _db_url(name)
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


_redis_db = iter(range(2, 16))


@pytest.fixture
def redis_url():
    """A flushed logical database of the real Redis."""
    import redis

    n = next(_redis_db, None)
    if n is None:
        n = 15
    url = f"{TEST_REDIS}/{n}"
    redis.Redis.from_url(url).flushdb()
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
def env(pg_url, redis_url, tmp_path):
    """Environment for CLI/worker subprocesses pointing at the test servers."""
    e = os.environ.copy()
    e.update(VALUEFLOW_DATABASE_URL=pg_url, VALUEFLOW_BROKER_URL=redis_url, VALUEFLOW_HOME=str(tmp_path / "home"),
             PYTHONUNBUFFERED="1")
    return e


class Workers:
    """Worker subprocesses started by a test; all are killed at teardown."""

    def __init__(self, env: dict, tmp: Path):
        self.env, self.tmp, self.procs = env, tmp, []

    def start(self, queues: str = "default,gpu,api,refit", concurrency: int = 1, pool: str = "prefork") -> subprocess.Popen:
        log = open(self.tmp / f"worker{len(self.procs)}.log", "wb")
        p = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "worker", "-Q", queues, "-c", str(concurrency),
                              "--pool", pool, "--loglevel", "INFO"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True, cwd=ROOT)
        self.procs.append(p)
        return p

    def kill(self, p: subprocess.Popen, sig=signal.SIGKILL) -> None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        p.wait(30)

    def logs(self) -> str:
        return "\n".join(f.read_text(errors="replace") for f in sorted(self.tmp.glob("worker*.log")))

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 20
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture
def workers(env, tmp_path):
    w = Workers(env, tmp_path)
    yield w
    w.stop_all()


def wait_until(condition, timeout_s: float, every_s: float = 0.2) -> None:
    """Poll ``condition()`` until it is true or ``timeout_s`` has passed; the caller asserts the
    outcome (what a worker writes after its task returns may trail what the test waited on)."""
    end = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < end:
        time.sleep(every_s)


def listen_for_events(broker_url: str, record, timeout_s: float = 120) -> None:
    """Receive the workers' Celery events as Flower does, in a daemon thread for up to ``timeout_s``,
    calling ``record(event)`` for each; returns once the receiver had a second to connect."""
    import threading

    from celery import Celery

    def listen():
        monitor = Celery(broker=broker_url)
        with monitor.connection() as conn:
            recv = monitor.events.Receiver(conn, handlers={"*": record})
            try:
                recv.capture(limit=None, timeout=timeout_s, wakeup=False)
            except Exception:  # noqa: BLE001 - the capture times out once the test is over
                pass

    threading.Thread(target=listen, daemon=True).start()
    time.sleep(1.0)


def run_cli(args: list[str], env: dict, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "scheduler.cli", *args], env=env, capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT)
    if check and res.returncode != 0:
        raise AssertionError(f"valueflow {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="session")
def encoder():
    """The default MiniLM encoder, loaded once for the whole session."""
    from workers.hives.encoder import Encoder

    return Encoder()


@pytest.fixture(scope="session")
def embedding_judge(encoder):
    from workers.judges.config import BUILTIN
    from workers.judges.embedding_judge import EmbeddingJudge

    return EmbeddingJudge(BUILTIN["embedding"], encoder=encoder)


async def open_test_store(url: str):
    from workers.store import open_store

    return await open_store(url)
