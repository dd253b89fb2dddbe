"""verify: manifest edits, hostile shard paths, malformed manifests, temporaries, flipped bytes,
and the change check's streaming comparison (issue 9, items 7, 11 and 12)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from corpus_paths import lock_held_by_another_process

from biomedica_kit.dataset.changes import apply_changes
from biomedica_kit.dataset.manifest import MANIFEST, ManifestError, read_manifest
from biomedica_kit.dataset.shards import ShardWriter, iter_samples
from biomedica_kit.dataset.verify import verify


@pytest.fixture
def ds(corpus_dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(corpus_dataset, out, ignore=shutil.ignore_patterns("metadata"))
    assert verify(out).ok
    return out


def _edit_manifest(ds: Path, **changes: object) -> None:
    m = json.loads((ds / MANIFEST).read_text())
    m.update(changes)
    (ds / MANIFEST).write_text(json.dumps(m))


def test_an_edited_config_is_detected(ds: Path):
    m = read_manifest(ds)
    _edit_manifest(ds, config={**m["config"], "shard_max_samples": 1})
    res = verify(ds)
    assert not res.ok and any("differs from versions/" in e and "config" in e
                              for e in res.errors), res.errors


def test_an_edited_dataset_version_is_detected(ds: Path):
    _edit_manifest(ds, dataset_version="0123456789abcdef")
    res = verify(ds)
    assert any("not the content address" in e for e in res.errors), res.errors


def test_shard_paths_outside_the_dataset_are_not_followed(ds: Path):
    m = read_manifest(ds)
    m["shards"][0]["path"] = "/etc/passwd"
    m["shards"][1]["path"] = "shards/../../outside.tar"
    (ds / MANIFEST).write_text(json.dumps(m))
    res = verify(ds)
    assert sum("outside the dataset's shards/ folder" in e for e in res.errors) == 2, res.errors


@pytest.mark.parametrize("text, why", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"dataset_version": "x", "shards": [{"path": 3}], "counts": {}}', "shard entry 0"),
    ('{"shards": [], "counts": {}}', "'dataset_version' missing"),
])
def test_a_malformed_manifest_is_an_error_not_a_traceback(ds: Path, text: str, why: str):
    (ds / MANIFEST).write_text(text)
    res = verify(ds)
    assert res.errors and why in res.errors[0], res.errors
    with pytest.raises(ManifestError, match=why):
        read_manifest(ds)


def test_a_flipped_image_byte_names_the_sample(ds: Path):
    entry = read_manifest(ds)["shards"][0]
    shard = ds / entry["path"]
    key, group = next(iter_samples(shard))
    data = bytearray(shard.read_bytes())
    at = data.index(group["jpg"] if "jpg" in group else group["png"]) + 100
    data[at] ^= 0xFF
    shard.write_bytes(bytes(data))
    res = verify(ds)
    assert f"{entry['path']}: sha256 mismatch" in res.errors
    assert any(e.endswith(f"{key} image sha256 differs from its json") for e in res.errors)


def test_temporaries_are_warnings_and_the_next_write_sweeps_dead_ones(ds: Path):
    subset_dir = ds / "shards" / "commercial"
    dead = subset_dir / ".tmp-commercial-000099.tar.999999999"  # pid that cannot exist
    dead.write_bytes(b"x" * 1024)
    res = verify(ds)
    assert res.ok, res.errors
    assert any("temporary file (left by a dead process" in w for w in res.warnings)
    key = next(iter_samples(ds / read_manifest(ds)["shards"][0]["path"]))[0]
    apply_changes(ds, {key: {"primary_label": "x"}}, kind="test", fields=["primary_label"])
    assert not dead.exists()
    assert verify(ds).ok


def test_a_second_writer_cannot_interleave_a_change(ds: Path):
    # A build (another process) holds the lock: apply_changes refuses instead of replacing the
    # build's manifest (the enrich-during-build loss of issue 9, item 1).
    with lock_held_by_another_process(ds, "build"):
        before = (ds / MANIFEST).read_bytes()
        key = next(iter_samples(ds / read_manifest(ds)["shards"][0]["path"]))[0]
        from biomedica_kit.dataset.lock import DatasetLocked

        with pytest.raises(DatasetLocked, match=r"\(build, pid"):
            apply_changes(ds, {key: {"primary_label": "x"}}, kind="labels",
                          fields=["primary_label"])
        assert (ds / MANIFEST).read_bytes() == before


def test_verify_of_a_change_streams_the_shards(tmp_path: Path):
    """Peak memory of verify on a changed ~200 MB shard stays far below the shard's size
    (it held parent and child whole: 1.82 GB for an 845 MB shard)."""
    ds = tmp_path / "big"
    w = ShardWriter(ds, "commercial", max_samples=1 << 30, max_bytes=1 << 40)
    import hashlib
    import os

    blob = os.urandom(4 << 20)
    keys = []
    for i in range(50):
        img = blob[i:] + blob[:i]  # 50 distinct 4 MiB "images" (bytes are never decoded)
        key = f"k{i:03d}"
        keys.append(key)
        meta = {"key": key, "image_sha256": hashlib.sha256(img).hexdigest()}
        w.write(key, [("jpg", img), ("txt", b"caption"), ("json", json.dumps(meta).encode())])
    from biomedica_kit.dataset.manifest import write_manifest

    write_manifest(ds, w.close(), parent=None, config={}, counts={})
    apply_changes(ds, {keys[0]: {"primary_label": "x"}}, kind="test", fields=["primary_label"])
    code = textwrap.dedent(f"""
        import resource
        import pyarrow.parquet
        from biomedica_kit.dataset.verify import verify
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        res = verify({str(ds)!r}, check_report=False)
        assert res.ok, res.errors
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    growth_mib = int(out.stdout.strip())
    # A few 4 MiB samples in flight (parent and child side by side), not 2 x 200 MiB.
    assert growth_mib < 64, f"verify grew by {growth_mib} MiB comparing two 200 MiB shards"
