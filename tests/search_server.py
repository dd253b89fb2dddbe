"""A real ``biomedica serve`` on 127.0.0.1 over the 185 real figure-caption pairs, shared by
the server, schema, load and browser tests (started once per session, stopped at exit).

The dataset is the curation tests' clustered one (imported, embedded with the default offline
models, clustered, labels proposed and propagated: taxonomy labels to filter by), copied and
indexed with ``biomedica index``.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests
from curate_datasets import STORE, clustered_dataset

__all__ = ["STORE", "search_dataset", "search_server"]

_made: dict[str, object] = {}
_LISTENING = re.compile(r"on http://127\.0\.0\.1:(\d+)/")


def search_dataset(tmp_path_factory) -> Path:
    """The clustered real pairs, indexed (keyword + image and caption vectors)."""
    if "dataset" not in _made:
        from click.testing import CliRunner

        from biomedica_kit.cli.serve import index

        src, _ = clustered_dataset(tmp_path_factory)
        ds = tmp_path_factory.mktemp("search") / "ds"
        shutil.copytree(src, ds)
        res = CliRunner().invoke(index, [str(ds)])
        assert res.exit_code == 0, res.output
        _made["dataset"] = ds
        _made["index_output"] = res.output
    return _made["dataset"]  # type: ignore[return-value]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def search_server(tmp_path_factory) -> str:
    """The base URL (``http://127.0.0.1:PORT``) of the server over :func:`search_dataset`:
    the ``serve`` command itself, in its own process, on a free port it picks."""
    if "url" not in _made:
        ds = search_dataset(tmp_path_factory)
        log = ds.parent / "serve.log"
        code = "import sys; from biomedica_kit.cli.serve import serve; serve(sys.argv[1:])"
        with open(log, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", code, str(ds), "--port", "0"],
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    env={**os.environ, "HF_HUB_OFFLINE": "1"})
        atexit.register(_stop, proc)
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            assert proc.poll() is None, f"the server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the server did not start: {log.read_text()}"
            m = _LISTENING.search(log.read_text(errors="replace"))
            if m:
                url = f"http://127.0.0.1:{m.group(1)}"
            else:
                time.sleep(0.2)
        while True:
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the server never answered /health"
            time.sleep(0.2)
        # Load the models once (the first query does), so timings and tests see a warm server.
        requests.get(f"{url}/search", params={"q": "warm up", "mode": "hybrid"}, timeout=120)
        _made["url"] = url
        _made["proc"] = proc
    return _made["url"]  # type: ignore[return-value]
