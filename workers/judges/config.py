"""Judges are configured by name, so a job says ``--judge gemma27b`` and every worker agrees.

Built-ins: ``embedding`` (the default: deterministic, no LLM), ``lm-probe`` (the embedding judge on
value-conditioned SmolLM2 hidden states plus MiniLM: slower, more accurate; needs the ``llm`` extra)
and ``smollm2`` (the local GGUF model ranking by generation). More come from a TOML file named by ``VALUEFLOW_JUDGES_FILE``::

    [judges.gemma27b]
    kind = "api"                       # api | local | embedding
    model = "google/gemma-3-27b-it"
    base_url = "http://vllm:8000/v1"
    api_key_env = "GEMMA_API_KEY"      # the key itself is read from the environment only
    concurrency = 32
    requests_per_minute = 600
    tokens_per_minute = 400000
    temperature = 0.0
    max_tokens = 64

Secrets never appear in a config file, a log line or the store: only the variable's name does.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError

from workers.llm.endpoint import Endpoint


class JudgeConfig(Endpoint):
    what: ClassVar[str] = "judge"

    kind: Literal["api", "local", "embedding"]
    temperature: float = Field(default=0.0, ge=0)
    max_tokens: int = Field(default=64, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    # structured output: json_schema (OpenAI, vLLM, llama.cpp's server), json_object with a schema
    # (llama-cpp-python's server), off (free text); auto tries them in that order
    structured: Literal["auto", "json_schema", "json_object", "off"] = "auto"
    one_shot: bool = False
    both_orders: bool = False  # also ask the reversed order and merge (position-bias control)
    # switches back to the published evaluator's judge behaviour (docs/evaluator.md)
    # system message: this project's annotator line, the generic "You are a helpful assistant."
    # that the published evaluator's model wrappers send (published), or none at all
    system_prompt: Literal["project", "generic", "none"] = "project"
    repair: bool = True  # False: an unreadable answer fails the window, no second turn (published)
    parse: Literal["lenient", "upstream"] = "lenient"  # upstream: only the first [..] list counts
    encoder: str | None = None  # embedding judge: encoder path (HiVES checkpoint); None = MiniLM
    ridge_alpha: float = Field(default=1.0, gt=0)
    # embedding judge: "sentence" = the encoder's embedding of the text; "lm" = value-conditioned
    # hidden states of a causal LM (lm_model, default SmolLM2) at lm_layers, plus the sentence
    # embedding (workers/judges/lm_features.py)
    features: Literal["sentence", "lm"] = "sentence"
    lm_model: str = ""
    lm_layers: list[int] = Field(default_factory=lambda: [18, 24], min_length=1)


BUILTIN = {
    "embedding": JudgeConfig(name="embedding", kind="embedding", model="all-MiniLM-L6-v2"),
    "lm-probe": JudgeConfig(name="lm-probe", kind="embedding", model="SmolLM2-135M-Instruct+all-MiniLM-L6-v2",
                            features="lm"),
    "smollm2": JudgeConfig(name="smollm2", kind="local", model="SmolLM2-135M-Instruct", max_tokens=40),
}


def load_section(path: str | Path, section: str, model: type[BaseModel], what: str) -> dict:
    """``[section.NAME]`` tables of the TOML file ``path``, each validated as ``model(name=NAME, …)``;
    errors name the file, the table and the field (``what`` names the file in read errors)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read {what} file: {exc}") from None
    out = {}
    for name, body in (raw.get(section) or {}).items():
        try:
            out[name] = model(name=name, **body)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(map(str, err["loc"]))
            raise ValueError(f"{path}: [{section}.{name}] field {field}: {err['msg']}") from None
    return out


def load_judges(path: str | Path | None = None) -> dict[str, JudgeConfig]:
    """Built-ins plus the judges of the TOML file (``VALUEFLOW_JUDGES_FILE`` when ``path`` is None)."""
    judges = dict(BUILTIN)
    path = path or os.environ.get("VALUEFLOW_JUDGES_FILE")
    if path:
        judges.update(load_section(path, "judges", JudgeConfig, "judges"))
    return judges


def get_judge_config(name: str, path: str | Path | None = None) -> JudgeConfig:
    judges = load_judges(path)
    if name not in judges:
        raise ValueError(f"unknown judge {name!r}; configured: {', '.join(sorted(judges))}")
    return judges[name]
