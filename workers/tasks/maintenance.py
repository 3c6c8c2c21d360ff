"""Tasks outside the job lifecycle: a ping through the broker, and HiVES embeddings on ``gpu``."""

from __future__ import annotations

import os
import socket

from celery import shared_task

from schemas.messages import EmbedTask, PingTask
from workers.tasks import runtime


@shared_task(name="valueflow.ping", bind=True, ignore_result=False)
def ping(self, **body) -> dict:
    """Echo through the broker: proves a worker consumes the queue it was sent to."""
    msg = PingTask(**body)
    return {"payload": msg.payload, "pid": os.getpid(), "host": socket.gethostname(),
            "queue": (self.request.delivery_info or {}).get("routing_key")}


@shared_task(name="valueflow.gpu.embed", ignore_result=False)
def embed(**body) -> dict:
    """Embed texts, caching vectors in the store by (model version, text hash)."""
    from workers.hives.embed import embed_cached
    from workers.hives.encoder import Encoder

    msg = EmbedTask(**body)
    store = runtime.store()
    encoder = runtime.resources.cached(f"encoder:{msg.model}", lambda: Encoder(msg.model))
    vectors, computed = runtime.run(embed_cached(store, encoder, msg.texts, msg.batch_size))
    import torch

    return {"model_version": encoder.version, "device": encoder.device_name, "threads": torch.get_num_threads(),
            "computed": computed, "dim": int(vectors.shape[1]), "vectors": vectors.tolist()}
