"""The landing page of a report (``index.html``): the dataset, every notebook page with its
charts, notes and run time, the notebooks skipped and why, and a thumbnail of every chart.

:func:`biomedica_kit.analysis.report.report` writes it; it links only files the report wrote.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

__all__ = ["ReportPage", "index_html", "inline_markdown"]


class ReportPage(Protocol):
    """What the page shows of a :class:`biomedica_kit.analysis.report.Report` (a protocol, so
    this module does not import the report module that imports it)."""

    @property
    def out_dir(self) -> Path: ...
    @property
    def dataset(self) -> Path: ...
    @property
    def dataset_version(self) -> str | None: ...
    @property
    def overview(self) -> dict[str, Any]: ...
    @property
    def notebooks(self) -> Sequence[Any]: ...  # NotebookResult
    @property
    def skipped(self) -> Sequence[Any]: ...  # notebook_meta.Skipped
    @property
    def seconds(self) -> float: ...
    @property
    def charts(self) -> Sequence[Any]: ...  # Chart

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def inline_markdown(text: str) -> str:
    """Escaped ``text`` with Markdown's inline code and bold rendered (what notes use)."""
    out = html.escape(text)
    out = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    return _BOLD.sub(lambda m: f"<b>{m.group(1)}</b>", out)


def index_html(rep: ReportPage) -> str:
    """The report's landing page: dataset, notebooks, and a thumbnail of every chart."""
    e = html.escape
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for nb in rep.notebooks:
        status = (f'<span class="err">failed: {e(nb.error)}</span>' if nb.error
                  else f"{len(nb.charts)} charts")
        notes = "".join(f"<li>{inline_markdown(n)}</li>" for n in nb.notes)
        rows.append(f'<tr><td><a href="{e(nb.html.name)}">{e(nb.name)}</a></td>'
                    f'<td><a href="notebooks/{e(nb.ipynb.name)}">.ipynb</a></td>'
                    f"<td>{status}</td><td>{nb.seconds:.1f} s</td>"
                    f"<td>{'<ul>' + notes + '</ul>' if notes else ''}</td></tr>")
    rows += [f'<tr class="skipped"><td>{e(s.name)}</td><td></td><td>skipped: '
             f"{inline_markdown(s.reason)}</td><td></td><td></td></tr>" for s in rep.skipped]
    ov = rep.overview
    by_licence = ", ".join(f"{e(str(k))}: {v:,}" for k, v in ov["figures_by_license"].items())
    headline = (f"<p class='headline'><b>{ov['figures']:,}</b> samples from "
                f"<b>{ov['articles']:,}</b> articles in <b>{ov['shards']:,}</b> shards "
                f"({by_licence or 'no samples'}).</p>")
    cards = []
    for c in rep.charts:
        if c.png is None:
            continue
        png = c.png.relative_to(rep.out_dir).as_posix()
        svg = c.svg.relative_to(rep.out_dir).as_posix() if c.svg else png
        cards.append(f'<figure><a href="{e(c.notebook)}.html"><img src="{e(png)}" '
                     f'alt="{e(c.title)}" loading="lazy"></a><figcaption>{e(c.title)} '
                     f'<span class="nb">({e(c.notebook)})</span> <a href="{e(png)}">PNG</a> '
                     f'<a href="{e(svg)}">SVG</a></figcaption></figure>')
    gallery = ("<h2>Charts</h2><div class='grid'>" + "".join(cards) + "</div>") if cards else ""
    params = json.dumps({"dataset": str(rep.dataset)})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>biomedica-kit report: {e(rep.dataset.name)}</title>
<style>
body{{font:15px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;padding:0 16px;
  color:#1d2330}}
table{{border-collapse:collapse}} td,th{{padding:4px 12px;border-bottom:1px solid #e3e6ec;
  text-align:left}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:18px}}
figure{{margin:0;border:1px solid #e3e6ec;border-radius:6px;padding:8px}}
figure img{{width:100%;height:auto}} figcaption{{font-size:13px}} .nb{{color:#6b7385}}
.err{{color:#b00020}} code{{background:#f4f6fa;padding:1px 4px}}
.headline{{font-size:17px}} td ul{{margin:0;padding-left:18px;font-size:13px;color:#4a5366}}
td{{vertical-align:top}}
</style></head><body>
<h1>biomedica-kit report</h1>
<p>Dataset <code>{e(str(rep.dataset))}</code>, version <code>{e(rep.dataset_version or "?")}</code>;
generated {e(created)} in {rep.seconds:.0f} s. Parameters: <code>{e(params)}</code>.</p>
{headline}
<h2>Notebooks</h2>
<table><tr><th>page</th><th>executed</th><th>charts</th><th>run time</th><th>notes</th></tr>
{"".join(rows)}</table>
{gallery}
</body></html>
"""
