"""The taxonomy as validated data, proposals drawn from it with evidence, and the versioned
label table's provenance (proposal < expert < override)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from curate_datasets import clustered_dataset, copy_of

from biomedica_kit.labels.proposals import keyword_scores, panel_share, proposal_rows
from biomedica_kit.labels.table import (
    Decision,
    LabelError,
    decide,
    label_versions,
    override,
    propagate,
    read_labels,
)
from biomedica_kit.labels.taxonomy import (
    PANEL_TYPES,
    TaxonomyError,
    check_cluster_labels,
    load_cluster_labels,
    load_taxonomy,
)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> tuple[Path, str]:
    return clustered_dataset(tmp_path_factory)


def test_biomedica_taxonomy_loads_and_its_inconsistencies_are_reported():
    tax = load_taxonomy()
    assert len(tax.tree) == 16 and len(tax.labels) == 119 and not tax.warnings
    assert tax.parent("immunoblot") == "Immuno Assays"
    report = check_cluster_labels(tax, load_cluster_labels())
    assert report.clusters == 2000
    c = report.counts
    # The numbers BIOMEDICA's own files give (curation/taxonomy/SOURCES.md, the issue).
    assert c["panel type 'multiple' with subtype 'single panel'"] == 995
    assert c["more than one primary label"] == 176
    assert c["primary and secondary lists of different lengths"] == 99
    assert c["unknown primary label"] == c["unknown secondary label"] == 0
    assert "0" in report.examples["panel type 'multiple' with subtype 'single panel'"]
    assert any("995 clusters" in line for line in report.format_lines())


def test_a_users_taxonomy_is_validated(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"Imaging": ["x-ray", "mri"], "Charts": ["bar plot"]}))
    tax = load_taxonomy(good)
    assert tax.holds("Imaging", "mri") and not tax.holds("Charts", "mri")
    assert len(tax.warnings) == 3  # no descriptions: the names are the prompts
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Imaging": ["x-ray"], "Charts": ["x-ray"]}))
    with pytest.raises(TaxonomyError, match="under both"):
        load_taxonomy(bad)
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(TaxonomyError):
        load_taxonomy(tmp_path / "empty.json")


def test_keyword_and_panel_evidence_on_real_captions():
    tax = load_taxonomy()
    captions = ["(A) Western blot of p-ERK; GAPDH is the loading control. (B) Quantification.",
                "Kaplan-Meier survival curves of the two groups (log-rank test)."]
    scores, evidence = keyword_scores(captions, tax)
    names = [lab.secondary for lab in tax.labels]
    assert scores[names.index("immunoblot")] > 0 and scores[names.index("survival curve")] > 0
    assert evidence["immunoblot"]["western blot"] == 1
    assert panel_share(captions) == 0.5


def test_proposals_are_drawn_from_the_taxonomy_with_evidence(clustered):
    ds, run = clustered
    tax = load_taxonomy()
    rows = proposal_rows(ds, run)
    members = {r["key"]: r["cluster"] for r in pq.read_table(
        ds / "clusters" / run / "assignments.parquet").to_pylist()}
    assert sorted(r["cluster"] for r in rows) == sorted(set(members.values()))
    for r in rows:
        assert tax.holds(r["primary_label"], r["secondary_label"])
        assert r["panel_type"] in PANEL_TYPES and 0 < r["score"] <= 1
        assert r["score_caption"] is not None and r["score_zero_shot"] is None  # no CLIP
        assert tax.version in r["model_version"] and "mobilenet_v2" in r["model_version"]
        assert "all-MiniLM-L6-v2" in r["model_version"]
        ev = r["evidence"]
        assert ev["exemplars"] and all(members[k] == r["cluster"] for k in ev["exemplars"])
        assert {"caption", "keywords"} <= set(ev["scores_used"])
        assert all(tax.holds(a["primary_label"], a["secondary_label"])
                   for a in r["alternatives"])


def test_pathway_figures_are_proposed_as_illustrative_diagrams(clustered):
    """171 of the 185 pairs are PFOCR pathway figures: the proposals propagated to them say
    Illustrative Diagrams for most (pathway diagrams), from caption similarity and keywords."""
    ds, _ = clustered
    labels = read_labels(ds)
    hints = pl.read_parquet(ds / "metadata" / "figures.parquet",
                            columns=["key", "source_dataset"])
    pfocr = labels.join(hints, on="key").filter(pl.col("source_dataset").str.starts_with(
        "PFOCR"))
    share = (pfocr["primary_label"] == "Illustrative Diagrams").mean()
    assert len(pfocr) == 171 and share >= 0.6, share


def test_label_table_keeps_provenance_and_precedence(clustered, tmp_path):
    src, run = clustered
    ds = copy_of(src, tmp_path)
    first = read_labels(ds)
    assert len(first) == 185 and set(first["label_source"]) == {"proposal"}
    assert first["model_version"].null_count() == 0
    assert set(first["dataset_version"]) == {json.loads(
        (ds / "manifest.json").read_text())["dataset_version"]}
    props = {r["cluster"]: r for r in proposal_rows(ds, run)}
    c_acc, c_chg, c_rej = sorted(props)[:3]
    v = decide(ds, run, [Decision(c_acc, "accept", by="expert1"),
                         Decision(c_chg, "change", "Clinical Imaging", "ultrasound",
                                  by="expert1", note="echo images"),
                         Decision(c_rej, "reject", by="expert2")])
    after = read_labels(ds)
    assert set(after["label_version"]) == {v}
    by = {r["key"]: r for r in after.iter_rows(named=True)}
    acc = [r for r in by.values() if r["cluster"] == c_acc]
    assert all(r["label_source"] == "expert" and r["decided_by"] == "expert1" and
               r["secondary_label"] == props[c_acc]["secondary_label"] for r in acc)
    assert all(r["secondary_label"] == "ultrasound" and r["note"] == "change: echo images"
               for r in by.values() if r["cluster"] == c_chg)
    assert all(r["primary_label"] is None and r["label_source"] == "expert"
               for r in by.values() if r["cluster"] == c_rej)
    one = acc[0]["key"]
    override(ds, [one], primary_label="Microscopy", secondary_label="light microscopy",
             by="curator")
    propagate(ds, run)  # new proposals never replace expert or override labels
    final = {r["key"]: r for r in read_labels(ds).iter_rows(named=True)}
    assert final[one]["label_source"] == "override"
    assert final[one]["secondary_label"] == "light microscopy"
    assert all(final[k]["label_source"] == "expert" for k, r in by.items()
               if r["cluster"] in (c_chg, c_rej))
    assert len(final) == 185 and label_versions(ds) == ["000001", "000002", "000003",
                                                        "000004"]
    meta = pq.read_schema(ds / "labels" / "000004.parquet").metadata
    assert meta[b"biomedica_kit.label_parent"] == b"000003"
    with pytest.raises(LabelError, match="not a label"):
        override(ds, [one], primary_label="Microscopy", secondary_label="bar plot")
    with pytest.raises(LabelError, match="no cluster"):
        decide(ds, run, [Decision(999, "accept")])
    from biomedica_kit.tables.connect import connect

    assert connect(ds).execute("SELECT label_source, count(*) FROM labels WHERE key = ? "
                               "GROUP BY 1", [one]).fetchall() == [("override", 1)]
