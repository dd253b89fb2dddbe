"""Plotly charts (and the tables behind them) for the analysis notebooks and reports.

Every builder takes a connection from :func:`biomedica_kit.tables.connect.connect` and draws
what a :mod:`biomedica_kit.tables.query` helper counts, so a chart and the numbers it shows
never disagree with the query layer. Counts are of samples (one figure image each) in the
``figures`` view, or of articles in the ``articles`` view (articles that have at least one
sample).

When the dataset lacks what a chart needs (no samples at all, no publication years, or
taxonomy labels and MeSH terms that arrive with later pipeline stages) a builder returns a
:class:`Missing` note instead of a figure. It displays as one plain sentence, so a notebook
says so rather than drawing an empty chart, failing, or inventing values, and the same
notebook draws the chart, unchanged, once the data exist.

Tables come back as :class:`biomedica_kit.analysis.display.Table`: a polars DataFrame
(``.df``) that displays as a formatted HTML table (numbers as numbers, shares as percentages,
text without quotes).

Each figure carries ``layout.meta.chart``, a stable name that reports use for its PNG/SVG files.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

from biomedica_kit.analysis.display import Table, human_bytes
from biomedica_kit.dataset.licenses import CATEGORIES
from biomedica_kit.tables import query
from biomedica_kit.tables.sql import scalar

if TYPE_CHECKING:
    import duckdb
    import polars as pl

__all__ = [
    "ARTICLE_COLOR", "LICENCE_COLORS", "Missing", "NOTE_MIME", "SAMPLE_COLOR", "SCATTER_MAX",
    "SUBJECT_CODE", "TEMPLATE", "UNKNOWN", "article_types", "dataset_summary",
    "figures_per_article", "image_sizes", "keywords", "label_crosstab", "label_heatmap",
    "label_table", "licence_categories", "licence_table", "mesh_categories", "mesh_heatmap",
    "mesh_terms", "per_year", "primary_labels", "secondary_labels", "subject_codes", "subjects",
    "top_journals", "topic_status",
]

LICENCE_COLORS = {"commercial": "#2a9d8f", "noncommercial": "#e9a03b", "other": "#7b8794"}
SAMPLE_COLOR = "#3d5a98"
ARTICLE_COLOR = "#c8553d"
TEMPLATE = "plotly_white"
#: Mime type of a :class:`Missing` note in notebook outputs (read back by reports).
NOTE_MIME = "application/vnd.biomedica-kit.note+json"

#: Shown for a missing value in tables and category axes.
UNKNOWN = "(unknown)"
#: Above this many samples the image-size scatter draws a random sample of this many points.
SCATTER_MAX = 5000
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


def _no_samples(chart: str) -> Missing:
    return Missing(chart, "This dataset has no samples yet: nothing to chart.")


def _lacking(con: duckdb.DuckDBPyConnection, chart: str, *columns: str,
             view: str = "figures") -> Missing | None:
    """A note when ``view`` has no rows or lacks one of ``columns``; None when it can be drawn."""
    if not scalar(con, f"SELECT count(*) FROM {view}"):
        return _no_samples(chart)
    missing = [c for c in columns if not query.has_column(con, c, view)]
    if missing:
        return Missing(chart, f"No sample in this dataset has {', '.join(missing)}: nothing "
                              "to chart.")
    return None


def _label(value: Any) -> str:
    return UNKNOWN if value is None else str(value)


# ---------------------------------------------------------------------------- 01: overview


def _scalar(con: duckdb.DuckDBPyConnection, expr: str, *needs: str) -> Any:
    """One value over ``figures``, or None when a column it needs does not exist."""
    if not all(query.has_column(con, c) for c in needs):
        return None
    return scalar(con, f"SELECT {expr} FROM figures")


def dataset_summary(con: duckdb.DuckDBPyConnection, dataset: str | os.PathLike) -> Table:
    """The dataset's size, one count per row (samples, figures, articles, shards, bytes...);
    version and publication years in the caption.

    "Samples" are the figure images written to the shards; "figure elements" and "figure
    images" count what the articles hold (from the build's manifest), so
    ``images = samples + skipped`` for a build.
    """
    import polars as pl

    from biomedica_kit.dataset.manifest import read_manifest

    m = read_manifest(Path(dataset))
    counts = m.get("counts", {})
    ov = query.overview(con)
    shard_bytes = sum(s.get("bytes", 0) for s in m.get("shards", []))
    pixels = _scalar(con, "sum(image_width::BIGINT * image_height::BIGINT)", "image_width",
                     "image_height")
    y0, y1 = (_scalar(con, "min(year)", "year"), _scalar(con, "max(year)", "year"))
    rows: list[tuple[str, int | None, str]] = [
        ("samples (figure images in the shards)", ov["figures"], ""),
        ("figures with samples", _scalar(con, "count(DISTINCT (article_id, figure_id))",
                                         "article_id", "figure_id"), ""),
        ("figure elements in the articles", counts.get("figures"),
         "from the build; tables and figures without an image file included"),
        ("figure images in the articles", counts.get("images"), "= samples + skipped"),
        ("figure images skipped", sum((counts.get("skips") or {}).values()) if counts.get(
            "skips") is not None else None, "see report/skips.parquet"),
        ("articles with samples", ov["articles"], ""),
        ("articles processed", sum((counts.get("articles") or {}).values())
         if counts.get("articles") is not None else None, ""),
        ("journals", _scalar(con, "count(DISTINCT journal)", "journal"), ""),
        ("shards", len(m.get("shards", [])), ""),
        ("shard bytes", shard_bytes, human_bytes(shard_bytes)),
        ("image pixels", pixels, f"{(pixels or 0) / 1e6:,.1f} megapixels" if pixels else ""),
    ]
    years = f"{y0}–{y1}" if y0 is not None else "unknown"
    df = pl.DataFrame({"measure": [r[0] for r in rows], "value": [r[1] for r in rows],
                       "note": [r[2] for r in rows]},
                      schema={"measure": pl.String, "value": pl.Int64, "note": pl.String})
    return Table(df, caption=f"dataset version {ov['dataset_version'] or m.get('dataset_version')}"
                             f" · publication years {years}")


def _licence_frame(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    import polars as pl

    samples = _counts(_quietly(query.license_counts, con, per="figures")[0], "license_category")
    articles = _counts(_quietly(query.license_counts, con, per="articles")[0],
                       "license_category")
    cats = list(CATEGORIES) + sorted(
        (c for c in samples.keys() | articles.keys() if c not in CATEGORIES),
        key=lambda c: (c is None, c or ""))
    total = sum(samples.values()) or 1
    return pl.DataFrame({
        "license_category": [_label(c) for c in cats],
        "samples": [samples.get(c, 0) for c in cats],
        "share": [samples.get(c, 0) / total for c in cats],
        "articles": [articles.get(c, 0) for c in cats],
    }, schema={"license_category": pl.String, "samples": pl.Int64, "share": pl.Float64,
               "articles": pl.Int64})


def licence_table(con: duckdb.DuckDBPyConnection) -> Table:
    """Samples and articles per licence category; all three categories, zeros included (and
    "(unknown)" for samples without one)."""
    return Table(_licence_frame(con))


def licence_categories(con: duckdb.DuckDBPyConnection) -> go.Figure:
    """Grouped bars: samples and articles per licence category (commercial / noncommercial /
    other), the three subsets BIOMEDICA publishes separately."""
    t = _licence_frame(con)
    cats = t["license_category"].to_list()
    samples, articles = t["samples"].to_list(), t["articles"].to_list()
    fig = go.Figure([
        go.Bar(x=cats, y=samples, name="samples", text=samples,
               marker_color=[LICENCE_COLORS.get(c, SAMPLE_COLOR) for c in cats]),
        go.Bar(x=cats, y=articles, name="articles", text=articles, marker_color=ARTICLE_COLOR,
               opacity=0.6),
    ])
    return _layout(fig, "licence_categories", "Samples and articles per licence category",
                   barmode="group", xaxis={"title": "licence category", "type": "category"},
                   yaxis={"title": "count", "rangemode": "tozero"})


def per_year(con: duckdb.DuckDBPyConnection) -> go.Figure | Missing:
    """Grouped bars: samples and articles per publication year; unknown years noted apart."""
    lacking = _lacking(con, "per_year", "year")
    if lacking:
        return lacking
    samples = _counts(query.year_counts(con, per="figures"), "year")
    articles = _counts(_quietly(query.year_counts, con, per="articles")[0], "year")
    years = sorted(y for y in samples.keys() | articles.keys() if y is not None)
    if not years:
        return Missing("per_year", f"No sample in this dataset has a publication year "
                                   f"({samples.get(None, 0):,} samples without one).")
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


def top_journals(con: duckdb.DuckDBPyConnection, n: int = 20) -> go.Figure | Missing:
    """Horizontal bars: the ``n`` journals with the most samples, and their article counts."""
    lacking = _lacking(con, "top_journals", "journal")
    if lacking:
        return lacking
    t = query.journal_counts(con, per="figures", limit=n)
    if t is None:
        return Missing("top_journals", "No journal column in this dataset's samples.")
    articles = _counts(_quietly(query.journal_counts, con, per="articles", limit=None)[0],
                       "journal")
    names = [j if j is not None else "(no journal)" for j in t["journal"].to_list()]
    fig = go.Figure([
        _hbar(names, t["n"].to_list(), name="samples", color=SAMPLE_COLOR),
        _hbar(names, [articles.get(j, 0) for j in t["journal"].to_list()], name="articles",
              color=ARTICLE_COLOR),
    ])
    return _layout(fig, "top_journals", f"Top {len(names)} journals by samples",
                   barmode="group", height=_height(2 * len(names)), xaxis_title="count",
                   yaxis={"automargin": True, "type": "category"})


def article_types(con: duckdb.DuckDBPyConnection) -> go.Figure | Missing:
    """Horizontal bars: articles and samples per JATS ``article-type``."""
    lacking = _lacking(con, "article_types", "article_type")
    if lacking:
        return lacking
    t = _quietly(query.article_type_counts, con, per="articles")[0]
    samples = _counts(query.article_type_counts(con, per="figures"), "article_type")
    if t is None:  # articles view without the column: count samples only
        t = query.article_type_counts(con, per="figures")
    types = t["article_type"].to_list()
    names = [x if x is not None else "(none)" for x in types]
    fig = go.Figure([
        _hbar(names, t["n"].to_list(), name="articles", color=ARTICLE_COLOR),
        _hbar(names, [samples.get(x, 0) for x in types], name="samples", color=SAMPLE_COLOR),
    ])
    return _layout(fig, "article_types", "Article types", barmode="group",
                   height=_height(2 * len(names)), xaxis_title="count",
                   yaxis={"automargin": True, "type": "category"})


def figures_per_article(con: duckdb.DuckDBPyConnection) -> go.Figure | Missing:
    """Bars: how many articles have 1, 2, ... samples (figure images written); one category
    per count, so a bar never reads as a bin."""
    lacking = _lacking(con, "figures_per_article", "n_figures", view="articles")
    if lacking:
        return lacking
    t = query.figures_per_article(con)
    fig = go.Figure(go.Bar(x=[str(v) for v in t["n_figures"].to_list()],
                           y=t["articles"].to_list(), text=t["articles"].to_list(),
                           name="articles", marker_color=ARTICLE_COLOR))
    return _layout(fig, "figures_per_article", "Samples (figure images) per article",
                   xaxis={"title": "samples in the article", "type": "category"},
                   yaxis={"title": "articles", "rangemode": "tozero"}, bargap=0.3)


def image_sizes(con: duckdb.DuckDBPyConnection) -> go.Figure | Missing:
    """Scatter: stored image width x height, one point per sample, coloured by licence (a
    seeded random :data:`SCATTER_MAX` of them on larger datasets)."""
    lacking = _lacking(con, "image_sizes", "image_width", "image_height")
    if lacking:
        return lacking
    total = scalar(con, "SELECT count(*) FROM figures")
    lic = "license_category" if query.has_column(con, "license_category") else "NULL"
    sample = (f" USING SAMPLE reservoir({SCATTER_MAX} ROWS) REPEATABLE (42)"
              if total > SCATTER_MAX else "")
    rows = con.execute(f"SELECT key, {lic}, image_width, image_height FROM figures"
                       f"{sample}").fetchall()
    by: dict[str, list[tuple]] = {}
    for key, cat, w, h in rows:
        by.setdefault(_label(cat), []).append((key, w, h))
    order = [c for c in CATEGORIES if c in by] + sorted(c for c in by if c not in CATEGORIES)
    traces = [go.Scatter(
        x=[r[1] for r in by[cat]], y=[r[2] for r in by[cat]], text=[r[0] for r in by[cat]],
        mode="markers", name=cat,
        marker={"color": LICENCE_COLORS.get(cat, SAMPLE_COLOR), "size": 9, "opacity": 0.75},
        hovertemplate="%{text}<br>%{x} × %{y} px<extra></extra>") for cat in order]
    title = "Stored image sizes (pixels)"
    if sample:
        title += f"<br><sup>a random {SCATTER_MAX:,} of {total:,} samples</sup>"
    return _layout(go.Figure(traces), "image_sizes", title,
                   xaxis={"title": "width", "rangemode": "tozero"},
                   yaxis={"title": "height", "rangemode": "tozero"})


# ------------------------------------------------------------------------------ 02: topics


def _no_labels(what: str) -> Missing:
    return Missing(what, f"This dataset has no taxonomy labels yet. {_LABELS_FROM} "
                         f"Nothing is shown until they exist.")


def _labelled_rows(con: duckdb.DuckDBPyConnection, view: str, name: str) -> int:
    """Samples with a (non-empty) label: a column that exists but is all null is no data."""
    q = query.quote_ident(name)
    dtype = query.columns(con, view)[name]
    cond = f"len({q}) > 0" if dtype.endswith("[]") else f"{q} IS NOT NULL"
    return scalar(con, f"SELECT count(*) FROM {query.quote_ident(view)} WHERE {cond}"
                       )


def topic_status(con: duckdb.DuckDBPyConnection) -> Table:
    """Which topic columns this dataset has: where they were found and how many distinct
    values they hold (0, "not yet" and a plain status when a later stage has not added them)."""
    import polars as pl

    rows = []
    for column in query.LABEL_ALIASES:
        found = query.label_source(con, column)
        t = _label_frame(con, column)
        n = 0 if isinstance(t, Missing) else t.height
        rows.append((column, found[0] if found and n else "not yet", n,
                     "available" if n else "no taxonomy labels yet"))
    mesh, note = _quietly(query.mesh_counts, con, per="figures", limit=None)
    n = 0 if mesh is None else mesh.height
    rows.append(("mesh_terms", "figures / entrez" if n else "not yet", n,
                 "available" if n else "no MeSH terms yet"))
    for column, helper in (("subjects", query.subject_counts), ("keywords", query.keyword_counts)):
        t, _ = _quietly(helper, con, per="figures", limit=None)
        n = 0 if t is None else t.height
        rows.append((column, "figures" if n else "none", n,
                     "available" if n else "none in this dataset"))
    return Table(pl.DataFrame({"column": [r[0] for r in rows], "found in": [r[1] for r in rows],
                               "distinct values": [r[2] for r in rows],
                               "status": [r[3] for r in rows]}))


def _term_bars(t: pl.DataFrame, column: str, chart: str, title: str) -> go.Figure:
    values = t[column].to_list()
    fig = go.Figure(_hbar(values, t["n"].to_list(), name="samples", color=SAMPLE_COLOR))
    return _layout(fig, chart, title, height=_height(len(values)), xaxis_title="samples",
                   yaxis={"automargin": True, "type": "category"})


def _label_frame(con: duckdb.DuckDBPyConnection, column: str = "primary_label",
                 n: int | None = None) -> pl.DataFrame | Missing:
    found = query.label_source(con, column)
    if found is None or not _labelled_rows(con, *found):
        return _no_labels("taxonomy labels")
    t, _ = _quietly(query.label_counts, con, column, limit=n)
    return t.drop_nulls(t.columns[0])


def label_table(con: duckdb.DuckDBPyConnection, column: str = "primary_label",
                n: int | None = None) -> Table | Missing:
    """Samples per taxonomy label (``primary_label`` or ``secondary_labels``), with shares."""
    t = _label_frame(con, column, n)
    return t if isinstance(t, Missing) else Table(t)


def primary_labels(con: duckdb.DuckDBPyConnection) -> go.Figure | Missing:
    """Horizontal bars: samples per primary taxonomy label (BIOMEDICA's 16 top-level classes)."""
    t = _label_frame(con, "primary_label")
    if isinstance(t, Missing):
        return t
    return _term_bars(t, t.columns[0], "primary_labels", "Samples per primary taxonomy label")


def secondary_labels(con: duckdb.DuckDBPyConnection, n: int = 40) -> go.Figure | Missing:
    """Horizontal bars: the ``n`` most frequent secondary taxonomy labels."""
    t = _label_frame(con, "secondary_labels", n)
    if isinstance(t, Missing):
        return t
    return _term_bars(t, t.columns[0], "secondary_labels",
                      f"Top {t.height} secondary taxonomy labels (samples)")


def label_crosstab(con: duckdb.DuckDBPyConnection, by: str,
                   column: str = "primary_label") -> pl.DataFrame | Missing:
    """Samples per taxonomy label (rows) and ``by`` value (columns: licence category or year)."""
    found = query.label_source(con, column)
    if found is None or not _labelled_rows(con, *found):
        return _no_labels(f"taxonomy labels × {by}")
    view, name = found
    t, _ = _quietly(query.crosstab, con, name, by, view=view)
    if t is None:
        return Missing(f"taxonomy labels × {by}", f"No sample in this dataset has {by}: "
                                                  "nothing to cross-tabulate.")
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
        cols = sorted(cols, key=lambda c: (CATEGORIES.index(c)
                                           if c in CATEGORIES else 9, c))
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
    if by in query.LABEL_ALIASES:
        found = query.label_source(con, by)
        if found is None or not _labelled_rows(con, *found):
            return _no_labels(f"MeSH terms × {by}")
        view, by = found
    t, _ = _quietly(query.mesh_crosstab, con, by, per=view, top=n)
    if t is None or t.is_empty() or t.width < 2:
        return _no_mesh(f"MeSH terms × {by}")
    cols = t.columns[1:]
    if by == "license_category":
        cols = sorted(cols, key=lambda c: (CATEGORIES.index(c)
                                           if c in CATEGORIES else 9, c))
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
    from biomedica_kit.etl.mesh import load_mesh_descriptors

    t, _ = _quietly(query.mesh_category_counts, con, load_mesh_descriptors(descriptors),
                    per="figures", level=level)
    if t is None or t.is_empty():
        return _no_mesh("MeSH categories")
    return _term_bars(t.rename({"category": "mesh_category"}), "mesh_category",
                      f"mesh_{level}", f"Samples per MeSH {level} ({t.height})")


#: A publisher's subject code rather than a subject name (e.g. ``AcademicSubjects/SCI01270``,
#: Oxford University Press's classification codes).
SUBJECT_CODE = re.compile(r"^[A-Za-z]+/[A-Za-z]*\d+$|^[A-Z]{2,}\d{2,}$")


def _subject_frame(con: duckdb.DuckDBPyConnection, codes: bool) -> pl.DataFrame | None:
    import polars as pl

    t, _ = _quietly(query.subject_counts, con, per="figures", limit=None)
    if t is None:
        return None
    is_code = t["subjects"].map_elements(lambda v: bool(SUBJECT_CODE.match(v)),
                                         return_dtype=pl.Boolean)
    return t.filter(is_code if codes else ~is_code)


def subjects(con: duckdb.DuckDBPyConnection, n: int = 30) -> go.Figure | Missing:
    """Horizontal bars: the ``n`` most frequent article subjects (JATS ``subj-group``), by
    name; publishers' subject codes are counted apart (:func:`subject_codes`)."""
    t = _subject_frame(con, codes=False)
    if t is None or t.is_empty():
        return Missing("subjects", "No article in this dataset lists subjects.")
    codes = _subject_frame(con, codes=True)
    title = f"Top {min(n, t.height)} article subjects (samples)"
    if codes is not None and codes.height:
        title += (f"<br><sup>{codes.height} publisher subject codes (such as "
                  f"{codes['subjects'][0]}) shown apart</sup>")
    return _term_bars(t.head(n), "subjects", "subjects", title)


def subject_codes(con: duckdb.DuckDBPyConnection, n: int = 30) -> go.Figure | Missing:
    """Horizontal bars: publishers' subject codes (``AcademicSubjects/SCI01270``...), which
    name a classification entry rather than a subject, kept out of :func:`subjects`."""
    t = _subject_frame(con, codes=True)
    if t is None or t.is_empty():
        return Missing("subject codes", "No article in this dataset lists publisher subject "
                                        "codes.")
    return _term_bars(t.head(n), "subjects", "subject_codes",
                      f"Publisher subject codes ({t.height}, samples)")


def keywords(con: duckdb.DuckDBPyConnection, n: int = 30) -> go.Figure | Missing:
    """Horizontal bars: the ``n`` most frequent author keywords (JATS ``kwd``)."""
    t, _ = _quietly(query.keyword_counts, con, per="figures", limit=n)
    if t is None or t.is_empty():
        return Missing("keywords", "No article in this dataset lists author keywords.")
    return _term_bars(t, "keywords", "keywords", f"Top {t.height} author keywords (samples)")
