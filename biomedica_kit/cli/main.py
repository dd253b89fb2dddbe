"""``biomedica``: one entry point, one subcommand per stage.

The group is defined here and every command family registers itself from its own module
(``build`` and ``parse`` in :mod:`biomedica_kit.cli.build`, ``verify`` in
:mod:`~biomedica_kit.cli.dataset`, ``export``/``query``/``subset`` in
:mod:`~biomedica_kit.cli.tables`, ``enrich``, ``report``, the curation commands in
:mod:`~biomedica_kit.cli.curate`, ``apply-labels`` in :mod:`~biomedica_kit.cli.labels`, ``index``
and ``serve`` in :mod:`~biomedica_kit.cli.serve`, ``lab`` and ``views`` in
:mod:`~biomedica_kit.cli.lab`), then the command groups of other installed packages
(:mod:`~biomedica_kit.cli.plugins`: the Label Studio bridge's ``labelstudio`` and ``review``).
Each command is a thin call of one library function; heavy libraries are imported inside the
command that needs them, so ``biomedica --help`` starts fast.
"""

from __future__ import annotations

import click

from biomedica_kit.cli import (
    build,
    curate,
    dataset,
    enrich,
    lab,
    labels,
    report,
    serve,
    splits,
    tables,
)
from biomedica_kit.cli.plugins import register_plugins

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="biomedica-kit")
def main() -> None:
    """Build, explore and curate BIOMEDICA-style image-caption datasets from PMC OA."""


for _family in (build, dataset, enrich, tables, splits, report, curate, labels, serve):
    _family.register(main)
main.add_command(lab.lab)
main.add_command(lab.views_command)
register_plugins(main)
