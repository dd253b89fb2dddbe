"""Build a dataset: packages -> (parse + images, in workers) -> shards, manifest and report.

img2dataset's cut: a *reader* lists packages (:mod:`biomedica_kit.ingest.sources`), a *worker* turns
one package into samples (:func:`process_package`, a pure function of the package), a
*distributor* runs workers (local processes by default), and a single *writer* in the main
process appends samples to shards in package order, so the output does not depend on which
worker finished first.

Builds are incremental and resumable (:mod:`biomedica_kit.etl.ledger`): a package already recorded in
the dataset is not processed again, new shards are numbered after the existing ones, and the
writer checkpoints its progress durably every ``checkpoint_every`` packages. Packages of a remote
source are downloaded (rate-limited, verified, cached) by :mod:`biomedica_kit.ingest.fetch` on the way in.

Every figure image found is accounted for: it becomes a sample or a row of
``report/skips.parquet`` with a reason, so ``n_images == samples + skips`` holds exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from biomedica_kit.base import pool as distribute
from biomedica_kit.base.atomic import atomic_write_bytes
from biomedica_kit.dataset.licenses import CATEGORIES, LicenseInfo, with_file_list
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import version_id, write_manifest
from biomedica_kit.dataset.shards import ShardWriter, iter_samples
from biomedica_kit.etl.images import ImagePolicy, ImageRejected, process_image
from biomedica_kit.etl.jats import JatsError, parse_jats
from biomedica_kit.etl.ledger import DatasetState, PackageRecord, records_table_rows
from biomedica_kit.etl.pubmed import load_cached, sample_fields
from biomedica_kit.etl.schema import article_fields, sample_keys, sample_record
from biomedica_kit.ingest.packages import (
    PackageError,
    PackageLimits,
    article_xml_members,
    read_package,
)
from biomedica_kit.ingest.sources import (
    PackageRef,
    Selection,
    discover_local,
    is_remote,
    iter_file_list,
    package_sha256,
    refs_from_file_list,
    source_uri,
    stat_package,
)

if TYPE_CHECKING:  # requests is imported only when a remote source is built
    from biomedica_kit.ingest.fetch import FetchPolicy


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides a build's output (recorded in the manifest)."""

    shard_max_samples: int = 10_000
    shard_max_bytes: int = 1 << 30
    image: ImagePolicy = field(default_factory=ImagePolicy)
    package: PackageLimits = field(default_factory=PackageLimits)
    #: An Entrez cache folder (``biomedica enrich``'s); cached PubMed records are merged into the
    #: samples at build time, so no second version is needed for them.
    entrez_cache: str | None = None


@dataclass
class Sample:
    """One figure image ready for a shard."""

    key: str
    subset: str
    image: bytes
    image_ext: str
    caption: str
    meta: dict


@dataclass
class PackageResult:
    """What one package produced: article rows, samples and skipped figure images."""

    package: str
    articles: list[dict]
    samples: list[Sample]
    skips: list[dict]
    seconds: float = 0.0
    ref: PackageRef | None = None  # what was processed (the writer records it)
    sha256: str | None = None  # content hash; None when the package's bytes could not be read


def _article_row(**kw) -> dict:
    row = {
        "id": None, "status": "ok", "reason": None, "detail": None, "package": None,
        "pmcid": None, "pmid": None, "doi": None, "journal": None, "year": None,
        "license_code": None, "license_category": "other", "license_source": None,
        "n_figures": 0, "n_images": 0, "n_samples": 0, "warnings": [],
    }
    row.update(kw)
    return row


def process_package(ref: PackageRef, cfg: BuildConfig) -> PackageResult:
    """Turn one package into samples; never raises for bad input (it is recorded instead).

    An unexpected exception (a parser bug meeting new XML) fails only this package, recorded as
    ``internal_error`` with the exception, so one odd article cannot stop a 6M-article run.
    """
    t0 = time.perf_counter()
    try:
        return _process_package(ref, cfg, t0)
    except Exception as exc:  # noqa: BLE001 - recorded per package, never swallowed silently
        row = _article_row(id=ref.pmcid or ref.name, package=ref.name, pmcid=ref.pmcid,
                           pmid=ref.pmid, status="failed", reason="internal_error",
                           detail=f"{type(exc).__name__}: {exc}"[:500])
        return PackageResult(ref.name, [row], [], [], time.perf_counter() - t0, ref)


def _process_package(ref: PackageRef, cfg: BuildConfig, t0: float) -> PackageResult:
    if ref.duplicate_of:
        row = _article_row(id=ref.name, package=ref.name, status="skipped",
                           reason="duplicate_package", detail=f"same package as {ref.duplicate_of}")
        return PackageResult(ref.name, [row], [], [], time.perf_counter() - t0, ref)
    sha = None
    try:
        if ref.failure:  # the fetch stage could not get the package (e.g. http_404)
            reason, _, detail = ref.failure.partition(": ")
            raise PackageError(reason, detail)
        with contextlib.suppress(OSError):  # missing or unreadable: read_package says why
            sha = ref.sha256 or package_sha256(ref.location)
        pkg = read_package(ref.location, cfg.package)
        xmls = article_xml_members(pkg)
        if not xmls:
            raise PackageError("no_xml", f"no article XML among {len(pkg.names)} members")
    except PackageError as exc:
        row = _article_row(id=ref.pmcid or ref.name, package=ref.name, pmcid=ref.pmcid,
                           pmid=ref.pmid, status="failed", reason=exc.reason, detail=exc.detail)
        return PackageResult(ref.name, [row], [], [], time.perf_counter() - t0, ref, sha)

    warnings = [f"{name}: {why}" for name, why in sorted(pkg.rejected.items())]
    rows, samples, skips = [], [], []
    for xml_name in xmls:
        try:
            # Refused members are listed too, so a figure pointing at one says why it is missing.
            articles = parse_jats(pkg.files[xml_name], source_file=xml_name,
                                  files=[*pkg.names, *pkg.rejected])
        except JatsError as exc:
            rows.append(_article_row(
                id=ref.pmcid or (ref.name if len(xmls) == 1 else f"{ref.name}/{xml_name}"),
                package=ref.name, pmcid=ref.pmcid, pmid=ref.pmid, status="failed",
                reason=exc.reason, detail=exc.detail[:500], warnings=warnings))
            continue
        for art in articles:
            if art.id_source != "pmcid" and len(articles) == 1 and ref.pmcid:
                art.id, art.pmcid, art.id_source = ref.pmcid, ref.pmcid, "file_list"
            elif art.id_source == "file":
                art.id = ref.name if len(articles) == 1 else art.id
            row, s, k = _process_article(art, ref, pkg, cfg)
            row["warnings"] = warnings
            rows.append(row)
            samples += s
            skips += k
    return PackageResult(ref.name, rows, samples, skips, time.perf_counter() - t0, ref, sha)


def _process_article(art, ref: PackageRef, pkg, cfg: BuildConfig):
    if ref.license:
        lic = with_file_list(LicenseInfo(art.license_url, art.license_type, art.license_text,
                                         art.license_code, art.license_category,
                                         art.license_source), ref.license)
        art.license_code, art.license_category, art.license_source = (
            lic.code, lic.category, lic.source)
    fields = article_fields(art, ref)
    subset = art.license_category
    samples: list[Sample] = []
    skips: list[dict] = []
    image_set: list[dict] = []
    n_images = 0

    def skip(fig, graphic, reason, detail, key=None):
        skips.append({"article_id": art.id, "figure_id": fig.id, "key": key,
                      "graphic": graphic.href if graphic else None, "reason": reason,
                      "detail": detail, "package": ref.name})

    pending = []
    keys = sample_keys(art.id, art.figures)  # unique within the article by construction
    for fi, fig in enumerate(art.figures):
        if not fig.graphics:
            n_images += 1
            skip(fig, None, "no_graphic", "figure has no graphic element")
            continue
        for gi, g in enumerate(fig.graphics):
            n_images += 1
            key = keys[fi][gi]
            image_set.append({"image_id": key, "image_file_name": g.file or g.href,
                              "caption": fig.caption, "image_hash": None})
            if not fig.caption.strip():
                skip(fig, g, "no_caption", "empty caption", key)
                continue
            if g.file is None:
                skip(fig, g, "image_missing", f"{g.href!r} not in package", key)
                continue
            if g.file not in pkg.files:
                why = pkg.rejected.get(g.file, "not read")
                reason = why.split(":")[0] if g.file in pkg.rejected else "image_missing"
                skip(fig, g, reason, f"{g.file}: {why}", key)
                continue
            try:
                img = process_image(pkg.files[g.file], cfg.image)
            except ImageRejected as exc:
                skip(fig, g, exc.reason, f"{g.file}: {exc.detail}"[:500], key)
                continue
            image_set[-1]["image_hash"] = img.sha256
            pending.append((key, fi, fig, g, img))
    pubmed = _cached_pubmed(fields.get("pmid"), cfg.entrez_cache)
    for key, fi, fig, g, img in pending:
        meta = sample_record(key=key, art=fields, fig=fig, graphic=g, image=img,
                             figure_index=fi, image_set=image_set)
        if pubmed is not None:
            meta.update(sample_fields(pubmed, has_abstract=bool(meta.get("article_abstract"))))
        samples.append(Sample(key, subset, img.data, img.ext, fig.caption, meta))
    row = _article_row(
        id=art.id, package=ref.name, pmcid=art.pmcid, pmid=fields.get("pmid"), doi=art.doi,
        journal=art.journal, year=art.year, license_code=art.license_code,
        license_category=subset, license_source=art.license_source,
        n_figures=len(art.figures), n_images=n_images, n_samples=len(samples))
    return row, samples, skips


def _cached_pubmed(pmid: str | None, cache: str | None) -> dict | None:
    if not (pmid and cache):
        return None
    return load_cached([pmid], cache).get(str(pmid))


# ----------------------------------------------------------------------------- distributors


def run_local(refs: Iterable[PackageRef], cfg: BuildConfig, workers: int | None
              ) -> Iterator[PackageResult]:
    """Process packages on local worker processes, yielding results in input order.

    At most ``4 * workers`` packages are in flight, so memory stays flat however long the list.
    """
    return distribute.run_local(refs, cfg, workers, worker=process_package)


def run_ray(refs: Iterable[PackageRef], cfg: BuildConfig, address: str = "local", *,
            num_cpus: int | None = None) -> Iterator[PackageResult]:
    """Process packages as Ray tasks (``address``: ``local``, ``auto`` or a cluster address),
    yielding results in input order; see :func:`biomedica_kit.base.pool.run_ray`."""
    return distribute.run_ray(refs, cfg, address, worker=process_package, num_cpus=num_cpus)


# ----------------------------------------------------------------------------------- writer


class DatasetWriter:
    """Single writer: shards per licence subset, duplicate flags, package records, checkpoints.

    It continues ``state`` (what the dataset already holds): shard numbers follow the existing
    files, exact duplicates are detected against every sample already written, and an article
    already built from another package is skipped as a duplicate.
    """

    def __init__(self, out: Path, cfg: BuildConfig, state: DatasetState | None = None, *,
                 build_info: dict | None = None, checkpoint_every: int = 1000) -> None:
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
        self.seen_ids: dict[str, tuple[str, str]] = {}  # article id -> (package id, name)
        for rec in self.state.records.values():
            self._remember(rec)
        # Checkpoints of an interrupted run were replayed: they need a version even if this run
        # adds nothing.
        self.changed = bool(self.state.chunks)
        self.added = 0  # packages processed by this run

    def _remember(self, rec: PackageRecord) -> None:
        for a in rec.articles:
            if a["status"] == "ok":
                self.seen_ids.setdefault(a["id"], (rec.id, rec.name))
        for key, sha, *_ in rec.samples:
            self.first_by_sha.setdefault(sha, key)

    def _forget(self, rec: PackageRecord) -> None:
        """Drop a replaced package's articles and samples from the duplicate indexes."""
        for a in rec.articles:
            if self.seen_ids.get(a["id"], ("",))[0] == rec.id:
                del self.seen_ids[a["id"]]
        for key, sha, *_ in rec.samples:
            if self.first_by_sha.get(sha) == key:
                del self.first_by_sha[sha]

    def add(self, res: PackageResult) -> None:
        """Write one package's samples and record it (checkpointing every N packages)."""
        ref = res.ref or PackageRef(res.package, res.package)
        old = self.state.records.get(ref.id)
        if (old is not None and res.sha256 and old.sha256 == res.sha256 and old.status == "done"
                and _row(old) == _row(ref)):
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
            if row["status"] == "ok" and aid in self.seen_ids:
                # The same article in two packages: keep the first, account for the second.
                row.update(status="skipped", reason="duplicate_article",
                           detail=f"already built from package {self.seen_ids[aid][1]}",
                           n_samples=0)
                for s in by_article.pop(aid, []):
                    rec.skips.append({"article_id": aid, "figure_id": s.meta["figure_id"],
                                      "key": s.key, "graphic": s.meta["graphic_href"],
                                      "reason": "duplicate_article", "detail": row["detail"],
                                      "package": res.package})
            elif row["status"] == "ok":
                self.seen_ids[aid] = (rec.id, rec.name)
            rec.articles.append(row)
        for rows in by_article.values():
            for s in rows:
                self._write(s, rec)
        rec.skips.extend(res.skips)
        self.state.apply_record(rec)
        self._done(rec)
        self.added += 1

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
        rec.samples.append([s.key, sha, s.subset, w.current_shard,
                            first if first != s.key else None])

    def checkpoint(self) -> None:
        """Make everything written so far durable: close the open shards, then record them and
        the packages they hold in one atomically written checkpoint file."""
        new = []
        for w in self.writers.values():
            for info in w.close():  # a closed writer opens a new shard on its next write
                if info.path not in self.recorded:
                    new.append(asdict(info))
                    self.recorded.add(info.path)
        if not (self.pending or new):
            return
        self.state.write_chunk(self.run, self.seq, build=self.build_info, records=self.pending,
                               shards=new)
        self.state.shards.update({s["path"]: s for s in new})
        self.seq += 1
        self.pending = []

    def finish(self) -> list[dict]:
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
        added = [asdict(i) for w in writers.values() for i in w.close()]
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


# ------------------------------------------------------------------------------------ build


@dataclass
class BuildSummary:
    """Counts of the dataset after a build (printed by the CLI, stored in report/build.json).

    Counts are of the whole dataset; ``new_packages`` / ``unchanged_packages`` say what this run
    processed and what it found already built.
    """

    out: str
    dataset_version: str
    packages: int
    articles: dict[str, int]
    figures: int
    images: int
    samples: int
    skips: dict[str, int]
    samples_by_subset: dict[str, int]
    exact_duplicates: int
    shards: int
    seconds: float
    new_packages: int = 0
    unchanged_packages: int = 0
    parent: str | None = None
    fetch: dict | None = None  # download counters of a remote source

    @property
    def reconciles(self) -> bool:
        return self.images == self.samples + sum(self.skips.values())


Runner = Callable[[Iterable[PackageRef], BuildConfig], Iterable[PackageResult]]


def build(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    file_list: str | os.PathLike | None = None,
    workers: int | None = None,
    limit: int | None = None,
    config: BuildConfig | None = None,
    progress: bool = True,
    runner: Runner | None = None,
    selection: Selection | None = None,
    resume: bool | None = None,
    cache: str | os.PathLike | None = None,
    fetch_policy: FetchPolicy | None = None,
    ray: str | None = None,
    checkpoint_every: int = 1000,
) -> BuildSummary:
    """Build a dataset from a PMC OA source into ``out``, or add what is new to it.

    ``source`` is a local folder (NCBI layout with ``oa_file_list.csv``, or a flat folder of
    packages) or an ``http(s)://`` mirror in NCBI's layout, whose packages are downloaded into
    ``cache`` (default ``out/cache/packages``) under ``fetch_policy``
    (:class:`biomedica_kit.ingest.fetch.FetchPolicy`). ``selection`` (and ``limit``) pick packages.

    When ``out`` already holds a dataset, packages it already recorded are skipped and the rest
    are added as a new version whose parent is the current one. ``resume=None`` (default) does
    this only when the dataset was built from the same source; ``True`` also continues a
    dataset built from another source; ``False`` refuses any existing dataset. The build
    configuration must always match (:class:`FileExistsError` otherwise).

    ``runner`` replaces the distributor (it gets an iterable of refs, yields results in order);
    ``ray`` runs on Ray (``local`` or a cluster address); otherwise ``workers`` local processes.
    """
    cfg = config or BuildConfig()
    out = Path(out)
    sel = selection or Selection()
    if limit is not None:
        sel = replace(sel, limit=limit)
    remote = is_remote(source)
    t0 = time.perf_counter()
    # A missing local source must fail before anything is created.
    refs = None if remote else discover_local(source, file_list)
    out.mkdir(parents=True, exist_ok=True)
    info = {"source": source_uri(source), "config": _config_dict(cfg)}
    with dataset_lock(out):
        state = DatasetState.load(out)
        _check_continuation(state, info, resume, out)
        state.collect_garbage()
        fetcher = None
        if remote:
            from biomedica_kit.ingest.fetch import Fetcher

            fetcher = Fetcher(str(source), cache or out / "cache" / "packages", fetch_policy)
            fl = (file_list if file_list and not is_remote(file_list)
                  else fetcher.fetch_file_list(str(file_list) if file_list else None))
            refs = refs_from_file_list(iter_file_list(fl), info["source"])
        todo, unchanged = _plan(sel.apply(refs), state, remote)
        writer = DatasetWriter(out, cfg, state, build_info=info,
                               checkpoint_every=checkpoint_every)
        stream = fetcher.prefetch(todo) if fetcher else iter(todo)
        if runner:
            results = runner(stream, cfg)
        elif ray:
            results = run_ray(stream, cfg, ray, num_cpus=workers)
        else:
            results = run_local(stream, cfg, workers)
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="pkg", disable=not progress, file=sys.stderr)
        try:
            for res in results:
                writer.add(res)
                bar.update()
            shards = writer.finish()
        except BaseException:
            writer.abort()
            raise
        finally:
            bar.close()
        return _finish(out, state, writer, shards, info, sel, unchanged,
                       asdict(fetcher.stats) if fetcher else None, time.perf_counter() - t0)


def _check_continuation(state: DatasetState, info: dict, resume: bool | None, out: Path) -> None:
    """Refuse to add to a dataset unless it is safe and wanted (see :func:`build`)."""
    if not state.exists:
        return
    prev = state.build_info or {}
    if prev.get("config") != info["config"]:
        raise FileExistsError(f"{out} already holds a dataset built with a different "
                              "configuration; choose a new --out")
    if resume is False:
        raise FileExistsError(f"{out} already holds a dataset; choose a new --out "
                              "(or --resume to add to it)")
    if resume is None and prev.get("source") != info["source"]:
        raise FileExistsError(f"{out} holds a dataset built from {prev.get('source')}; pass "
                              f"--resume to add packages from {info['source']} to it")


def _plan(refs: Iterable[PackageRef], state: DatasetState, remote: bool
          ) -> tuple[list[PackageRef], int]:
    """Split selected packages into those to process and the number already built.

    A package is already built when its record is ``done`` and it is recognisably the same
    package: for a remote source, the same file-list row (Last Updated, licence, citation...),
    so nothing is downloaded; for a local one, the same row and the same size and mtime, so
    nothing is read. Anything else is processed; the writer still compares content hashes and
    only refreshes the record when the bytes turn out identical.
    """
    todo: list[PackageRef] = []
    seen: set[str] = set()
    unchanged = 0
    for ref in refs:
        if ref.id in seen:  # a file list naming one package twice
            continue
        seen.add(ref.id)
        if not remote and not ref.duplicate_of:
            st = stat_package(ref.location)
            if st is not None:
                ref = replace(ref, size=st[0], mtime_ns=st[1])
        rec = state.records.get(ref.id)
        if (rec is not None and rec.status == "done" and _row(rec) == _row(ref)
                and (remote or ref.duplicate_of or (rec.size, rec.mtime_ns) == (ref.size,
                                                                                ref.mtime_ns))):
            unchanged += 1
            continue
        todo.append(ref)
    return todo, unchanged


def _row(r: PackageRef | PackageRecord) -> tuple:
    """The file-list fields that end up in samples: a change in any of them rebuilds them."""
    return r.last_updated, r.license, r.citation, r.pmcid, r.pmid


def _finish(out: Path, state: DatasetState, writer: DatasetWriter, shards: list[dict],
            info: dict, sel: Selection, unchanged: int, fetch: dict | None,
            seconds: float) -> BuildSummary:
    arts, skips, samples, pkgs = records_table_rows(state.records.values())
    status = Counter(r["status"] for r in arts)
    skip_reasons = Counter(s["reason"] for s in skips)
    by_subset: Counter = Counter()
    for s in shards:
        by_subset[s["subset"]] += s["samples"]
    counts = {
        "packages": len(pkgs),
        "articles": dict(status),
        "figures": sum(r["n_figures"] for r in arts),
        "images": sum(r["n_images"] for r in arts),
        "skips": dict(skip_reasons),
        "samples_by_subset": {c: by_subset.get(c, 0) for c in CATEGORIES},
        "exact_duplicates": sum(1 for s in samples if s["duplicate_of"]),
    }
    prev = state.manifest
    manifest = prev
    if prev is None or writer.changed:
        parent = prev["dataset_version"] if prev else None
        if prev and version_id(shards) == parent:
            parent = prev.get("parent")  # same shards (only records changed): same lineage
        # The manifest is the commit point; report/ and the checkpoints follow. Replaying the
        # checkpoints is idempotent, so a crash between these steps loads to the same state.
        manifest = write_manifest(out, shards, parent=parent, config=info["config"],
                                  counts=counts, extra={"build": {
                                      "source": info["source"], "selection": sel.to_dict()}})
        _write_reports(out, arts, skips, samples, pkgs)
        state.drop_chunks()
    summary = BuildSummary(
        out=str(out), dataset_version=manifest["dataset_version"], packages=len(pkgs),
        articles=dict(status), figures=counts["figures"], images=counts["images"],
        samples=len(samples), skips=dict(skip_reasons),
        samples_by_subset=counts["samples_by_subset"],
        exact_duplicates=counts["exact_duplicates"], shards=len(shards),
        seconds=round(seconds, 3), new_packages=writer.added, unchanged_packages=unchanged,
        parent=manifest.get("parent"), fetch=fetch)
    atomic_write_bytes(out / "report" / "build.json",
                       json.dumps({**asdict(summary), "reconciles": summary.reconciles},
                                  indent=2).encode())
    return summary


def _config_dict(cfg: BuildConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


ARTICLE_COLUMNS = ("id", "status", "reason", "detail", "package", "pmcid", "pmid", "doi",
                   "journal", "year", "license_code", "license_category", "license_source",
                   "n_figures", "n_images", "n_samples", "warnings", "package_id")
SKIP_COLUMNS = ("article_id", "figure_id", "key", "graphic", "reason", "detail", "package",
                "package_id")


def _write_reports(out: Path, arts: list[dict], skips: list[dict], samples: list[dict],
                   pkgs: list[dict]) -> None:
    """report/: articles and skips (what users read), samples and packages (the build state)."""
    import pyarrow as pa

    from biomedica_kit.etl.ledger import PACKAGE_COLUMNS, SAMPLE_COLUMNS

    def strings(cols):
        return pa.schema([(c, pa.string()) for c in cols])

    pkg_schema = pa.schema([(c, pa.int64() if c in ("size", "mtime_ns") else pa.string())
                            for c in PACKAGE_COLUMNS])
    for name, rows, cols, schema in (
        ("articles", arts, ARTICLE_COLUMNS, _article_schema()),
        ("skips", skips, SKIP_COLUMNS, strings(SKIP_COLUMNS)),
        ("samples", samples, SAMPLE_COLUMNS, strings(SAMPLE_COLUMNS)),
        ("packages", pkgs, PACKAGE_COLUMNS, pkg_schema),
    ):
        table = pa.table({c: [r.get(c) for r in rows] for c in cols}, schema=schema)
        _write_parquet(table, out / "report" / f"{name}.parquet")


def _article_schema():
    import pyarrow as pa

    ints = {"year", "n_figures", "n_images", "n_samples"}
    return pa.schema([
        (c, pa.list_(pa.string()) if c == "warnings" else pa.int64() if c in ints
         else pa.string()) for c in ARTICLE_COLUMNS])


def _write_parquet(table, path: Path) -> None:
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())
