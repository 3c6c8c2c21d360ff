"""Tasks of the ``refit`` queue: anchored Plackett–Luce scoring (and, next, VIDB refits)."""

from __future__ import annotations

from schemas.messages import ChunkTask
from workers.tasks import runtime
from workers.tasks.app import app
from workers.scoring import score_chunk as score_chunk_lib
from workers.tasks_common import RETRY


@app.task(name="valueflow.refit.score_chunk", **RETRY)
def score_chunk(job_id: str, chunk_no: int) -> dict:
    msg = ChunkTask(job_id=job_id, chunk_no=chunk_no)
    finished = runtime.run(score_chunk_lib(runtime.store(), msg.job_id, msg.chunk_no))
    return {"job_finished": finished}
