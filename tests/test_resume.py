"""Incremental and interrupted builds: only new work is done, nothing half-written survives."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mirror_server import PACKAGES, MirrorServer, package_path

from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify
from biomedica_kit.etl.build import BuildConfig, build, run_local

CFG = BuildConfig(shard_max_samples=3)


@pytest.fixture(scope="module")
def reference(mirror, tmp_path_factory) -> Path:
    """One uninterrupted build of the whole mirror."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    build(mirror, out, workers=1, progress=False, config=CFG)
    return out


def samples(ds: Path) -> dict[str, tuple[str, bytes]]:
    """key -> (image sha256, json bytes) over the current version's shards."""
    out = {}
    for s in read_manifest(ds)["shards"]:
        for key, g in iter_samples(ds / s["path"]):
            assert key not in out, f"{key} twice"
            out[key] = (json.loads(g["json"])["image_sha256"], g["json"])
    return out


class Counting:
    """A runner that counts the packages it processes and can stop the build after N."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.names: list[str] = []

    def __call__(self, refs, cfg):
        for res in run_local(refs, cfg, 1):
            if self.stop_after is not None and len(self.names) == self.stop_after:
                raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-build
            self.names.append(res.package)
            yield res


def test_rerun_adds_only_new_packages(mirror, reference, tmp_path):
    out = tmp_path / "ds"
    first = build(mirror, out, workers=1, progress=False, config=CFG, limit=2)
    shards_before = {s["path"]: s["sha256"] for s in read_manifest(out)["shards"]}
    run = Counting()
    second = build(mirror, out, progress=False, config=CFG, runner=run)
    assert run.names == [n for n, *_ in PACKAGES[2:]] + ["PMC99999999"]
    assert (second.new_packages, second.unchanged_packages) == (8, 2)
    m = read_manifest(out)
    assert m["parent"] == first.dataset_version
    assert (out / "versions" / f"{first.dataset_version}.json").is_file()
    # Existing shards are kept byte for byte; new ones are numbered after them.
    now = {s["path"]: s["sha256"] for s in m["shards"]}
    assert all(now.get(p) == h for p, h in shards_before.items())
    for subset in ("commercial", "noncommercial", "other"):
        old = [p for p in shards_before if f"/{subset}/" in p]
        new = [p for p in now if f"/{subset}/" in p and p not in shards_before]
        assert not old or not new or max(old) < min(new)
    # Same samples as one uninterrupted build; report tables merged.
    assert samples(out) == samples(reference)
    arts = pq.read_table(out / "report/articles.parquet").to_pylist()
    ref_arts = pq.read_table(reference / "report/articles.parquet").to_pylist()
    assert sorted(a["id"] for a in arts) == sorted(a["id"] for a in ref_arts)
    assert second.reconciles and verify(out).ok


def test_exact_duplicates_are_found_across_runs(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(corpus / "elife-32671.tar.gz", src)
    out = tmp_path / "ds"
    build(src, out, workers=1, progress=False)
    shutil.copytree(corpus / "elife-32671", src / "elife-32671-copy")  # same five images
    s = build(src, out, workers=1, progress=False)
    assert s.new_packages == 1 and s.exact_duplicates == 5
    metas = [json.loads(j) for _, j in samples(out).values()]
    dup = {m["key"]: m["duplicate_of"] for m in metas}
    assert dup["elife-32671-copy_fig1"] == "elife-32671_fig1"
    assert dup["elife-32671_fig1"] is None


def test_interrupted_build_resumes_without_redoing_work(mirror, reference, tmp_path):
    out = tmp_path / "ds"
    stop = Counting(stop_after=7)
    with pytest.raises(KeyboardInterrupt):
        build(mirror, out, progress=False, config=CFG, runner=stop, checkpoint_every=3)
    # Two checkpoints (after 3 and 6 packages) survive; nothing half-written does.
    assert not (out / "manifest.json").exists()
    assert len(list((out / "ledger").glob("*.json"))) == 2
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]
    on_disk = {p.relative_to(out).as_posix() for p in (out / "shards").rglob("*.tar")}
    recorded = {s["path"] for c in (out / "ledger").glob("*.json")
                for s in json.loads(c.read_text())["shards"]}
    assert on_disk == recorded
    resumed = Counting()
    s = build(mirror, out, progress=False, config=CFG, runner=resumed, checkpoint_every=3)
    assert resumed.names == stop.names[6:] + [n for n, *_ in PACKAGES[7:]] + ["PMC99999999"]
    assert (s.new_packages, s.unchanged_packages) == (4, 6)
    assert samples(out) == samples(reference)
    assert not (out / "ledger").exists()  # compacted into report/
    res = verify(out)
    assert res.ok, res.errors


def test_killed_build_resumes(mirror, reference, tmp_path):
    """SIGKILL a real `biomedica build` over HTTP mid-run; the next run finishes the job."""
    out = tmp_path / "ds"
    with MirrorServer(mirror) as srv:
        for name, *_ in PACKAGES:
            srv.fault(package_path(name), "slow:0.25")  # slow enough to be killed mid-run
        cmd = [str(Path(sys.executable).parent / "biomedica"), "build", "--source", srv.url,
               "--out", str(out), "--quiet", "--workers", "1", "--shard-samples", "3",
               "--checkpoint-every", "2", "--fetch-threads", "1", "--rate", "50"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not list((out / "ledger").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ledger = out / "cache/packages/.fetch-ledger.jsonl"
        downloaded = {json.loads(x)["file"] for x in ledger.open()} if ledger.exists() else set()
        checkpointed = {r["id"] for c in (out / "ledger").glob("*.json")
                        for r in json.loads(c.read_text())["records"]}
        assert checkpointed and len(checkpointed) < len(PACKAGES)
        n = len(srv.requests())
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        second = [r.path for r in srv.requests()[n:] if r.path.startswith("oa_package/")]
    assert res.returncode == 0, res.stderr
    # Checkpointed packages are neither downloaded nor processed again; packages downloaded but
    # not checkpointed come from the download cache.
    assert not checkpointed & set(second)
    assert not downloaded & set(second)
    report = json.loads((out / "report/build.json").read_text())
    assert report["new_packages"] == len(PACKAGES) + 1 - len(checkpointed)
    assert samples(out) == samples(reference)
    assert verify(out).ok


def test_refuses_other_config_and_source_unless_asked(mirror, corpus, tmp_path):
    out = tmp_path / "ds"
    build(mirror, out, workers=1, progress=False, config=CFG, limit=2)
    with pytest.raises(FileExistsError, match="different configuration"):
        build(mirror, out, workers=1, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        build(mirror, out, workers=1, progress=False, config=CFG, resume=False)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(corpus / "elife-19405.tar.gz", other)
    with pytest.raises(FileExistsError, match="built from"):
        build(other, out, workers=1, progress=False, config=CFG)
    s = build(other, out, workers=1, progress=False, config=CFG, resume=True)
    assert s.packages == 3 and s.new_packages == 1


def test_changed_local_package_replaces_its_samples(corpus, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(corpus / "elife-32671", src / "elife-32671")
    shutil.copy(corpus / "PMC12419688.tar.gz", src)
    out = tmp_path / "ds"
    first = build(src, out, workers=1, progress=False, config=CFG)
    assert first.samples == 6
    # A new mtime with the same bytes: read and hashed again, but nothing is rebuilt.
    os.utime(src / "PMC12419688.tar.gz", (1, 1))
    same = build(src, out, workers=1, progress=False, config=CFG)
    assert same.new_packages == 0 and same.dataset_version == first.dataset_version
    # New bytes: two of the five figures are gone upstream; their samples are retired.
    (src / "elife-32671" / "fig4.jpg").unlink()
    (src / "elife-32671" / "fig5.jpg").unlink()
    s = build(src, out, workers=1, progress=False, config=CFG)
    assert (s.new_packages, s.samples) == (1, 4)
    assert sorted(samples(out)) == ["PMC12419688_koaf197-F1", "elife-32671_fig1",
                                    "elife-32671_fig2", "elife-32671_fig3"]
    res = verify(out)
    assert res.ok, res.errors
    assert s.parent == first.dataset_version and s.reconciles
    # Every earlier version still verifies against its own shards.
    assert (out / "versions" / f"{first.dataset_version}.json").is_file()
