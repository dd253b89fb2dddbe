"""Reproducible reports: run the analysis notebooks headless and publish them as static files.

``report(dataset, out_dir)`` executes with papermill (``dataset`` into the ``parameters``
cell) the notebooks of ``notebooks/`` that declare ``report: true`` and whose ``requires`` the
dataset meets (:mod:`~biomedica_kit.analysis.notebook_meta`; the others are listed as skipped,
with why), keeps the executed ``.ipynb``, writes every plotly chart it displayed as PNG and SVG
(kaleido driving Debian's Chromium), and exports the notebook to one self-contained HTML file
whose charts stay interactive. ``index.html`` links everything.

Everything works offline: plotly.js is written once per report (``assets/plotly.min.js``,
loaded only by pages that have charts) and the nbconvert template drops the CDN scripts
(require.js, MathJax, mermaid, the widget manager) that the stock template loads, because
nothing beyond loopback can be reached where reports are built and read. Pages show the
parameters a notebook ran with once (papermill's injected cell, not the defaults it replaced)
and hide code cells until "show code" is clicked.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager

from biomedica_kit.analysis.notebook_meta import NotebookMetaError, Skipped, default_notebooks, plan
from biomedica_kit.analysis.report_index import index_html
from biomedica_kit.base.browser import chromium_path
from biomedica_kit.tables import query
from biomedica_kit.tables.connect import connect

__all__ = [
    "Chart", "NOTEBOOK_CSS", "NotebookResult",
    "PLOTLY_JS", "PLOTLY_MIME", "Report", "ReportError", "WIDGET_MIME",
    "drop_widget_state", "ensure_metadata", "execute_notebook", "extract_charts", "extract_notes",
    "notebook_html", "notebooks_dir", "render_images", "report",
    "resolve_notebook", "write_notebook_css", "write_plotlyjs",
]

PLOTLY_MIME = "application/vnd.plotly.v1+json"
#: Where a report keeps plotly.js, relative to its folder (one copy for every page).
PLOTLY_JS = "assets/plotly.min.js"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

_SLUG = re.compile(r"[^a-z0-9]+")


class ReportError(RuntimeError):
    """A report could not be produced (a notebook failed, or charts could not be rendered)."""


@dataclass
class Chart:
    """One plotly chart a notebook displayed, and where its static renderings were written."""

    notebook: str
    name: str  # unique within its notebook; from the figure's ``layout.meta.chart``
    title: str
    figure: dict = field(repr=False)
    png: Path | None = None
    svg: Path | None = None


@dataclass
class NotebookResult:
    """One executed notebook: its executed copy, its HTML page and its charts."""

    name: str
    ipynb: Path
    html: Path
    charts: list[Chart]
    seconds: float
    error: str | None = None  # "ename: evalue" of the cell that failed, if one did
    notes: list[str] = field(default_factory=list)  # what it could not show (charts.Missing)


@dataclass
class Report:
    """What :func:`report` wrote."""

    out_dir: Path
    index: Path
    dataset: Path
    dataset_version: str | None
    overview: dict[str, Any]  # query.overview(): figures, articles, shards, figures_by_license
    notebooks: list[NotebookResult]
    seconds: float
    skipped: list[Skipped] = field(default_factory=list)  # their required data is missing

    @property
    def charts(self) -> list[Chart]:
        """Every chart of every notebook, in page order."""
        return [c for nb in self.notebooks for c in nb.charts]


def notebooks_dir() -> Path:
    """The folder holding the project's notebooks (``notebooks/`` at the repository root).

    The notebooks are not package data: reports need a source checkout (or an editable
    install), which is how the project is installed by ``make``.
    """
    return Path(__file__).resolve().parents[2] / "notebooks"


def resolve_notebook(name: str | os.PathLike) -> Path:
    """A notebook by path, or by name (``01_overview`` / ``01_overview.ipynb``) in notebooks/."""
    p = Path(name)
    if p.suffix == ".ipynb" and p.is_file():
        return p.resolve()
    cand = notebooks_dir() / (p.name if p.suffix == ".ipynb" else f"{p.name}.ipynb")
    if not cand.is_file():
        known = ", ".join(sorted(x.stem for x in notebooks_dir().glob("*.ipynb"))) or "none"
        raise ReportError(f"no notebook {name!r} (known: {known})")
    return cand


def report(
    dataset: str | os.PathLike,
    out_dir: str | os.PathLike,
    notebooks: list[str] | tuple[str, ...] | None = None,
    *,
    parameters: dict[str, Any] | None = None,
    images: bool = True,
    timeout: int = 600,
    progress: bool = False,
) -> Report:
    """Execute ``notebooks`` against ``dataset`` and publish them as HTML (+ charts) in ``out_dir``.

    ``notebooks`` are names in notebooks/ or paths (default: those declaring ``report: true``,
    :func:`~biomedica_kit.analysis.notebook_meta.default_notebooks`); a notebook whose
    ``requires`` the dataset lacks is skipped, named in :attr:`Report.skipped` with why;
    ``parameters`` are passed to every notebook's ``parameters`` cell besides ``dataset``;
    ``images=False`` skips the PNG/SVG renderings (no Chromium needed). The metadata tables are
    exported first when they are missing or older than the dataset's current version.

    A notebook whose cell raises still gets its HTML page (showing the traceback); the report
    is finished and then :class:`ReportError` is raised naming every failed notebook.
    """
    t0 = time.perf_counter()
    ds = Path(dataset).resolve()
    if not (ds / "manifest.json").is_file():
        raise ReportError(f"{ds} is not a dataset (no manifest.json)")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    version = ensure_metadata(ds)
    con = connect(ds, refresh=False)
    try:
        overview = query.overview(con)
    finally:
        con.close()
    params = {**(parameters or {}), "dataset": str(ds)}
    try:
        to_run, skipped = plan(ds, [resolve_notebook(n) for n in notebooks] if notebooks
                               else default_notebooks(notebooks_dir()))
    except NotebookMetaError as exc:
        raise ReportError(str(exc)) from None
    results = [_run_one(src, out, params, timeout=timeout, progress=progress) for src in to_run]
    # What an earlier report into the same folder wrote must not linger: its charts, and the
    # pages of notebooks skipped now.
    for name in [r.name for r in results] + [s.name for s in skipped]:
        shutil.rmtree(out / "charts" / name, ignore_errors=True)
    for s in skipped:
        for stale in (out / f"{s.name}.html", out / "notebooks" / f"{s.name}.ipynb"):
            stale.unlink(missing_ok=True)
    if images:
        render_images([c for r in results for c in r.charts], out / "charts")
    if any(r.charts for r in results):
        write_plotlyjs(out)
    write_notebook_css(out)
    for r in results:
        r.html.write_text(notebook_html(r, out), encoding="utf-8")
    rep = Report(out_dir=out, index=out / "index.html", dataset=ds, dataset_version=version,
                 overview=overview, notebooks=results, seconds=time.perf_counter() - t0,
                 skipped=skipped)
    rep.index.write_text(index_html(rep), encoding="utf-8")
    failed = [r for r in results if r.error]
    if failed:
        raise ReportError("; ".join(f"{r.name} failed ({r.error}), see {r.html}" for r in failed))
    return rep


def ensure_metadata(dataset: Path) -> str | None:
    """Export the metadata tables when missing or stale; return the dataset's current version."""
    from biomedica_kit.dataset.manifest import read_manifest
    from biomedica_kit.tables import export as metadata

    version = read_manifest(dataset).get("dataset_version")
    if not metadata.is_current(dataset):
        metadata.export(dataset)
    return version


# --------------------------------------------------------------------------------- executing


class _ThisPythonKernelManager(AsyncKernelManager):
    """A kernel manager whose kernel is always this interpreter (``sys.executable``).

    Why: papermill looks the notebook's kernel name (``python3``) up on the Jupyter path, where
    a user-level or system ``python3`` kernelspec may point at another Python that lacks
    biomedica_kit. Reports must run in the environment that is running the report. The kernel
    talks over Unix sockets (IPC) rather than loopback TCP: no other local user can connect to
    it, and ipykernel has no reason to warn about unencrypted TCP.
    """

    def __init__(self, **kwargs: Any) -> None:
        if os.name == "posix":  # ZeroMQ has no IPC transport on Windows
            kwargs.setdefault("transport", "ipc")
        super().__init__(**kwargs)
        self._ipc_dir: str | None = None

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        if self.transport == "ipc" and self._ipc_dir is None:
            # Sockets go to a private folder: jupyter_client's default ("kernel-ipc-N" in the
            # working directory, i.e. notebooks/) litters the source tree and can collide
            # between two reports running at once.
            self._ipc_dir = tempfile.mkdtemp(prefix="biomedica-kernel-")
            self.ip = os.path.join(self._ipc_dir, "kernel")
        return await super()._async_pre_start_kernel(**kw)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if self._ipc_dir and not restart:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)

    @property
    def kernel_spec(self) -> KernelSpec:
        if self._kernel_spec is None:
            self._kernel_spec = KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name="Python 3 (biomedica-kit)", language="python")
        return self._kernel_spec


def execute_notebook(src: Path, dest: Path, parameters: dict[str, Any], *, timeout: int = 600,
                     progress: bool = False) -> None:
    """Run ``src`` with papermill in a fresh kernel of this Python and save it to ``dest``.

    Raises papermill's ``PapermillExecutionError`` when a cell fails (``dest`` then holds the
    notebook up to the failing cell, traceback included).
    """
    import papermill

    dest.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(src), str(dest), parameters=parameters, kernel_name="python3",
        kernel_manager_class=_ThisPythonKernelManager, progress_bar=progress,
        request_save_on_cell_execute=False, execution_timeout=timeout, cwd=str(src.parent),
        # Every output is in by then. A graceful shutdown interrupts the kernel first, and
        # ipykernel then sometimes logs a spurious "KeyboardInterrupt caught in kernel".
        shutdown_kernel="immediate")


def _run_one(src: Path, out: Path, params: dict[str, Any], *, timeout: int,
             progress: bool) -> NotebookResult:
    import nbformat
    from papermill.exceptions import PapermillExecutionError

    name = src.stem
    ipynb = out / "notebooks" / f"{name}.ipynb"
    t0 = time.perf_counter()
    error = None
    try:
        execute_notebook(src, ipynb, params, timeout=timeout, progress=progress)
    except PapermillExecutionError as exc:
        error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    nb = nbformat.read(ipynb, as_version=4)
    if drop_widget_state(nb):
        nbformat.write(nb, ipynb)
    return NotebookResult(name=name, ipynb=ipynb, html=out / f"{name}.html",
                          charts=extract_charts(nb, name), seconds=time.perf_counter() - t0,
                          error=error, notes=extract_notes(nb))


def drop_widget_state(nb: Any) -> bool:
    """Drop saved widget state, and the live-widget view of outputs that have a static HTML
    snapshot (the explorer's), so the snapshot shows. Returns whether anything was dropped.

    Why: the state holds every widget of the run (each gallery card's thumbnail, twice); it is
    useless without the kernel that made it and made an executed 03_explore 11 MB.
    """
    changed = nb.metadata.pop("widgets", None) is not None
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            if WIDGET_MIME in data and "text/html" in data:
                data.pop(WIDGET_MIME)
                changed = True
    return changed


def extract_notes(nb: Any) -> list[str]:
    """The plain-text notes (:class:`~biomedica_kit.analysis.charts.Missing`) a notebook showed."""
    from biomedica_kit.analysis.charts import NOTE_MIME

    notes = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            note = output.get("data", {}).get(NOTE_MIME)
            if note and note["message"] not in notes:
                notes.append(note["message"])
    return notes


def extract_charts(nb: Any, notebook: str) -> list[Chart]:
    """The plotly figures an executed notebook displayed, in order, with unique names."""
    charts: list[Chart] = []
    seen: dict[str, int] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            fig = output.get("data", {}).get(PLOTLY_MIME)
            if not fig:
                continue
            title = _title_of(fig)
            meta = fig.get("layout", {}).get("meta")
            base = (meta.get("chart") if isinstance(meta, dict) else None) or _slug(title) \
                or f"chart-{len(charts) + 1}"
            seen[base] = seen.get(base, 0) + 1
            name = base if seen[base] == 1 else f"{base}-{seen[base]}"
            charts.append(Chart(notebook=notebook, name=name, title=title or name, figure=fig))
    return charts


def _title_of(fig: dict) -> str:
    title = fig.get("layout", {}).get("title")
    text = title.get("text") if isinstance(title, dict) else title
    text = re.sub(r"<br\s*/?>", " — ", text or "")
    return re.sub(r"<[^>]+>", "", text).strip()


def _slug(s: str) -> str:
    return _SLUG.sub("-", s.lower()).strip("-")[:60]


# ---------------------------------------------------------------------------------- images


def render_images(charts: list[Chart], out: Path, *, width: int = 1000, height: int = 560,
                  scale: float = 2.0) -> None:
    """Write every chart as ``out/<notebook>/<name>.png`` and ``.svg`` in one Chromium session.

    Raises :class:`ReportError` when no Chromium is installed (run scripts/ensure_chromium.sh)
    or when kaleido fails on a chart.
    """
    if not charts:
        return
    browser = chromium_path()
    if browser is None:
        raise ReportError("no Chromium found for PNG/SVG charts: run scripts/ensure_chromium.sh "
                          "(or set BROWSER_PATH), or pass images=False / --no-images")
    # kaleido (via choreographer) reads BROWSER_PATH; without it it would search PATH or try
    # to use a Chrome it downloaded itself, which cannot work offline.
    os.environ.setdefault("BROWSER_PATH", browser)
    import kaleido

    jobs = []
    for c in charts:
        d = out / c.notebook
        d.mkdir(parents=True, exist_ok=True)
        c.png, c.svg = d / f"{c.name}.png", d / f"{c.name}.svg"
        # Honour a chart's own height (long bar lists grow taller); width stays uniform.
        h = c.figure.get("layout", {}).get("height") or height
        jobs.append({"fig": c.figure, "path": c.png,
                     "opts": {"format": "png", "width": width, "height": h, "scale": scale}})
        jobs.append({"fig": c.figure, "path": c.svg,
                     "opts": {"format": "svg", "width": width, "height": h}})
    try:
        # mathjax=False: kaleido would otherwise load MathJax from a CDN for every page.
        kaleido.write_fig_from_object_sync(jobs, kopts={"mathjax": False},
                                           cancel_on_error=True)
    except Exception as exc:  # kaleido raises assorted browser/launch errors
        raise ReportError(f"rendering charts with kaleido ({browser}) failed: {exc}") from exc
    missing = [str(j["path"]) for j in jobs if not Path(str(j["path"])).is_file()]
    if missing:
        raise ReportError(f"kaleido did not write {missing}")
    for c in charts:
        if c.png is not None:
            _shrink_png(c.png)


def _shrink_png(path: Path) -> None:
    """Re-save a chart PNG with a 256-colour palette (no dithering): charts are flat colours
    and anti-aliased edges, so it looks the same at about a quarter of the bytes."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT,
                                           dither=Image.Dither.NONE)
    small.save(path, "PNG", optimize=True)


# ------------------------------------------------------------------------------------ HTML

#: The notebook CSS every page shares (nbconvert's lab template inlines ~250 KB per page).
NOTEBOOK_CSS = "assets/notebook.css"
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.S)
_CSS_SPACE = re.compile(r"\s*\n\s*")


def write_notebook_css(out: Path) -> Path:
    """Write nbconvert's lab-template CSS (light theme) to ``out/assets/`` once."""
    from nbconvert import HTMLExporter

    parts = []
    dirs = [Path(d) for d in HTMLExporter(template_name="lab").template_paths]
    for name in ("static/index.css", "static/theme-light.css"):
        found = next((d / name for d in dirs if (d / name).is_file()), None)
        if found is None:
            raise ReportError(f"nbconvert's lab template has no {name}")
        parts.append(found.read_text(encoding="utf-8"))
    css = _CSS_COMMENT.sub("", "\n".join(parts))  # comments are a fifth of it
    css = _CSS_SPACE.sub("\n", css)
    path = out / NOTEBOOK_CSS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(css, encoding="utf-8")
    return path


def write_plotlyjs(out: Path) -> Path:
    """Write plotly.js (the copy bundled with the plotly package) to ``out/assets/`` once."""
    from plotly.offline import get_plotlyjs

    path = out / PLOTLY_JS
    path.parent.mkdir(parents=True, exist_ok=True)
    data = get_plotlyjs().encode("utf-8")
    if not path.is_file() or path.stat().st_size != len(data):
        path.write_bytes(data)
    return path


# Extends nbconvert's lab template: no CDN scripts (the report must open offline), its CSS
# and plotly.js from the report's shared copies (plotly.js on pages with charts only), code
# cells hidden until "show code" is clicked, and a small navigation bar back to the index.
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block notebook_css %}
<link rel="stylesheet" href="{{ resources.bk_css }}">
<style>
a.anchor-link{display:none} .jp-InputArea{overflow:hidden} .jp-Collapser{display:none}
.jp-OutputArea-output pre{line-height:inherit;font-family:inherit}
.jp-RenderedText pre{color:var(--jp-content-font-color1);font-size:var(--jp-code-font-size)}
</style>
{% endblock notebook_css %}
{% block extra_css %}
<style>
.bk-nav{font:14px system-ui,sans-serif;padding:8px 16px;background:#f4f6fa;
  border-bottom:1px solid #d8dde6}
.bk-nav a,.bk-nav button{margin-right:1em}
.bk-nav button{font:13px system-ui,sans-serif;cursor:pointer}
.bk-chart-links{font:12px system-ui,sans-serif;margin:2px 0 12px}
.bk-chart-links a{margin-right:.8em}
body:not(.bk-show-code) .jp-CodeCell .jp-Cell-inputWrapper{display:none}
body:not(.bk-show-code) .jp-CodeCell .jp-OutputPrompt{visibility:hidden}
</style>
{%- if resources.bk_plotly %}
<script type="text/javascript" src="{{ resources.bk_plotly }}"></script>
{%- endif %}
{% endblock extra_css %}
{%- block body_header -%}
{{ super() }}
<nav class="bk-nav"><a href="index.html">&larr; report index</a>
<a href="notebooks/{{ resources.bk_name }}.ipynb">executed notebook (.ipynb)</a>
<button type="button" id="bk-code-toggle" onclick="var on=document.body.classList.toggle(
'bk-show-code');this.textContent=on?'hide code':'show code'">show code</button></nav>
{%- endblock body_header -%}
"""


def notebook_html(result: NotebookResult, out: Path) -> str:
    """The HTML page of one executed notebook: interactive plotly charts (plotly.js from the
    report's shared copy, only when the page has charts), widget snapshots, code hidden."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = nbformat.read(result.ipynb, as_version=4)
    _prepare_outputs(nb, result, out)
    exporter = HTMLExporter(extra_loaders=[DictLoader({"bk_report.html.j2": _TEMPLATE})],
                            template_file="bk_report.html.j2", embed_images=True)
    body, _ = exporter.from_notebook_node(
        nb, resources={"metadata": {"name": result.name}, "bk_name": result.name,
                       "bk_plotly": PLOTLY_JS if result.charts else "",
                       "bk_css": NOTEBOOK_CSS})
    return body


def _prepare_outputs(nb: Any, result: NotebookResult, out: Path) -> None:
    """Give plotly outputs an HTML rendering and drop live-widget views that have a snapshot.

    nbconvert renders neither plotly's own mime type nor widgets without their (CDN) manager;
    each chart becomes a plotly div (+ links to its PNG/SVG), each widget its HTML snapshot.
    """
    import plotly.io as pio

    charts = iter(result.charts)
    # Widget state would make nbconvert load the widget manager; it is not used offline.
    drop_widget_state(nb)
    # Papermill adds its injected cell after the default one: show the parameters once.
    tags = [c.get("metadata", {}).get("tags", []) for c in nb.cells]
    if any("injected-parameters" in t for t in tags):
        nb.cells = [c for c, t in zip(nb.cells, tags, strict=True) if "parameters" not in t]
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if not data:
                continue
            if PLOTLY_MIME in data:
                chart = next(charts)
                div = pio.to_html(data[PLOTLY_MIME], include_plotlyjs=False, full_html=False,
                                  default_width="100%",
                                  config={"displaylogo": False, "responsive": True})
                data["text/html"] = div + _chart_links(chart, out)
                data.pop(PLOTLY_MIME)


def _chart_links(chart: Chart, out: Path) -> str:
    links = [f'<a href="{p.relative_to(out).as_posix()}" download>{p.suffix[1:].upper()}</a>'
             for p in (chart.png, chart.svg) if p is not None]
    if not links:
        return ""
    return f'<div class="bk-chart-links">{html.escape(chart.title)}: {" ".join(links)}</div>'
