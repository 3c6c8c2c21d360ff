"""The one Celery application: queues, reliability settings, and the process-wide runtime.

Reliability: JSON only; a task is acknowledged after it finishes (``acks_late``) and re-queued if
its worker dies (``reject_on_worker_lost``); each worker process takes one message at a time
(prefetch 1); Redis re-delivers an unacknowledged message after ``visibility_timeout`` seconds,
which is longer than any task. How often a chunk was started is counted in PostgreSQL
(``chunks.deliveries``); past ``VALUEFLOW_MAX_REDELIVERIES`` it is failed instead of retried forever.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

from schemas.settings import ConfigError, load_settings

QUEUES = ("default", "gpu", "api", "refit")


def _urls() -> tuple[str, str]:
    settings = load_settings()
    if settings.embedded:
        from workers.infra.embedded import ensure_running

        env = ensure_running(settings.home)
        os.environ.update(env)
        return env["VALUEFLOW_DATABASE_URL"], env["VALUEFLOW_BROKER_URL"]
    return settings.database_url, settings.broker_url  # type: ignore[return-value]


def make_app() -> Celery:
    try:
        settings = load_settings()
    except ConfigError:  # reported by whoever resolves the URLs; importing must not fail
        settings = None
    broker = settings.broker_url if settings else None
    visibility = settings.visibility_timeout if settings else 4 * 3600
    app = Celery("valueflow", broker=broker, backend=broker)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="default",
        task_queues=[Queue(q) for q in QUEUES],
        task_ignore_result=True,
        result_expires=3600,
        broker_transport_options={"visibility_timeout": visibility},
        result_backend_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        include=["workers.tasks_api", "workers.tasks_gpu", "workers.tasks_refit", "workers.tasks_default"],
    )
    return app


app = make_app()


def configure(broker_url: str | None = None) -> None:
    """Bind the app to its broker (resolving the embedded default if none is configured)."""
    if broker_url is None:
        _, broker_url = _urls()
    if app.conf.broker_url == broker_url and app.conf.result_backend == broker_url:
        return
    app.conf.broker_url = broker_url
    app.conf.result_backend = broker_url
    # drop connections cached for a previous broker (one process may talk to several, e.g. tests)
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    app._local.__dict__.pop("backend", None)
