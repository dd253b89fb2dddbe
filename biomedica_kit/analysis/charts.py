"""Plotly charts (and the tables behind them) for the analysis notebooks and reports.

Every builder takes a connection from :func:`biomedica_kit.tables.query.connect` and draws what a
:mod:`biomedica_kit.tables.query` helper counts, so a chart and the numbers it shows never disagree
with the query layer. Counts are of samples (one figure image each) in the ``figures`` view,
or of articles in the ``articles`` view (articles that have at least one sample).

When the dataset lacks what a chart needs (taxonomy labels and MeSH terms arrive with later
pipeline stages) a builder returns a :class:`Missing` note instead of a figure. It displays as
one plain sentence, so a notebook says so rather than drawing an empty chart or inventing
values, and the same notebook draws the chart, unchanged, once the columns exist.

Each figure carries ``layout.meta.chart``, a stable name that reports use for its PNG/SVG files.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import plotly.graph_objects as go

from biomedica_kit.tables import query

if TYPE_CHECKING:
    import duckdb
    import polars as pl

#: BIOMEDICA's licence subsets, in display order (always shown, even when empty).
LICENCE_CATEGORIES: tuple[str, ...] = ("commercial", "noncommercial", "other")
LICENCE_COLORS = {"commercial": "#2a9d8f", "noncommercial": "#e9a03b", "other": "#7b8794"}
SAMPLE_COLOR = "#3d5a98"
ARTICLE_COLOR = "#c8553d"
TEMPLATE = "plotly_white"
#: Mime type of a :class:`Missing` note in notebook outputs (read back by reports).
NOTE_MIME = "application/vnd.biomedica-kit.note+json"

#: Taxonomy label columns, each with BIOMEDICA's published name for the same thing.
LABEL_COLUMNS = {"primary_label": ("primary_label", "image_primary_label"),
                 "secondary_labels": ("secondary_labels", "image_secondary_label")}
_LABELS_FROM = ("They are added by the labelling stage (`primary_label` / "
                "`secondary_labels` in the samples, or labels/*.parquet).")
_MESH_FROM = "They are added by the Entrez (PubMed) enrichment stage."


@dataclass(frozen=True)
class Missing:
    """What a chart needs but the dataset does not have yet; displays as a plain sentence."""

    chart: str
    message: str

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return self.message

    def _repr_mimebundle_(self, **_kwargs) -> dict:
        # NOTE_MIME lets reports list what a notebook could not show; frontends ignore it.
        return {"text/plain": self.message,
                "text/markdown": f"**{self.chart}:** {self.message}",
                NOTE_MIME: {"chart": self.chart, "message": self.message}}


def display_defaults() -> None:
    """Notebook display settings: whole tables (up to 100 rows) and long text cells.

    Why: polars truncates tables at 10 rows and strings at 30 characters by default, which
    hides rows of the summaries these notebooks exist to show.
    """
    import polars as pl

    pl.Config.set_tbl_rows(100)
    pl.Config.set_fmt_str_lengths(120)
    pl.Config.set_tbl_width_chars(160)
    pl.Config.set_tbl_hide_column_data_types(True)
    pl.Config.set_tbl_hide_dataframe_shape(True)


def _quietly(fn, *args, **kwargs):
    """Call a query helper; return (result, the NotAvailable warning text or None).

    Why: the helpers warn when data is missing; a notebook should show one plain sentence
    (the :class:`Missing` note) rather than a warning block on stderr.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", query.NotAvailable)
        result = fn(*args, **kwargs)
    notes = [str(w.message) for w in caught if issubclass(w.category, query.NotAvailable)]
    return result, (notes[0] if notes else None)


# ---------------------------------------------------------------------------------- layout


def _layout(fig: go.Figure, chart: str, title: str, **kw) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title={"text": title, "x": 0.01},
                      meta={"chart": chart}, margin={"l": 60, "r": 30, "t": 70, "b": 50},
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1,
                              "xanchor": "right"}, **kw)
    return fig


def _hbar(labels: list, values: list[int], *, name: str, color: str) -> go.Bar:
    # Horizontal bars read top-down in rank order, but plotly draws the first category at the
    # bottom: hence the reversal.
    return go.Bar(y=[str(v) for v in labels][::-1], x=values[::-1], orientation="h", name=name,
                  marker_color=color, text=values[::-1], textposition="auto")


def _height(n_bars: int) -> int:
    return max(340, 130 + 26 * n_bars)


def _counts(t: pl.DataFrame | None, column: str) -> dict:
    """``{value: n}`` of a query count table."""
    if t is None:
        return {}
    return dict(zip(t[column].to_list(), t["n"].to_list(), strict=True))


# ---------------------------------------------------------------------------- 01: overview


def dataset_summary(con: duckdb.DuckDBPyConnection, dataset: str | os.PathLike) -> pl.DataFrame:
    """The dataset's size, one measure per row (samples, figures, articles, shards, bytes...)."""
    import polars as pl

    from biomedica_kit.dataset.shards import read_manifest

    m = read_manifest(Path(dataset))
    counts = m.get("counts", {})
    ov = query.overview(con)
    figures, journals, y0, y1, pixels = con.execute("""
        SELECT count(DISTINCT (article_id, figure_id)), count(DISTINCT journal), min(year),
               max(year), sum(image_width::BIGINT * image_height::BIGINT) FROM figures
        """).fetchone()
    shard_bytes = sum(s.get("bytes", 0) for s in m.get("shards", []))
    rows = [
        ("dataset version", str(ov["dataset_version"] or m.get("dataset_version"))),
        ("samples (figure images)", f"{ov['figures']:,}"),
        ("figures", f"{figures:,}"),
        ("articles with samples", f"{ov['articles']:,}"),
        ("articles processed", f"{sum((counts.get('articles') or {}).values()):,}"),
        ("figure images skipped", f"{sum((counts.get('skips') or {}).values()):,}"),
        ("journals", f"{journals:,}"),
        ("publication years", f"{y0}–{y1}" if y0 is not None else "unknown"),
        ("shards", f"{len(m.get('shards', [])):,}"),
        ("shard size", _human_bytes(shard_bytes)),
        ("image megapixels", f"{(pixels or 0) / 1e6:,.1f}"),
    ]
    return pl.DataFrame({"measure": [r[0] for r in rows], "value": [r[1] for r in rows]})


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{int(size):,} B" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TiB"


def licence_table(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Samples and articles per licence category; all three categories, zeros included."""
    import polars as pl

    samples = _counts(query.license_counts(con, per="figures"), "license_category")
    articles = _counts(query.license_counts(con, per="articles"), "license_category")
    cats = list(LICENCE_CATEGORIES) + sorted(
        (c for c in samples.keys() | articles.keys() if c not in LICENCE_CATEGORIES),
        key=lambda c: (c is None, c or ""))
    total = sum(samples.values()) or 1
    return pl.DataFrame({
        "license_category": cats,
        "samples": [samples.get(c, 0) for c in cats],
        "share": [round(samples.get(c, 0) / total, 4) for c in cats],
        "articles": [articles.get(c, 0) for c in cats],
    }, schema={"license_category": pl.String, "samples": pl.Int64, "share": pl.Float64,
               "articles": pl.Int64})


def licence_categories(con: duckdb.DuckDBPyConnection) -> go.Figure:
    """Grouped bars: samples and articles per licence category (commercial / noncommercial /
    other), the three subsets BIOMEDICA publishes separately."""
    t = licence_table(con)
    cats = [c if c is not None else "(unknown)" for c in t["license_category"].to_list()]
    samples, articles = t["samples"].to_list(), t["articles"].to_list()
    fig = go.Figure([
        go.Bar(x=cats, y=samples, name="samples", text=samples,
               marker_color=[LICENCE_COLORS.get(c, SAMPLE_COLOR) for c in cats]),
        go.Bar(x=cats, y=articles, name="articles", text=articles, marker_color=ARTICLE_COLOR,
               opacity=0.6),
    ])
    return _layout(fig, "licence_categories", "Samples and articles per licence category",
                   barmode="group", xaxis_title="licence category", yaxis_title="count")


def per_year(con: duckdb.DuckDBPyConnection) -> go.Figure:
    """Grouped bars: samples and articles per publication year; unknown years noted apart."""
    samples = _counts(query.year_counts(con, per="figures"), "year")
    articles = _counts(query.year_counts(con, per="articles"), "year")
    years = sorted(y for y in samples.keys() | articles.keys() if y is not None)
    fig = go.Figure([
        go.Bar(x=years, y=[samples.get(y, 0) for y in years], name="samples",
               marker_color=SAMPLE_COLOR),
        go.Bar(x=years, y=[articles.get(y, 0) for y in years], name="articles",
               marker_color=ARTICLE_COLOR),
    ])
    title = "Samples and articles per publication year"
    unknown = [f"{n} {what}" for n, what in ((samples.get(None), "samples"),
                                             (articles.get(None), "articles")) if n]
    if unknown:
        title += f"<br><sup>no publication year: {' and '.join(unknown)}</sup>"
    return _layout(fig, "per_year", title, barmode="group",
                   xaxis={"title": "publication year", "dtick": 1 if len(years) < 25 else None},
                   yaxis={"title": "count", "rangemode": "tozero"})


def top_journals(con: duckdb.DuckDBPyConnection, n: int = 20) -> go.Figure:
    """Horizontal bars: the ``n`` journals with the most samples, and their article counts."""
    t = query.journal_counts(con, per="figures", limit=n)
    articles = _counts(query.journal_counts(con, per="articles", limit=None), "journal")
    names = [j if j is not None else "(no journal)" for j in t["journal"].to_list()]
    fig = go.Figure([
        _hbar(names, t["n"].to_list(), name="samples", color=SAMPLE_COLOR),
        _hbar(names, [articles.get(j, 0) for j in t["journal"].to_list()], name="articles",
              color=ARTICLE_COLOR),
    ])
    return _layout(fig, "top_journals", f"Top {len(names)} journals by samples",
                   barmode="group", height=_height(2 * len(names)), xaxis_title="count",
                   yaxis={"automargin": True})


def article_types(con: duckdb.DuckDBPyConnection) -> go.Figure:
    """Horizontal bars: articles and samples per JATS ``article-type``."""
    t = query.article_type_counts(con, per="articles")
    samples = _counts(query.article_type_counts(con, per="figures"), "article_type")
    types = t["article_type"].to_list()
    names = [x if x is not None else "(none)" for x in types]
    fig = go.Figure([
        _hbar(names, t["n"].to_list(), name="articles", color=ARTICLE_COLOR),
        _hbar(names, [samples.get(x, 0) for x in types], name="samples", color=SAMPLE_COLOR),
    ])
    return _layout(fig, "article_types", "Article types", barmode="group",
                   height=_height(2 * len(names)), xaxis_title="count",
                   yaxis={"automargin": True})


def figures_per_article(con: duckdb.DuckDBPyConnection) -> go.Figure:
    """Bars: how many articles have 1, 2, ... samples (figure images written)."""
    t = query.figures_per_article(con)
    fig = go.Figure(go.Bar(x=t["n_figures"].to_list(), y=t["articles"].to_list(),
                           text=t["articles"].to_list(), name="articles",
                           marker_color=ARTICLE_COLOR))
    return _layout(fig, "figures_per_article", "Samples (figure images) per article",
                   xaxis={"title": "samples in the article", "dtick": 1},
                   yaxis_title="articles", bargap=0.15)


def image_sizes(con: duckdb.DuckDBPyConnection) -> go.Figure:
    """Scatter: stored image width x height, one point per sample, coloured by licence."""
    t = query.select(con, cols=["key", "license_category", "image_width", "image_height"])
    traces = []
    for cat in [c for c in LICENCE_CATEGORIES if c in set(t["license_category"])] + sorted(
            {c for c in t["license_category"] if c not in LICENCE_CATEGORIES and c}):
        part = t.filter(t["license_category"] == cat)
        traces.append(go.Scatter(
            x=part["image_width"].to_list(), y=part["image_height"].to_list(),
            text=part["key"].to_list(), mode="markers", name=cat,
            marker={"color": LICENCE_COLORS.get(cat), "size": 9, "opacity": 0.75},
            hovertemplate="%{text}<br>%{x} × %{y} px<extra></extra>"))
    return _layout(go.Figure(traces), "image_sizes", "Stored image sizes (pixels)",
                   xaxis={"title": "width", "rangemode": "tozero"},
                   yaxis={"title": "height", "rangemode": "tozero"})


# ------------------------------------------------------------------------------ 02: topics


def _label_view(con: duckdb.DuckDBPyConnection, column: str) -> tuple[str, str] | None:
    """``(view, column name)`` holding taxonomy labels: the samples, else figures_labeled."""
    for view in ("figures", "figures_labeled"):
        for name in LABEL_COLUMNS.get(column, (column,)):
            if query.has_column(con, name, view):
                return view, name
    return None


def _no_labels(what: str) -> Missing:
    return Missing(what, f"This dataset has no taxonomy labels yet. {_LABELS_FROM} "
                         f"Nothing is shown until they exist.")


def _labelled_rows(con: duckdb.DuckDBPyConnection, view: str, name: str) -> int:
    """Samples with a (non-empty) label: a column that exists but is all null is no data."""
    q = query.quote_ident(name)
    dtype = query.columns(con, view)[name]
    cond = f"len({q}) > 0" if dtype.endswith("[]") else f"{q} IS NOT NULL"
    return con.execute(f"SELECT count(*) FROM {query.quote_ident(view)} WHERE {cond}"
                       ).fetchone()[0]


def topic_status(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Which topic columns this dataset has: where they were found and how many distinct
    values they hold (0 and a plain status when a later stage has not added them yet)."""
    import polars as pl

    rows = []
    for column in LABEL_COLUMNS:
        found = _label_view(con, column)
        t = label_table(con, column)
        n = 0 if isinstance(t, Missing) else t.height
        rows.append((column, found[0] if found else None, n,
                     "available" if n else "no taxonomy labels yet"))
    mesh, note = _quietly(query.mesh_counts, con, per="figures", limit=None)
    n = 0 if mesh is None else mesh.height
    rows.append(("mesh_terms", None if note else "figures / entrez", n,
                 "available" if n else "no MeSH terms yet"))
    for column, helper in (("subjects", query.subject_counts), ("keywords", query.keyword_counts)):
        t, _ = _quietly(helper, con, per="figures", limit=None)
        n = 0 if t is None else t.height
        rows.append((column, "figures" if t is not None else None, n,
                     "available" if n else "none in this dataset"))
    return pl.DataFrame({"column": [r[0] for r in rows], "found in": [r[1] for r in rows],
                         "distinct values": [r[2] for r in rows],
                         "status": [r[3] for r in rows]})


def _term_bars(t: pl.DataFrame, column: str, chart: str, title: str) -> go.Figure:
    values = t[column].to_list()
    fig = go.Figure(_hbar(values, t["n"].to_list(), name="samples", color=SAMPLE_COLOR))
    return _layout(fig, chart, title, height=_height(len(values)), xaxis_title="samples",
                   yaxis={"automargin": True})


def label_table(con: duckdb.DuckDBPyConnection, column: str = "primary_label",
                n: int | None = None) -> pl.DataFrame | Missing:
    """Samples per taxonomy label (``primary_label`` or ``secondary_labels``), with shares."""
    found = _label_view(con, column)
    if found is None or not _labelled_rows(con, *found):
        return _no_labels("taxonomy labels")
    t, _ = _quietly(query.label_counts, con, found[1], limit=n)
    return t.drop_nulls(t.columns[0])


def primary_labels(con: duckdb.DuckDBPyConnection) -> go.Figure | Missing:
    """Horizontal bars: samples per primary taxonomy label (BIOMEDICA's 16 top-level classes)."""
    t = label_table(con, "primary_label")
    if isinstance(t, Missing):
        return t
    return _term_bars(t, t.columns[0], "primary_labels", "Samples per primary taxonomy label")


def secondary_labels(con: duckdb.DuckDBPyConnection, n: int = 40) -> go.Figure | Missing:
    """Horizontal bars: the ``n`` most frequent secondary taxonomy labels."""
    t = label_table(con, "secondary_labels", n)
    if isinstance(t, Missing):
        return t
    return _term_bars(t, t.columns[0], "secondary_labels",
                      f"Top {t.height} secondary taxonomy labels (samples)")


def label_crosstab(con: duckdb.DuckDBPyConnection, by: str,
                   column: str = "primary_label") -> pl.DataFrame | Missing:
    """Samples per taxonomy label (rows) and ``by`` value (columns: licence category or year)."""
    found = _label_view(con, column)
    if found is None or not _labelled_rows(con, *found):
        return _no_labels(f"taxonomy labels × {by}")
    view, name = found
    t = query.crosstab(con, name, by, view=view)
    return t.drop_nulls(name)


def label_heatmap(con: duckdb.DuckDBPyConnection, by: str,
                  column: str = "primary_label") -> go.Figure | Missing:
    """Heatmap of samples per taxonomy label and licence category (``by="license_category"``)
    or publication year (``by="year"``)."""
    if by not in ("license_category", "year"):
        raise ValueError(f"by must be 'license_category' or 'year', not {by!r}")
    t = label_crosstab(con, by, column)
    if isinstance(t, Missing):
        return t
    label_col, cols = t.columns[0], t.columns[1:]
    if by == "license_category":  # the usual order, not alphabetical
        cols = sorted(cols, key=lambda c: (LICENCE_CATEGORIES.index(c)
                                           if c in LICENCE_CATEGORIES else 9, c))
    z = [[row[c] for c in cols] for row in t.iter_rows(named=True)]
    what = "licence category" if by == "license_category" else "publication year"
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=[str(v) for v in t[label_col].to_list()], colorscale="Blues",
        text=z, texttemplate="%{text}", hovertemplate="%{y} / %{x}: %{z} samples<extra></extra>"))
    return _layout(fig, f"label_x_{'licence' if by == 'license_category' else 'year'}",
                   f"Taxonomy label × {what} (samples)", height=_height(t.height),
                   xaxis={"title": what, "type": "category"}, yaxis={"automargin": True})


def mesh_terms(con: duckdb.DuckDBPyConnection, n: int = 30) -> go.Figure | Missing:
    """Horizontal bars: the ``n`` most frequent MeSH terms, counted in samples."""
    t, note = _quietly(query.mesh_counts, con, per="figures", limit=n)
    if t is None or t.is_empty():
        why = ("no mesh_terms column and no Entrez table" if note
               else "the MeSH columns are empty for every sample")
        return Missing("MeSH terms", f"This dataset has no MeSH terms yet ({why}). "
                                     f"{_MESH_FROM} Nothing is shown until they exist.")
    return _term_bars(t, "mesh_terms", "mesh_terms", f"Top {t.height} MeSH terms (samples)")


def _no_mesh(what: str) -> Missing:
    return Missing(what, f"This dataset has no MeSH terms yet. {_MESH_FROM} "
                         "Nothing is shown until they exist.")


def mesh_heatmap(con: duckdb.DuckDBPyConnection, by: str, n: int = 20) -> go.Figure | Missing:
    """Heatmap of the ``n`` most frequent MeSH terms x ``by`` (``license_category``, ``year``
    or a taxonomy label column such as ``primary_label``), counted in samples."""
    view = "figures"
    if by in LABEL_COLUMNS:
        found = _label_view(con, by)
        if found is None or not _labelled_rows(con, *found):
            return _no_labels(f"MeSH terms × {by}")
        view, by = found
    t, _ = _quietly(query.mesh_crosstab, con, by, per=view, top=n)
    if t is None or t.is_empty() or t.width < 2:
        return _no_mesh(f"MeSH terms × {by}")
    cols = t.columns[1:]
    if by == "license_category":
        cols = sorted(cols, key=lambda c: (LICENCE_CATEGORIES.index(c)
                                           if c in LICENCE_CATEGORIES else 9, c))
    z = [[row[c] for c in cols] for row in t.iter_rows(named=True)]
    fig = go.Figure(go.Heatmap(
        z=z, x=cols, y=t["mesh_terms"].to_list(), colorscale="Blues", text=z,
        texttemplate="%{text}", hovertemplate="%{y} / %{x}: %{z} samples<extra></extra>"))
    return _layout(fig, f"mesh_x_{by}", f"Top {t.height} MeSH terms × {by} (samples)",
                   height=_height(t.height), xaxis={"title": by, "type": "category"},
                   yaxis={"automargin": True, "autorange": "reversed"})


def mesh_categories(con: duckdb.DuckDBPyConnection, descriptors: str | os.PathLike | None,
                    level: str = "category") -> go.Figure | Missing:
    """Bars: samples per MeSH tree category (``level="category"``: the 16 top-level
    categories; ``"tree"``: second level such as C04), rolled up with NLM's descriptor file
    (``descYYYY.xml``); a plain note when no file is given or no MeSH terms exist."""
    if descriptors is None:
        return Missing("MeSH categories", "No MeSH descriptor file given: set the "
                       "`mesh_descriptors` parameter to NLM's descYYYY.xml (or .xml.gz) to roll "
                       "MeSH terms up to their tree categories.")
    from biomedica_kit.enrich.entrez import load_mesh_descriptors

    t, _ = _quietly(query.mesh_category_counts, con, load_mesh_descriptors(descriptors),
                    per="figures", level=level)
    if t is None or t.is_empty():
        return _no_mesh("MeSH categories")
    return _term_bars(t.rename({"category": "mesh_category"}), "mesh_category",
                      f"mesh_{level}", f"Samples per MeSH {level} ({t.height})")


def subjects(con: duckdb.DuckDBPyConnection, n: int = 30) -> go.Figure | Missing:
    """Horizontal bars: the ``n`` most frequent article subjects (JATS ``subj-group``)."""
    t = query.subject_counts(con, per="figures", limit=n)
    if t is None or t.is_empty():
        return Missing("subjects", "No article in this dataset lists subjects.")
    return _term_bars(t, "subjects", "subjects", f"Top {t.height} article subjects (samples)")


def keywords(con: duckdb.DuckDBPyConnection, n: int = 30) -> go.Figure | Missing:
    """Horizontal bars: the ``n`` most frequent author keywords (JATS ``kwd``)."""
    t = query.keyword_counts(con, per="figures", limit=n)
    if t is None or t.is_empty():
        return Missing("keywords", "No article in this dataset lists author keywords.")
    return _term_bars(t, "keywords", "keywords", f"Top {t.height} author keywords (samples)")
