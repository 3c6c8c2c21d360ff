"""Generation models are configured by name in the judges' TOML file (one config file).

``valueflow steer --model NAME`` looks ``NAME`` up in this order:

1. ``[models.NAME]`` of ``VALUEFLOW_JUDGES_FILE``::

       [models.llama8b]
       kind = "api"                      # api | local
       model = "meta-llama/Llama-3.1-8B-Instruct"
       base_url = "http://vllm:8000/v1"
       api_key_env = "LLAMA_API_KEY"
       concurrency = 32
       requests_per_minute = 600

2. ``[judges.NAME]`` of the same file when its kind is ``api`` or ``local``: the same server and
   limits, with the generation defaults below for sampling (a judge samples at temperature 0);
3. the built-in ``smollm2`` (SmolLM2-135M-Instruct, the offline default, local).

Sampling defaults: temperature 1.0, at most :data:`MAX_NEW_TOKENS` new tokens, responses cut to
:data:`MAX_WORDS` words.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from workers.judges.config import load_judges, load_section
from workers.llm.endpoint import Endpoint

MAX_WORDS = 100  # responses are capped at about 100 words
MAX_NEW_TOKENS = 160  # ~100 English words; the text is then cut at MAX_WORDS words


class ModelConfig(Endpoint):
    kind: Literal["api", "local"]
    temperature: float = Field(default=1.0, ge=0)
    max_tokens: int = Field(default=MAX_NEW_TOKENS, ge=1)
    max_words: int = Field(default=MAX_WORDS, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)


BUILTIN = {"smollm2": ModelConfig(name="smollm2", kind="local", model="SmolLM2-135M-Instruct")}
_FROM_JUDGE = ("model", "base_url", "api_key_env", "concurrency", "requests_per_minute", "tokens_per_minute",
               "timeout_s", "max_attempts", "batch_size", "device")


def load_models(path: str | Path | None = None) -> dict[str, ModelConfig]:
    """Built-ins, then API/local judges of the file (as generators), then its ``[models.*]``."""
    models = dict(BUILTIN)
    path = path or os.environ.get("VALUEFLOW_JUDGES_FILE")
    if not path:
        return models
    for name, j in load_judges(path).items():
        if j.kind in ("api", "local") and name not in BUILTIN:
            models[name] = ModelConfig(name=name, kind=j.kind, **{f: getattr(j, f) for f in _FROM_JUDGE})
    models.update(load_section(path, "models", ModelConfig, "models"))
    return models


def get_model_config(name: str, path: str | Path | None = None) -> ModelConfig:
    models = load_models(path)
    if name not in models:
        raise ValueError(f"unknown generation model {name!r}; configured: {', '.join(sorted(models))}")
    return models[name]
