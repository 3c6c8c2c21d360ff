"""Job, chunk and window states: the one place they are spelled.

A job is planned into chunks; every chunk walks the job kind's stages in order. A chunk's
``stage`` says which stage it is in and its state says how that stage went:

    job:    staging ──► running ──► finalizing ──► done
                           │  ╲                     ▲
                           │   ╲── (a chunk failed) ─► failed      (resume --retry-failed ─► running)
                           └─────────────────────────► cancelled
    chunk:  (stage s, pending) ──► (stage s+1, pending) ──► … ──► (last stage, done)
                     └──► (stage s, failed)   (redelivery limit passed in a stage with no give-up)
    window: pending ──► done | failed          (failed windows are counted and retryable)
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    STAGING = "staging"  # being written by the scheduler; invisible until it goes live
    RUNNING = "running"
    FINALIZING = "finalizing"  # every chunk finished its last stage; the finalize step is queued
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class ChunkState(StrEnum):
    PENDING = "pending"  # waiting for (or running) its current stage
    DONE = "done"  # finished the last stage
    FAILED = "failed"  # its current stage gave up; retryable


class WindowState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
