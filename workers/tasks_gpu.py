"""Tasks of the ``gpu`` queue: local LLM and embedding judges, HiVES embeddings (CUDA when present)."""

from __future__ import annotations

from schemas.messages import EmbedTask
from workers.tasks import runtime
from workers.tasks.app import app
from workers.tasks_common import RETRY, judge_and_hand_off


@app.task(name="valueflow.gpu.judge_chunk", **RETRY)
def judge_chunk(job_id: str, chunk_no: int) -> dict:
    return judge_and_hand_off(job_id, chunk_no)


@app.task(name="valueflow.gpu.embed", ignore_result=False)
def embed(**body) -> dict:
    """Embed texts, caching vectors in the store by (model version, text hash)."""
    from workers.hives.embed import embed_cached
    from workers.hives.encoder import Encoder

    msg = EmbedTask(**body)
    store = runtime.store()
    encoder = runtime.cached(f"encoder:{msg.model}", lambda: Encoder(msg.model))
    vectors, computed = runtime.run(embed_cached(store, encoder, msg.texts, msg.batch_size))
    return {"model_version": encoder.version, "device": encoder.device_name, "computed": computed,
            "dim": int(vectors.shape[1]), "vectors": vectors.tolist()}
