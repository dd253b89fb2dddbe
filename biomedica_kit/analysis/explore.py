"""Interactive exploration of a dataset in Jupyter: a filterable image gallery and a subset builder.

- :class:`Filters` turns the usual choices (licence, taxonomy label, years, journal, caption
  text) into one SQL predicate over the ``figures`` view: the same predicate the gallery
  searches with and :func:`biomedica_kit.tables.subset.subset` exports, so what you see is what you
  get.
- :func:`search` / :func:`gallery_html` find matching samples and render them as cards: the
  image (read from its shard by byte offset, as ``figures.parquet`` records it, and
  thumbnailed), the caption and the inline references that cite the figure.
- :class:`Explorer` and :class:`SubsetBuilder` are ipywidgets front ends. Each also carries a
  static HTML snapshot of its current view, so a notebook run headless (papermill, reports)
  still shows the gallery or the subset preview.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.tables import query
from biomedica_kit.analysis.charts import LABEL_COLUMNS, LICENCE_CATEGORIES, LICENCE_COLORS
from biomedica_kit.tables.export import sql_literal

if TYPE_CHECKING:
    import duckdb
    import polars as pl

    from biomedica_kit.tables.subset import SubsetSummary

#: Columns a gallery card shows (those the dataset has are read).
CARD_COLUMNS = ("key", "shard", "image_ext", "image_offset", "image_length", "caption",
                "figure_label", "title", "journal", "year", "license_category", "pmcid", "doi",
                "inline_refs", "image_width", "image_height")
THUMB_SIDE = 360
ANY = "(any)"


# --------------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class Filters:
    """A selection of samples; empty fields do not filter.

    ``text`` matches the caption case-insensitively (SQL ``ILIKE``: ``%`` and ``_`` in it act
    as wildcards). ``label`` matches the primary taxonomy label.
    """

    licences: tuple[str, ...] = ()
    label: str | None = None
    years: tuple[int, int] | None = None
    journal: str | None = None
    text: str | None = None

    def where(self, con: duckdb.DuckDBPyConnection | None = None) -> str:
        """One SQL boolean expression over ``figures`` (``TRUE`` when nothing is chosen).

        Values are written as escaped literals (not bound parameters) so the predicate can be
        shown, copied into ``biomedica subset --where`` and recorded in a subset's manifest.
        ``con`` is needed only for a label filter, to find where the labels live.
        """
        parts = []
        if self.licences:
            parts.append("license_category IN (" +
                         ", ".join(sql_literal(c) for c in self.licences) + ")")
        if self.label:
            parts.append(_label_predicate(con, self.label))
        if self.years:
            y0, y1 = sorted(int(y) for y in self.years)
            parts.append(f"year BETWEEN {y0} AND {y1}")
        if self.journal:
            parts.append(f"journal = {sql_literal(self.journal)}")
        if self.text and self.text.strip():
            parts.append(f"caption ILIKE {sql_literal('%' + self.text.strip() + '%')}")
        return " AND ".join(parts) or "TRUE"

    def describe(self) -> str:
        """The filters in words (for headings and summaries)."""
        bits = []
        if self.licences:
            bits.append("licence " + " or ".join(self.licences))
        if self.label:
            bits.append(f"label {self.label}")
        if self.years:
            bits.append(f"years {min(self.years)}–{max(self.years)}")
        if self.journal:
            bits.append(f"journal {self.journal}")
        if self.text and self.text.strip():
            bits.append(f"caption contains “{self.text.strip()}”")
        return ", ".join(bits) or "all samples"


def _label_predicate(con: duckdb.DuckDBPyConnection | None, label: str) -> str:
    if con is None:
        raise ValueError("a label filter needs the connection to find the labels")
    for name in LABEL_COLUMNS["primary_label"]:
        if query.has_column(con, name, "figures"):
            return f"{query.quote_ident(name)} = {sql_literal(label)}"
    for name in LABEL_COLUMNS["primary_label"]:
        if query.has_column(con, name, "labels"):
            # Labels kept beside the samples (labels/*.parquet): select by key, so the
            # predicate stays one expression over the figures view.
            return (f"key IN (SELECT key FROM labels WHERE {query.quote_ident(name)} = "
                    f"{sql_literal(label)})")
    raise ValueError(f"cannot filter by label {label!r}: this dataset has no taxonomy labels")


@dataclass(frozen=True)
class Facets:
    """The values each filter can take in a dataset (for the widgets' choices)."""

    licences: list[str]
    labels: list[str]
    years: tuple[int, int] | None
    journals: list[str]
    total: int


def facets(con: duckdb.DuckDBPyConnection) -> Facets:
    """Licence categories, labels, year range and journals present, most frequent first."""
    lic = query.license_counts(con)
    present = set(lic["license_category"].to_list()) if lic is not None else set()
    licences = [c for c in LICENCE_CATEGORIES if c in present] + sorted(
        c for c in present if c and c not in LICENCE_CATEGORIES)
    labels: list[str] = []
    for name in LABEL_COLUMNS["primary_label"]:
        for view in ("figures", "figures_labeled"):
            if not labels and query.has_column(con, name, view):
                t = query.count_by(con, name, view=view, dropna=True)
                labels = [str(v) for v in t[name].to_list()]
    y0, y1 = con.execute("SELECT min(year), max(year) FROM figures").fetchone()
    journals = query.journal_counts(con, per="figures", limit=None)
    total = con.execute("SELECT count(*) FROM figures").fetchone()[0]
    return Facets(licences=licences, labels=labels,
                  years=(int(y0), int(y1)) if y0 is not None else None,
                  journals=[j for j in journals["journal"].to_list() if j is not None],
                  total=total)


# ---------------------------------------------------------------------------------- search


def count(con: duckdb.DuckDBPyConnection, filters: Filters) -> int:
    """How many samples match ``filters``."""
    return con.execute(f"SELECT count(*) FROM figures WHERE ({filters.where(con)})").fetchone()[0]


def search(con: duckdb.DuckDBPyConnection, filters: Filters, *, limit: int = 12,
           offset: int = 0) -> list[dict[str, Any]]:
    """The matching samples (gallery columns), in a stable order (year, newest first; key)."""
    have = query.columns(con, "figures")
    cols = ", ".join(query.quote_ident(c) for c in CARD_COLUMNS if c in have)
    sql = (f"SELECT {cols} FROM figures WHERE ({filters.where(con)}) "
           f"ORDER BY year DESC NULLS LAST, key LIMIT {int(limit)} OFFSET {int(offset)}")
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def matches_table(con: duckdb.DuckDBPyConnection, filters: Filters, *,
                  limit: int = 50) -> pl.DataFrame:
    """The first ``limit`` matches as a table (key, figure, journal, year, licence, caption)."""
    import polars as pl

    rows = search(con, filters, limit=limit)
    return pl.DataFrame({
        "key": [r["key"] for r in rows],
        "figure": [r.get("figure_label") for r in rows],
        "journal": [r.get("journal") for r in rows],
        "year": [r.get("year") for r in rows],
        "license_category": [r.get("license_category") for r in rows],
        "caption": [_clip(r.get("caption") or "", 120) for r in rows],
    }, schema={"key": pl.String, "figure": pl.String, "journal": pl.String, "year": pl.Int64,
               "license_category": pl.String, "caption": pl.String})


def read_image(dataset: str | os.PathLike, row: dict[str, Any]) -> bytes:
    """A sample's image bytes, read from its shard at the offset ``figures.parquet`` records."""
    path = Path(dataset) / row["shard"]
    with open(path, "rb") as f:
        f.seek(row["image_offset"])
        data = f.read(row["image_length"])
    if len(data) != row["image_length"]:
        raise ValueError(f"{path}: short read for {row['key']} (metadata stale? re-export)")
    return data


def thumbnail(data: bytes, side: int = THUMB_SIDE) -> tuple[str, str]:
    """``(mime, base64)`` of a JPEG thumbnail at most ``side`` pixels on its longer side.

    Why: stored images can be 4096 px; inlining them whole would make a gallery page (and the
    notebook) tens of megabytes.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.thumbnail((side, side))
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=82)
    return "image/jpeg", base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------- gallery

_GALLERY_CSS = """<style>
.bk-gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px;
  font:13px/1.4 system-ui,sans-serif}
.bk-card{border:1px solid #d8dde6;border-radius:6px;padding:8px;background:#fff}
.bk-card img{width:100%;height:220px;object-fit:contain;background:#f4f6fa}
.bk-meta{color:#4a5366;margin:4px 0}
.bk-lic{display:inline-block;padding:0 6px;border-radius:8px;color:#fff;font-size:11px}
.bk-cap{margin:4px 0}
.bk-card details{margin-top:4px} .bk-card summary{cursor:pointer;color:#3d5a98}
.bk-card mark{background:#fff1a8}
.bk-card ol{padding-left:18px;margin:4px 0}
.bk-head{font:14px system-ui,sans-serif;margin:6px 0}
</style>"""


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1].rstrip() + "…"


def _highlight(paragraph: str, sentences: Sequence[str]) -> str:
    """The paragraph, escaped, with the sentences that cite the figure marked."""
    out = html.escape(paragraph)
    for s in sorted({s for s in sentences if s}, key=len, reverse=True):
        esc = html.escape(s)
        out = out.replace(esc, f"<mark>{esc}</mark>", 1)
    return out


def card_html(dataset: str | os.PathLike, row: dict[str, Any]) -> str:
    """One gallery card: thumbnail, figure label, article, licence, caption, inline refs."""
    e = html.escape
    try:
        mime, b64 = thumbnail(read_image(dataset, row))
        img = f'<img src="data:{mime};base64,{b64}" alt="{e(row.get("figure_label") or "")}">'
    except (OSError, ValueError) as exc:  # unreadable image: say so on the card
        img = f'<div class="bk-meta">image unavailable: {e(str(exc))}</div>'
    lic = row.get("license_category") or "unknown"
    color = LICENCE_COLORS.get(lic, "#555")
    ident = row.get("pmcid") or (f"doi:{row['doi']}" if row.get("doi") else row["key"])
    meta = " · ".join(e(str(x)) for x in (row.get("journal"), row.get("year"), ident) if x)
    cap = row.get("caption") or ""
    cap_html = e(_clip(cap, 300))
    if len(cap) > 300:
        cap_html += f"<details><summary>full caption</summary>{e(cap)}</details>"
    refs = row.get("inline_refs") or []
    refs_html = ""
    if refs:
        items = "".join(
            f"<li>{('<b>' + e(r['section']) + ':</b> ') if r.get('section') else ''}"
            f"{_highlight(r.get('paragraph') or '', r.get('sentences') or [])}</li>"
            for r in refs)
        refs_html = (f"<details><summary>inline references ({len(refs)})</summary>"
                     f"<ol>{items}</ol></details>")
    size = (f" · {row['image_width']}×{row['image_height']} px"
            if row.get("image_width") else "")
    return (f'<div class="bk-card" data-key="{e(row["key"])}">{img}'
            f'<div class="bk-meta"><b>{e(row.get("figure_label") or row["key"])}</b>'
            f'{e(size)} <span class="bk-lic" style="background:{color}">{e(lic)}</span></div>'
            f'<div class="bk-meta">{meta}</div>'
            f'<div class="bk-meta"><i>{e(_clip(row.get("title") or "", 140))}</i></div>'
            f'<div class="bk-cap">{cap_html}</div>{refs_html}</div>')


def gallery_html(dataset: str | os.PathLike, rows: list[dict[str, Any]], *,
                 heading: str = "") -> str:
    """A self-contained HTML grid of cards (CSS and thumbnails inline)."""
    head = f'<div class="bk-head">{html.escape(heading)}</div>' if heading else ""
    if not rows:
        return f"{_GALLERY_CSS}{head}<p>No sample matches these filters.</p>"
    cards = "".join(card_html(dataset, r) for r in rows)
    return f'{_GALLERY_CSS}{head}<div class="bk-gallery">{cards}</div>'


# ------------------------------------------------------------------------------- widgets


def _filter_widgets(fa: Facets, initial: Filters) -> dict[str, Any]:
    """The filter controls, set to ``initial`` (values absent from the dataset are dropped)."""
    import ipywidgets as w

    wide = w.Layout(width="auto")
    licences = w.SelectMultiple(options=fa.licences,
                                value=tuple(c for c in initial.licences if c in fa.licences),
                                rows=max(1, min(3, len(fa.licences))), description="licence",
                                layout=wide)
    label = w.Dropdown(options=[ANY, *fa.labels],
                       value=initial.label if initial.label in fa.labels else ANY,
                       description="label", disabled=not fa.labels, layout=wide,
                       tooltip=None if fa.labels else "no taxonomy labels in this dataset yet")
    y0, y1 = fa.years or (0, 0)
    years = w.IntRangeSlider(min=y0, max=max(y1, y0), value=tuple(initial.years or (y0, y1)),
                             description="years", disabled=fa.years is None,
                             continuous_update=False, layout=wide)
    journal = w.Dropdown(options=[ANY, *fa.journals],
                         value=initial.journal if initial.journal in fa.journals else ANY,
                         description="journal", layout=wide)
    text = w.Text(value=initial.text or "", description="caption",
                  placeholder="text in the caption", continuous_update=False, layout=wide)
    return {"licences": licences, "label": label, "years": years, "journal": journal,
            "text": text}


def _filters_from(ws: dict[str, Any], fa: Facets) -> Filters:
    years = tuple(ws["years"].value)
    return Filters(
        licences=tuple(ws["licences"].value),
        label=None if ws["label"].value == ANY else ws["label"].value,
        # The full range is no filter: samples without a year stay in.
        years=None if fa.years is None or years == fa.years else years,
        journal=None if ws["journal"].value == ANY else ws["journal"].value,
        text=ws["text"].value or None)


@dataclass
class Explorer:
    """A filterable gallery of a dataset's samples (ipywidgets; snapshot HTML when headless).

    Display it in a notebook (last expression of a cell). Changing a filter re-queries the
    metadata and redraws the page; ``◀`` / ``▶`` page through the matches.
    """

    dataset: str | os.PathLike
    filters: Filters = field(default_factory=Filters)
    page_size: int = 12

    def __post_init__(self) -> None:
        import ipywidgets as w

        self.con = query.connect(self.dataset)
        self.facets = facets(self.con)
        self.page = 0
        self.controls = _filter_widgets(self.facets, self.filters)
        self.filters = _filters_from(self.controls, self.facets)
        self._prev = w.Button(description="◀", layout=w.Layout(width="40px"))
        self._next = w.Button(description="▶", layout=w.Layout(width="40px"))
        self._status = w.HTML()
        self._gallery = w.HTML()
        self._where = w.HTML()
        for c in self.controls.values():
            c.observe(self._on_filter, names="value")
        self._prev.on_click(lambda _: self._turn(-1))
        self._next.on_click(lambda _: self._turn(+1))
        self.widget = w.VBox([
            w.HBox([w.VBox([self.controls["licences"], self.controls["label"]]),
                    w.VBox([self.controls["years"], self.controls["journal"],
                            self.controls["text"]])]),
            w.HBox([self._prev, self._next, self._status]), self._where, self._gallery])
        self.refresh()

    @property
    def matches(self) -> int:
        """How many samples match the current filters."""
        return count(self.con, self.filters)

    def rows(self) -> list[dict[str, Any]]:
        """The samples on the current page."""
        return search(self.con, self.filters, limit=self.page_size,
                      offset=self.page * self.page_size)

    def table(self, limit: int = 50) -> pl.DataFrame:
        """The first ``limit`` matches as a table."""
        return matches_table(self.con, self.filters, limit=limit)

    def html(self) -> str:
        """The current page as static HTML (heading, predicate, cards)."""
        return gallery_html(self.dataset, self.rows(), heading=self._heading())

    def set_filters(self, **changes: Any) -> None:
        """Change filters from code (same names as :class:`Filters`) and redraw."""
        self.filters = replace(self.filters, **changes)
        self.page = 0
        self.refresh()

    def refresh(self) -> None:
        """Re-run the query and redraw status, predicate and gallery."""
        n = self.matches
        last = max(0, (n - 1) // self.page_size)
        self.page = min(self.page, last)
        self._prev.disabled = self.page == 0
        self._next.disabled = self.page >= last
        self._status.value = f"<b>{html.escape(self._heading())}</b>"
        self._where.value = (f"<code>{html.escape(self.filters.where(self.con))}</code>")
        self._gallery.value = gallery_html(self.dataset, self.rows())

    def _heading(self) -> str:
        n = self.matches
        first = self.page * self.page_size
        shown = f"{first + 1}–{min(n, first + self.page_size)} of " if n else ""
        return f"{shown}{n} matching samples ({self.filters.describe()})"

    def _on_filter(self, _change: Any) -> None:
        self.filters = _filters_from(self.controls, self.facets)
        self.page = 0
        self.refresh()

    def _turn(self, step: int) -> None:
        self.page = max(0, self.page + step)
        self.refresh()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        # Live frontends render the widget; static renderers (nbconvert, GitHub) fall back to
        # the snapshot of the current page.
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = self.html()
        bundle["text/plain"] = f"Explorer: {self._heading()}"
        return bundle


@dataclass
class SubsetBuilder:
    """Choose samples with the explorer's filters and export them as a new dataset.

    The preview shows the predicate, the number of matching samples per licence category and
    the first few matches; ``Export`` calls :func:`biomedica_kit.tables.subset.subset` with that
    predicate and ``out``. :meth:`export` does the same from code (headless runs).
    """

    dataset: str | os.PathLike
    filters: Filters = field(default_factory=Filters)
    out: str | os.PathLike | None = None
    preview_size: int = 6

    def __post_init__(self) -> None:
        import ipywidgets as w

        self.con = query.connect(self.dataset)
        self.facets = facets(self.con)
        self.controls = _filter_widgets(self.facets, self.filters)
        self.filters = _filters_from(self.controls, self.facets)
        self.result: SubsetSummary | None = None
        self._out = w.Text(value=str(self.out or ""), description="export to",
                           placeholder="new dataset folder", layout=w.Layout(width="60%"))
        self._button = w.Button(description="Export subset", button_style="primary",
                                icon="download")
        self._preview = w.HTML()
        self._message = w.HTML()
        for c in self.controls.values():
            c.observe(self._on_filter, names="value")
        self._button.on_click(lambda _: self._on_export())
        self.widget = w.VBox([
            w.HBox([w.VBox([self.controls["licences"], self.controls["label"]]),
                    w.VBox([self.controls["years"], self.controls["journal"],
                            self.controls["text"]])]),
            w.HBox([self._out, self._button]), self._message, self._preview])
        self._preview.value = self.preview_html()

    @property
    def where(self) -> str:
        """The predicate the current filters select."""
        return self.filters.where(self.con)

    def counts(self) -> dict[str, int]:
        """Matching samples per licence category (the subsets the export will write)."""
        rows = self.con.execute(
            f"SELECT license_category, count(*) FROM figures WHERE ({self.where}) "
            f"GROUP BY 1 ORDER BY 1").fetchall()
        return {str(k): v for k, v in rows}

    def preview_html(self) -> str:
        """Predicate, per-licence counts and a few matching cards, as static HTML."""
        counts = self.counts()
        total = sum(counts.values())
        by = ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"
        head = (f"<div class='bk-head'><b>{total} of {self.facets.total} samples selected</b> "
                f"({html.escape(by)})<br>predicate: <code>{html.escape(self.where)}</code></div>")
        rows = search(self.con, self.filters, limit=self.preview_size)
        return head + gallery_html(self.dataset, rows)

    def export(self, where: str | None = None,
               out: str | os.PathLike | None = None) -> SubsetSummary:
        """Write the subset: ``where`` (default: the current filters' predicate) into ``out``
        (default: the builder's ``out``). Returns the subset's summary."""
        from biomedica_kit.tables.subset import subset

        target = out or self.out or self._out.value
        if not target:
            raise ValueError("no output folder: pass out= or fill in 'export to'")
        self.result = subset(self.dataset, where or self.where, target)
        return self.result

    def _on_filter(self, _change: Any) -> None:
        self.filters = _filters_from(self.controls, self.facets)
        self._preview.value = self.preview_html()

    def _on_export(self) -> None:
        from biomedica_kit.tables.subset import PredicateError

        self._button.disabled = True
        self._message.value = "exporting…"
        try:
            s = self.export(out=self._out.value or None)
            self._message.value = f"<p>{html.escape(summary_text(s))}</p>"
        except (PredicateError, ValueError, OSError) as exc:
            self._message.value = f"<p style='color:#b00020'>{html.escape(str(exc))}</p>"
        finally:
            self._button.disabled = False

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = self.preview_html()
        bundle["text/plain"] = (f"SubsetBuilder: {sum(self.counts().values())} samples selected "
                                f"by {self.where}")
        return bundle


def summary_text(s: SubsetSummary) -> str:
    """One line describing an exported subset."""
    by = ", ".join(f"{k}={v}" for k, v in s.samples_by_subset.items())
    return (f"wrote {s.samples} samples ({by}) from {s.articles} articles in {s.shards} "
            f"shards to {s.out} (version {s.dataset_version}, {s.seconds:.1f} s)")


def verify_text(dataset: str | os.PathLike) -> str:
    """``biomedica verify``'s verdict on a dataset, as one line (errors listed)."""
    from biomedica_kit.dataset.shards import verify

    res = verify(Path(dataset))
    head = (f"{'OK' if res.ok else 'FAILED'}: {res.shards} shards, {res.samples} samples, "
            f"{len(res.errors)} errors")
    return "\n".join([head, *res.errors])
