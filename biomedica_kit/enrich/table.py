"""The Entrez table: ``metadata/entrez.parquet``, one row per PMID, from the record cache.

A rebuildable cache like the other metadata tables: parsed from the PubMed record cache, with
a status and reason for every PMID and, given NLM's descriptor file, the MeSH roll-up columns.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lxml import etree

from biomedica_kit.base.atomic import write_parquet_atomic
from biomedica_kit.etl.mesh import MeshDescriptors, mesh_rollup
from biomedica_kit.etl.pubmed import read_cached
from biomedica_kit.ingest.entrez_cache import EntrezCache, normalise_pmids

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["entrez_schema", "entrez_table", "write_entrez_parquet"]

_LIST_FIELDS = (
    "languages",
    "abstract_sections",
    "mesh_terms",
    "mesh_major",
    "mesh",
    "supplementary_concepts",
    "publication_types",
    "publication_type_uis",
    "chemicals",
    "keywords",
    "grants",
    "reference_pmids",
    "comments_corrections",
)


def entrez_schema() -> pa.Schema:
    """The Arrow schema of the Entrez table: structured fields are native struct columns."""
    import pyarrow as pa

    string, strings = pa.string(), pa.list_(pa.string())
    qualifier = pa.struct([("ui", string), ("name", string), ("major_topic", pa.bool_())])
    return pa.schema(
        [
            ("pmid", string),
            ("status", string),
            ("reason", string),
            ("record_type", string),
            ("citation_status", string),
            ("indexing_method", string),
            ("title", string),
            ("vernacular_title", string),
            ("journal", string),
            ("journal_iso", string),
            ("book_title", string),
            ("pub_year", pa.int32()),
            ("languages", strings),
            ("abstract", string),
            (
                "abstract_sections",
                pa.list_(
                    pa.struct([("label", string), ("nlm_category", string), ("text", string)])
                ),
            ),
            ("mesh_terms", strings),
            ("mesh_major", strings),
            (
                "mesh",
                pa.list_(
                    pa.struct(
                        [
                            ("ui", string),
                            ("name", string),
                            ("major_topic", pa.bool_()),
                            ("qualifiers", pa.list_(qualifier)),
                        ]
                    )
                ),
            ),
            (
                "supplementary_concepts",
                pa.list_(pa.struct([("ui", string), ("name", string), ("type", string)])),
            ),
            ("publication_types", strings),
            ("publication_type_uis", strings),
            (
                "chemicals",
                pa.list_(
                    pa.struct([("name", string), ("ui", string), ("registry_number", string)])
                ),
            ),
            ("keywords", strings),
            (
                "grants",
                pa.list_(
                    pa.struct(
                        [
                            ("grant_id", string),
                            ("acronym", string),
                            ("agency", string),
                            ("country", string),
                        ]
                    )
                ),
            ),
            ("reference_pmids", strings),
            ("reference_count", pa.int32()),
            (
                "comments_corrections",
                pa.list_(
                    pa.struct([("ref_type", string), ("ref_source", string), ("pmid", string)])
                ),
            ),
            ("doi", string),
            ("pmcid", string),
            ("mesh_categories", strings),
            ("mesh_major_categories", strings),
            ("mesh_trees", strings),
        ]
    )


def _table_rows(
    pmids: list[str], cache_dir: str, descriptors: MeshDescriptors | None
) -> list[dict[str, Any]]:
    """Rows for ``pmids``."""
    cache = EntrezCache(cache_dir)
    rows = []
    for pmid in pmids:
        status, reason = cache.lookup(pmid)
        row: dict[str, Any] = {"pmid": pmid}
        if status == "ok":
            try:
                row.update(read_cached(cache, pmid))
                row["status"], row["reason"] = "ok", None
            except (OSError, etree.XMLSyntaxError, ValueError) as exc:
                row["status"], row["reason"] = "failed", f"unreadable cache file: {exc}"
        else:
            row["status"] = status or "failed"
            row["reason"] = reason if status else "not in cache (never fetched)"
        if descriptors is not None and row["status"] == "ok":
            uis = [m["ui"] for m in row["mesh"] if m["ui"]]
            major = [
                m["ui"]
                for m in row["mesh"]
                if m["ui"] and (m["major_topic"] or any(q["major_topic"] for q in m["qualifiers"]))
            ]
            everything = mesh_rollup(uis, descriptors)
            row["mesh_categories"] = list(everything.names)
            row["mesh_trees"] = list(everything.trees)
            row["mesh_major_categories"] = list(mesh_rollup(major, descriptors).names)
        rows.append(row)
    return rows


# Set once per worker process, so the descriptor table is sent to each worker once, not with
# every chunk.
_worker_args: tuple[str, MeshDescriptors | None] = ("", None)


def _init_table_worker(cache_dir: str, descriptors: MeshDescriptors | None) -> None:
    global _worker_args
    _worker_args = (cache_dir, descriptors)


def _table_rows_in_worker(pmids: list[str]) -> list[dict[str, Any]]:
    return _table_rows(pmids, *_worker_args)


def entrez_table(
    pmids: Iterable[str | int],
    cache_dir: str | os.PathLike[str],
    *,
    descriptors: MeshDescriptors | None = None,
    workers: int = 1,
    chunk_size: int = 2000,
) -> pa.Table:
    """One row per requested PMID from the cache: valid PMIDs de-duplicated in input order,
    then the inputs that are not PMIDs (``failed``).

    ``status`` is ``ok`` / ``not_found`` / ``failed`` with a ``reason`` for the latter two
    (a PMID never fetched is ``failed``, "not in cache"). The record columns are filled for
    ``ok`` rows and null otherwise. With ``descriptors`` (from :func:`load_mesh_descriptors`)
    the MeSH rollup columns are filled too. ``workers`` > 1 parses in that many processes
    (started with spawn: a script calling this needs an ``if __name__ == "__main__":`` guard).
    """
    import pyarrow as pa

    wanted, invalid = normalise_pmids(pmids)
    chunks = [wanted[i : i + chunk_size] for i in range(0, len(wanted), chunk_size)]
    root = os.fspath(cache_dir)
    if workers > 1 and len(chunks) > 1:
        # spawn, not fork: the caller may be running threads (a server, a progress bar).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, context, _init_table_worker, (root, descriptors)) as pool:
            parts = list(pool.map(_table_rows_in_worker, chunks))
    else:
        parts = [_table_rows(chunk, root, descriptors) for chunk in chunks]
    rows = [row for part in parts for row in part]
    rows += [{"pmid": p, "status": "failed", "reason": why} for p, why in invalid.items()]
    return pa.Table.from_pylist(rows, schema=entrez_schema())


def write_entrez_parquet(
    records: pa.Table | Iterable[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """Write an Entrez table (or parsed records) to Parquet atomically; return the path.

    Dicts from :func:`parse_pubmed_article` are accepted as they are (status ``ok``);
    missing columns become null, keys outside :func:`entrez_schema` are ignored.
    """
    import pyarrow as pa
    if isinstance(records, pa.Table):
        table = records.select(entrez_schema().names).cast(entrez_schema())
    else:
        rows = []
        for record in records:
            row = dict(record)
            row.setdefault("status", "ok")
            if row["status"] == "ok":
                for name in _LIST_FIELDS:
                    row.setdefault(name, [])
            rows.append(row)
        table = pa.Table.from_pylist(rows, schema=entrez_schema())
    path = Path(path)
    write_parquet_atomic(table, path, compression="zstd")
    return path

