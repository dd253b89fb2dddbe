"""New dataset versions: only changed shards rewritten, parent recorded, changes proven."""

from __future__ import annotations

import json
import shutil

import pytest

from biomedica_kit.dataset.changes import apply_changes
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples, shard_keys
from biomedica_kit.dataset.verify import verify, verify_change
from biomedica_kit.etl.build import BuildConfig, build


@pytest.fixture
def dataset(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("PMC12419688.tar.gz", "elife-19405.tar.gz", "elife-32671.tar.gz"):
        shutil.copy(corpus / name, src)
    out = tmp_path / "ds"
    build(src, out, workers=1, progress=False, config=BuildConfig(shard_max_samples=2))
    return out


def test_only_changed_shards_rewritten(dataset):
    before = read_manifest(dataset)
    assert len(before["shards"]) == 4  # commercial: 1 shard of 2; other: 3 shards (2+2+1)
    target = "elife-32671_fig3"
    summary = apply_changes(dataset, {target: {"mesh_terms": ["Humans"]}}, kind="entrez",
                            fields=["mesh_terms"])
    assert (summary.shards_rewritten, summary.shards_reused, summary.samples_changed) == (1, 3, 1)
    after = read_manifest(dataset)
    assert after["parent"] == before["dataset_version"] != after["dataset_version"]
    changed = [s for s in after["shards"] if s not in before["shards"]]
    assert len(changed) == 1 and target in shard_keys(dataset / changed[0]["path"])
    metas = {k: json.loads(g["json"]) for k, g in iter_samples(dataset / changed[0]["path"])}
    assert metas[target]["mesh_terms"] == ["Humans"]
    # The parent version is intact and still readable.
    assert (dataset / "versions" / f"{before['dataset_version']}.json").is_file()
    for s in before["shards"]:
        assert (dataset / s["path"]).is_file()
    res = verify(dataset)
    assert res.ok, res.errors
    assert verify_change(dataset).compared == 2


def test_undeclared_field_refused(dataset):
    with pytest.raises(ValueError, match="undeclared"):
        apply_changes(dataset, {"elife-32671_fig3": {"caption": "x"}}, kind="entrez",
                      fields=["mesh_terms"])


def test_no_op_change_writes_nothing(dataset):
    assert apply_changes(dataset, {"elife-32671_fig3": {"pmcid": None}}, kind="x",
                         fields=["pmcid"]) is None
    assert read_manifest(dataset)["parent"] is None


def test_verify_catches_undeclared_change(dataset):
    apply_changes(dataset, {"elife-32671_fig3": {"mesh_terms": ["Humans"]}}, kind="entrez",
                  fields=["mesh_terms"])
    m = read_manifest(dataset)
    m["change"]["fields"] = []  # pretend the change declared nothing
    check = verify_change(dataset, m)
    assert not check.ok and "undeclared fields changed ['mesh_terms']" in check.errors[0]
