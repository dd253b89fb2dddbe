"""Subsets carry the label table: a subset selected by label has its labels, and the predicate
it records selects the same samples when it is run again, on the subset itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from biomedica_kit.cli.main import main
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify
from biomedica_kit.labels.table import label_versions, override, read_labels
from biomedica_kit.tables.connect import connect
from biomedica_kit.tables.subset import LABELS_FILE, select_rows, subset

BY_LABEL = "key IN (SELECT key FROM figures_labeled WHERE primary_label = 'Microscopy')"


@pytest.fixture(scope="module")
def labelled(corpus_dataset, tmp_path_factory) -> tuple[Path, list[str]]:
    """A copy of the real corpus dataset with two label versions written by the label table's
    own API: three samples Microscopy, then two Clinical Imaging; two samples unlabelled."""
    ds = tmp_path_factory.mktemp("subset-labels") / "ds"
    shutil.copytree(corpus_dataset, ds)
    con = connect(ds)  # exports the metadata
    keys = [r[0] for r in con.execute("SELECT key FROM figures ORDER BY key").fetchall()]
    con.close()
    assert len(keys) == 7
    override(ds, keys[:3], primary_label="Microscopy", secondary_label="light microscopy",
             by="curator-a", note="test fixture")
    override(ds, keys[3:5], primary_label="Clinical Imaging", secondary_label="ultrasound",
             by="curator-b")
    assert label_versions(ds) == ["000001", "000002"]
    return ds, keys


def shard_keys(ds: Path) -> list[str]:
    return sorted(k for s in read_manifest(ds)["shards"] for k, _ in iter_samples(ds / s["path"]))


def test_label_subset_carries_labels_and_its_predicate_reruns(labelled, tmp_path):
    parent, keys = labelled
    out = tmp_path / "microscopy"
    res = CliRunner().invoke(main, ["subset", str(parent), "--where", BY_LABEL,
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert shard_keys(out) == sorted(keys[:3])
    assert verify(out).ok

    # The subset's own label table: one version, the parent's newest rows of those keys.
    assert label_versions(out) == ["000001"] and (out / LABELS_FILE).is_file()
    mine, theirs = read_labels(out), read_labels(parent).filter(pl.col("key").is_in(keys[:3]))
    assert mine["key"].to_list() == sorted(keys[:3])
    assert set(mine["label_version"]) == {"000001"}
    assert mine.drop("label_version").equals(theirs.sort("key").drop("label_version"))
    assert set(mine["decided_by"]) == {"curator-a"} and set(mine["note"]) == {"test fixture"}
    meta = pq.read_schema(out / LABELS_FILE).metadata
    assert meta[b"biomedica_kit.label_parent"] == b""  # the first version of this dataset
    change = json.loads(meta[b"biomedica_kit.label_change"])
    parent_version = read_manifest(parent)["dataset_version"]
    assert change == {"kind": "subset", "dataset": str(parent.resolve()),
                      "dataset_version": parent_version, "from": "labels/000002.parquet",
                      "label_version": "000002", "file": LABELS_FILE, "rows": 3}
    derived = read_manifest(out)["derived_from"]
    assert derived["predicate"] == BY_LABEL and derived["labels"]["label_version"] == "000002"

    # `biomedica query SUBSET` shows the labels and figures_labeled views.
    res = CliRunner().invoke(main, ["query", str(out), "SELECT key, primary_label, "
                                    "secondary_label FROM figures_labeled ORDER BY key",
                                    "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert rows == [{"key": k, "primary_label": "Microscopy",
                     "secondary_label": "light microscopy"} for k in sorted(keys[:3])]

    # The recorded predicate, run for real a second time on the subset: the same samples...
    again = select_rows(out, derived["predicate"])
    assert sorted(again.column("key").to_pylist()) == sorted(keys[:3])
    # ... and a subset of the subset by it is the same selection, labels carried again.
    second = subset(out, derived["predicate"], tmp_path / "again")
    assert shard_keys(tmp_path / "again") == sorted(keys[:3]) and second.samples == 3
    relabelled = read_labels(tmp_path / "again")
    assert relabelled.drop("label_version").equals(mine.drop("label_version"))
    change2 = json.loads(pq.read_schema(tmp_path / "again" / LABELS_FILE)
                         .metadata[b"biomedica_kit.label_change"])
    assert change2["dataset"] == str(out.resolve()) and change2["label_version"] == "000001"


def test_unlabelled_selection_keeps_an_empty_label_table(labelled, tmp_path):
    parent, keys = labelled
    where = "key NOT IN (SELECT key FROM labels)"
    s = subset(parent, where, tmp_path / "unlabelled")
    assert shard_keys(tmp_path / "unlabelled") == sorted(keys[5:]) and s.samples == 2
    # The label table exists with no rows, so the predicate still runs there, selecting all.
    assert read_labels(tmp_path / "unlabelled").height == 0
    assert pq.read_schema(tmp_path / "unlabelled" / LABELS_FILE).names == \
        pq.read_schema(parent / "labels" / "000002.parquet").names
    again = select_rows(tmp_path / "unlabelled", where)
    assert sorted(again.column("key").to_pylist()) == sorted(keys[5:])


def test_parent_without_labels_gives_none(corpus_dataset, tmp_path):
    s = subset(corpus_dataset, "license_category = 'other'", tmp_path / "other")
    assert s.samples > 0 and not (tmp_path / "other" / "labels").exists()
    assert "labels" not in read_manifest(tmp_path / "other")["derived_from"]
