"""The record cache read back and metadata/entrez.parquet (biomedica_kit.enrich.table)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eutils_server import EutilsServer
from pubmed_corpus import (
    BOOK_RECORD,
    FAST,
    NO_RECORD_PMID,
)

from biomedica_kit.enrich.efetch import fetch_pubmed
from biomedica_kit.enrich.table import entrez_table, write_entrez_parquet
from biomedica_kit.etl.mesh import (
    load_mesh_descriptors,
)
from biomedica_kit.etl.pubmed import load_cached, parse_pubmed_article

pytestmark = pytest.mark.usefixtures("loopback_only")


# ---------------------------------------------------------------------------------------------
# Reading the cache back and Parquet
# ---------------------------------------------------------------------------------------------


def test_load_cached_returns_only_cached_records(filled_cache: Path, parsed: dict[str, dict]):
    records = load_cached(["38147649", "219391", NO_RECORD_PMID, "23657305", "5"], filled_cache)
    assert list(records) == ["38147649", "23657305"]
    assert records["23657305"] == parsed["23657305"]


def test_entrez_table_accounts_for_every_pmid_and_round_trips(filled_cache: Path, tmp_path: Path):
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    pmids = ["23657305", NO_RECORD_PMID, "219391", "38147649", "424242", "x1"]
    table = entrez_table(pmids, filled_cache)
    assert table.column("pmid").to_pylist() == pmids
    assert table.column("status").to_pylist() == [
        "ok",
        "not_found",
        "failed",
        "ok",
        "failed",
        "failed",
    ]
    reasons = table.column("reason").to_pylist()
    assert reasons[0] is None and reasons[1] == "no record returned by efetch"
    assert "timed out" in reasons[2] and reasons[4] == "not in cache (never fetched)"
    assert reasons[5].startswith("invalid PMID")
    assert table.schema.field("mesh_terms").type == pa.list_(pa.string())
    assert table.schema.field("pmid").type == pa.string()
    assert table.column("mesh_terms").to_pylist()[1] is None  # unknown, not "no MeSH"
    assert table.column("reference_count").to_pylist()[3] == 71

    out = write_entrez_parquet(table, tmp_path / "meta" / "entrez.parquet")
    assert pq.read_table(out).equals(table)
    assert [p.name for p in out.parent.iterdir()] == ["entrez.parquet"]  # no temp left behind
    hits = duckdb.sql(
        f"SELECT pmid, list_transform(list_filter(mesh, lambda m: m.major_topic), lambda m: m.ui) "
        f"FROM read_parquet('{out}') WHERE list_contains(mesh_major, 'Phobia, Social')"
    ).fetchall()
    assert hits == [("38147649", ["D000072861", "D000069196"])]


def test_entrez_table_in_worker_processes_matches_serial(filled_cache: Path, descriptor_file: Path):
    desc = load_mesh_descriptors(descriptor_file)
    pmids = ["23657305", NO_RECORD_PMID, "219391", "38147649", "424242"]
    serial = entrez_table(pmids, filled_cache, descriptors=desc)
    parallel = entrez_table(pmids, filled_cache, descriptors=desc, workers=2, chunk_size=2)
    assert parallel.equals(serial)
    assert parallel.column("mesh_trees").to_pylist()[3] == ["B01"]


def test_a_cache_file_holding_another_pmid_is_not_trusted(filled_cache: Path):
    other = (filled_cache / "649" / "38147649.xml").read_bytes()
    (filled_cache / "305" / "23657305.xml").write_bytes(other)
    assert list(load_cached(["23657305", "38147649"], filled_cache)) == ["38147649"]
    row = entrez_table(["23657305"], filled_cache).to_pylist()[0]
    assert row["status"] == "failed"
    assert row["reason"] == "unreadable cache file: cache file for 23657305 holds PMID 38147649"


def test_write_entrez_parquet_accepts_parsed_records(parsed: dict[str, dict], tmp_path: Path):
    import pyarrow.parquet as pq

    path = write_entrez_parquet(
        [parsed["29963580"], parse_pubmed_article(BOOK_RECORD)], tmp_path / "entrez.parquet"
    )
    rows = pq.read_table(path).to_pylist()
    assert [(r["pmid"], r["status"], r["record_type"]) for r in rows] == [
        ("29963580", "ok", "PubmedArticle"),
        ("99000001", "ok", "PubmedBookArticle"),
    ]
    assert rows[0]["reference_pmids"][:3] == ["25144646", "8028666", "19585597"]
    assert rows[1]["abstract_sections"][0] == {
        "label": "CLINICAL CHARACTERISTICS",
        "nlm_category": None,
        "text": "Onset is variable.",
    }


def test_book_record_goes_through_fetch_and_cache(corpus_records: dict[str, bytes], tmp_path: Path):
    with EutilsServer({**corpus_records, "99000001": BOOK_RECORD}) as srv:
        summary = fetch_pubmed(["99000001", "9997"], tmp_path, base_url=srv.base_url, **FAST)
    assert summary.counts()["ok"] == 2
    assert load_cached(["99000001"], tmp_path)["99000001"]["book_title"] == "Example ReviewsR"
