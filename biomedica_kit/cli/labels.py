"""``biomedica apply-labels``: a label version into a new dataset version.

:func:`register` adds it to the ``biomedica`` group; the command is a thin call of
:func:`biomedica_kit.labels.apply.apply_labels`.
"""

from __future__ import annotations

import sys

import click

__all__ = ["register"]


@click.command("apply-labels")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--labels", "version", default=None,
              help="Label version (DATASET/labels/<version>.parquet; default: the newest).")
@click.option("--reviewed-only", is_flag=True,
              help="Apply only expert and override rows (not unreviewed proposals).")
@click.option("--dry-run", is_flag=True, help="Say what would change; write nothing.")
def apply_labels(dataset: str, version: str | None, reviewed_only: bool, dry_run: bool) -> None:
    """Write a label version into DATASET's sample json as a new version (BIOMEDICA's
    image_*_label keys and label_source, label_version, annotators, agreement); only shards
    with changed samples are rewritten. `biomedica verify DATASET` checks the result."""
    from biomedica_kit.dataset.lock import DatasetLocked
    from biomedica_kit.labels.apply import apply_labels as run

    try:
        summary = run(dataset, version, dry_run=dry_run,
                      sources=("expert", "override") if reviewed_only else None)
    except (FileNotFoundError, ValueError, DatasetLocked) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo("\n".join(summary.format_lines()))


def register(group: click.Group) -> None:
    """Add ``apply-labels`` to the ``biomedica`` group."""
    group.add_command(apply_labels)
