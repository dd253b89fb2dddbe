"""Entrez enrichment of a dataset: PubMed records -> metadata/entrez.parquet and sample json.

The E-utilities client, cache and parser live in :mod:`biomedica_kit.enrich.entrez`; this module decides
which PMIDs a dataset needs, which json fields a record fills, and applies them either at build
time (records already cached) or as a new dataset version (:mod:`biomedica_kit.dataset.changes`), so
only shards whose samples gained fields are rewritten.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from biomedica_kit.dataset.shards import iter_members, read_manifest

#: Every sample json field enrichment may set (declared to the version, checked by verify).
ENTREZ_FIELDS = (
    "entrez_status", "mesh_terms", "mesh_major", "mesh", "supplementary_concepts",
    "publication_types", "chemicals", "pubmed_keywords", "grants", "languages",
    "reference_pmids", "reference_count", "pubmed_abstract", "citation_status",
    "mesh_categories",
    # BIOMEDICA's published keys for the same facts.
    "article_mesh_terms", "article_reference_ids", "article_reference_count",
    "article_abstract",
)


def sample_fields(record: dict, *, has_abstract: bool = True, descriptors=None) -> dict:
    """The json fields a parsed PubMed record gives a sample.

    ``has_abstract``: whether the sample's json already has ``article_abstract`` (from the XML).
    ``descriptors`` (NLM's MeSH descriptor file, loaded) adds ``mesh_categories``: the
    top-level MeSH tree categories of the record's descriptors.
    """
    fields = {
        "entrez_status": "ok",
        "mesh_terms": record.get("mesh_terms") or [],
        "mesh_major": record.get("mesh_major") or [],
        "mesh": record.get("mesh") or [],
        "supplementary_concepts": record.get("supplementary_concepts") or [],
        "publication_types": record.get("publication_types") or [],
        "chemicals": record.get("chemicals") or [],
        "pubmed_keywords": record.get("keywords") or [],
        "grants": record.get("grants") or [],
        "languages": record.get("languages") or [],
        "reference_pmids": record.get("reference_pmids") or [],
        "reference_count": record.get("reference_count") or 0,
        "pubmed_abstract": record.get("abstract"),
        "citation_status": record.get("citation_status"),
        "article_mesh_terms": record.get("mesh_terms") or [],
        "article_reference_ids": record.get("reference_pmids") or [],
        "article_reference_count": record.get("reference_count") or 0,
    }
    # The article's own abstract (XML) stays; PubMed's fills the BIOMEDICA key only when the XML
    # had none (BIOMEDICA took its abstracts from Entrez).
    if not has_abstract and record.get("abstract"):
        fields["article_abstract"] = record["abstract"]
    if descriptors is not None:
        from biomedica_kit.enrich.entrez import mesh_rollup

        uis = [m["ui"] for m in record.get("mesh") or [] if m.get("ui")]
        fields["mesh_categories"] = list(mesh_rollup(uis, descriptors).names)
    return fields


def dataset_pmids(dataset: str | Path) -> tuple[dict[str, list[str]], set[str]]:
    """PMID -> sample keys, and the keys without an abstract, from the current shards' json."""
    root = Path(dataset)
    out: dict[str, list[str]] = {}
    no_abstract: set[str] = set()
    for s in read_manifest(root)["shards"]:
        for m, data in iter_members(root / s["path"]):
            if m.name.endswith(".json"):
                meta = json.loads(data)
                if meta.get("pmid"):
                    out.setdefault(str(meta["pmid"]), []).append(meta["key"])
                    if not meta.get("article_abstract"):
                        no_abstract.add(meta["key"])
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
) -> EnrichSummary:
    """Fetch (or read from cache) PubMed records for a dataset and apply them as a new version.

    ``fetch=False`` uses only what the cache already holds (offline re-application).
    ``mesh_descriptors``: NLM's ``descYYYY.xml`` (or .gz); rolls descriptors up to their
    top-level tree categories in the Entrez table and the samples.
    """
    from biomedica_kit.enrich import entrez
    from biomedica_kit.dataset.changes import apply_changes

    root = Path(dataset)
    cache = Path(cache_dir) if cache_dir else root / "cache" / "entrez"
    by_pmid, no_abstract = dataset_pmids(root)
    pmids = sorted(by_pmid, key=int)
    counts: dict[str, int] = {}
    if fetch and pmids:
        kw = {"base_url": eutils_url} if eutils_url else {}
        summary = entrez.fetch_pubmed(pmids, cache, email=email,
                                      api_key=api_key or os.environ.get("NCBI_API_KEY"),
                                      rate=rate, progress=progress, **kw)
        counts = summary.counts()
    descriptors = entrez.load_mesh_descriptors(mesh_descriptors) if mesh_descriptors else None
    table_path = root / "metadata" / "entrez.parquet"
    table = entrez.entrez_table(pmids, cache, descriptors=descriptors)
    entrez.write_entrez_parquet(table, table_path)
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
