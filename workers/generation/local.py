"""Generation with a local Hugging Face causal LM (transformers), for the ``gpu`` queue.

The model is loaded by the local judge's loader (:func:`workers.judges.local_llm.load_causal_lm`:
a HF name or directory, a ``.gguf`` file, or the default SmolLM2-135M GGUF with its cached
de-quantised copy). Conversations go through the model's chat template in batches with left
padding. Sampling is seeded **per conversation**, independently of how conversations are batched:
at each step every row adds its own Gumbel noise, drawn from a generator seeded with that row's
seed, to its logits divided by the temperature, and the arg-max is taken — the Gumbel-max trick,
``argmax_v (z_v / T + G_v)`` with ``G_v = -log E_v``, ``E_v ~ Exp(1)`` (that is, ``G_v`` standard
Gumbel), is an exact draw from ``softmax(z / T)``. Temperature 0 is greedy.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import AsyncIterator

import torch

from workers.generation.base import Generator, Keep
from workers.generation.config import ModelConfig
from workers.llm.client import ChatResult


class SeededGumbel:
    """A logits processor: per-row seeded Gumbel noise, so greedy decoding samples."""

    def __init__(self, seeds: list[int], temperature: float):
        self.temperature = temperature
        self.gens = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature == 0:
            return scores
        e = torch.empty(scores.shape, dtype=torch.float32)
        for row, g in zip(e, self.gens):
            row.exponential_(generator=g)
        return scores.float() / self.temperature - torch.log(e).to(scores.device)


class LocalGenerator(Generator):
    def __init__(self, config: ModelConfig, store=None, home: Path | None = None):
        super().__init__(config, store)
        from workers.judges.local_llm import load_for_batches

        self.device, self.tokenizer, self.lm = load_for_batches(config.model, config.device, home)

    async def _stream(self, conversations: list[list[dict]], seeds: list[int],
                      keep: Keep) -> AsyncIterator[list[tuple[int, ChatResult]]]:
        bs = self.config.batch_size
        for s in range(0, len(conversations), bs):
            results = await asyncio.to_thread(self.generate_batch, conversations[s : s + bs], seeds[s : s + bs])
            group = [(s + j, r) for j, r in enumerate(results)]
            await keep(group)
            yield group

    @torch.inference_mode()
    def generate_batch(self, conversations: list[list[dict]], seeds: list[int],
                       max_new_tokens: int | None = None) -> list[ChatResult]:
        """One batch, generated together (left padding); compute-bound, run off the event loop."""
        from transformers import LogitsProcessorList

        t0 = time.monotonic()
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                   for c in conversations]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        gen = self.lm.generate(**enc, max_new_tokens=max_new_tokens or self.config.max_tokens, do_sample=False,
                               temperature=None, top_p=None, top_k=None,
                               logits_processor=LogitsProcessorList([SeededGumbel(seeds, self.config.temperature)]),
                               pad_token_id=self.tokenizer.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        dt = time.monotonic() - t0
        out = []
        for row, mask in zip(new, enc["attention_mask"]):
            n_out = int((row != self.tokenizer.pad_token_id).sum())
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            out.append(ChatResult(text, int(mask.sum()), n_out, dt, 1))
        return out
