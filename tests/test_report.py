"""`biomedica report`: HTML pages that render their charts in a real headless Chromium, offline.

The report is served from a real ``http.server`` on 127.0.0.1 and opened by Debian's Chromium
(installed by scripts/ensure_chromium.sh, which ``make test`` runs) with every other host name
unresolvable, so a page that needed a CDN would show no charts here.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import nbformat
import numpy as np
import pytest
from click.testing import CliRunner
from curate_datasets import clustered_dataset
from PIL import Image

from biomedica_kit.analysis.report import ReportError, report
from biomedica_kit.base.browser import chromium_path
from biomedica_kit.cli.main import main
from biomedica_kit.dataset.manifest import read_manifest

CHART_COLOR_COMMERCIAL = (0x2A, 0x9D, 0x8F)  # charts.LICENCE_COLORS["commercial"]


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    assert path, "no Chromium: run scripts/ensure_chromium.sh (make test does)"
    return path


@pytest.fixture(scope="module")
def built_report(analysis_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "site"
    res = CliRunner().invoke(main, ["report", str(analysis_dataset), "--out", str(out),
                                    "--notebook", "01_overview", "--notebook", "02_topics",
                                    "--notebook", "03_explore", "-p", 'licences=["other"]'])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "01_overview: 6 charts, 0 notes" in res.output
    assert "02_topics: 3 charts, 4 notes" in res.output
    return out


@pytest.fixture(scope="module")
def server(built_report):
    """The report folder over HTTP on an ephemeral loopback port."""
    handler = functools.partial(_QuietHandler, directory=str(built_report))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


def chrome(browser: str, tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` with its own profile and no network but loopback."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
           "--virtual-time-budget=10000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.external_loads: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        for attr in ("href", "src"):
            if a.get(attr):
                self.refs.append(a[attr])
        # What a browser would fetch by itself: scripts, stylesheets, images, frames.
        src = a.get("src") or (a.get("href") if tag == "link" else None)
        if src and re.match(r"(https?:)?//", src):
            self.external_loads.append(src)


def test_report_files(built_report, analysis_dataset):
    names = {p.relative_to(built_report).as_posix() for p in built_report.rglob("*")
             if p.is_file()}
    assert {"index.html", "01_overview.html", "02_topics.html", "03_explore.html",
            "notebooks/01_overview.ipynb", "notebooks/02_topics.ipynb"} <= names
    charts = sorted(n for n in names if n.startswith("charts/"))
    stems = {n.rsplit(".", 1)[0] for n in charts}
    assert len(charts) == 2 * len(stems) == 18  # every chart as PNG and SVG
    assert "charts/01_overview/licence_categories" in stems
    for n in charts:
        p = built_report / n
        if n.endswith(".png"):
            px = np.asarray(Image.open(p).convert("RGB"), dtype=float)
            assert px.shape[1] >= 1000 and px.std() > 10, f"{n} looks blank"
        else:
            root = ElementTree.parse(p).getroot()
            assert root.tag.endswith("svg") and len(list(root.iter())) > 20, n
    # The PNG shows the commercial bar in its colour: kaleido drew the real figure.
    lic = np.asarray(Image.open(built_report / "charts/01_overview/licence_categories.png")
                     .convert("RGB"))
    assert (np.abs(lic.astype(int) - CHART_COLOR_COMMERCIAL).sum(axis=2) < 10).sum() > 5000
    # The executed notebooks saved beside the pages carry the dataset they ran on.
    nb = nbformat.read(built_report / "notebooks/01_overview.ipynb", as_version=4)
    assert str(analysis_dataset) in "".join(c.source for c in nb.cells)


def test_pages_are_self_contained(built_report):
    for page in ("index.html", "01_overview.html", "02_topics.html", "03_explore.html"):
        text = (built_report / page).read_text(encoding="utf-8")
        links = _Links()
        links.feed(text)
        assert links.external_loads == [], page
        for ref in links.refs:  # every local link resolves
            if not re.match(r"([a-z]+:|#)", ref):
                assert (built_report / ref).is_file(), f"{page} links missing {ref}"
        if page != "index.html":
            assert text.count("Plotly.newPlot") >= (0 if page == "03_explore.html" else 2)
            # plotly.js is never inlined: pages with charts load the report's one copy, the
            # explorer page (no chart) loads none; the notebook CSS is shared the same way.
            assert not re.search(r"plotly\.js v\d", text), page
            want = 0 if page == "03_explore.html" else 1
            assert len(re.findall(r'<script[^>]*src="assets/plotly.min.js"', text)) \
                == want, page
            assert text.count('href="assets/notebook.css"') == 1 and len(text) < 1_000_000
    assert re.search(r"plotly\.js v\d", (built_report / "assets/plotly.min.js").read_text())
    # The two analysis notebooks (what `biomedica report` runs by default) stay under 6 MB
    # with everything they need; the explorer's page (5 image cards) adds under 1 MB.
    files = [p for p in built_report.rglob("*") if p.is_file()]
    explorer = sum(p.stat().st_size for p in files if p.stem == "03_explore")
    total = sum(p.stat().st_size for p in files)
    assert total - explorer < 6_000_000, f"report is {total - explorer:,} bytes"
    assert (built_report / "03_explore.html").stat().st_size < 1_000_000


def test_pages_hide_code_and_show_parameters_once(built_report, server):
    from browser import browser_page, hosts

    with browser_page() as (page, urls):
        page.goto(f"{server}/01_overview.html")
        code = page.locator(".jp-CodeCell .jp-Cell-inputWrapper")
        assert code.count() >= 8 and not code.first.is_visible()  # hidden by default
        assert page.locator(".jp-MarkdownCell").first.is_visible()
        page.click("#bk-code-toggle")
        assert code.first.is_visible() and page.inner_text("#bk-code-toggle") == "hide code"
        # The parameters the notebook ran with, once (papermill's injected cell).
        sources = page.locator(".jp-CodeCell .jp-InputArea-editor").all_inner_texts()
        assert sum("dataset = " in s for s in sources) == 1
        assert hosts(urls) == {server.split("/")[2]}


def test_index_lists_notebooks_charts_and_notes(built_report, analysis_dataset):
    text = (built_report / "index.html").read_text(encoding="utf-8")
    version = read_manifest(analysis_dataset)["dataset_version"]
    assert version in text
    assert "<b>13</b> samples from <b>4</b> articles" in text
    assert "commercial: 8, other: 5" in text
    assert text.count('<img src="charts/') == 9
    assert "no taxonomy labels yet" in text and "no MeSH terms yet" in text
    # Notes render their Markdown (no raw backticks), thumbnails are large enough to read.
    assert "<code>primary_label</code>" in text and "`" not in text
    assert "minmax(480px,1fr)" in text


def test_charts_render_in_chromium(built_report, server, chromium, tmp_path):
    dom = chrome(chromium, tmp_path, f"{server}/01_overview.html", "--dump-dom").stdout
    # One .js-plotly-plot per chart, each drawn by plotly.js into SVG layers.
    assert dom.count('class="plotly-graph-div js-plotly-plot"') == 6
    assert dom.count('class="main-svg"') >= 12
    assert "Samples and articles per licence category" in dom  # title drawn as SVG text
    assert 'class="bk-chart-links"' in dom

    shot = tmp_path / "overview.png"
    chrome(chromium, tmp_path, f"{server}/01_overview.html", "--window-size=1280,2600",
           f"--screenshot={shot}")
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert px.std() > 20, "screenshot is blank"
    # The licence chart's bars are on screen in their colour (plotly ran, not just the page).
    assert (np.abs(px - CHART_COLOR_COMMERCIAL).sum(axis=2) < 12).sum() > 2000


def test_topics_and_explore_pages_render(built_report, server, chromium, tmp_path):
    dom = chrome(chromium, tmp_path, f"{server}/02_topics.html", "--dump-dom").stdout
    assert dom.count('class="plotly-graph-div js-plotly-plot"') == 3
    assert "no taxonomy labels yet" in dom
    dom = chrome(chromium, tmp_path, f"{server}/03_explore.html", "--dump-dom").stdout
    # The explorer's static snapshot: the five "other" samples, images inline.
    assert dom.count('class="bk-card"') == 5
    assert dom.count('src="data:image/jpeg;base64,') == 5


def test_failed_notebook_still_gets_a_page(analysis_dataset, tmp_path):
    bad = tmp_path / "broken.ipynb"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell('dataset = ""', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("1 / 0"),
    ], metadata={"kernelspec": {"name": "python3", "language": "python",
                                "display_name": "Python 3"}})
    nbformat.write(nb, bad)
    with pytest.raises(ReportError, match="broken failed .*ZeroDivisionError"):
        report(analysis_dataset, tmp_path / "site", [str(bad)], images=False)
    page = (tmp_path / "site" / "broken.html").read_text(encoding="utf-8")
    assert "ZeroDivisionError" in page
    assert "failed: cell" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")


def test_report_refreshes_stale_metadata(analysis_dataset, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(analysis_dataset, ds)
    shutil.rmtree(ds / "metadata")
    rep = report(ds, tmp_path / "site", ["01_overview"], images=False)
    assert (ds / "metadata" / "figures.parquet").is_file()
    assert rep.overview["figures"] == 13 and rep.notebooks[0].error is None
    assert rep.notebooks[0].charts[0].png is None  # images=False


def test_cli_rejects_bad_params_and_unknown_notebooks(analysis_dataset, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["report", str(analysis_dataset), "--out", str(tmp_path / "a"),
                               "-p", "no-equals-sign"])
    assert res.exit_code == 2 and "NAME=VALUE" in res.output
    res = runner.invoke(main, ["report", str(analysis_dataset), "--out", str(tmp_path / "b"),
                               "--notebook", "99_nothing"])
    assert res.exit_code == 1 and "no notebook '99_nothing'" in res.output
    assert "01_overview" in res.output  # lists the known ones


# ------------------------------------------------------- what notebooks need (metadata.biomedica)


def test_default_report_runs_the_cluster_notebook_once_a_run_exists(tmp_path_factory, chromium):
    ds, run = clustered_dataset(tmp_path_factory)
    out = tmp_path_factory.mktemp("report-clusters") / "site"
    res = CliRunner().invoke(main, ["report", str(ds), "--out", str(out)])  # the default set
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "05_clusters: 1 charts" in res.output and "skipped, needs `clusters" not in res.output
    for name in ("01_overview", "02_topics", "05_clusters"):
        assert f"{name}: " in res.output and (out / f"{name}.html").is_file(), name
    page = (out / "05_clusters.html").read_text(encoding="utf-8")
    assert page.count("Plotly.newPlot") == 1 and "185 samples, map by pca" in page
    assert f"run {run}" in page
    png = out / "charts/05_clusters/cluster_map.png"
    px = np.asarray(Image.open(png).convert("RGB"), dtype=float)
    assert px.shape[1] >= 1000 and px.std() > 10, "cluster map PNG looks blank"
    assert (out / "charts/05_clusters/cluster_map.svg").is_file()
    index = (out / "index.html").read_text(encoding="utf-8")
    assert '<a href="05_clusters.html">05_clusters</a>' in index
    assert 'src="charts/05_clusters/cluster_map.png"' in index
    assert "<td>05_clusters</td>" not in index  # the row of a skipped notebook


def test_cluster_notebook_is_skipped_without_a_run(analysis_dataset, tmp_path):
    from biomedica_kit.analysis.notebook_meta import default_notebooks, plan
    from biomedica_kit.analysis.report import notebooks_dir

    to_run, skipped = plan(analysis_dataset, default_notebooks(notebooks_dir()))
    assert {"01_overview", "02_topics"} <= {p.stem for p in to_run}
    assert "05_clusters" not in {p.stem for p in to_run}
    why = {s.name: s.reason for s in skipped}
    assert why["05_clusters"] == ("needs `clusters/*/config.json` in the dataset (a finished "
                                  "`biomedica cluster` run)")
    # Named explicitly it is skipped too (no kernel started), and a page an earlier report
    # wrote for it into the same folder goes.
    site = tmp_path / "site"
    (site / "charts/05_clusters").mkdir(parents=True)
    (site / "05_clusters.html").write_text("stale")
    res = CliRunner().invoke(main, ["report", str(analysis_dataset), "--out", str(site),
                                    "--notebook", "05_clusters", "--no-images"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "05_clusters: skipped, needs `clusters/*/config.json` in the dataset" in res.output
    assert not (site / "05_clusters.html").exists() and not (site / "charts/05_clusters").exists()
    index = (site / "index.html").read_text(encoding="utf-8")
    assert ("<td>05_clusters</td><td></td><td>skipped: needs <code>clusters/*/config.json"
            "</code> in the dataset (a finished <code>biomedica cluster</code> run)") in index


def test_requirements_need_finished_non_empty_data(analysis_dataset, tmp_path):
    from biomedica_kit.analysis.notebook_meta import (
        NotebookMeta,
        NotebookMetaError,
        missing_requirements,
        read_meta,
    )

    ds = tmp_path / "ds"
    ds.mkdir()
    meta = NotebookMeta(report=True, requires=("clusters/*/config.json", "eval"))
    assert missing_requirements(ds, meta) == ["clusters/*/config.json", "eval"]
    run = ds / "clusters" / "r1"
    run.mkdir(parents=True)
    (run / "model.npz").write_bytes(b"x")  # a run still being written: no config.json yet
    (ds / "eval").mkdir()
    (ds / "eval" / ".tmp-123-metrics.json").write_text("{}")  # only a writer's temporary
    assert missing_requirements(ds, meta) == ["clusters/*/config.json", "eval"]
    tmp_run = ds / "clusters" / ".tmp-9-r2"
    tmp_run.mkdir()
    (tmp_run / "config.json").write_text("{}")
    (run / "config.json").write_text("")  # empty files do not count either
    assert missing_requirements(ds, meta) == ["clusters/*/config.json", "eval"]
    (run / "config.json").write_text('{"run": "r1"}')
    (ds / "eval" / "metrics.json").write_text("{}")
    assert missing_requirements(ds, meta) == []

    def notebook(biomedica) -> Path:
        p = tmp_path / "nb.ipynb"
        p.write_text(json.dumps({"cells": [], "metadata": {"biomedica": biomedica}}))
        return p

    assert read_meta(notebook({"report": True, "requires": ["eval"]})) == NotebookMeta(
        report=True, requires=("eval",))
    for bad, msg in (({"reprot": True}, "unknown"), ({"requires": "eval"}, "list of paths"),
                     ({"requires": ["/etc"]}, "relative"), ({"requires": ["../x"]}, "relative"),
                     ({"report": "yes"}, "true or false")):
        with pytest.raises(NotebookMetaError, match=msg):
            read_meta(notebook(bad))
    with pytest.raises(ReportError, match="unknown"):  # a report stops on it, naming it
        report(analysis_dataset, tmp_path / "site", [str(notebook({"reprot": 1}))])
