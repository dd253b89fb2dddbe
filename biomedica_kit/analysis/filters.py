"""Sample selections over the ``figures`` view: filters, their facets, and the search behind
the gallery. No widgets here; :mod:`biomedica_kit.analysis.explore` puts widgets on top.

- :class:`Filters` is one selection (licence, figure kind, article type, taxonomy label, years,
  image size, journal, caption text, keywords, MeSH terms, curation tags and decisions) plus a
  sort order. :meth:`Filters.where` makes ONE SQL boolean expression over ``figures``: the
  predicate the gallery searches with, :func:`biomedica_kit.tables.subset.subset` exports and
  saved views (:mod:`biomedica_kit.analysis.views`) store. :meth:`Filters.to_dict` /
  :meth:`Filters.from_dict` make it JSON.
- :func:`facets` lists the values each filter can take in a dataset, robust to datasets
  without samples, years, licences or any optional column.
- :func:`search`, :func:`count`, :func:`matches_table` find the matches.

Caption text matches literally and case-insensitively (``contains(lower(caption), ...)``):
``%``, ``_`` and quotes are ordinary characters. Every range filter (years, image size) has an
"include unknown" switch: off, samples without a value are left out, and :func:`count_unknown`
says how many.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from biomedica_kit.dataset.licenses import CATEGORIES
from biomedica_kit.tables import query
from biomedica_kit.tables.sql import quote_ident, scalar, sql_literal

if TYPE_CHECKING:
    import duckdb
    import polars as pl

__all__ = [
    "CARD_COLUMNS", "DECISIONS", "FACET_LIMIT", "LIST_FACET_SAMPLE", "SIZE_SQL", "SORTS",
    "UNKNOWN", "Facets", "FilterError", "Filters", "count", "count_unknown", "facets",
    "journals_matching", "matches_table", "search", "tag_values",
]

#: Stands for "no value" (SQL NULL) in the choices of a category filter.
UNKNOWN = "(unknown)"
#: Sort orders: name -> (what the user reads, ORDER BY; ``{seed}`` for the random order).
SORTS: dict[str, tuple[str, str]] = {
    "newest": ("newest first", "year DESC NULLS LAST, key"),
    "oldest": ("oldest first", "year ASC NULLS LAST, key"),
    "largest": ("largest image first",
                "image_width::BIGINT * image_height::BIGINT DESC NULLS LAST, key"),
    "smallest": ("smallest image first",
                 "image_width::BIGINT * image_height::BIGINT ASC NULLS LAST, key"),
    "key": ("by key", "key"),
    "random": ("random (seeded)", "hash(key || ':{seed}'), key"),
}
DECISIONS = ("accepted", "rejected", "undecided")
#: The image-size filter and readout are over the shorter side, in pixels.
SIZE_SQL = "least(image_width, image_height)"
#: Columns a gallery card shows (those the dataset has are read).
CARD_COLUMNS = ("key", "shard", "image_ext", "image_offset", "image_length", "caption",
                "figure_label", "figure_kind", "title", "journal", "year", "license_category",
                "pmcid", "doi", "article_type", "inline_refs", "image_width", "image_height")
#: How many values a long facet (journals, keywords, MeSH terms) lists.
FACET_LIMIT = 200
#: List-column facets (keywords) suggest the values of this many sampled rows; the filter
#: itself matches every row.
LIST_FACET_SAMPLE = 200_000


class FilterError(ValueError):
    """A filter the dataset cannot answer (the column it needs does not exist)."""


def _tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _range(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    lo, hi = sorted(int(v) for v in value)
    return (lo, hi)


@dataclass(frozen=True)
class Filters:
    """A selection of samples and the order to show them in; empty fields do not filter.

    Category fields (``licences``, ``kinds``, ``article_types``) match any of their values,
    :data:`UNKNOWN` matching a missing one. ``years`` and ``sizes`` (shorter image side, px)
    are inclusive ranges; ``years_unknown`` / ``sizes_unknown`` keep samples without a value.
    ``text`` is a literal, case-insensitive caption substring. ``keywords`` / ``mesh`` match
    samples having any of them. ``tags`` match samples carrying any of these curation tags,
    ``decision`` is ``accepted``, ``rejected`` or ``undecided`` (see
    :mod:`biomedica_kit.analysis.curation`). ``sort`` is a key of :data:`SORTS`; ``seed``
    fixes the random order.
    """

    licences: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    article_types: tuple[str, ...] = ()
    label: str | None = None
    years: tuple[int, int] | None = None
    years_unknown: bool = False
    sizes: tuple[int, int] | None = None
    sizes_unknown: bool = False
    journal: str | None = None
    text: str | None = None
    keywords: tuple[str, ...] = ()
    mesh: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    decision: str | None = None
    sort: str = "newest"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("licences", "kinds", "article_types", "keywords", "mesh", "tags"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        for name in ("years", "sizes"):
            object.__setattr__(self, name, _range(getattr(self, name)))
        for name in ("label", "journal", "text", "decision"):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        if self.sort not in SORTS:
            raise ValueError(f"sort must be one of {list(SORTS)}, not {self.sort!r}")
        if self.decision is not None and self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, not {self.decision!r}")

    # ------------------------------------------------------------------------- SQL

    def where(self, con: duckdb.DuckDBPyConnection | None = None) -> str:
        """One SQL boolean expression over ``figures`` (``TRUE`` when nothing is chosen).

        Values are written as escaped literals (not bound parameters) so the predicate can be
        shown, copied into ``biomedica subset --where`` and recorded in a subset's manifest.
        ``con`` is needed to check that the columns exist and to find where labels, MeSH
        terms and curation tags live; :class:`FilterError` when the dataset has no such data.
        """
        have = query.columns(con, "figures") if con is not None else None

        def need(column: str, what: str) -> str:
            # The project's own column names: plain identifiers, written bare for reading.
            if have is not None and column not in have:
                raise FilterError(f"cannot filter by {what}: this dataset has no "
                                  f"{column!r} column")
            return column

        parts = []
        for values, column, what in ((self.licences, "license_category", "licence"),
                                     (self.kinds, "figure_kind", "figure kind"),
                                     (self.article_types, "article_type", "article type")):
            if values:
                parts.append(_in(need(column, what), values))
        if self.label:
            parts.append(_label_predicate(con, self.label))
        if self.years:
            parts.append(_between(need("year", "year"), self.years, self.years_unknown))
        if self.sizes:
            need("image_width", "image size")
            parts.append(_between(SIZE_SQL, self.sizes, self.sizes_unknown))
        if self.journal:
            parts.append(f"{need('journal', 'journal')} = {sql_literal(self.journal)}")
        if self.text and self.text.strip():
            parts.append(f"contains(lower({need('caption', 'caption')}), "
                         f"{sql_literal(self.text.strip().lower())})")
        if self.keywords:
            parts.append(f"list_has_any({need('keywords', 'keyword')}, "
                         f"{_list(self.keywords)})")
        if self.mesh:
            parts.append(_mesh_predicate(con, self.mesh))
        if self.tags:
            parts.append(f"key IN (SELECT key FROM tags WHERE kind = 'tag' AND value IN "
                         f"({', '.join(sql_literal(t) for t in self.tags)}))")
        if self.decision:
            decided = "SELECT key FROM tags WHERE kind = 'decision'"
            parts.append({"accepted": f"key IN ({decided} AND value = 'accept')",
                          "rejected": f"key IN ({decided} AND value = 'reject')",
                          "undecided": f"key NOT IN ({decided})"}[self.decision])
        return " AND ".join(parts) or "TRUE"

    def order_by(self, con: duckdb.DuckDBPyConnection | None = None) -> str:
        """The ORDER BY of :attr:`sort` (``key`` when the dataset lacks its columns)."""
        sql = SORTS[self.sort][1].format(seed=int(self.seed))
        if con is not None:
            have = query.columns(con, "figures")
            needed = {"newest": "year", "oldest": "year", "largest": "image_width",
                      "smallest": "image_width"}.get(self.sort)
            if needed and needed not in have:
                return "key"
        return sql

    # ---------------------------------------------------------------------- words, JSON

    def describe(self) -> str:
        """The filters in words (for headings and summaries)."""
        bits = []
        for values, what in ((self.licences, "licence"), (self.kinds, "kind"),
                             (self.article_types, "article type"), (self.keywords, "keyword"),
                             (self.mesh, "MeSH"), (self.tags, "tag")):
            if values:
                bits.append(f"{what} " + " or ".join(values))
        if self.label:
            bits.append(f"label {self.label}")
        for rng, unknown, what, unit in ((self.years, self.years_unknown, "years", ""),
                                         (self.sizes, self.sizes_unknown, "shorter side",
                                          " px")):
            if rng:
                bits.append(f"{what} {rng[0]}–{rng[1]}{unit}"
                            + (" or unknown" if unknown else ""))
        if self.journal:
            bits.append(f"journal {self.journal}")
        if self.text and self.text.strip():
            bits.append(f"caption contains “{self.text.strip()}”")
        if self.decision:
            bits.append(self.decision)
        return ", ".join(bits) or "all samples"

    def to_dict(self) -> dict[str, Any]:
        """The filters as JSON-ready values (tuples as lists); defaults included."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Filters:
        """The inverse of :meth:`to_dict`; unknown names raise ValueError."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f"unknown filter field(s) {extra}; known: {sorted(known)}")
        return cls(**data)


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(sql_literal(v) for v in values) + "]"


def _in(column: str, values: Sequence[str]) -> str:
    known = [v for v in values if v != UNKNOWN]
    parts = [f"{column} IN ({', '.join(sql_literal(v) for v in known)})"] if known else []
    if UNKNOWN in values:
        parts.append(f"{column} IS NULL")
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def _between(expr: str, rng: tuple[int, int], unknown: bool) -> str:
    sql = f"{expr} BETWEEN {int(rng[0])} AND {int(rng[1])}"
    return f"({sql} OR {expr} IS NULL)" if unknown else sql


def _label_predicate(con: duckdb.DuckDBPyConnection | None, label: str) -> str:
    if con is None:
        raise ValueError("a label filter needs the connection to find the labels")
    found = query.label_source(con, "primary_label")
    if found is None:
        raise FilterError(f"cannot filter by label {label!r}: this dataset has no taxonomy "
                          "labels")
    view, name = found
    if view == "figures":
        return f"{quote_ident(name)} = {sql_literal(label)}"
    # Labels kept beside the samples (labels/*.parquet): select by key, so the predicate
    # stays one expression over the figures view.
    return (f"key IN (SELECT key FROM labels WHERE {quote_ident(name)} = "
            f"{sql_literal(label)})")


def _mesh_predicate(con: duckdb.DuckDBPyConnection | None, terms: Sequence[str]) -> str:
    if con is None:
        raise ValueError("a MeSH filter needs the connection to find the MeSH terms")
    have = query.columns(con, "figures")
    for column in ("mesh_terms", "article_mesh_terms"):
        if column in have:
            return f"list_has_any({quote_ident(column)}, {_list(terms)})"
    if "entrez" in query.views(con) and "pmid" in have:
        ok = " AND status = 'ok'" if query.has_column(con, "status", "entrez") else ""
        return (f"pmid IN (SELECT pmid FROM entrez WHERE list_has_any(mesh_terms, "
                f"{_list(terms)}){ok})")
    raise FilterError("cannot filter by MeSH terms: this dataset has none yet (run the "
                      "Entrez enrichment)")


# ---------------------------------------------------------------------------------- facets


@dataclass(frozen=True)
class Facets:
    """The values each filter can take in a dataset (for the widgets' choices).

    Category lists are most frequent first (:data:`UNKNOWN` where some samples have no
    value); ``journals``, ``keywords`` and ``mesh`` hold the :data:`FACET_LIMIT` most
    frequent (``n_journals`` counts them all). A range is None when no sample has a value.
    """

    total: int
    licences: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    article_types: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    years: tuple[int, int] | None = None
    years_unknown: int = 0
    sizes: tuple[int, int] | None = None
    sizes_unknown: int = 0
    journals: list[str] = field(default_factory=list)
    n_journals: int = 0
    keywords: list[str] = field(default_factory=list)
    mesh: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)


def _values(con: duckdb.DuckDBPyConnection, column: str, *, limit: int | None = None,
            view: str = "figures") -> list[str]:
    """Values of ``column`` (a list column is unnested), most frequent first; UNKNOWN last
    when some rows have none (scalar columns only)."""
    if not query.has_column(con, column, view):
        return []
    dtype = query.columns(con, view)[column]
    if dtype.endswith("[]"):  # suggestions from a sample: unnesting 5M rows takes seconds
        q, v = quote_ident(column), quote_ident(view)
        total = scalar(con, f"SELECT count(*) FROM {v}")
        # A block sample (system) is a fraction of one scan; a row-exact one reads it all.
        pct = min(100.0, 100.0 * LIST_FACET_SAMPLE / max(total, 1))
        sample = f" USING SAMPLE {pct:.4f} PERCENT (system, 7)" if pct < 100 else ""
        rows = con.execute(
            f"SELECT x FROM (SELECT unnest({q}) AS x FROM (SELECT {q} FROM {v}{sample})) "
            f"WHERE x IS NOT NULL GROUP BY x ORDER BY count(*) DESC, x"
            + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        return [str(r[0]) for r in rows]
    t = query.count_by(con, column, view=view, limit=limit)
    if t is None:
        return []
    vals = t[column].to_list()
    out = [str(v) for v in vals if v is not None]
    if None in vals:
        out.append(UNKNOWN)
    return out


def _span(con: duckdb.DuckDBPyConnection, expr: str, needs: str
          ) -> tuple[tuple[int, int] | None, int]:
    if not query.has_column(con, needs):
        return None, 0
    lo, hi, unknown = con.execute(
        f"SELECT min({expr}), max({expr}), count(*) FILTER (WHERE {expr} IS NULL) "
        f"FROM figures").fetchone() or (None, None, 0)
    try:
        return ((int(lo), int(hi)) if lo is not None else None), unknown
    except (TypeError, ValueError):  # a column of text: no range to offer
        return None, unknown


def facets(con: duckdb.DuckDBPyConnection) -> Facets:
    """What each filter can choose from in this dataset (see :class:`Facets`).

    Works on any dataset, including one without samples (everything empty, ``total`` 0) and
    one whose samples lack years or licences. ``tags`` needs the ``tags`` view
    (:func:`biomedica_kit.analysis.curation.attach`).
    """
    total = scalar(con, "SELECT count(*) FROM figures")
    licences = _values(con, "license_category")
    licences = [c for c in CATEGORIES if c in licences] + [
        c for c in licences if c not in CATEGORIES]
    labels: list[str] = []
    found = query.label_source(con, "primary_label")
    if found is not None:
        labels = [v for v in _values(con, found[1], view=found[0]) if v != UNKNOWN]
    years, years_unknown = _span(con, "year", "year")
    sizes, sizes_unknown = (_span(con, SIZE_SQL, "image_width")
                            if query.has_column(con, "image_height") else (None, 0))
    n_journals = (scalar(con, "SELECT count(DISTINCT journal) FROM figures")
                  if query.has_column(con, "journal") else 0)
    mesh: list[str] = []
    if query.has_column(con, "pmid") or query.has_column(con, "mesh_terms"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", query.NotAvailable)
            t = query.mesh_counts(con, per="figures", limit=FACET_LIMIT)
        mesh = [] if t is None else [str(v) for v in t["mesh_terms"].to_list()]
    return Facets(
        total=total, licences=licences, kinds=_values(con, "figure_kind"),
        article_types=_values(con, "article_type"), labels=labels,
        years=years, years_unknown=years_unknown, sizes=sizes, sizes_unknown=sizes_unknown,
        journals=[j for j in _values(con, "journal", limit=FACET_LIMIT) if j != UNKNOWN],
        n_journals=n_journals,
        keywords=_values(con, "keywords", limit=FACET_LIMIT), mesh=mesh, tags=tag_values(con))


def tag_values(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The curation tags in use, most samples first (empty without a ``tags`` view)."""
    if "tags" not in query.views(con):
        return []
    return [r[0] for r in con.execute(
        "SELECT value FROM tags WHERE kind = 'tag' GROUP BY 1 ORDER BY count(*) DESC, 1"
    ).fetchall()]


def journals_matching(con: duckdb.DuckDBPyConnection, typed: str,
                      limit: int = 30) -> list[str]:
    """Journals whose name contains ``typed`` (case-insensitive, literal), most samples first:
    the type-ahead behind the journal box (a 5M-row table may name thousands)."""
    if not query.has_column(con, "journal"):
        return []
    rows = con.execute(
        "SELECT journal FROM figures WHERE journal IS NOT NULL AND contains(lower(journal), ?) "
        "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT ?", [typed.strip().lower(), int(limit)]
    ).fetchall()
    return [r[0] for r in rows]


# ---------------------------------------------------------------------------------- search


def count(con: duckdb.DuckDBPyConnection, filters: Filters) -> int:
    """How many samples match ``filters``."""
    return scalar(con, f"SELECT count(*) FROM figures WHERE ({filters.where(con)})")


def count_unknown(con: duckdb.DuckDBPyConnection, filters: Filters) -> dict[str, int]:
    """Samples a range filter leaves out only because they have no value:
    ``{"years": n, "sizes": n}`` for the ranges set without "include unknown"."""
    out = {}
    for name, expr in (("years", "year"), ("sizes", SIZE_SQL)):
        if getattr(filters, name) and not getattr(filters, f"{name}_unknown"):
            loose = replace(filters, years=None) if name == "years" else \
                replace(filters, sizes=None)
            out[name] = scalar(con,
                f"SELECT count(*) FROM figures WHERE ({loose.where(con)}) AND {expr} IS NULL"
            )
    return out


def search(con: duckdb.DuckDBPyConnection, filters: Filters, *, limit: int = 12,
           offset: int = 0) -> list[dict[str, Any]]:
    """The matching samples (gallery columns) in the filters' sort order."""
    have = query.columns(con, "figures")
    cols = ", ".join(quote_ident(c) for c in CARD_COLUMNS if c in have)
    sql = (f"SELECT {cols} FROM figures WHERE ({filters.where(con)}) "
           f"ORDER BY {filters.order_by(con)} LIMIT {int(limit)} OFFSET {int(offset)}")
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def matches_table(con: duckdb.DuckDBPyConnection, filters: Filters, *,
                  limit: int = 50) -> pl.DataFrame:
    """The first ``limit`` matches as a table (key, figure, kind, journal, year, licence,
    caption)."""
    import polars as pl

    rows = search(con, filters, limit=limit)

    def clip(s: str, n: int = 120) -> str:
        return s if len(s) <= n else s[: n - 1].rstrip() + "…"

    return pl.DataFrame({
        "key": [r["key"] for r in rows],
        "figure": [r.get("figure_label") for r in rows],
        "kind": [r.get("figure_kind") for r in rows],
        "journal": [r.get("journal") for r in rows],
        "year": [r.get("year") for r in rows],
        "license_category": [r.get("license_category") for r in rows],
        "caption": [clip(r.get("caption") or "") for r in rows],
    }, schema={"key": pl.String, "figure": pl.String, "kind": pl.String, "journal": pl.String,
               "year": pl.Int64, "license_category": pl.String, "caption": pl.String})
