"""What a dataset already holds, recorded so that builds can add to it and survive a crash.

A dataset's build state is a set of *package records*, one per package of the source (keyed by
:attr:`PackageRef.id`): the package's content hash (sha256 of its bytes), how it was identified
(File path, Last Updated, size, mtime), its article and skip rows, and its samples with the shard
each one lies in. Two places hold it:

* ``report/`` (``packages.parquet``, ``articles.parquet``, ``skips.parquet``,
  ``samples.parquet``): the state as of the last *completed* build;
* ``ledger/<run>-<seq>.json``: checkpoints written during a build, each listing the packages
  finished since the previous checkpoint, the shards closed for them, and shard rewrites.

Loading replays the checkpoints, in order, over the report; every step is idempotent (a package
record replaces the one with the same id; a rewrite removes and adds shards by path), so a crash
at any point -- even in the middle of compacting the checkpoints into ``report/`` -- loads to the
same state. The guarantee a checkpoint gives: all open shards are closed (fsync + rename) *before*
the checkpoint file is written (temp + fsync + rename), so every package it lists has all of its
samples in complete shards. Work after the last checkpoint is lost on a crash and redone on the
next run; shards it had closed are unreferenced and removed (:meth:`DatasetState.collect_garbage`).

When a package is built again because its content changed upstream, its new record replaces the
old one and the old samples are *retired*: at the end of the build the shards that hold them are
rewritten without them (under new names; older versions keep the old files).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from biomedica_kit.base.atomic import TMP_PREFIX, atomic_write_bytes
from biomedica_kit.dataset.manifest import MANIFEST, Manifest, ShardEntry, read_manifest
from biomedica_kit.dataset.shards import SHARD_NAME, untagged
from biomedica_kit.ingest.sources import PackageRef

__all__ = ["LEDGER_DIR", "PACKAGE_COLUMNS", "SAMPLE_COLUMNS", "DatasetState", "PackageRecord",
           "SampleRow", "file_list_row", "records_table_rows"]

LEDGER_DIR = "ledger"
#: Columns of report/packages.parquet (one row per package record).
PACKAGE_COLUMNS = ("id", "name", "file", "last_updated", "size", "mtime_ns", "sha256", "status",
                   "reason", "pmcid", "pmid", "citation", "license")
#: Columns of report/samples.parquet: where every sample lies, and the global sha index.
SAMPLE_COLUMNS = ("key", "image_sha256", "subset", "shard", "duplicate_of", "package_id")


class SampleRow(NamedTuple):
    """Where one sample of a package lies (a row of report/samples.parquet, less package_id).

    A tuple, so a checkpoint stores it as a JSON list and 24M of them stay small in memory.
    """

    key: str
    image_sha256: str
    subset: str
    shard: str
    #: The key of the first sample with the same image bytes, None for that first one.
    duplicate_of: str | None = None


def file_list_row(r: PackageRef | PackageRecord) -> tuple:
    """The file-list fields that end up in samples: a change in any of them rebuilds them."""
    return r.last_updated, r.license, r.citation, r.pmcid, r.pmid


@dataclass
class PackageRecord:
    """Everything a build learned from one package.

    ``status`` is ``done`` when the package's bytes were read (whatever came of them: a corrupt
    archive is done too, it will not improve on a re-run) and ``retry`` when they could not be
    had (download failed, file missing): a re-run tries those again.
    """

    id: str
    name: str
    file: str | None = None
    last_updated: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    sha256: str | None = None
    status: str = "done"
    reason: str | None = None
    # The file-list row as built: a change in any of these rebuilds the package's samples.
    pmcid: str | None = None
    pmid: str | None = None
    citation: str | None = None
    license: str | None = None
    articles: list[dict] = field(default_factory=list)
    skips: list[dict] = field(default_factory=list)
    #: Every sample of the package, in shard order.
    samples: list[SampleRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Checkpoints store sample rows as JSON lists.
        self.samples = [s if isinstance(s, SampleRow) else SampleRow(*s) for s in self.samples]

    def meta(self) -> dict:
        """The packages.parquet row."""
        return {c: getattr(self, c) for c in PACKAGE_COLUMNS}


class DatasetState:
    """The package records, current shards and pending retirements of one dataset."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.records: dict[str, PackageRecord] = {}
        self.shards: dict[str, ShardEntry] = {}  # path -> its manifest entry
        self.retired: set[tuple[str, str]] = set()  # (shard, key) to drop at the next rewrite
        self.manifest: Manifest | None = None
        self.build_info: dict | None = None  # {"source", "config"} of the last build/checkpoint
        self.chunks: list[Path] = []  # checkpoint files not yet compacted into report/

    # ------------------------------------------------------------------------- loading

    @classmethod
    def load(cls, root: Path) -> DatasetState:
        """Read ``report/`` and replay ``ledger/`` checkpoints (an empty state if neither)."""
        st = cls(root)
        if (st.root / MANIFEST).is_file():
            st.manifest = manifest = read_manifest(st.root)
            st.shards = {s["path"]: s for s in manifest["shards"]}
            st.build_info = {"source": st._built_from(), "config": manifest.get("config")}
            if not (st.root / "report" / "packages.parquet").is_file():
                raise ValueError(f"{root} holds a dataset without a package ledger "
                                 "(report/packages.parquet); it cannot be added to")
            st._load_report()
            st._follow_renamed_shards()
        for path in sorted((st.root / LEDGER_DIR).glob("*.json")):
            if path.name.startswith(TMP_PREFIX):
                continue
            st.replay(json.loads(path.read_text()))
            st.chunks.append(path)
        return st

    def _load_report(self) -> None:
        import pyarrow.parquet as pq

        rep = self.root / "report"
        for row in pq.read_table(rep / "packages.parquet").to_pylist():
            self.records[row["id"]] = PackageRecord(**row)
        for table, attr in (("articles", "articles"), ("skips", "skips")):
            for row in pq.read_table(rep / f"{table}.parquet").to_pylist():
                rec = self.records.get(row.pop("package_id"))
                if rec is not None:
                    getattr(rec, attr).append(row)
        for row in pq.read_table(rep / "samples.parquet").to_pylist():
            rec = self.records.get(row["package_id"])
            if rec is not None:
                rec.samples.append(SampleRow(*(row[c] for c in SampleRow._fields)))

    def _built_from(self) -> str | None:
        """The source of the last build, looking through later versions (e.g. a label change
        made by :mod:`biomedica_kit.dataset.changes`) that do not repeat it."""
        m = self.manifest
        while m is not None:
            if "build" in m:
                return m["build"].get("source")
            parent = m.get("parent")
            path = self.root / "versions" / f"{parent}.json"
            m = json.loads(path.read_text()) if parent and path.is_file() else None
        return None

    def _follow_renamed_shards(self) -> None:
        """Point samples at the current name of their shard.

        A version made after the last build (:func:`biomedica_kit.dataset.changes.apply_changes`)
        rewrites shards as ``<name>-v<tag>.tar`` with the same samples in the same order.
        """
        current = {untagged(p): p for p in self.shards}
        for rec in self.records.values():
            rec.samples = [s if s.shard in self.shards
                           else s._replace(shard=current.get(untagged(s.shard), s.shard))
                           for s in rec.samples]

    @property
    def exists(self) -> bool:
        """Whether the folder already holds (part of) a dataset."""
        return self.manifest is not None or bool(self.chunks)

    # ------------------------------------------------------------------------ replaying

    def replay(self, chunk: dict) -> None:
        """Apply one checkpoint (idempotent)."""
        self.build_info = chunk.get("build") or self.build_info
        for s in chunk.get("shards", []):
            self.shards[s["path"]] = s
        for r in chunk.get("records", []):
            self.apply_record(PackageRecord(**r))
        for ev in chunk.get("rewrites", []):
            self.apply_rewrite(ev)

    def apply_record(self, rec: PackageRecord) -> PackageRecord | None:
        """Make ``rec`` the package's record; retire the samples of the one it replaces."""
        old = self.records.pop(rec.id, None)
        if old is not None:
            kept = {(s.shard, s.key) for s in rec.samples}
            self.retired |= {(s.shard, s.key) for s in old.samples} - kept
        self.records[rec.id] = rec
        return old

    def apply_rewrite(self, ev: dict) -> None:
        """Shards ``remove`` were replaced by ``add``; ``moved`` lists [old, key, new]."""
        removed = set(ev["remove"])
        for p in removed:
            self.shards.pop(p, None)
        for s in ev["add"]:
            self.shards[s["path"]] = s
        self.retired = {(shard, key) for shard, key in self.retired if shard not in removed}
        moved = {(o, k): n for o, k, n in ev["moved"]}
        if moved:
            for rec in self.records.values():
                rec.samples = [s._replace(shard=moved.get((s.shard, s.key), s.shard))
                               for s in rec.samples]

    # ------------------------------------------------------------------------- writing

    def write_chunk(self, run: str, seq: int, *, build: dict, records: list[PackageRecord],
                    shards: list[ShardEntry], rewrites: list[dict] | None = None) -> Path:
        """Durably record a checkpoint (the caller has already closed the shards it lists)."""
        path = self.root / LEDGER_DIR / f"{run}-{seq:06d}.json"
        data = {"run": run, "seq": seq, "build": build, "shards": shards,
                "records": [asdict(r) for r in records], "rewrites": rewrites or []}
        atomic_write_bytes(path, json.dumps(data, ensure_ascii=False).encode())
        self.chunks.append(path)
        return path

    def drop_chunks(self) -> None:
        """Delete checkpoints once ``report/`` holds everything they said."""
        for p in self.chunks:
            p.unlink(missing_ok=True)
        self.chunks = []
        d = self.root / LEDGER_DIR
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()

    # ----------------------------------------------------------------------- shard files

    def next_shard_index(self, subset: str) -> int:
        """The number after every shard file of ``subset`` on disk, so none is ever reused.

        Older versions' shards stay on disk; numbering past them keeps every version intact.
        """
        d = self.root / "shards" / subset
        nums = [int(m["n"]) for f in (d.iterdir() if d.is_dir() else ())
                if (m := SHARD_NAME.match(f.name)) and m["subset"] == subset]
        return max(nums) + 1 if nums else 0

    def collect_garbage(self) -> list[str]:
        """Remove what an interrupted build left: temp files, and shards no record references.

        A shard is kept when the current state, a checkpoint, or any saved version lists it.
        Call only while holding :func:`dataset_lock` (no other writer can be mid-shard).
        """
        keep = set(self.shards)
        for v in (self.root / "versions").glob("*.json"):
            try:
                keep |= {s["path"] for s in json.loads(v.read_text())["shards"]}
            except (OSError, ValueError, KeyError):
                continue
        removed = []
        # Only the folders a build writes; the root itself only at its top level.
        scopes = [(self.root, False)] + [(self.root / d, True)
                                         for d in ("shards", LEDGER_DIR, "report", "versions")]
        for base, deep in scopes:
            if not base.is_dir():
                continue
            for f in base.rglob("*") if deep else base.iterdir():
                rel = f.relative_to(self.root).as_posix()
                unreferenced = rel.startswith("shards/") and f.suffix == ".tar" and rel not in keep
                if f.is_file() and (f.name.startswith(TMP_PREFIX) or unreferenced):
                    f.unlink()
                    removed.append(rel)
        return removed


def records_table_rows(records: Iterable[PackageRecord]
                       ) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """Flatten records into (articles, skips, samples, packages) row lists for report/."""
    arts, skips, samples, pkgs = [], [], [], []
    for rec in records:
        pkgs.append(rec.meta())
        arts += [{**a, "package_id": rec.id} for a in rec.articles]
        skips += [{**s, "package_id": rec.id} for s in rec.skips]
        samples += [{**s._asdict(), "package_id": rec.id} for s in rec.samples]
    return arts, skips, samples, pkgs
