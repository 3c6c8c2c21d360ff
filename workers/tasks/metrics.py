"""Prometheus metrics of a worker, and its JSON log lines (one per chunk and stage, one per ready process).

``valueflow worker --metrics-port N`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder
before any worker process starts, so every prefork child records into it, and serves the merged
view on ``:N/metrics`` from the main process (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import json
import logging
import os
import sys

from prometheus_client import Counter, Histogram

from workers.jobs.kind import StageReport

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

JUDGE_LATENCY = Histogram("valueflow_judge_latency_seconds", "Latency of one judge or model call batch",
                          ["kind", "stage"], buckets=LATENCY_BUCKETS)
CALLS = Counter("valueflow_judge_calls_total", "Judge or model calls made (cache hits excluded)", ["kind", "stage"])
TOKENS = Counter("valueflow_tokens_total", "Tokens sent and received", ["kind", "stage", "direction"])
RETRIES = Counter("valueflow_judge_retries_total", "Calls retried after a transient failure", ["kind", "stage"])
WINDOWS = Counter("valueflow_windows_total", "Windows (or items) finished by a stage", ["kind", "stage", "state"])
CHUNK_SECONDS = Histogram("valueflow_chunk_duration_seconds", "Wall time of one stage over one chunk",
                          ["kind", "stage"], buckets=LATENCY_BUCKETS)
FINALIZED = Counter("valueflow_finalize_total", "Finalize steps committed", ["kind"])

chunk_log = logging.getLogger("valueflow.chunks")
if not chunk_log.handlers:
    _h = logging.StreamHandler(sys.stderr)
    _h.setFormatter(logging.Formatter("%(message)s"))
    chunk_log.addHandler(_h)
    chunk_log.setLevel(logging.INFO)
    chunk_log.propagate = False


def observe_stage(kind: str, stage: str, job_id: str, chunk_no: int, outcome: str, seconds: float,
                  report: StageReport) -> None:
    """Record one stage run in the metrics and log it as one JSON line."""
    CHUNK_SECONDS.labels(kind, stage).observe(seconds)
    CALLS.labels(kind, stage).inc(report.calls)
    RETRIES.labels(kind, stage).inc(report.retries)
    TOKENS.labels(kind, stage, "prompt").inc(report.tokens_in)
    TOKENS.labels(kind, stage, "completion").inc(report.tokens_out)
    WINDOWS.labels(kind, stage, "done").inc(report.done)
    WINDOWS.labels(kind, stage, "failed").inc(report.failed)
    for s in report.latencies:
        JUDGE_LATENCY.labels(kind, stage).observe(s)
    chunk_log.info(json.dumps({
        "event": "chunk", "job": job_id, "kind": kind, "stage": stage, "chunk": chunk_no, "outcome": outcome,
        "duration_s": round(seconds, 4), "calls": report.calls, "tokens_in": report.tokens_in,
        "tokens_out": report.tokens_out, "retries": report.retries, "done": report.done, "failed": report.failed,
        "pid": os.getpid()}))


def log_process_ready(frozen_objects: int, role: str, kinds: list[str] | None = None) -> None:
    """One JSON line when a worker process is ready: the parent (with the job kinds it imported)
    and each prefork child, with the objects it froze out of the collector's reach."""
    line = {"event": "process_ready", "role": role, "pid": os.getpid(), "frozen_objects": frozen_objects}
    if kinds is not None:
        line["kinds"] = kinds
    chunk_log.info(json.dumps(line))


def serve(port: int) -> None:
    """Serve the merged metrics of every process of this worker on ``port``."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)
