"""The one place that decides which database and broker a process talks to."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, ContextManager
from urllib.parse import quote, urlsplit, urlunsplit

from schemas.settings import EMBEDDED_HOME_VAR, load_settings


def resolve_urls(while_starting: Callable[[], ContextManager] | None = None) -> tuple[str, str]:
    """Configured ``VALUEFLOW_DATABASE_URL``/``VALUEFLOW_BROKER_URL``, or the embedded servers under
    ``VALUEFLOW_HOME`` (started or reused) when neither is set. The embedded URLs are exported to
    the environment so child processes (workers) agree. ``while_starting`` wraps a slow start
    (the CLI shows a spinner)."""
    settings = load_settings()
    if settings.database_url is not None:  # configured, or the embedded ones exported already
        return settings.database_url, settings.broker_url  # type: ignore[return-value]
    from workers.infra.embedded import ensure_running

    with (while_starting or contextlib.nullcontext)():
        env = ensure_running(settings.home)
    os.environ.update(env, **{EMBEDDED_HOME_VAR: str(settings.home)})
    return env["VALUEFLOW_DATABASE_URL"], env["VALUEFLOW_BROKER_URL"]


def with_database(url: str, name: str) -> str:
    """The PostgreSQL URL ``url`` with its database replaced by ``name``: same server, user and
    options. Works for TCP URLs (``postgresql://u@host:5432/db``) and for the embedded default's
    socket URL (``postgresql://postgres:@/postgres?host=/state/pgdata``), whose query holds a path."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    return urlunsplit(parts._replace(path="/" + quote(name, safe="")))


def with_redis_db(url: str, db: int) -> str:
    """The Redis URL ``url`` pointing at database number ``db`` of the same server."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a Redis URL: {url!r}")
    return urlunsplit(parts._replace(path=f"/{int(db)}"))
