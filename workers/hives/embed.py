"""Batched embedding with a store-backed cache keyed by (model version, text hash)."""

from __future__ import annotations

import asyncio

import numpy as np

from workers.store import Store, text_hash


async def embed_cached(store: Store, encoder, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, int]:
    """Vectors for ``texts`` in order; returns (vectors, how many had to be computed)."""
    version = encoder.version
    hashes = [text_hash(t) for t in texts]
    have = await store.embeddings_get(version, list(set(hashes)))
    todo = list(dict.fromkeys(h for h in hashes if h not in have))
    if todo:
        first = {h: t for h, t in zip(hashes, texts)}
        vecs = await asyncio.to_thread(encoder.encode, [first[h] for h in todo], batch_size)
        await store.embeddings_put(version, list(zip(todo, vecs)))
        have.update({h: v for h, v in zip(todo, vecs)})
    return np.asarray([have[h] for h in hashes], dtype=np.float32).reshape(len(texts), -1), len(todo)
