"""Entrez enrichment of a built dataset against real PubMed responses on a loopback server.

The efetch corpus (../shared/corpus/pubmed_efetch) holds none of the PMC corpus's PMIDs, so the
positive path gives one PMID-less real article (elife-32671) the PMID of a real PubMed record
through the test's own file list. That association is test wiring only: it lives in a temp dir
and never leaves the test.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from eutils_server import EutilsServer, load_corpus_records

from biomedica_kit.cli.main import main
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify
from biomedica_kit.enrich.apply import enrich
from biomedica_kit.etl.build import BuildConfig, build
from biomedica_kit.etl.pubmed import ENTREZ_FIELDS
from biomedica_kit.ingest.sources import write_file_list

WIRED_PMID = "23657305"  # a real record with MeSH, a structured abstract and chemicals


@pytest.fixture(scope="module")
def records():
    return load_corpus_records()


def make_source(corpus, root):
    src = root / "src"
    src.mkdir()
    rows = []
    for name, pmid in (("PMC12419688", ""), ("elife-32671", WIRED_PMID)):
        shutil.copy(corpus / f"{name}.tar.gz", src / f"{name}.tar.gz")
        rows.append({"File": f"{name}.tar.gz", "Accession ID": "", "PMID": pmid,
                     "License": "CC BY" if name == "PMC12419688" else ""})
    write_file_list(rows, src / "oa_file_list.csv")
    return src


def test_enrich_new_version_and_not_found(corpus, records, tmp_path):
    ds = tmp_path / "ds"
    build(make_source(corpus, tmp_path), ds, workers=1, progress=False)
    parent = read_manifest(ds)["dataset_version"]
    with EutilsServer(records) as srv:
        s = enrich(ds, eutils_url=srv.base_url, rate=50)
        posted = [r for r in srv.requests if r.method == "POST"]
    assert s.pmids == 2
    # PMC12419688's PMID (40795775) is not in the server's records: recorded, never dropped.
    table = {r["pmid"]: r for r in pq.read_table(ds / "metadata/entrez.parquet").to_pylist()}
    assert table["40795775"]["status"] == "not_found"
    assert table[WIRED_PMID]["status"] == "ok"
    assert len(posted) == 1  # both PMIDs in one efetch batch
    assert s.samples_changed == 5 and s.parent == parent
    m = read_manifest(ds)
    assert m["parent"] == parent and m["change"]["kind"] == "entrez"
    assert set(m["change"]["fields"]) == set(ENTREZ_FIELDS)
    # Only the 'other' shard (elife-32671's five figures) was rewritten.
    old = {x["path"] for x in json.loads((ds / f"versions/{parent}.json").read_text())["shards"]}
    assert [x["subset"] for x in m["shards"] if x["path"] not in old] == ["other"]
    res = verify(ds)
    assert res.ok, res.errors
    shard = next(x for x in m["shards"] if x["path"] not in old)
    meta = json.loads(dict(iter_samples(ds / shard["path"]))["elife-32671_fig1"]["json"])
    rec = table[WIRED_PMID]
    assert meta["mesh_terms"] == rec["mesh_terms"] == meta["article_mesh_terms"]
    assert meta["entrez_status"] == "ok" and meta["pmid"] == WIRED_PMID


def test_reenrich_uses_cache_and_changes_nothing(corpus, records, tmp_path):
    ds = tmp_path / "ds"
    build(make_source(corpus, tmp_path), ds, workers=1, progress=False)
    with EutilsServer(records) as srv:
        enrich(ds, eutils_url=srv.base_url, rate=50)
        first = len(srv.requests)
        version = read_manifest(ds)["dataset_version"]
        s = enrich(ds, eutils_url=srv.base_url, rate=50)
        # The cached record is not asked for again (not-found PMIDs are kept as not_found).
        assert len(srv.requests) == first
    assert s.samples_changed == 0 and read_manifest(ds)["dataset_version"] == version


def test_build_merges_cached_records(corpus, records, tmp_path):
    ds = tmp_path / "ds"
    src = make_source(corpus, tmp_path)
    build(src, ds, workers=1, progress=False)
    with EutilsServer(records) as srv:
        enrich(ds, eutils_url=srv.base_url, rate=50)
    # A fresh build given the cache gets the fields in its first version: same json as enriched.
    ds2 = tmp_path / "ds2"
    build(src, ds2, workers=1, progress=False,
          config=BuildConfig(entrez_cache=str(ds / "cache" / "entrez")))
    m2 = read_manifest(ds2)
    assert m2["parent"] is None
    enriched = {k: json.loads(g["json"]) for s in read_manifest(ds)["shards"]
                for k, g in iter_samples(ds / s["path"])}
    fresh = {k: json.loads(g["json"]) for s in m2["shards"]
             for k, g in iter_samples(ds2 / s["path"])}
    assert fresh == enriched


def test_cli_enrich_offline(corpus, records, tmp_path):
    ds = tmp_path / "ds"
    build(make_source(corpus, tmp_path), ds, workers=1, progress=False)
    res = CliRunner().invoke(main, ["enrich", str(ds), "--offline"])
    assert res.exit_code == 0, res.output
    assert "samples changed 0" in res.output  # empty cache, no network: nothing to apply
    assert pq.read_metadata(ds / "metadata/entrez.parquet").num_rows == 2


# A hand-written excerpt in the format of NLM's descYYYY.xml: three real descriptors of
# PMID 23657305 with their real tree numbers (MeSH 2025); the rest of its descriptors are absent
# on purpose, to show they are counted as unknown rather than dropped.
DESCRIPTORS = """<?xml version="1.0"?>
<DescriptorRecordSet LanguageCode="eng">
<DescriptorRecord DescriptorClass="1"><DescriptorUI>D006801</DescriptorUI>
 <DescriptorName><String>Humans</String></DescriptorName>
 <TreeNumberList><TreeNumber>B01.050.150.900.649.313.988.400.112.400.400</TreeNumber>
 </TreeNumberList></DescriptorRecord>
<DescriptorRecord DescriptorClass="1"><DescriptorUI>D008108</DescriptorUI>
 <DescriptorName><String>Liver Diseases, Alcoholic</String></DescriptorName>
 <TreeNumberList><TreeNumber>C06.552.645</TreeNumber>
 <TreeNumber>C25.775.100.087.645</TreeNumber></TreeNumberList></DescriptorRecord>
<DescriptorRecord DescriptorClass="1"><DescriptorUI>D019190</DescriptorUI>
 <DescriptorName><String>Iron Overload</String></DescriptorName>
 <TreeNumberList><TreeNumber>C18.452.565.500</TreeNumber></TreeNumberList>
</DescriptorRecord>
</DescriptorRecordSet>
"""


def test_mesh_distributions_and_rollup(corpus, records, tmp_path):
    from biomedica_kit.etl.mesh import load_mesh_descriptors
    from biomedica_kit.tables import query
    from biomedica_kit.tables.connect import connect

    desc = tmp_path / "desc2025.xml"
    desc.write_text(DESCRIPTORS)
    ds = tmp_path / "ds"
    build(make_source(corpus, tmp_path), ds, workers=1, progress=False)
    with EutilsServer(records) as srv:
        enrich(ds, eutils_url=srv.base_url, rate=50, mesh_descriptors=desc)
    shard = next(s for s in read_manifest(ds)["shards"] if s["subset"] == "other")
    meta = json.loads(dict(iter_samples(ds / shard["path"]))["elife-32671_fig1"]["json"])
    assert meta["mesh_categories"] == ["Organisms", "Diseases"]
    con = connect(ds)
    by_licence = query.mesh_crosstab(con, "license_category", top=3)
    assert by_licence.columns == ["mesh_terms", "other"]
    assert by_licence["other"].to_list() == [5, 5, 5]  # the five figures of elife-32671
    cats = query.mesh_category_counts(con, load_mesh_descriptors(desc))
    assert dict(zip(cats["category"], cats["n"], strict=True)) == {
        "Diseases": 5, "Organisms": 5, "(not in descriptor file)": 5}
    trees = query.mesh_category_counts(con, load_mesh_descriptors(desc), level="tree")
    assert set(trees["category"]) == {"B01", "C06", "C18", "C25", "(not in descriptor file)"}
