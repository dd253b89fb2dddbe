"""Entrez enrichment of a dataset: PubMed records -> metadata/entrez.parquet and sample json.

The client is :mod:`biomedica_kit.enrich.efetch`, the record cache
:mod:`biomedica_kit.ingest.entrez_cache`, the parser and the json fields a record gives
:mod:`biomedica_kit.etl.pubmed`. This module decides which PMIDs a dataset needs (from
``metadata/figures.parquet``, never the shards' image bytes) and applies the records as a new
dataset version (:mod:`biomedica_kit.dataset.changes`), under the dataset's writer lock, so
only shards whose samples gained fields are rewritten.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from biomedica_kit.dataset.changes import apply_changes
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.enrich.efetch import EUTILS_BASE_URL, fetch_pubmed
from biomedica_kit.enrich.table import entrez_table, write_entrez_parquet
from biomedica_kit.etl.mesh import load_mesh_descriptors
from biomedica_kit.etl.pubmed import ENTREZ_FIELDS, sample_fields
from biomedica_kit.tables.connect import metadata_paths
from biomedica_kit.tables.export import export

__all__ = ["EnrichSummary", "dataset_pmids", "enrich"]


def dataset_pmids(dataset: str | Path) -> tuple[dict[str, list[str]], set[str]]:
    """PMID -> sample keys, and the keys without an abstract, from ``figures.parquet``
    (exported first if stale: it reads only the shards' json members)."""
    import pyarrow.parquet as pq

    export(dataset)
    path = metadata_paths(dataset)["figures"]
    names = set(pq.read_schema(path).names)
    if "pmid" not in names:
        return {}, set()
    cols = ["key", "pmid"] + (["article_abstract"] if "article_abstract" in names else [])
    t = pq.read_table(path, columns=cols).to_pydict()
    out: dict[str, list[str]] = {}
    no_abstract: set[str] = set()
    abstracts = t.get("article_abstract") or [None] * len(t["key"])
    for key, pmid, abstract in zip(t["key"], t["pmid"], abstracts, strict=True):
        if pmid not in (None, ""):
            out.setdefault(str(pmid), []).append(key)
            if not abstract:
                no_abstract.add(key)
    return out, no_abstract


@dataclass
class EnrichSummary:
    """What :func:`enrich` did."""

    pmids: int
    counts: dict[str, int]
    samples_changed: int
    dataset_version: str
    parent: str | None
    entrez_table: str

    def format_lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        return [f"pmids {self.pmids}  "
                + " ".join(f"{k}={v}" for k, v in sorted(self.counts.items())),
                f"samples changed {self.samples_changed}  version {self.dataset_version}"
                + (f" (parent {self.parent})" if self.parent else " (unchanged)"),
                f"entrez table {self.entrez_table}"]


def enrich(
    dataset: str | Path,
    *,
    eutils_url: str | None = None,
    cache_dir: str | Path | None = None,
    email: str | None = None,
    api_key: str | None = None,
    rate: float | None = None,
    fetch: bool = True,
    progress: bool = False,
    mesh_descriptors: str | Path | None = None,
    refresh: bool | Collection[str] = False,
    max_negative_age_days: float | None = 30.0,
) -> EnrichSummary:
    """Fetch (or read from cache) PubMed records for a dataset and apply them as a new version.

    ``fetch=False`` uses only what the cache already holds (offline re-application).
    ``refresh`` asks again for cached answers (``True``: every ``not_found``; a collection of
    statuses, ``{"ok", "not_found"}`` for everything); a ``not_found`` older than
    ``max_negative_age_days`` is asked again in any case (None: kept for good).
    ``mesh_descriptors``: NLM's ``descYYYY.xml`` (or .gz); rolls descriptors up to their
    top-level tree categories in the Entrez table and the samples.
    """
    root = Path(dataset)
    with dataset_lock(root, "enrich"):
        return _enrich(root, eutils_url=eutils_url, cache_dir=cache_dir, email=email,
                       api_key=api_key, rate=rate, fetch=fetch, progress=progress,
                       mesh_descriptors=mesh_descriptors, refresh=refresh,
                       max_negative_age_days=max_negative_age_days)


def _enrich(root: Path, *, eutils_url: str | None, cache_dir: str | Path | None,
            email: str | None, api_key: str | None, rate: float | None, fetch: bool,
            progress: bool, mesh_descriptors: str | Path | None,
            refresh: bool | Collection[str], max_negative_age_days: float | None
            ) -> EnrichSummary:
    cache = Path(cache_dir) if cache_dir else root / "cache" / "entrez"
    by_pmid, no_abstract = dataset_pmids(root)
    pmids = sorted(by_pmid, key=int)
    counts: dict[str, int] = {}
    if fetch and pmids:
        summary = fetch_pubmed(pmids, cache, base_url=eutils_url or EUTILS_BASE_URL,
                               email=email, api_key=api_key or os.environ.get("NCBI_API_KEY"),
                               rate=rate, progress=progress, refresh=refresh,
                               max_negative_age_days=max_negative_age_days)
        counts = summary.counts()
    descriptors = load_mesh_descriptors(mesh_descriptors) if mesh_descriptors else None
    table_path = root / "metadata" / "entrez.parquet"
    table = entrez_table(pmids, cache, descriptors=descriptors)
    write_entrez_parquet(table, table_path)
    # The table's ok rows are the parsed records: no second parse of the cache.
    records = {r["pmid"]: r for r in table.to_pylist() if r["status"] == "ok"}
    if not counts:
        counts = {"ok": len(records), "missing": len(pmids) - len(records)}
    changes = {key: sample_fields(rec, has_abstract=key not in no_abstract,
                                  descriptors=descriptors)
               for pmid, rec in records.items() for key in by_pmid[pmid]}
    before = read_manifest(root)["dataset_version"]
    res = apply_changes(root, changes, kind="entrez", fields=list(ENTREZ_FIELDS),
                        note=f"{len(records)} PubMed records")
    return EnrichSummary(
        pmids=len(pmids), counts=counts, samples_changed=res.samples_changed if res else 0,
        dataset_version=res.dataset_version if res else before,
        parent=res.parent if res else None, entrez_table=str(table_path))
