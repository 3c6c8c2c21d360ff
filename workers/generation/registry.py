"""Build a generation model from its configured name."""

from __future__ import annotations

from workers.generation.base import Generator
from workers.generation.config import ModelConfig, get_model_config


def make_generator(config: ModelConfig | str, store=None) -> Generator:
    """The generator for ``config`` (or a configured name); ``store`` enables the response cache."""
    if isinstance(config, str):
        config = get_model_config(config)
    if config.kind == "api":
        from workers.generation.api import APIGenerator

        return APIGenerator(config, store)
    from workers.generation.local import LocalGenerator

    return LocalGenerator(config, store)
