"""Query helpers over :func:`biomedica_kit.tables.connect.connect`: the usual questions, safely.

Public API (stable; notebooks and the report call it). ``con`` is a connection from
:func:`biomedica_kit.tables.connect.connect` (this module does not re-export it); every helper
returns a ``polars.DataFrame`` — or ``None`` (with a :class:`NotAvailable` warning saying why)
when the column it needs does not exist yet, e.g. ``mesh_terms`` before Entrez enrichment or
``primary_label`` before labelling. Helpers never invent values.

::

    views(con) -> list[str]
    columns(con, view="figures") -> dict[str, str]   # column -> DuckDB type
    has_column(con, column, view="figures") -> bool
    count_by(con, by, *, view="figures", filters=None, limit=None, order="n",
             dropna=False) -> DataFrame | None        # <by columns>..., n, share
    top_n(con, column, n=10, *, view="figures", filters=None) -> DataFrame | None
    crosstab(con, row, col, *, view="figures", filters=None) -> DataFrame | None
    select(con, view="figures", *, cols=None, filters=None, order_by=None,
           limit=None) -> DataFrame
    license_counts(con, *, per="figures", filters=None)
    year_counts(con, *, per="figures", filters=None)
    journal_counts(con, *, per="articles", limit=20, filters=None)
    article_type_counts(con, *, per="articles", filters=None)
    keyword_counts(con, *, per="articles", limit=20, filters=None)
    subject_counts(con, *, per="articles", limit=20, filters=None)
    mesh_counts(con, *, per="articles", limit=20, filters=None)
    label_counts(con, column="primary_label", *, filters=None, limit=None)
    label_source(con, column="primary_label") -> (view, column) | None
    figures_per_article(con, *, filters=None) -> DataFrame   # n_figures, articles, share
    overview(con) -> dict

**Counting.** ``n`` counts rows of the view (figures or articles). A list column (keywords,
subjects, MeSH terms, BIOMEDICA's list labels) is unnested: each row counts once per distinct
value it holds, rows with an empty list count nowhere, and ``share`` is ``n`` over the number
of rows considered, so shares of a list column can sum to more than 1.

**Filters** are a mapping ``{column: value}`` combined with AND; values are always bound as
query parameters, never formatted into SQL, and column names are checked against the view.
A scalar means ``=`` (for a list column: the list contains it), a list/tuple/set means ``IN``
(list column: contains any), ``None`` means ``IS NULL``. Operators go after a double
underscore: ``year__ge``, ``year__lt``, ``year__ne`` (also ``__gt``, ``__le``, ``__eq``,
``__in``, ``__contains``, ``__like``, ``__ilike``, ``__isnull`` with a bool).

**Sources.** ``per`` chooses the ``figures`` or ``articles`` view. Taxonomy labels are read
from ``figures`` when the samples carry them, else from ``figures_labeled`` (figures joined
with the newest ``labels/*.parquet``). MeSH terms come from a ``mesh_terms`` (or BIOMEDICA's
``article_mesh_terms``) column, else from the ``entrez`` view joined on ``pmid``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from biomedica_kit.tables.sql import quote_ident, scalar

if TYPE_CHECKING:
    import duckdb
    import polars as pl

__all__ = [
    "LABEL_ALIASES", "NotAvailable", "article_type_counts", "columns", "count_by",
    "crosstab", "figures_per_article", "has_column", "journal_counts", "keyword_counts",
    "label_counts", "label_source",
    "license_counts", "mesh_counts", "overview", "select", "subject_counts", "top_n",
    "views", "year_counts",
]

_OPS = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "like": "LIKE",
        "ilike": "ILIKE", "in": "IN", "contains": "CONTAINS", "isnull": "ISNULL"}
#: Taxonomy label columns, each with BIOMEDICA's published name for the same thing.
LABEL_ALIASES: dict[str, tuple[str, ...]] = {
    "primary_label": ("primary_label", "image_primary_label"),
    "secondary_labels": ("secondary_labels", "image_secondary_label")}
_MESH_COLUMNS = ("mesh_terms", "article_mesh_terms")


class NotAvailable(UserWarning):
    """Warned when a helper returns None because the data it needs does not exist yet."""


def _unavailable(message: str) -> None:
    warnings.warn(message, NotAvailable, stacklevel=3)


# ------------------------------------------------------------------------------ catalogue


def views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the views (and tables) on the connection."""
    rows = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                       "UNION SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def columns(con: duckdb.DuckDBPyConnection, view: str = "figures") -> dict[str, str]:
    """``{column: DuckDB type}`` of a view; ValueError for an unknown view."""
    if view not in views(con):
        raise ValueError(f"no view {view!r}; available: {views(con)}")
    return {r[0]: r[1] for r in con.execute(f"DESCRIBE {quote_ident(view)}").fetchall()}


def has_column(con: duckdb.DuckDBPyConnection, column: str, view: str = "figures") -> bool:
    """Whether ``view`` exists and has ``column``."""
    return view in views(con) and column in columns(con, view)


def _is_list(dtype: str) -> bool:
    return dtype.endswith("[]")


def _check_columns(cols: dict[str, str], names: Sequence[str], view: str) -> None:
    missing = [n for n in names if n not in cols]
    if missing:
        raise ValueError(f"unknown column(s) {missing} in view {view!r}; "
                         f"available: {sorted(cols)}")


# --------------------------------------------------------------------------------- filters


@dataclass
class _Source:
    """A FROM target: a view name or an internal subquery, with its column types."""

    sql: str
    cols: dict[str, str]
    name: str


def _view(con: duckdb.DuckDBPyConnection, view: str) -> _Source:
    return _Source(quote_ident(view), columns(con, view), view)


def where_clause(filters: Mapping[str, Any] | None, cols: dict[str, str],
                 view: str = "figures") -> tuple[str, list[Any]]:
    """``(" WHERE ...", params)`` for a filter mapping (see module doc); values are bound."""
    if not filters:
        return "", []
    parts, params = [], []
    for spec, value in filters.items():
        name, _, op = spec.rpartition("__")
        if not name or op not in _OPS:
            name, op = spec, ""
        _check_columns(cols, [name], view)
        col, is_list = quote_ident(name), _is_list(cols[name])
        many = isinstance(value, (list, tuple, set, frozenset))
        if not op:
            op = "isnull" if value is None else "in" if many else "eq"
        if op == "isnull":
            parts.append(f"{col} IS {'' if value or value is None else 'NOT '}NULL")
            continue
        if op == "in" or (op == "contains" and many):
            vals = list(value) if many else [value]
            if not vals:
                parts.append("false")
                continue
            marks = ", ".join("?" for _ in vals)
            parts.append(f"list_has_any({col}, [{marks}])" if is_list else f"{col} IN ({marks})")
            params += vals
        elif op == "contains" or (op == "eq" and is_list):
            parts.append(f"list_contains({col}, ?)" if is_list else f"contains({col}, ?)")
            params.append(value)
        else:
            parts.append(f"{col} {_OPS[op]} ?")
            params.append(value)
    return " WHERE " + " AND ".join(parts), params


def _pl(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> pl.DataFrame:
    import polars as pl

    return cast("pl.DataFrame", pl.from_arrow(con.sql(sql, params=params).to_arrow_table()))


# ---------------------------------------------------------------------------------- counts


def _count(con: duckdb.DuckDBPyConnection, src: _Source, names: Sequence[str], *,
           filters: Mapping[str, Any] | None = None, limit: int | None = None,
           order: str = "n", dropna: bool = False) -> pl.DataFrame:
    _check_columns(src.cols, names, src.name)
    where, params = where_clause(filters, src.cols, src.name)
    # A list column is unnested over its *distinct* values, so each row counts once per
    # value. One list column is unnested in the select list (DuckDB runs that ~4x faster than
    # a lateral join); two cross (not zip) in a cross-tab, through lateral joins.
    aliases = [quote_ident(n) for n in names]
    lists = [n for n in names if _is_list(src.cols[n])]
    if len(lists) <= 1:
        inner = ", ".join(f"unnest(list_distinct({a})) AS {a}" if n in lists else a
                          for n, a in zip(names, aliases, strict=True))
        source, exprs = f"(SELECT {inner} FROM base) b", [f"b.{a}" for a in aliases]
    else:
        joins, exprs = [], []
        for i, n in enumerate(names):
            if n in lists:
                joins.append(f", unnest(list_distinct(b.{quote_ident(n)})) AS u{i}(v)")
                exprs.append(f"u{i}.v")
            else:
                exprs.append(f"b.{quote_ident(n)}")
        source = f"base b{''.join(joins)}"
    outer = [f"{e} AS {a}" for e, a in zip(exprs, aliases, strict=True)]
    keep = " WHERE " + " AND ".join(f"{e} IS NOT NULL" for e in exprs) if dropna else ""
    if order not in ("n", "value"):
        raise ValueError(f"order must be 'n' or 'value', not {order!r}")
    values = ", ".join(f"{a} NULLS LAST" for a in aliases)
    order_sql = f"n DESC, {values}" if order == "n" else f"{values}, n DESC"
    sql = (f"WITH base AS (SELECT * FROM {src.sql}{where}) "
           f"SELECT {', '.join(outer)}, count(*) AS n, "
           f"count(*) / (SELECT greatest(count(*), 1) FROM base)::DOUBLE AS share "
           f"FROM {source}{keep} GROUP BY ALL ORDER BY {order_sql}")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return _pl(con, sql, params)


def count_by(con: duckdb.DuckDBPyConnection, by: str | Sequence[str], *,
             view: str = "figures", filters: Mapping[str, Any] | None = None,
             limit: int | None = None, order: str = "n",
             dropna: bool = False) -> pl.DataFrame | None:
    """Rows per value (or value combination) of ``by``: ``<by columns>..., n, share``.

    ``order="n"`` sorts by count (descending), ``"value"`` by the values. ``dropna`` leaves
    out null values. Returns None (with a warning) when a column is missing from ``view``.
    """
    names = [by] if isinstance(by, str) else list(by)
    src = _view(con, view)
    missing = [n for n in names if n not in src.cols]
    if missing:
        _unavailable(f"column(s) {missing} not in view {view!r} (not exported yet?)")
        return None
    return _count(con, src, names, filters=filters, limit=limit, order=order, dropna=dropna)


def top_n(con: duckdb.DuckDBPyConnection, column: str, n: int = 10, *, view: str = "figures",
          filters: Mapping[str, Any] | None = None) -> pl.DataFrame | None:
    """The ``n`` most frequent non-null values of ``column``."""
    return count_by(con, column, view=view, filters=filters, limit=n, dropna=True)


def crosstab(con: duckdb.DuckDBPyConnection, row: str, col: str, *, view: str = "figures",
             filters: Mapping[str, Any] | None = None) -> pl.DataFrame | None:
    """Counts of ``row`` x ``col`` as a wide table: one row per ``row`` value, one column per
    ``col`` value (named by its text; ``null`` for missing), zeros where no rows."""
    import polars as pl

    long = count_by(con, [row, col], view=view, filters=filters, order="value")
    if long is None:
        return None
    if long.is_empty():
        return pl.DataFrame({row: long[row]})
    long = long.with_columns(pl.col(col).cast(pl.String).fill_null("null"))
    wide = long.pivot(on=col, index=row, values="n", sort_columns=True)
    return wide.with_columns(pl.exclude(row).fill_null(0)).sort(row, nulls_last=True)


def select(con: duckdb.DuckDBPyConnection, view: str = "figures", *,
           cols: Sequence[str] | None = None, filters: Mapping[str, Any] | None = None,
           order_by: Sequence[str] | None = None, limit: int | None = None) -> pl.DataFrame:
    """Rows of ``view`` matching ``filters`` (column names checked, values bound)."""
    src = _view(con, view)
    names = list(cols or src.cols)
    _check_columns(src.cols, names + list(order_by or []), view)
    where, params = where_clause(filters, src.cols, view)
    sql = f"SELECT {', '.join(map(quote_ident, names))} FROM {src.sql}{where}"
    if order_by:
        sql += " ORDER BY " + ", ".join(map(quote_ident, order_by))
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return _pl(con, sql, params)


# --------------------------------------------------------------------------- named facets


def _per(per: str) -> str:
    if per not in ("figures", "articles"):
        raise ValueError(f"per must be 'figures' or 'articles', not {per!r}")
    return per


def license_counts(con: duckdb.DuckDBPyConnection, *, per: str = "figures",
                   filters: Mapping[str, Any] | None = None) -> pl.DataFrame | None:
    """Figures (or articles) per licence category (commercial / noncommercial / other)."""
    return count_by(con, "license_category", view=_per(per), filters=filters)


def year_counts(con: duckdb.DuckDBPyConnection, *, per: str = "figures",
                filters: Mapping[str, Any] | None = None) -> pl.DataFrame | None:
    """Figures (or articles) per publication year, in year order (unknown year last)."""
    return count_by(con, "year", view=_per(per), filters=filters, order="value")


def journal_counts(con: duckdb.DuckDBPyConnection, *, per: str = "articles",
                   limit: int | None = 20,
                   filters: Mapping[str, Any] | None = None) -> pl.DataFrame | None:
    """Articles (or figures) per journal, most frequent first."""
    return count_by(con, "journal", view=_per(per), filters=filters, limit=limit)


def article_type_counts(con: duckdb.DuckDBPyConnection, *, per: str = "articles",
                        filters: Mapping[str, Any] | None = None) -> pl.DataFrame | None:
    """Articles (or figures) per JATS ``article-type``."""
    return count_by(con, "article_type", view=_per(per), filters=filters)


def keyword_counts(con: duckdb.DuckDBPyConnection, *, per: str = "articles",
                   limit: int | None = 20,
                   filters: Mapping[str, Any] | None = None) -> pl.DataFrame | None:
    """Author keywords (unnested), most frequent first."""
    return count_by(con, "keywords", view=_per(per), filters=filters, limit=limit, dropna=True)


def subject_counts(con: duckdb.DuckDBPyConnection, *, per: str = "articles",
                   limit: int | None = 20,
                   filters: Mapping[str, Any] | None = None) -> pl.DataFrame | None:
    """Article-category subjects (unnested), most frequent first."""
    return count_by(con, "subjects", view=_per(per), filters=filters, limit=limit, dropna=True)


def _mesh_source(con: duckdb.DuckDBPyConnection, per: str) -> _Source | None:
    """Where MeSH terms live: a column of the view itself, else Entrez joined on pmid."""
    src = _view(con, per)
    for c in _MESH_COLUMNS:
        if c in src.cols:
            return _Source(src.sql, src.cols, per) if c == "mesh_terms" else _Source(
                f"(SELECT *, {quote_ident(c)} AS mesh_terms FROM {src.sql})",
                {**src.cols, "mesh_terms": src.cols[c]}, per)
    if "entrez" in views(con) and "pmid" in src.cols and "mesh_terms" in columns(con, "entrez"):
        ecols = columns(con, "entrez")
        ok = " WHERE e.status = 'ok'" if "status" in ecols else ""
        sql = (f"(SELECT v.*, e.mesh_terms FROM {src.sql} v LEFT JOIN "
               f"(SELECT pmid, any_value(mesh_terms) AS mesh_terms FROM entrez e{ok} "
               f"GROUP BY pmid) e ON e.pmid = v.pmid)")
        return _Source(sql, {**src.cols, "mesh_terms": ecols["mesh_terms"]}, per)
    return None


def mesh_counts(con: duckdb.DuckDBPyConnection, *, per: str = "articles",
                limit: int | None = 20,
                filters: Mapping[str, Any] | None = None) -> pl.DataFrame | None:
    """MeSH descriptors (unnested), most frequent first; None until Entrez enrichment."""
    src = _mesh_source(con, _per(per))
    if src is None:
        _unavailable(f"no MeSH terms for {per}: no mesh_terms column and no entrez view "
                     "(run the Entrez enrichment first)")
        return None
    return _count(con, src, ["mesh_terms"], filters=filters, limit=limit, dropna=True)


def label_source(con: duckdb.DuckDBPyConnection,
                 column: str = "primary_label") -> tuple[str, str] | None:
    """``(view, column name)`` holding taxonomy labels, or None while there are none.

    ``column`` is ``primary_label`` or ``secondary_labels`` (BIOMEDICA's
    ``image_primary_label`` / ``image_secondary_label`` count as the same). The samples
    themselves (``figures``) win; else ``figures_labeled`` (figures joined with the newest
    ``labels/*.parquet``), whose label columns come from the ``labels`` view.
    """
    for view in ("figures", "figures_labeled"):
        if view not in views(con):
            continue
        cols = columns(con, view)
        for name in LABEL_ALIASES.get(column, (column,)):
            if name in cols:
                return view, name
    return None


def label_counts(con: duckdb.DuckDBPyConnection, column: str = "primary_label", *,
                 filters: Mapping[str, Any] | None = None,
                 limit: int | None = None) -> pl.DataFrame | None:
    """Figures per taxonomy label (``primary_label`` or ``secondary_labels``; BIOMEDICA's
    ``image_primary_label`` / ``image_secondary_label`` are accepted as the same)."""
    found = label_source(con, column)
    if found is None:
        _unavailable(f"no {column!r} labels yet: not in the samples and no labels/*.parquet")
        return None
    return _count(con, _view(con, found[0]), [found[1]], filters=filters, limit=limit)


def figures_per_article(con: duckdb.DuckDBPyConnection, *,
                        filters: Mapping[str, Any] | None = None) -> pl.DataFrame:
    """Distribution of samples per article: ``n_figures, articles, share`` (articles view)."""
    counts = count_by(con, "n_figures", view="articles", filters=filters, order="value")
    assert counts is not None  # n_figures is a column articles always has
    return counts.rename({"n": "articles"})


def overview(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Headline numbers: figures, articles, shards, version, figures per licence category."""
    f = con.execute("SELECT count(*), count(DISTINCT shard), any_value(dataset_version) "
                    "FROM figures").fetchone() or (0, 0, None)
    a = scalar(con, "SELECT count(*) FROM articles")
    lic = con.execute("SELECT license_category, count(*) FROM figures GROUP BY 1 ORDER BY 1"
                      ).fetchall() if has_column(con, "license_category") else []
    return {"figures": f[0], "articles": a, "shards": f[1], "dataset_version": f[2],
            "figures_by_license": {k: v for k, v in lic}}


# ------------------------------------------------------------------------------ SQL output

FORMATS = ("table", "csv", "json", "parquet")


def _cell(v: Any) -> Any:
    """A CSV cell: nested values as JSON text, everything else as it prints."""
    import json

    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, default=str)
    return "" if v is None else v


def write_query(con: duckdb.DuckDBPyConnection, sql: str, fmt: str = "table", *,
                out: str | None = None, stream: Any = None) -> int:
    """Run ``sql`` on ``con`` and write its result; return the number of rows.

    ``fmt``: ``table`` (aligned text), ``csv`` (nested values as JSON text), ``json`` (JSON
    Lines, one object per row) or ``parquet`` (needs ``out``). Without ``out`` the result goes
    to ``stream`` (default stdout); a file ``out`` is written to a temporary name and renamed.
    A statement without a result writes nothing and returns 0.
    """
    import os
    import sys
    from pathlib import Path

    from biomedica_kit.base.atomic import TMP_PREFIX, write_parquet_atomic

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    if fmt == "parquet" and out is None:
        raise ValueError("parquet output needs an output file (--out)")
    rel = con.sql(sql)
    if rel is None:
        return 0
    if fmt == "parquet":
        table = rel.to_arrow_table()
        assert out is not None  # checked above: parquet needs a file
        write_parquet_atomic(table, Path(out))
        return table.num_rows
    if out is None:
        return _emit(rel, fmt, stream or sys.stdout)
    tmp = Path(out).with_name(f"{TMP_PREFIX}{Path(out).name}.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            n = _emit(rel, fmt, f)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _emit(rel: duckdb.DuckDBPyRelation, fmt: str, stream: Any) -> int:
    import csv
    import json

    import polars as pl

    if fmt == "table":
        df = cast("pl.DataFrame", pl.from_arrow(rel.to_arrow_table()))
        with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=1000,
                       fmt_table_cell_list_len=-1, tbl_hide_dataframe_shape=True):
            stream.write(f"{df}\n({df.height} rows)\n")
        return df.height
    n = 0
    writer = csv.writer(stream) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(rel.columns)
    for batch in rel.to_arrow_reader(10_000):
        for row in batch.to_pylist():
            n += 1
            if writer is not None:
                writer.writerow([_cell(v) for v in row.values()])
            else:
                stream.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return n


def mesh_crosstab(con: duckdb.DuckDBPyConnection, by: str, *, per: str = "figures",
                  top: int = 20) -> pl.DataFrame | None:
    """The ``top`` MeSH descriptors (rows) x ``by`` (columns: licence category, year, a
    taxonomy label column...), counting rows per descriptor and value; None until Entrez
    enrichment (or while ``by`` does not exist yet). ``per="figures_labeled"`` reads labels
    kept in ``labels/*.parquet``."""
    import polars as pl

    if per not in ("figures", "articles", "figures_labeled"):
        raise ValueError(f"per must be 'figures', 'articles' or 'figures_labeled', not {per!r}")
    src = _mesh_source(con, per)
    if src is None:
        _unavailable(f"no MeSH terms for {per}: run the Entrez enrichment first")
        return None
    if by not in src.cols:
        _unavailable(f"no {by!r} column in {per} yet")
        return None
    terms = _count(con, src, ["mesh_terms"], dropna=True, limit=top)["mesh_terms"].to_list()
    long = _count(con, src, ["mesh_terms", by], dropna=True).filter(
        pl.col("mesh_terms").is_in(terms))
    if long.is_empty():
        return pl.DataFrame({"mesh_terms": []}, schema={"mesh_terms": pl.String})
    long = long.with_columns(pl.col(by).cast(pl.String))
    wide = long.pivot(on=by, index="mesh_terms", values="n", sort_columns=True)
    order = {t: i for i, t in enumerate(terms)}
    return (wide.with_columns(pl.exclude("mesh_terms").fill_null(0))
            .sort(pl.col("mesh_terms").replace_strict(order, default=len(order))))


def mesh_category_counts(con: duckdb.DuckDBPyConnection, descriptors, *,
                         per: str = "figures", level: str = "category"
                         ) -> pl.DataFrame | None:
    """Rows per MeSH tree category, rolling descriptors up with NLM's descriptor file.

    ``descriptors``: :func:`biomedica_kit.etl.mesh.load_mesh_descriptors` of ``descYYYY.xml``.
    ``level="category"`` gives the 16 top-level categories (Diseases, Organisms...),
    ``level="tree"`` the second level (C04, B01...). A row counts once per category however
    many of its descriptors fall in it. Descriptors the file does not know are counted under
    ``(not in descriptor file)`` rather than dropped.
    """
    import polars as pl

    from biomedica_kit.etl.mesh import mesh_top_categories

    if level not in ("category", "tree"):
        raise ValueError(f"level must be 'category' or 'tree', not {level!r}")
    src = _mesh_source(con, _per(per))
    if src is None:
        _unavailable(f"no MeSH terms for {per}: run the Entrez enrichment first")
        return None
    ui_by_name = {name: ui for ui, name in descriptors.names.items()}
    terms = _count(con, src, ["mesh_terms"], dropna=True)["mesh_terms"].to_list()
    pairs = []
    for term in terms:
        ui = ui_by_name.get(term)
        if ui is None:
            pairs.append((term, "(not in descriptor file)"))
            continue
        cats = mesh_top_categories(descriptors.get(ui, []))
        for c in (cats.names if level == "category" else cats.trees):
            pairs.append((term, c))
    mapping = pl.DataFrame(pairs, schema={"term": pl.String, "category": pl.String},
                           orient="row")
    con.register("_mesh_category_map", mapping.to_arrow())
    try:
        sql = (f"WITH s AS (SELECT row_number() OVER () AS rid, mesh_terms FROM {src.sql}), "
               "u AS (SELECT rid, unnest(mesh_terms) AS term FROM s) "
               "SELECT m.category, count(DISTINCT u.rid) AS n "
               "FROM u JOIN _mesh_category_map m USING (term) "
               "GROUP BY 1 ORDER BY n DESC, 1")
        return _pl(con, sql, [])
    finally:
        con.unregister("_mesh_category_map")
