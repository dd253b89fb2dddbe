"""Builds that survive their own processes: a killed main process takes its workers and frees
the dataset lock, a worker that dies does not stop the build, and of two copies of one article
the better one is kept."""

from __future__ import annotations

import hashlib
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

from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify
from biomedica_kit.etl.build import build
from biomedica_kit.etl.worker import process_package, run_local
from biomedica_kit.ingest.sources import LAST_UPDATED, write_file_list

CCBY = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "ccby" / "articles"
BIOMEDICA = str(Path(sys.executable).parent / "biomedica")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def holds_folder(pid: int, folder: Path) -> bool:
    """Whether the process has ``folder`` open (the dataset lock is an flock on it)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    target = str(folder.resolve())
    for fd in fds:
        try:
            if os.readlink(fd) == target:
                return True
        except OSError:
            continue
    return False


def shard_shas(ds: Path) -> dict[str, str]:
    return {s["path"]: s["sha256"] for s in read_manifest(ds)["shards"]}


def samples(ds: Path) -> dict[str, bytes]:
    """key -> json bytes over the current version's shards (keys must be unique)."""
    out: dict[str, bytes] = {}
    for s in read_manifest(ds)["shards"]:
        for key, g in iter_samples(ds / s["path"]):
            assert key not in out, f"{key} twice"
            out[key] = g["json"]
    return out


# ------------------------------------------------------------------ A: kill -9 of the build


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_build_takes_its_workers_and_frees_the_lock(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(corpus.iterdir())[:8]:
        (shutil.copytree if p.is_dir() else shutil.copy)(p, src / p.name)
    # Last in source order, and seconds of work (ten TIFFs to convert): the build is still
    # running when the first checkpoint appears.
    shutil.copytree(CCBY / "pgen.1000100", src / "pgen.1000100")
    out = tmp_path / "ds"
    cmd = [BIOMEDICA, "build", "--source", str(src), "--out", str(out), "--quiet",
           "--workers", "2"]
    proc = subprocess.Popen([*cmd, "--checkpoint-every", "1"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list((out / "ledger").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the build ended before it could be killed mid-run"
    below = descendants(proc.pid)  # the workers (and a fork server, a resource tracker)
    assert len(below) >= 2, below
    # The main process holds the dataset folder open (its lock); no worker does.
    assert holds_folder(proc.pid, out)
    assert [p for p in below if holds_folder(p, out)] == []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while any(alive(p) for p in below) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in below if alive(p)] == [], "workers outlived the killed build"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "another command is writing" not in again.stderr
    report = json.loads((out / "report/build.json").read_text())
    assert report["reconciles"] and report["packages"] == 9
    assert verify(out).ok


# ------------------------------------------------------------- B: a worker process dies


class DyingWorker:
    """TEST-ONLY worker: SIGKILLs its own process on the packages named (a stand-in for the
    kernel's OOM killer), every time for ``always``, on the first try only for ``once``;
    otherwise the real :func:`process_package`."""

    def __init__(self, always: set[str], once: set[str], marks: Path) -> None:
        self.always, self.once, self.marks = always, once, marks

    def __call__(self, ref, cfg):
        mark = self.marks / ref.name
        if ref.name in self.always or (ref.name in self.once and not mark.exists()):
            mark.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return process_package(ref, cfg)


WORKER_DEATH_PACKAGES = ("PMC12419688.tar.gz", "PMC7417471.tar.gz", "elife-19405.tar.gz",
                         "elife-32671.tar.gz", "PMC3574550", "PMC2599765")


def test_worker_death_is_recorded_and_the_build_goes_on(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in WORKER_DEATH_PACKAGES:
        p = corpus / name
        (shutil.copytree if p.is_dir() else shutil.copy)(p, src / name)
    marks = tmp_path / "marks"
    marks.mkdir()
    dying = DyingWorker(always={"PMC7417471"}, once={"elife-32671"}, marks=marks)
    out = tmp_path / "ds"
    s = build(src, out, progress=False,
              runner=lambda refs, cfg: run_local(refs, cfg, 2, worker=dying))
    assert (marks / "PMC7417471").exists() and (marks / "elife-32671").exists()
    rows = {r["package"]: r for r in pq.read_table(out / "report/articles.parquet").to_pylist()}
    died = rows["PMC7417471"]
    assert (died["status"], died["reason"]) == ("failed", "worker_died")
    assert "killed by SIGKILL" in died["detail"]
    # The package killed once was retried in a fresh worker and built in full.
    assert rows["elife-32671"]["status"] == "ok" and rows["elife-32671"]["n_samples"] == 5
    assert s.failed_packages == {"worker_died": 1} and s.problem is None
    assert s.reconciles and verify(out).ok
    # PMC7417471 has no images: the shards are those of a build where no worker died.
    ref = tmp_path / "ref"
    build(src, ref, workers=1, progress=False)
    assert shard_shas(out) == shard_shas(ref)
    # Its record says retry: the next run (no deaths) builds it, and only it.
    pkgs = {r["name"]: r for r in pq.read_table(out / "report/packages.parquet").to_pylist()}
    assert pkgs["PMC7417471"]["status"] == "retry"
    again = build(src, out, workers=1, progress=False)
    assert again.new_packages == 1 and again.articles.get("failed", 0) == 0
    assert samples(out) == samples(ref)


# ------------------------------------------------ C: one article in two packages (copy rule)


def elife_copy(dest: Path, drop: tuple[str, ...] = ()) -> Path:
    """A copy of the real eLife 30274 article folder (5 figure images), less ``drop``."""
    shutil.copytree(CCBY / "elife-30274", dest, ignore=lambda _d, names: [
        n for n in names if n in drop])
    return dest


def test_broken_first_copy_does_not_shadow_a_good_one(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = (corpus / "PMC12419688.tar.gz").read_bytes()
    # First in source order: the same package with its one JPEG truncated.
    shutil.copytree(corpus / "PMC12419688", src / "PMC12419688")
    jpg = src / "PMC12419688" / "koaf197f1.jpg"
    jpg.write_bytes(jpg.read_bytes()[:4000])
    (src / "zz-PMC12419688.tar.gz").write_bytes(good)
    s = build(src, tmp_path / "ds", workers=1, progress=False)
    assert s.samples == 1 and s.reconciles
    rows = {r["package"]: r for r in
            pq.read_table(tmp_path / "ds/report/articles.parquet").to_pylist()}
    assert rows["zz-PMC12419688"]["status"] == "ok"
    broken = rows["PMC12419688"]
    assert (broken["status"], broken["reason"]) == ("skipped", "duplicate_article")
    assert broken["detail"] == "replaced by the copy in package zz-PMC12419688 (1 samples > 0)"
    ((key, g),) = [(k, g) for sh in read_manifest(tmp_path / "ds")["shards"]
                   for k, g in iter_samples(tmp_path / "ds" / sh["path"])]
    assert json.loads(g["json"])["image_sha256"] == hashlib.sha256(
        (corpus / "PMC12419688" / "koaf197f1.jpg").read_bytes()).hexdigest()
    assert verify(tmp_path / "ds").ok


def test_better_later_copy_retires_the_samples_already_written(tmp_path):
    alone = tmp_path / "alone"
    elife_copy(alone / "b-elife-30274")
    build(alone, tmp_path / "ref", workers=1, progress=False)
    src = tmp_path / "src"
    elife_copy(src / "a-elife-30274", drop=("fig2.jpg", "fig3.jpg"))  # 3 of 5 images
    elife_copy(src / "b-elife-30274")
    out = tmp_path / "ds"
    s = build(src, out, workers=1, progress=False)
    # The complete copy's samples, byte for byte as if it had been built alone.
    assert samples(out) == samples(tmp_path / "ref") and s.samples == 5
    assert list(shard_shas(out).values()) == list(shard_shas(tmp_path / "ref").values())
    rows = {r["package"]: r for r in pq.read_table(out / "report/articles.parquet").to_pylist()}
    assert rows["a-elife-30274"]["reason"] == "duplicate_article"
    skips = [k for k in pq.read_table(out / "report/skips.parquet").to_pylist()
             if k["package"] == "a-elife-30274"]
    assert sorted(k["reason"] for k in skips) == ["duplicate_article"] * 3 + ["image_missing"] * 2
    assert {k["figure_id"] for k in skips if k["reason"] == "duplicate_article"} == {
        "fig1", "fig2s1", "fig2s2"}
    assert s.reconciles
    res = verify(out)
    assert res.ok, res.errors


def test_better_copy_in_a_later_run_replaces_the_first(tmp_path):
    src = tmp_path / "src"
    elife_copy(src / "a-elife-30274", drop=("fig2.jpg", "fig3.jpg"))
    out = tmp_path / "ds"
    first = build(src, out, workers=1, progress=False)
    assert first.samples == 3
    elife_copy(src / "b-elife-30274")
    s = build(src, out, workers=1, progress=False)
    assert (s.new_packages, s.samples, s.parent) == (1, 5, first.dataset_version)
    ref_src = tmp_path / "alone"
    elife_copy(ref_src / "b-elife-30274")
    build(ref_src, tmp_path / "ref", workers=1, progress=False)
    assert samples(out) == samples(tmp_path / "ref")
    res = verify(out)
    assert res.ok, res.errors


def test_later_last_updated_wins_over_completeness(tmp_path):
    """The file list's Last Updated decides first: a newer copy is kept even if it has fewer
    images (an upstream correction), the older one is skipped."""
    src = tmp_path / "mirror"
    elife_copy(src / "oa_package/aa/old", drop=())
    elife_copy(src / "oa_package/bb/new", drop=("fig3.jpg",))
    write_file_list([
        {"File": "oa_package/aa/old", "Accession ID": "", LAST_UPDATED: "2024-06-01 00:00:00",
         "License": "CC BY"},
        {"File": "oa_package/bb/new", "Accession ID": "", LAST_UPDATED: "2025-01-01 00:00:00",
         "License": "CC BY"},
    ], src / "oa_file_list.csv")
    s = build(src, tmp_path / "ds", workers=1, progress=False)
    assert s.samples == 4 and s.reconciles
    rows = {r["package"]: r for r in
            pq.read_table(tmp_path / "ds/report/articles.parquet").to_pylist()}
    assert rows["old"]["detail"] == ("replaced by the copy in package new "
                                     "(Last Updated 2025-01-01 00:00:00 > 2024-06-01 00:00:00)")
    assert verify(tmp_path / "ds").ok
