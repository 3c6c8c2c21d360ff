"""The part of a judge's and a generation model's config that says where the model runs and how
the chat client may reach it: one class, so both read the same TOML fields the same way."""

from __future__ import annotations

import os
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field


class Endpoint(BaseModel):
    """A named model: its server (``base_url``; none for a local model), the environment variable
    holding its key, and the limits the chat client keeps (:mod:`workers.llm.client`)."""

    model_config = ConfigDict(extra="forbid")
    what: ClassVar[str] = "model"  # how errors name it: "judge 'x'", "model 'x'"

    name: str
    kind: str
    model: str = ""
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = Field(default=8, ge=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    batch_size: int = Field(default=16, ge=1)  # local generation batch
    device: str | None = None

    @property
    def queue(self) -> str:
        """API models wait on the network; local models and encoders need the accelerator."""
        return "api" if self.kind == "api" else "gpu"

    def api_key(self) -> str | None:
        """The key, read from the environment only (never from a file, a log line or the store)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if key is None:
            raise ValueError(f"{self.what} {self.name!r}: environment variable {self.api_key_env} is not set")
        return key
