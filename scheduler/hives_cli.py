"""``valueflow hives``: train, evaluate and use the hierarchical value embedding space."""

from __future__ import annotations

import click


@click.group()
def hives() -> None:
    """HiVES: hierarchical value embeddings."""
