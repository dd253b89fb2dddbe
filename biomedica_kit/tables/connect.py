"""The query layer: DuckDB views and Polars frames over a dataset's tables, and safe SQL.

:func:`connect` returns an in-memory DuckDB connection with views ``figures``, ``articles``
and, when their files exist, ``report_articles``, ``skips``, ``entrez``
(``metadata/entrez.parquet``), ``labels`` (newest ``labels/*.parquet``), ``figures_labeled``
(figures LEFT JOIN labels on ``key``), ``embeddings`` (``embeddings/<model>/*.parquet`` with
a ``model`` column) and, from the newest cluster run, ``clusters`` (key, cluster, distance),
``proposals`` and ``near_dups``, and ``splits`` (``splits/<name>.parquet``, the
train / validation / test decisions of :mod:`biomedica_kit.tables.splits`, with a ``name``
column). :func:`lazy` gives the same tables as Polars LazyFrames.

``read_only=True`` confines a connection to the dataset folder, with no extension loading,
no network and a locked configuration; :func:`check_read_only_sql` additionally admits only
statements that return rows (SELECT, VALUES, EXPLAIN, DESCRIBE, SHOW...), so ``COPY``,
``ATTACH``, ``INSTALL``, ``SET`` or ``CREATE`` never run on it (the CLI's ``query`` runs
this way unless ``--full-session``).
:mod:`biomedica_kit.tables.query` has helpers for the usual questions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from biomedica_kit.base.atomic import is_temporary
from biomedica_kit.dataset.manifest import MANIFEST
from biomedica_kit.tables.export import META_DIR, export
from biomedica_kit.tables.sql import quote_ident, sql_literal

if TYPE_CHECKING:
    import duckdb
    import polars as pl

__all__ = ["ReadOnlySQL", "check_read_only_sql", "connect", "latest_labels", "lazy",
           "metadata_paths", "quote_ident", "sql_literal"]


class ReadOnlySQL(ValueError):
    """A statement refused on a read-only connection."""


def metadata_paths(dataset: str | os.PathLike) -> dict[str, Path]:
    """Existing tables of a dataset by view name (``embeddings`` is a glob pattern)."""
    root = Path(dataset)
    candidates = {
        "figures": root / META_DIR / "figures.parquet",
        "articles": root / META_DIR / "articles.parquet",
        "entrez": root / META_DIR / "entrez.parquet",
        "report_articles": root / "report" / "articles.parquet",
        "skips": root / "report" / "skips.parquet",
    }
    out = {k: p for k, p in candidates.items() if p.is_file()}
    labels = latest_labels(root)
    if labels is not None:
        out["labels"] = labels
    splits = [p for p in (root / "splits").glob("*.parquet") if not is_temporary(p)]
    if splits:
        out["splits"] = root / "splits" / "*.parquet"
    if any((root / "embeddings").glob("*/*.parquet")):
        out["embeddings"] = root / "embeddings" / "*" / "*.parquet"
    runs = [p.parent for p in (root / "clusters").glob("*/config.json")]
    if runs:  # the newest finished cluster run (biomedica_kit.cluster.run.latest_run)
        run = max(runs, key=lambda p: ((p / "config.json").stat().st_mtime_ns, p.name))
        for view, name in (("clusters", "assignments"), ("proposals", "proposals"),
                           ("near_dups", "near_dups")):
            if (run / f"{name}.parquet").is_file():
                out[view] = run / f"{name}.parquet"
    return out


def latest_labels(dataset: str | os.PathLike) -> Path | None:
    """``labels/latest.parquet`` if present, else the most recently written labels file."""
    d = Path(dataset) / "labels"
    if (d / "latest.parquet").is_file():
        return d / "latest.parquet"
    files = [p for p in d.glob("*.parquet") if not is_temporary(p)]
    if not files:
        return None
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def _ensure(dataset: str | os.PathLike, refresh: bool) -> Path:
    # Absolute, resolved paths: views stay valid whatever the working directory, and a
    # read-only connection's allowed directory matches the paths its views read.
    root = Path(dataset).resolve()
    if not (root / MANIFEST).is_file():
        raise FileNotFoundError(f"{root} is not a dataset (no manifest.json)")
    if refresh:
        export(root)
    elif not (root / META_DIR / "figures.parquet").is_file():
        raise FileNotFoundError(f"{root}: no metadata yet; run `biomedica export {root}`")
    return root


def connect(dataset: str | os.PathLike, *, refresh: bool = True,
            read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the dataset's tables as views (see module doc).

    ``refresh`` first runs :func:`export` (a no-op when the metadata is current).
    ``read_only`` confines the connection to files under the dataset folder and locks the
    configuration, so SQL run on it cannot read or write anything else.
    """
    import duckdb

    root = _ensure(dataset, refresh)
    con = duckdb.connect()
    paths = metadata_paths(root)
    for name, path in paths.items():
        if name == "embeddings":
            con.execute(
                f"CREATE VIEW embeddings AS SELECT * EXCLUDE (filename), "
                f"parse_filename(parse_dirpath(filename)) AS model "
                f"FROM read_parquet({sql_literal(path)}, union_by_name = true, filename = true)")
        elif name == "splits":
            con.execute(
                f"CREATE VIEW splits AS SELECT * EXCLUDE (filename), "
                f"parse_filename(filename, true) AS name "
                f"FROM read_parquet({sql_literal(path)}, filename = true)")
        else:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({sql_literal(path)})")
    if "labels" in paths:
        fcols = {r[0] for r in con.execute("DESCRIBE figures").fetchall()}
        lcols = [r[0] for r in con.execute("DESCRIBE labels").fetchall()]
        if "key" in lcols:
            add = "".join(f", l.{quote_ident(c)}" for c in lcols if c not in fcols)
            con.execute(f"CREATE VIEW figures_labeled AS SELECT f.*{add} "
                        f"FROM figures f LEFT JOIN labels l ON l.key = f.key")
    if read_only:
        con.execute(f"SET allowed_directories = [{sql_literal(str(root) + os.sep)}]")
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


#: Statement types that only return rows (DESCRIBE, SHOW, SUMMARIZE, VALUES parse as SELECT).
_ROW_STATEMENTS = ("SELECT", "EXPLAIN")


def check_read_only_sql(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse (:class:`ReadOnlySQL`) SQL that is not one or more row-returning statements.

    DuckDB parses the text and reports each statement's type, so a ``COPY`` after a
    ``SELECT`` is seen as what it is, whatever the comments and quoting around it.
    """
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlySQL(f"not valid SQL: {exc}") from None
    if not statements:
        raise ReadOnlySQL("no SQL statement given")
    for st in statements:
        if st.type.name not in _ROW_STATEMENTS:
            raise ReadOnlySQL(f"{st.type.name} statements are refused in a read-only query "
                              f"(only queries that return rows run; --full-session allows "
                              f"anything): {st.query.strip()[:80]!r}")


def lazy(dataset: str | os.PathLike, table: str = "figures", *,
         refresh: bool = True) -> pl.LazyFrame:
    """A Polars LazyFrame over one of the tables :func:`connect` exposes."""
    import polars as pl

    root = _ensure(dataset, refresh)
    paths = metadata_paths(root)
    if table not in paths:
        raise ValueError(f"no table {table!r} in {root}; available: {sorted(paths)}")
    if table == "embeddings":  # as the DuckDB view: a model column from embeddings/<model>/
        return pl.scan_parquet(paths[table], include_file_paths="__file").with_columns(
            model=pl.col("__file").map_elements(lambda f: Path(f).parent.name,
                                                return_dtype=pl.String)).drop("__file")
    if table == "splits":  # as the DuckDB view: the split's name from splits/<name>.parquet
        return pl.scan_parquet(paths[table], include_file_paths="__file").with_columns(
            name=pl.col("__file").map_elements(lambda f: Path(f).stem,
                                               return_dtype=pl.String)).drop("__file")
    return pl.scan_parquet(paths[table])
