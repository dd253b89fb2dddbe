"""``biomedica report``: the analysis notebooks run headless and published as HTML."""

from __future__ import annotations

import json
from typing import Any

import click

from biomedica_kit.cli.options import param_default

__all__ = ["register"]


def _report() -> Any:
    from biomedica_kit.analysis.report import report

    return report


def _parameters(params: tuple[str, ...]) -> dict[str, Any]:
    """``NAME=VALUE`` options as notebook parameters (VALUE as JSON when it parses)."""
    parameters: dict[str, Any] = {}
    for p in params:
        name, sep, value = p.partition("=")
        if not sep or not name.isidentifier():
            raise click.UsageError(f"--param wants NAME=VALUE, got {p!r}")
        try:
            parameters[name] = json.loads(value)
        except ValueError:
            parameters[name] = value
    return parameters


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Report folder (index.html, one HTML page per notebook, charts/).")
@click.option("--notebook", "notebooks", multiple=True,
              help="A notebook name in notebooks/ or a path; repeatable (default: every "
                   "notebook whose metadata says report: true; one whose required data "
                   "DATASET lacks is skipped, with the reason).")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Extra notebook parameter (VALUE parsed as JSON when it can be); repeatable.")
@click.option("--no-images", is_flag=True, help="Skip the PNG/SVG chart files (no Chromium).")
@click.option("--timeout", type=click.IntRange(min=1), show_default=True,
              default=param_default(_report, "timeout"),
              help="Seconds one notebook cell may run.")
def report(dataset: str, out: str, notebooks: tuple[str, ...], params: tuple[str, ...],
           no_images: bool, timeout: int) -> None:
    """Run the analysis notebooks on DATASET headless and publish them as HTML in OUT.

    By default 01_overview and 02_topics, and 05_clusters once DATASET has a finished cluster
    run (each notebook declares what it needs; see docs/notebooks.md). Exports the metadata
    first when it is missing or stale. Exits 1 if a notebook failed (its page still shows the
    traceback).
    """
    from biomedica_kit.analysis.report import ReportError

    parameters = _parameters(params)
    try:
        rep = _report()(dataset, out, list(notebooks) or None, parameters=parameters,
                        images=not no_images, timeout=timeout)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    for nb in rep.notebooks:
        click.echo(f"{nb.name}: {len(nb.charts)} charts, {len(nb.notes)} notes, "
                   f"{nb.seconds:.1f} s -> {nb.html}")
    for s in rep.skipped:
        click.echo(f"{s.name}: skipped, {s.reason}")
    click.echo(f"report {rep.index} ({rep.seconds:.1f} s)")


def register(group: click.Group) -> None:
    """Add ``report`` to the ``biomedica`` group."""
    group.add_command(report)
