"""Subsets into one OUT: the writer lock, and what a kill -9 leaves behind (issue 9, item 6)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from corpus_paths import lock_held_by_another_process

from biomedica_kit.base.atomic import TMP_PREFIX
from biomedica_kit.dataset.lock import DatasetLocked, dataset_lock
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.verify import verify
from biomedica_kit.tables.subset import subset


def test_a_second_subset_into_the_same_out_is_refused(corpus_dataset: Path, tmp_path: Path):
    out = tmp_path / "out"
    # Another process holds OUT's writer lock (as a second `biomedica subset` would).
    with lock_held_by_another_process(out, "subset"):
        with pytest.raises(DatasetLocked, match=r"another command is writing .*\(subset, pid"):
            subset(corpus_dataset, "year >= 1900", out)
        assert not (out / "shards").exists()  # refused before writing anything
    summary = subset(corpus_dataset, "year >= 1900", out)
    assert summary.samples > 0 and verify(out).ok


def test_a_subset_killed_mid_write_is_cleaned_by_the_rerun(corpus_dataset: Path, tmp_path: Path):
    out = tmp_path / "killed"
    # A real SIGKILL of the subset process after its third sample: closed shards of 1 sample,
    # an open temporary shard and the decision file stay behind, as an OOM kill leaves them.
    script = textwrap.dedent(f"""
        import os, signal
        from biomedica_kit.dataset import shards
        from biomedica_kit.tables.subset import subset
        real, n = shards.ShardWriter.write, [0]
        def write(self, key, members):
            n[0] += 1
            if n[0] == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            real(self, key, members)
        shards.ShardWriter.write = write
        subset({str(corpus_dataset)!r}, None, {str(out)!r},
               keys=[k for k in {_keys(corpus_dataset)!r}], shard_max_samples=1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert any(Path(p).name.startswith(TMP_PREFIX) for p in left), left
    assert any(p.endswith(".tar") and "/." not in p for p in left), left  # a closed shard
    assert not (out / "manifest.json").exists()

    summary = subset(corpus_dataset, None, out, keys=_keys(corpus_dataset)[:2],
                     shard_max_samples=1)
    res = verify(out)
    assert res.ok, res.errors
    assert not res.warnings, res.warnings  # no stale shard, no temporary file
    assert summary.samples == 2
    listed = {s["path"] for s in read_manifest(out)["shards"]}
    on_disk = {p.relative_to(out).as_posix() for p in (out / "shards").rglob("*")
               if p.is_file()}
    assert on_disk == listed


def test_a_folder_holding_other_files_is_refused(corpus_dataset: Path, tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(FileExistsError, match="not empty .*notes.txt"):
        subset(corpus_dataset, "year >= 1900", out)
    assert (out / "notes.txt").read_text() == "my notes"


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path):
    with dataset_lock(tmp_path, "outer"), dataset_lock(tmp_path, "inner"):
        assert (tmp_path / ".writer.json").is_file()
    assert not (tmp_path / ".writer.json").exists()


def test_a_forked_child_never_holds_the_lock(tmp_path: Path):
    import os
    import signal
    import time

    ready, tell = os.pipe()
    with dataset_lock(tmp_path, "parent"):
        child = os.fork()
        if child == 0:  # a loader worker, say, that outlives its parent's lock
            os.write(tell, b"up")  # (the fork hooks have run by now)
            time.sleep(60)
            os._exit(0)
        assert os.read(ready, 2) == b"up"
    try:
        with dataset_lock(tmp_path, "next"):  # the live child kept nothing
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(tell)


def _keys(ds: Path) -> list[str]:
    import pyarrow.parquet as pq

    from biomedica_kit.tables.export import export

    export(ds)
    return sorted(pq.read_table(ds / "metadata" / "figures.parquet",
                                columns=["key"]).column("key").to_pylist())
