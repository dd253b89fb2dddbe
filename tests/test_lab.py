"""`make lab` / `biomedica lab`: a real JupyterLab on 127.0.0.1 with a token, a real kernel,
and headless Chromium (driven by playwright) running 03_explore through the token URL until
the gallery widget shows images. The screenshot is kept in build/test-artifacts/."""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from browser import ARTIFACTS, browser_page, hosts
from click.testing import CliRunner

from biomedica_kit.analysis.report import notebooks_dir
from biomedica_kit.cli.lab import lab, lab_argv, lab_env


def test_lab_command_line_is_loopback_token_and_offline(tmp_path):
    argv = lab_argv(tmp_path, token="t0k3n", port=8890)
    assert "--ServerApp.ip=127.0.0.1" in argv and "--IdentityProvider.token=t0k3n" in argv
    assert f"--ServerApp.root_dir={tmp_path}" in argv and "--ServerApp.port=8890" in argv
    assert "--LabApp.news_url=None" in argv and "--LabApp.extension_manager=readonly" in argv
    assert lab_env(tmp_path)["BIOMEDICA_DATASET"] == str(tmp_path)
    res = CliRunner().invoke(lab, [str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "no manifest.json" in res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(analysis_dataset, tmp_path_factory):
    """JupyterLab as `biomedica lab` starts it, on a copy of notebooks/ (a run must not save
    outputs into the repository), with its own config, settings and workspace folders."""
    root = tmp_path_factory.mktemp("lab")
    nbs = root / "notebooks"
    nbs.mkdir()
    for nb in notebooks_dir().glob("*.ipynb"):
        shutil.copy(nb, nbs / nb.name)
    env = lab_env(analysis_dataset)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR",
                "JUPYTER_RUNTIME_DIR"):
        env[var] = str(root / var.lower())
    # No "receive Jupyter news?" prompt over the page; every cell kept in the DOM (the
    # default windowing drops cells scrolled out of view).
    for ext, name, value in (("apputils-extension", "notification",
                              {"fetchNews": "false", "checkForUpdates": False}),
                             ("notebook-extension", "tracker", {"windowingMode": "none"})):
        d = root / "jupyterlab_settings_dir" / "@jupyterlab" / ext
        d.mkdir(parents=True)
        (d / f"{name}.jupyterlab-settings").write_text(json.dumps(value))
    token, port = secrets.token_urlsafe(16), _free_port()
    argv = lab_argv(nbs, token=token, port=port) + ["--LabApp.expose_app_in_browser=True",
                                                   "--ServerApp.port_retries=0"]
    log = open(root / "jupyterlab.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (root / "jupyterlab.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                assert json.load(r)["started"]
            break
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, "JupyterLab did not start in 120 s"
            time.sleep(0.5)
    # The token is required: without it the API refuses.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/api/contents", timeout=5)
    assert refused.value.code == 403
    yield base, token, nbs
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


_KERNEL_READY = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}"""
_IMAGES_SHOWN = """(n) => [...document.querySelectorAll('.bk-card-widget img.bk-thumb')]
  .filter(i => i.complete && i.naturalWidth > 0).length >= n"""


def test_explore_runs_in_jupyterlab_and_shows_images(jupyterlab, analysis_dataset):
    from biomedica_kit.tables.connect import connect

    base, token, nbs = jupyterlab
    con = connect(analysis_dataset)
    photo = con.execute("SELECT count(*) FROM figures WHERE contains(lower(caption), "
                        "'photostimulation')").fetchone()[0]
    assert 0 < photo < 12
    with browser_page() as (page, urls):
        page.goto(f"{base}/lab/tree/03_explore.ipynb?token={token}")
        page.wait_for_function(_KERNEL_READY, timeout=180_000)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_function(_IMAGES_SHOWN, arg=12, timeout=180_000)
        cards = page.locator(".bk-card-widget")
        assert cards.count() == 12  # the first page of the 13 samples
        assert "1–12 of 13 matching samples" in page.inner_text(".jp-Notebook")
        # The images are the real thumbnails, decoded by the browser.
        sizes = page.evaluate("""() => [...document.querySelectorAll(
            '.bk-card-widget img.bk-thumb')].map(i => [i.naturalWidth, i.naturalHeight])""")
        assert all(max(w, h) == 480 or max(w, h) < 480 for w, h in sizes)
        assert sum(max(w, h) == 480 for w, h in sizes) >= 6
        # A live widget round trip: type in the caption box, the gallery follows.
        box = page.locator(".widget-text input[placeholder^='text in the caption']").first
        box.fill("photostimulation")
        box.press("Enter")
        page.wait_for_function("(n) => document.querySelectorAll('.bk-card-widget').length "
                               "=== n", arg=photo, timeout=60_000)
        assert f"1–{photo} of {photo} matching samples" in page.inner_text(".jp-Notebook")
        page.wait_for_function(_IMAGES_SHOWN, arg=photo, timeout=60_000)
        cards.first.scroll_into_view_if_needed()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "lab_03_explore.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 50_000
        # Everything came from the JupyterLab server on loopback.
        assert hosts(urls) == {base.split("/")[2]}
    # The run happened on the copy: the repository's notebook is still committed clean.
    assert not any(c.get("outputs") for c in json.loads(
        (notebooks_dir() / "03_explore.ipynb").read_text())["cells"])
    assert (nbs / "03_explore.ipynb").is_file()
