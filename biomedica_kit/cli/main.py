"""``biomedica``: one entry point, one subcommand per stage.

The group is defined here and every command family registers itself from its own module
(``build`` and ``parse`` in :mod:`biomedica_kit.cli.build`, ``verify`` in
:mod:`~biomedica_kit.cli.dataset`, ``export``/``query``/``subset`` in
:mod:`~biomedica_kit.cli.tables`, ``enrich``, ``report``, the curation commands in
:mod:`~biomedica_kit.cli.curate`).
Each command is a thin call of one library function; heavy libraries are imported inside the
command that needs them, so ``biomedica --help`` starts fast.
"""

from __future__ import annotations

import click

from biomedica_kit.cli import build, curate, dataset, enrich, report, tables

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="biomedica-kit")
def main() -> None:
    """Build, explore and curate BIOMEDICA-style image-caption datasets from PMC OA."""


for _family in (build, dataset, enrich, tables, report, curate):
    _family.register(main)
