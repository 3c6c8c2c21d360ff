r"""Value-conditioned features from a causal LM, for the embedding judge's probe (``features = "lm"``).

A sentence encoder embeds a text once, whatever the value; its geometry is mostly topic, and it
separates doing a thing from doing its opposite poorly. Here a small causal LM (SmolLM2-135M by
default, the offline model the project already ships for local work) reads the text *after* the
value's name and definition and a question about the text's stance, and the features are its
hidden states at the last prompt token — where the model has attended to both — at a few middle
layers, concatenated with the sentence embedding of the text:

.. math:: x(t, v) = \big[\,h_{\ell_1}(p(t, v))_{-1};\ \dots;\ h_{\ell_m}(p(t, v))_{-1};\ e(t)\,\big]

with :math:`p(t, v)` the prompt below, :math:`h_\ell(\cdot)_{-1}` layer :math:`\ell`'s state at the
final token and :math:`e` the sentence encoder. The judge z-scores every column with its anchors'
statistics (LM states have a few dimensions of huge scale) before fitting the multi-task probe.

Measured on the upstream VIDB sample (``benchmarks/evaluator_agreement.py``; figures in README,
*Judge agreement*); the prompt is this project's own wording.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from schemas.taxonomy import default_taxonomy

PROMPT = ("Value: {label} ({definition})\nText: {text}\n"
          "Question: Does the text support or oppose this value, and how strongly?\nAnswer:")


@lru_cache(maxsize=None)
def _definition(value: str) -> tuple[str, str]:
    v = default_taxonomy().get(value)
    return v.key.replace("_", " "), v.definition or ""


def prompt(text: str, value: str) -> str:
    label, definition = _definition(value)
    return PROMPT.format(label=label, definition=definition, text=text)


class LMFeatureEncoder:
    """``encode(texts, value)`` → value-conditioned features (see the module docstring)."""

    conditioned = True

    def __init__(self, sentence_encoder, model: str = "", layers: tuple[int, ...] = (18, 24), device: str | None = None,
                 batch_size: int = 16, max_length: int = 512, home: Path | None = None):
        from workers.judges.local_llm import load_for_batches

        self.device, self.tokenizer, self.lm = load_for_batches(model, device, home)
        n = self.lm.config.num_hidden_layers
        bad = [layer for layer in layers if not 0 <= layer <= n]
        if bad or not layers:
            raise ValueError(f"lm_layers {list(layers)}: the model has layers 0..{n}")
        self.layers = tuple(layers)
        self.batch_size, self.max_length = batch_size, max_length
        self.sentence = sentence_encoder  # workers.hives.encoder.Encoder: the text's own embedding
        self._lock = threading.Lock()  # one forward pass at a time per model

    def encode(self, texts: list[str], value: str) -> np.ndarray:
        import torch

        out = []
        with self._lock, torch.no_grad():
            for s in range(0, len(texts), self.batch_size):
                enc = self.tokenizer([prompt(t, value) for t in texts[s : s + self.batch_size]], return_tensors="pt",
                                     padding=True, truncation=True, max_length=self.max_length).to(self.device)
                states = self.lm(**enc, output_hidden_states=True).hidden_states
                # left padding (load_for_batches): the final position is every prompt's last token
                out.append(torch.cat([states[layer][:, -1].float() for layer in self.layers], dim=1).cpu().numpy())
        lm = np.concatenate(out).astype(np.float64)
        return np.hstack([lm, np.asarray(self.sentence.encode(list(texts)), dtype=np.float64)])
