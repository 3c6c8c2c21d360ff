"""The Celery application: queues, routing, reliability settings.

Reliability: JSON only; a task is acknowledged after it finishes (``acks_late``) and re-queued if
its worker dies (``reject_on_worker_lost``); each worker process takes one message at a time
(prefetch 1); Redis re-delivers an unacknowledged message after ``visibility_timeout`` seconds,
which is longer than any task. How often a chunk's stage was started is counted in PostgreSQL
(``chunks.deliveries``); past ``VALUEFLOW_MAX_REDELIVERIES`` the stage gives up instead of looping.

Tasks are named ``valueflow.<queue>.<task>`` and routed by name (``task_routes``); they are
``shared_task``s, so every app made here (one per broker URL) knows them.
"""

from __future__ import annotations

import time
from functools import lru_cache

from celery import Celery
from kombu import Queue

from schemas.settings import ConfigError, load_settings

QUEUES = ("default", "gpu", "api", "refit")
TASK_MODULES = ["workers.tasks.stage", "workers.tasks.maintenance"]


def task_name(queue: str, task: str) -> str:
    return f"valueflow.{queue}.{task}"


def queue_depths(broker_url: str) -> dict[str, int]:
    """Messages waiting in each queue (Celery's Redis transport keeps one list per queue)."""
    import redis

    r = redis.Redis.from_url(broker_url, socket_connect_timeout=3, socket_timeout=10)
    try:
        return {q: int(r.llen(q)) for q in QUEUES}
    finally:
        r.close()


SENT_HEADER = "vf_sent"  # a lifecycle message's send time (epoch seconds, the sender's clock)


def sent_now() -> dict[str, float]:
    """The headers every message this project sends carries (``send_task(headers=...)``)."""
    return {SENT_HEADER: time.time()}


def oldest_sent(broker_url: str) -> dict[str, float]:
    """Per queue that holds messages, when its oldest message was sent (``SENT_HEADER``; −∞ when
    that message does not say: sent by an older version or by hand). Queues are FIFO lists (Celery's
    Redis transport pushes on the left and workers pop on the right), so a task sent before that
    moment is no longer waiting in the queue: a worker took it, or the queue lost it. Empty queues
    are left out."""
    import json

    import redis

    r = redis.Redis.from_url(broker_url, socket_connect_timeout=3, socket_timeout=10)
    try:
        heads = r.pipeline(transaction=False)
        for q in QUEUES:
            heads.lindex(q, -1)
        out = {}
        for q, raw in zip(QUEUES, heads.execute()):
            if raw is None:
                continue
            try:
                out[q] = float(json.loads(raw)["headers"][SENT_HEADER])
            except (ValueError, KeyError, TypeError):
                out[q] = float("-inf")
        return out
    finally:
        r.close()


def make_app(broker_url: str | None = None) -> Celery:
    """A Celery app bound to ``broker_url`` (None: the configured one, resolved lazily by Celery)."""
    try:
        settings = load_settings()
    except ConfigError:  # reported by whoever resolves the URLs; importing must not fail
        settings = None
    broker = broker_url or (settings.broker_url if settings else None)
    visibility = settings.visibility_timeout if settings else 4 * 3600
    app = Celery("valueflow", broker=broker, backend=broker, include=TASK_MODULES)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="default",
        task_queues=[Queue(q) for q in QUEUES],
        task_routes={task_name(q, "*"): {"queue": q} for q in QUEUES},
        task_ignore_result=True,
        result_expires=3600,
        broker_transport_options={"visibility_timeout": visibility},
        result_backend_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache(maxsize=None)
def app_for(broker_url: str) -> Celery:
    """One app per broker URL in this process (tests talk to several brokers)."""
    return make_app(broker_url)


# for `celery --app workers.tasks.app:app ...` (Flower, inspect): the configured broker
app = make_app()
