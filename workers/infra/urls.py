"""The one place that decides which database and broker a process talks to."""

from __future__ import annotations

import contextlib
import os
from typing import Callable, ContextManager

from schemas.settings import load_settings


def resolve_urls(while_starting: Callable[[], ContextManager] | None = None) -> tuple[str, str]:
    """Configured ``VALUEFLOW_DATABASE_URL``/``VALUEFLOW_BROKER_URL``, or the embedded servers under
    ``VALUEFLOW_HOME`` (started or reused) when neither is set. The embedded URLs are exported to
    the environment so child processes (workers) agree. ``while_starting`` wraps a slow start
    (the CLI shows a spinner)."""
    settings = load_settings()
    if not settings.embedded:
        return settings.database_url, settings.broker_url  # type: ignore[return-value]
    from workers.infra.embedded import ensure_running

    with (while_starting or contextlib.nullcontext)():
        env = ensure_running(settings.home)
    os.environ.update(env)
    return env["VALUEFLOW_DATABASE_URL"], env["VALUEFLOW_BROKER_URL"]
