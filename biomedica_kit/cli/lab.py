"""``biomedica lab`` (JupyterLab on the notebooks, a dataset preselected) and ``biomedica views``
(a dataset's saved views).

JupyterLab is bound to 127.0.0.1 with a fresh random token, its root is ``notebooks/`` and the
notebooks' ``dataset`` defaults to ``$BIOMEDICA_DATASET``, which this command sets. Nothing is
fetched from the internet: JupyterLab's news feed and update check are off and its extension
manager is read-only. ``python -m biomedica_kit.cli.lab`` runs the ``lab`` command alone
(``make lab`` does).
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click

#: Where `make demo` builds the demo dataset, relative to the repository root.
DEMO_DATASET = "build/demo"


def lab_argv(notebooks: Path, *, token: str, port: int = 8888, browser: bool = False,
             open_notebook: str | None = None) -> list[str]:
    """The JupyterLab command line: loopback only, ``token``, root ``notebooks``, offline."""
    argv = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={notebooks}",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.open_browser={browser}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly"]
    if open_notebook:
        argv.append(f"--LabApp.default_url=/lab/tree/{open_notebook}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI machines run as root
        argv.append("--allow-root")
    return argv


def lab_env(dataset: Path) -> dict[str, str]:
    """The environment JupyterLab (and so every kernel it starts) runs with."""
    return {**os.environ, "BIOMEDICA_DATASET": str(dataset)}


def _notebooks_dir() -> Path:
    from biomedica_kit.analysis.report import notebooks_dir

    return notebooks_dir()


@click.command()
@click.argument("dataset", required=False, type=click.Path(file_okay=False))
@click.option("--port", type=int, default=8888, show_default=True,
              help="First port to try (JupyterLab moves on when it is taken).")
@click.option("--browser/--no-browser", default=None,
              help="Open a web browser (default: only when a display is available).")
def lab(dataset: str | None, port: int, browser: bool | None) -> None:
    """Open JupyterLab on notebooks/ with DATASET preselected (default: build/demo).

    Bound to 127.0.0.1 with a random token; the URL to open (token included) is printed."""
    from biomedica_kit.tables.connect import connect

    notebooks = _notebooks_dir()
    ds = Path(dataset or notebooks.parent / DEMO_DATASET).resolve()
    if not (ds / "manifest.json").is_file():
        hint = "run `make demo` first" if dataset is None else "not a dataset"
        raise click.ClickException(f"{ds}: no manifest.json ({hint})")
    connect(ds).close()  # export the metadata now, not in the first notebook
    if browser is None:
        browser = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    token = secrets.token_urlsafe(24)
    click.echo(f"dataset:   {ds}\nnotebooks: {notebooks}\nJupyterLab prints its URL "
               f"(127.0.0.1, token included) below; Ctrl-C stops it.", err=True)
    argv = lab_argv(notebooks, token=token, port=port, browser=browser,
                    open_notebook="01_overview.ipynb")
    os.execve(argv[0], argv, lab_env(ds))


@click.command("views")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--show", "name", default=None, help="Print one view's JSON and its predicate.")
def views_command(dataset: str, name: str | None) -> None:
    """List DATASET's saved views (views/<name>.json), or show one."""
    import json

    from biomedica_kit.analysis import views

    if name is None:
        for n in views.list_views(dataset):
            v = views.load_view(dataset, n)
            click.echo(f"{n}\t{v.filters.describe()}\t{v.description}")
        return
    try:
        sel = views.selection(dataset, name)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(sel.view.to_json(), indent=2, ensure_ascii=False))
    click.echo(f"predicate now: {sel.where}" if sel.where is not None
               else f"keys now: {len(sel.keys or [])} (the view filters on curation tags)")


if __name__ == "__main__":
    lab()
