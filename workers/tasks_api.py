"""Tasks of the ``api`` queue: judge calls to OpenAI-compatible servers (I/O bound, one event loop)."""

from __future__ import annotations

from workers.tasks.app import app
from workers.tasks_common import RETRY, judge_and_hand_off


@app.task(name="valueflow.api.judge_chunk", **RETRY)
def judge_chunk(job_id: str, chunk_no: int) -> dict:
    return judge_and_hand_off(job_id, chunk_no)
