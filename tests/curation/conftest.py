"""A real Label Studio for the bridge's tests: started once per session on 127.0.0.1 from the
project's own virtual environment (``scripts/labelstudio_venv.sh``), never skipped. A server
that cannot start fails the tests that need it, with its log.

The dataset is the 185 real figure-caption pairs of ``../shared/corpus/figures``, embedded
with the packaged offline models and clustered (``tests/curate_datasets.py``, shared with the
labels tests); each test module reviews its own copy.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from curate_datasets import clustered_dataset

from curation import server
from curation.client import LabelStudioClient

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Studio:
    """The session's server: its home, document root, info and admin client."""

    home: Path
    files_root: Path
    info: server.ServerInfo
    admin: LabelStudioClient

    def restart(self) -> None:
        """Start the server again on the same home and port (after a kill)."""
        self.info = start_server(self.home, self.files_root, self.info.port)

    def expert(self, email: str, *, personal_token: bool) -> LabelStudioClient:
        """A new expert user, signed up through the invite link, with their own token."""
        token = server.add_user(self.info.url, server.admin_credentials(self.home).token,
                                email, "expert-pass-123", personal_token=personal_token)
        return LabelStudioClient(self.info.url, token)


def start_server(home: Path, files_root: Path, port: int) -> server.ServerInfo:
    try:
        return server.start(home, port=port, files_root=files_root, timeout=420)
    except server.LabelStudioError as exc:
        pytest.fail(f"Label Studio did not start: {exc}\n--- log ---\n{server.log_tail(home)}",
                    pytrace=False)


@pytest.fixture(scope="session")
def studio(tmp_path_factory) -> Iterator[Studio]:
    files_root = tmp_path_factory.getbasetemp()
    home = tmp_path_factory.mktemp("labelstudio")
    info = start_server(home, files_root, free_port())
    st = Studio(home, files_root, info,
                LabelStudioClient(info.url, server.admin_credentials(home).token))
    try:
        yield st
    finally:
        server.stop(home)


@pytest.fixture(scope="module")
def review_copy(tmp_path_factory) -> tuple[Path, str]:
    """A private copy of the clustered real pairs: ``(dataset, run)``."""
    ds, run = clustered_dataset(tmp_path_factory)
    out = tmp_path_factory.mktemp("review") / "ds"
    shutil.copytree(ds, out)
    return out, run
