"""The single writer: package results -> shards per licence subset, package records, checkpoints.

Results arrive in package order (the distributors guarantee it), so the shards do not depend on
which worker finished first. The writer continues what the dataset already holds
(:class:`~biomedica_kit.etl.ledger.DatasetState`): shard numbers follow the existing files,
exact duplicates are found against every sample already written, and every
``checkpoint_every`` packages its progress is made durable (:meth:`DatasetWriter.checkpoint`).

**One article, several packages.** PMC OA can carry one article (one id: PMCID, else DOI...) in
more than one package, and a copy can be broken (a truncated image, a missing file). The copy
whose samples are kept is chosen by this rule, the first criterion that differs deciding:

1. the later file-list ``Last Updated`` (when both copies have one);
2. completeness: more samples, then fewer skipped figure images;
3. otherwise the copy met first (in source order, or built by an earlier run) stays.

The other copy's article row is ``skipped`` with reason ``duplicate_article`` and its figure
images become skip rows with that reason. When a later copy wins over one already written, the
earlier copy's samples are retired: the shards holding them are rewritten without them at the
end of the build, as for a package changed upstream.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from biomedica_kit.dataset.licenses import CATEGORIES
from biomedica_kit.dataset.manifest import ShardEntry
from biomedica_kit.dataset.shards import ShardWriter, iter_samples, split_name
from biomedica_kit.dataset.tario import iter_tar_files
from biomedica_kit.etl.config import CHECKPOINT_EVERY, BuildConfig
from biomedica_kit.etl.ledger import DatasetState, PackageRecord, SampleRow, file_list_row
from biomedica_kit.etl.worker import PackageResult, Sample
from biomedica_kit.ingest.sources import PackageRef

__all__ = ["ArticleCopy", "DatasetWriter"]

DUPLICATE = "duplicate_article"


class ArticleCopy(NamedTuple):
    """What the copy rule (module docstring) compares between two packages of one article."""

    package: str  # the package's name, for the report
    last_updated: str | None
    samples: int
    skips: int

    def better_than(self, other: ArticleCopy) -> bool:
        """Whether this copy should be kept instead of ``other`` (ties keep ``other``)."""
        if self.last_updated and other.last_updated and self.last_updated != other.last_updated:
            return self.last_updated > other.last_updated
        return (self.samples, -self.skips) > (other.samples, -other.skips)

    def why(self, other: ArticleCopy) -> str:
        """Why this copy was kept over ``other``, in words."""
        if self.last_updated and other.last_updated and self.last_updated != other.last_updated:
            return f"Last Updated {self.last_updated} > {other.last_updated}"
        if self.samples != other.samples:
            return f"{self.samples} samples > {other.samples}"
        if self.skips != other.skips:
            return f"{self.skips} skipped images < {other.skips}"
        return "found first"


def _skips_of(skips: list[dict], article_id: str) -> int:
    return sum(1 for k in skips if k["article_id"] == article_id and k["reason"] != DUPLICATE)


class DatasetWriter:
    """Single writer: shards per licence subset, duplicate flags, package records, checkpoints.

    It continues ``state`` (what the dataset already holds): shard numbers follow the existing
    files, exact duplicates are detected against every sample already written, and an article
    already built from another package is kept or replaced by the copy rule above.
    """

    def __init__(self, out: Path, cfg: BuildConfig, state: DatasetState | None = None, *,
                 build_info: dict | None = None, checkpoint_every: int = CHECKPOINT_EVERY
                 ) -> None:
        self.out = out
        self.cfg = cfg
        self.state = state if state is not None else DatasetState(out)
        self.writers = {c: ShardWriter(out, c, max_samples=cfg.shard_max_samples,
                                       max_bytes=cfg.shard_max_bytes,
                                       start=self.state.next_shard_index(c)) for c in CATEGORIES}
        self.build_info = build_info or {}
        self.checkpoint_every = max(1, checkpoint_every)
        self.run = f"{time.time_ns():020d}"  # checkpoint files sort in run order
        self.seq = 0
        self.pending: list[PackageRecord] = []  # finished since the last checkpoint
        self.recorded: set[str] = set()  # shard paths already listed in a checkpoint
        self.first_by_sha: dict[str, str] = {}
        self.seen_ids: dict[str, str] = {}  # article id -> id of the package holding it
        for rec in self.state.records.values():
            self._remember(rec)
        # Checkpoints of an interrupted run were replayed: they need a version even if this run
        # adds nothing.
        self.changed = bool(self.state.chunks)
        self.added = 0  # packages processed by this run
        self.failed: dict[str, int] = {}  # reason -> packages of this run with no usable article

    def _remember(self, rec: PackageRecord) -> None:
        for a in rec.articles:
            if a["status"] == "ok":
                self.seen_ids.setdefault(a["id"], rec.id)
        for s in rec.samples:
            self.first_by_sha.setdefault(s.image_sha256, s.key)

    def _forget_samples(self, samples: list[SampleRow]) -> None:
        for s in samples:
            if self.first_by_sha.get(s.image_sha256) == s.key:
                del self.first_by_sha[s.image_sha256]

    def _forget(self, rec: PackageRecord) -> None:
        """Drop a replaced package's articles and samples from the duplicate indexes."""
        for a in rec.articles:
            if self.seen_ids.get(a["id"]) == rec.id:
                del self.seen_ids[a["id"]]
        self._forget_samples(rec.samples)

    def add(self, res: PackageResult) -> None:
        """Write one package's samples and record it (checkpointing every N packages)."""
        ref = res.ref or PackageRef(res.package, res.package)
        old = self.state.records.get(ref.id)
        if (old is not None and res.sha256 and old.sha256 == res.sha256 and old.status == "done"
                and file_list_row(old) == file_list_row(ref)):
            self.touch(ref)  # same bytes and row (e.g. a copy with a new mtime): nothing to redo
            return
        if old is not None:
            self._forget(old)  # a changed package replaces its old record and samples
        failed = res.sha256 is None and not ref.duplicate_of
        rec = PackageRecord(
            id=ref.id, name=ref.name, file=ref.file, last_updated=ref.last_updated,
            size=ref.size, mtime_ns=ref.mtime_ns, sha256=res.sha256, pmcid=ref.pmcid,
            pmid=ref.pmid, citation=ref.citation, license=ref.license,
            status="retry" if failed else "done",
            reason=next((r["reason"] for r in res.articles if r["reason"]), None) if failed
            else None)
        by_article: dict[str, list[Sample]] = {}
        for s in res.samples:
            by_article.setdefault(s.meta["article_id"], []).append(s)
        for row in res.articles:
            aid = row["id"]
            holder = self.seen_ids.get(aid) if row["status"] == "ok" else None
            if holder == rec.id:  # twice in this package: the first stays
                self._skip_duplicate(rec, row, by_article.pop(aid, []),
                                     f"already built from package {rec.name}")
                rec.articles.append(row)
                continue
            if holder is not None:
                copy = ArticleCopy(rec.name, ref.last_updated, len(by_article.get(aid, [])),
                                   _skips_of(res.skips, aid))
                kept = self._held_copy(self.state.records[holder], aid)
                if not copy.better_than(kept):
                    self._skip_duplicate(rec, row, by_article.pop(aid, []),
                                         f"already built from package {kept.package} "
                                         f"({kept.why(copy)})")
                    rec.articles.append(row)
                    continue
                self._retire_article(self.state.records[holder], aid,
                                     f"replaced by the copy in package {rec.name} "
                                     f"({copy.why(kept)})")
            if row["status"] == "ok":
                self.seen_ids[aid] = rec.id
            rec.articles.append(row)
        for rows in by_article.values():
            for s in rows:
                self._write(s, rec)
        rec.skips.extend(res.skips)
        if res.articles and all(r["status"] == "failed" for r in res.articles):
            reason = res.articles[0]["reason"] or "failed"
            self.failed[reason] = self.failed.get(reason, 0) + 1
        self.state.apply_record(rec)
        self._done(rec)
        self.added += 1

    @staticmethod
    def _held_copy(rec: PackageRecord, article_id: str) -> ArticleCopy:
        row = next(a for a in rec.articles if a["id"] == article_id and a["status"] == "ok")
        return ArticleCopy(rec.name, rec.last_updated, row["n_samples"],
                           _skips_of(rec.skips, article_id))

    @staticmethod
    def _skip_duplicate(rec: PackageRecord, row: dict, samples: list[Sample], detail: str
                        ) -> None:
        """Account for a copy not kept: its row is skipped, its samples become skip rows."""
        row.update(status="skipped", reason=DUPLICATE, detail=detail, n_samples=0)
        for s in samples:
            rec.skips.append({"article_id": row["id"], "figure_id": s.meta["figure_id"],
                              "key": s.key, "graphic": s.meta["graphic_href"],
                              "reason": DUPLICATE, "detail": detail, "package": rec.name})

    def _retire_article(self, holder: PackageRecord, article_id: str, detail: str) -> None:
        """Take one article out of the package that held it (a better copy replaces it): its
        row is skipped, its samples become skip rows and are retired from their shards."""
        for subset in {s.subset for s in holder.samples if not (self.out / s.shard).is_file()}:
            self.writers[subset].close()  # the new copy's samples (same keys) go to a new shard
        metas = _sample_metas(self.out, holder.samples)
        gone = [s for s in holder.samples if metas[s.key]["article_id"] == article_id]
        holder.samples = [s for s in holder.samples if s not in gone]
        self.state.retired |= {(s.shard, s.key) for s in gone}
        self._forget_samples(gone)
        row = next(a for a in holder.articles if a["id"] == article_id and a["status"] == "ok")
        row.update(status="skipped", reason=DUPLICATE, detail=detail, n_samples=0)
        for s in gone:
            meta = metas[s.key]
            holder.skips.append({"article_id": article_id, "figure_id": meta["figure_id"],
                                 "key": s.key, "graphic": meta["graphic_href"],
                                 "reason": DUPLICATE, "detail": detail, "package": holder.name})
        if not any(r is holder for r in self.pending):
            self.pending.append(holder)  # the next checkpoint records the change
        self.changed = True

    def touch(self, ref: PackageRef) -> None:
        """Refresh how a package is recognised (size, mtime, Last Updated); keep its samples."""
        rec = self.state.records[ref.id]
        rec.size, rec.mtime_ns, rec.last_updated = ref.size, ref.mtime_ns, ref.last_updated
        self._done(rec)

    def _done(self, rec: PackageRecord) -> None:
        self.pending.append(rec)
        self.changed = True
        if len(self.pending) >= self.checkpoint_every:
            self.checkpoint()

    def _write(self, s: Sample, rec: PackageRecord) -> None:
        sha = s.meta["image_sha256"]
        first = self.first_by_sha.setdefault(sha, s.key)
        if first != s.key:
            s.meta["duplicate_of"] = first
        members = [(s.image_ext, s.image), ("txt", s.caption.encode()),
                   ("json", json.dumps(s.meta, ensure_ascii=False, sort_keys=True).encode())]
        w = self.writers[s.subset]
        w.write(s.key, members)
        assert w.current_shard is not None
        rec.samples.append(SampleRow(s.key, sha, s.subset, w.current_shard,
                                     first if first != s.key else None))

    def checkpoint(self) -> None:
        """Make everything written so far durable: close the open shards, then record them and
        the packages they hold in one atomically written checkpoint file."""
        new: list[ShardEntry] = []
        for w in self.writers.values():
            for info in w.close():  # a closed writer opens a new shard on its next write
                if info.path not in self.recorded:
                    new.append(info.entry())
                    self.recorded.add(info.path)
        if not (self.pending or new):
            return
        self.state.write_chunk(self.run, self.seq, build=self.build_info, records=self.pending,
                               shards=new)
        self.state.shards.update({s["path"]: s for s in new})
        self.seq += 1
        self.pending = []

    def finish(self) -> list[ShardEntry]:
        """Final checkpoint, then rewrite the shards holding retired samples; the shard list."""
        self.checkpoint()
        if self.state.retired:
            self._rewrite_retired()
        return sorted(self.state.shards.values(), key=lambda s: s["path"])

    def _rewrite_retired(self) -> None:
        """Copy every shard holding a retired sample without it, under a new name.

        The rewrite is itself a checkpoint: until it is written, the new shards are unreferenced
        (removed on the next run) and the old ones still current.
        """
        drop: dict[str, set[str]] = defaultdict(set)
        for shard, key in self.state.retired:
            if shard in self.state.shards:
                drop[shard].add(key)
        writers: dict[str, ShardWriter] = {}
        moved, removed = [], []
        for path in sorted(drop):
            subset = self.state.shards[path]["subset"]
            if subset not in writers:
                writers[subset] = ShardWriter(
                    self.out, subset, max_samples=self.cfg.shard_max_samples,
                    max_bytes=self.cfg.shard_max_bytes,
                    start=self.state.next_shard_index(subset))
            w = writers[subset]
            for key, group in iter_samples(self.out / path):
                if key not in drop[path]:
                    w.write(key, list(group.items()))
                    moved.append([path, key, w.current_shard])
            removed.append(path)
        added = [i.entry() for w in writers.values() for i in w.close()]
        ev = {"remove": removed, "add": added, "moved": moved}
        self.state.write_chunk(self.run, self.seq, build=self.build_info, records=[],
                               shards=[], rewrites=[ev])
        self.seq += 1
        self.state.apply_rewrite(ev)

    def abort(self) -> None:
        """Drop what no checkpoint records: the open shards and shards closed since."""
        for w in self.writers.values():
            w.abort()
            for info in w.finished:
                if info.path not in self.recorded:
                    (self.out / info.path).unlink(missing_ok=True)


def _sample_metas(root: Path, samples: list[SampleRow]) -> dict[str, dict]:
    """The json member of each of ``samples``, read at its offset (images are seeked over)."""
    want: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        want[s.shard].add(s.key)
    out: dict[str, dict] = {}
    for shard, keys in want.items():
        path = root / shard
        with open(path, "rb") as f:
            spans = [(split_name(name)[0], offset, size)
                     for name, offset, size in iter_tar_files(f, path)
                     if name.endswith(".json") and split_name(name)[0] in keys]
            for key, offset, size in spans:
                f.seek(offset)
                out[key] = json.loads(f.read(size))
    return out
