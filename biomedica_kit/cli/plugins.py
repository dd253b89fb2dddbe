"""Command groups of other installed packages, found through the ``biomedica.commands`` entry
point group, so the library's CLI never imports them (the Label Studio bridge in
``curation/`` registers ``labelstudio`` and ``review`` this way in pyproject.toml)::

    [project.entry-points."biomedica.commands"]
    labelstudio = "curation.cli:labelstudio"

A plugin module should import its heavy libraries inside its commands (as ours do), since
every ``biomedica`` start loads it. A plugin that fails to load is reported on stderr and
left out; the other commands keep working.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click

__all__ = ["ENTRY_POINT_GROUP", "register_plugins"]

ENTRY_POINT_GROUP = "biomedica.commands"


def register_plugins(group: click.Group) -> list[str]:
    """Add every ``biomedica.commands`` entry point's click command to ``group`` (names the
    group already has win); returns the names added."""
    added = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in group.commands:
            continue
        try:
            cmd = ep.load()
        except Exception as exc:  # a broken plugin must not take the whole CLI down
            click.echo(f"warning: plugin command {ep.name} ({ep.value}) not loaded: {exc}",
                       err=True)
            continue
        if not isinstance(cmd, click.Command):
            click.echo(f"warning: plugin {ep.value} is not a click command", err=True)
            continue
        group.add_command(cmd, ep.name)
        added.append(ep.name)
    return added
