"""``biomedica verify``: re-check a dataset's manifest, checksums, counts and samples."""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["register"]


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
def verify(dataset: str) -> None:
    """Re-check DATASET: manifest, checksums, counts, members of every sample. Exit 0 if all ok."""
    from biomedica_kit.dataset.verify import verify as run_verify

    res = run_verify(Path(dataset))
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    for e in res.errors:
        click.echo(f"error: {e}", err=True)
    click.echo("\n".join(res.format_lines()))
    sys.exit(0 if res.ok else 1)


def register(group: click.Group) -> None:
    """Add ``verify`` to the ``biomedica`` group."""
    group.add_command(verify)
