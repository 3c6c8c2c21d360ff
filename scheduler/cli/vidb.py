"""``valueflow vidb ...``: the Value Intensity DataBase."""

from __future__ import annotations

from pathlib import Path

import click

from scheduler.cli.common import run_with_store


@click.group()
def vidb() -> None:
    """The Value Intensity DataBase."""


@vidb.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--value", default=None, help="value of a CSV whose name does not say it")
def vidb_import(paths, value) -> None:
    """Load upstream VIDB files (per-value CSV text,final_rating or few-shot JSON)."""
    from workers.io.inputs import InputError
    from workers.io.vidb_files import import_rows, read_vidb

    try:
        parsed = [(p, read_vidb(p, value)) for p in paths]  # all files validated before any write
    except InputError as exc:
        raise click.ClickException(str(exc)) from None

    async def go(store):
        for p, rows in parsed:
            added = await import_rows(store, rows, f"import:{p.name}")
            click.echo(f"{p}: {sum(added.values())} new items over {len(added)} values")
    run_with_store(go)


@vidb.command("stats")
def vidb_stats() -> None:
    async def go(store):
        from workers.io.vidb_files import ensure_seed

        await ensure_seed(store)
        for v, n in sorted((await store.vidb_counts()).items()):
            click.echo(f"{v:35} {n}")
    run_with_store(go)
