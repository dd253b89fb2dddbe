"""``biomedica labelstudio`` and ``biomedica review``: the Label Studio bridge's commands.

Two click groups, registered in the ``biomedica`` CLI through the ``biomedica.commands``
entry points (:mod:`biomedica_kit.cli.plugins`), so the library never imports this package.
The URL and token of a server default to ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``,
then to the local server of ``--home`` (:mod:`curation.server`). Tokens are never printed.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

import click

__all__ = ["labelstudio", "review"]

_HOME = click.option("--home", type=click.Path(file_okay=False), default=None,
                     help="Server home (default: $BIOMEDICA_LABELSTUDIO_HOME or "
                          "build/labelstudio).")


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.group()
def labelstudio() -> None:
    """Run a local Label Studio (its own virtual environment, 127.0.0.1 only)."""


@labelstudio.command()
@click.option("--port", type=int, default=8080, show_default=True)
@_HOME
@click.option("--files-root", type=click.Path(exists=True, file_okay=False), default=None,
              help="Document root for local files (must hold the datasets you push; "
                   "default: the current folder).")
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for /health.")
def start(port: int, home: str | None, files_root: str | None, timeout: float) -> None:
    """Start Label Studio on 127.0.0.1:PORT and wait until it answers."""
    from curation import server

    try:
        info = server.start(home, port=port, files_root=files_root, timeout=timeout)
    except server.LabelStudioError as exc:
        _fail(exc)
    click.echo(f"Label Studio {info.url} (pid {info.pid}, {info.startup_seconds:.1f} s); "
               f"admin token in {Path(info.home) / 'secret.json'} (mode 0600)")


@labelstudio.command()
@_HOME
def stop(home: str | None) -> None:
    """Stop the server."""
    from curation import server

    click.echo("stopped" if server.stop(home) else "not running")


@labelstudio.command()
@_HOME
@click.option("--show-token", is_flag=True, help="Print the admin token (else redacted).")
def status(home: str | None, show_token: bool) -> None:
    """Say whether the server runs and answers (exit 1 when it does not)."""
    from curation import server

    st = server.status(home, show_token=show_token)
    click.echo("\n".join(st.format_lines()))
    sys.exit(0 if st.healthy else 1)


@labelstudio.command("add-user")
@click.argument("email")
@_HOME
@click.option("--legacy-token", is_flag=True,
              help="Save a legacy token instead of a personal access token (JWT).")
def add_user(email: str, home: str | None, legacy_token: bool) -> None:
    """Sign EMAIL up (through the invite link) and save its password and API token to
    HOME/users/EMAIL.json (mode 0600; never printed)."""
    from curation import server

    st = server.status(home)
    if st.info is None or not st.healthy:
        _fail(server.LabelStudioError("the server is not running: biomedica labelstudio start"))
    assert st.info is not None
    password = os.environ.get("BIOMEDICA_LABELSTUDIO_USER_PASSWORD") or secrets.token_urlsafe(12)
    try:
        token = server.add_user(st.info.url, server.admin_credentials(home).token, email,
                                password, personal_token=not legacy_token)
    except server.LabelStudioError as exc:
        _fail(exc)
    path = Path(st.info.home) / "users" / f"{email}.json"
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"email": email, "password": password, "token": token}, f)
    click.echo(f"user {email}: credentials in {path} (mode 0600)")


@click.group()
def review() -> None:
    """Expert review of cluster labels in Label Studio: push tasks, pull decisions."""


_URL = click.option("--url", default=None,
                    help="Label Studio URL (default: $LABEL_STUDIO_URL, else the local server).")


def _client(url: str | None, home: str | None):  # -> LabelStudioClient (lazy import)
    from curation.client import connect

    return connect(url, home=home)


@review.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--clusters", "run", required=True, help="The cluster run (clusters/<run>/).")
@_URL
@_HOME
@click.option("--spot-checks", type=int, default=0, show_default=True,
              help="Also push this many single-sample tasks (boundary samples of the "
                   "lowest-confidence clusters first).")
@click.option("--files-root", type=click.Path(exists=True, file_okay=False), default=None,
              help="The server's document root (default: what the local server uses).")
@click.option("--taxonomy", type=click.Path(exists=True), default=None)
def push(dataset: str, run: str, url: str | None, home: str | None, spot_checks: int,
         files_root: str | None, taxonomy: str | None) -> None:
    """Push one review task per cluster of RUN (and spot checks); re-running adds no
    duplicates and updates changed proposals."""
    from curation.client import ApiError
    from curation.push import push as run_push
    from curation.server import LabelStudioError

    try:
        s = run_push(dataset, run, _client(url, home), spot_checks=spot_checks,
                     files_root=files_root, taxonomy=taxonomy)
    except (ApiError, LabelStudioError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    click.echo("\n".join(s.format_lines()))


@review.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--clusters", "run", default=None,
              help="The cluster run (default: the only, or most recently pushed, one).")
@_URL
@_HOME
@click.option("--taxonomy", type=click.Path(exists=True), default=None)
def pull(dataset: str, run: str | None, url: str | None, home: str | None,
         taxonomy: str | None) -> None:
    """Sync reviews incrementally and write DATASET/labels/<version>.parquet (majority vote,
    agreement, conflicts and bad annotations reported)."""
    from curation.client import ApiError
    from curation.pull import pull as run_pull
    from curation.push import REVIEW_DIR
    from curation.server import LabelStudioError

    if run is None:
        pushed = sorted((Path(dataset) / REVIEW_DIR).glob("*/project.json"),
                        key=lambda p: p.stat().st_mtime_ns)
        if not pushed:
            _fail(FileNotFoundError(f"{dataset}: nothing pushed yet (biomedica review push)"))
        run = pushed[-1].parent.name
    try:
        s = run_pull(dataset, run, _client(url, home), taxonomy=taxonomy)
    except (ApiError, LabelStudioError, FileNotFoundError, ValueError) as exc:
        _fail(exc)
    click.echo("\n".join(s.format_lines()))
