"""Write-back of a label version into a new dataset version: only shards with changed samples
rewritten, everything else byte-identical (verify_change), and atomic under kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify, verify_change
from biomedica_kit.labels.apply import LABEL_FIELDS, LabelJoin, apply_labels
from biomedica_kit.labels.table import override
from biomedica_kit.tables.stream import stream_subset

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "packages"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """The bundled sample in shards of 20 samples (several shards per subset)."""
    from biomedica_kit.etl.build import build
    from biomedica_kit.etl.config import BuildConfig

    out = tmp_path_factory.mktemp("sharded") / "ds"
    build(SAMPLE, out, workers=1, progress=False, config=BuildConfig(shard_max_samples=20))
    return out


def keys_of(ds: Path, entry: dict) -> list[str]:
    return [k for k, _ in iter_samples(ds / entry["path"])]


def test_only_the_shards_holding_labelled_samples_are_rewritten(sharded, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(sharded, ds)
    before = read_manifest(ds)
    assert len(before["shards"]) >= 4
    first = keys_of(ds, before["shards"][0])[:3]
    version = override(ds, first, primary_label="Microscopy",
                       secondary_label="electron microscopy", by="tester")
    dry = apply_labels(ds, version, dry_run=True)
    assert (dry.changed, dry.shards_rewritten, dry.dataset_version) == \
        (3, 1, before["dataset_version"])
    s = apply_labels(ds, version)
    after = read_manifest(ds)
    assert (s.changed, s.shards_rewritten, s.shards_reused) == (3, 1, len(before["shards"]) - 1)
    assert after["parent"] == before["dataset_version"]
    assert [e["path"] for e in after["shards"][1:]] == [e["path"] for e in before["shards"][1:]]
    assert verify(ds).ok and verify_change(ds).errors == []
    metas = {k: json.loads(g["json"]) for k, g in iter_samples(ds / after["shards"][0]["path"])}
    for k in first:
        m = metas[k]
        assert m["image_primary_label"] == ["Microscopy"]
        assert m["image_secondary_label"] == ["electron microscopy"]
        assert m["label_source"] == "override" and m["label_version"] == version
        assert set(LABEL_FIELDS) <= set(m)
    assert apply_labels(ds, version).changed == 0  # applied already: no new version
    joined = list(LabelJoin(ds)(stream_subset(ds, keys=first, decode=False)))
    assert [j["labels"]["secondary_label"] for j in joined] == ["electron microscopy"] * 3


def test_kill_9_leaves_the_old_version_or_the_new_one_complete(sharded, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(sharded, ds)
    parent = read_manifest(ds)["dataset_version"]
    all_keys = [k for e in read_manifest(ds)["shards"] for k in keys_of(ds, e)]
    version = override(ds, all_keys, primary_label="Maps", secondary_label="map")
    code = f"from biomedica_kit.labels.apply import apply_labels; apply_labels({str(ds)!r})"
    seen = set()
    for delay in (1.0, 2.5, 4.0):
        p = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        current = read_manifest(ds)["dataset_version"]
        seen.add(current)
        assert verify(ds).ok, delay
        if current != parent:
            assert verify_change(ds).errors == []
    done = apply_labels(ds, version)
    assert verify(ds).ok
    assert read_manifest(ds)["dataset_version"] != parent or done.changed == 0
    assert seen <= {parent, read_manifest(ds)["dataset_version"]}
