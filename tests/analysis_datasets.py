"""Datasets at the edges, for the notebooks and widgets: empty, without years or licences, and
a metadata table of millions of rows. Each is made from a real dataset with the project's own
APIs (a subset, a new version, a replicated export), never by hand-written files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

#: Fields the "bare" dataset's samples lose (set to null through a new version).
BARE_FIELDS = ("year", "license_category", "journal", "article_type", "pub_date")


def empty_copy(parent: Path, dest: Path) -> Path:
    """A dataset with no samples: a subset of ``parent`` that matches nothing."""
    from biomedica_kit.tables.subset import subset

    out = dest / "empty"
    subset(parent, "FALSE", out)
    return out


def bare_copy(parent: Path, dest: Path) -> Path:
    """A copy of ``parent`` whose samples have no year, licence category, journal or article
    type (a new version with those json fields null), exported."""
    import json

    from biomedica_kit.dataset.changes import apply_changes
    from biomedica_kit.dataset.manifest import read_manifest
    from biomedica_kit.dataset.shards import iter_samples
    from biomedica_kit.tables.export import export

    out = dest / "bare"
    shutil.copytree(parent, out, ignore=shutil.ignore_patterns("metadata"))
    keys = [json.loads(g["json"])["key"] for s in read_manifest(out)["shards"]
            for _k, g in iter_samples(out / s["path"])]
    apply_changes(out, {k: dict.fromkeys(BARE_FIELDS) for k in keys}, kind="test-bare",
                  fields=list(BARE_FIELDS))
    export(out, workers=1)
    return out


#: The columns of the big table: what the gallery, filters and overview charts read.
BIG_COLUMNS = ("shard", "subset", "dataset_version", "image_ext", "image_offset",
               "image_length", "txt_offset", "txt_length", "json_offset", "json_length",
               "caption", "figure_id", "figure_label", "figure_kind", "title", "year",
               "license_category", "pmcid", "pmid", "doi", "article_type", "keywords",
               "subjects", "image_width", "image_height")


def big_copy(parent: Path, dest: Path, rows: int = 5_000_000, journals: int = 5000) -> Path:
    """``parent``'s shards with a metadata table of ``rows`` samples: the parent's rows
    repeated under new keys (pointing at the same shard bytes, so images still load), spread
    over ``journals`` journal names and ``rows // 4`` articles, written by DuckDB with the
    export's file metadata so the query layer takes it as current."""
    import duckdb

    out = dest / "big"
    shutil.copytree(parent, out, ignore=shutil.ignore_patterns("parts"))
    meta = out / "metadata"
    con = duckdb.connect()
    n_articles = max(1, rows // 4)
    selects = {
        "figures": (f"SELECT f.key || '-' || i AS key, "
                    f"{', '.join('f.' + c for c in BIG_COLUMNS)}, "
                    f"'article-' || (i % {n_articles}) AS article_id, "
                    f"f.journal || ' ' || (i % {journals}) AS journal "
                    f"FROM read_parquet('{{src}}') f, range({{reps}}) r(i) LIMIT {rows}"),
        "articles": (f"SELECT 'article-' || i AS article_id, a.journal || ' ' || (i % "
                     f"{journals}) AS journal, a.year, a.license_category, a.article_type, "
                     f"4::BIGINT AS n_figures FROM (SELECT * FROM read_parquet('{{src}}') "
                     f"LIMIT 1) a, range({n_articles}) r(i)"),
    }
    for name, sql in selects.items():
        src = meta / f"{name}.parquet"
        n = pq.read_metadata(src).num_rows
        kv = {k.decode(): v.decode() for k, v in (pq.read_schema(src).metadata or {}).items()
              if not k.startswith(b"ARROW")}
        kv_sql = ", ".join(f"'{k}': '{v}'" for k, v in kv.items())
        tmp = meta / f"big-{name}.parquet"
        con.execute(f"COPY ({sql.format(src=src, reps=-(-rows // n))}) TO '{tmp}' "
                    f"(FORMAT parquet, KV_METADATA {{{kv_sql}}})")
        tmp.replace(src)
    con.close()
    return out
