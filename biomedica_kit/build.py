"""Build a dataset: packages -> (parse + images, in workers) -> shards, manifest and report.

img2dataset's cut: a *reader* lists packages (:mod:`biomedica_kit.sources`), a *worker* turns
one package into samples (:func:`process_package`, a pure function of the package), a
*distributor* runs workers (local processes by default), and a single *writer* in the main
process appends samples to shards in package order, so the output does not depend on which
worker finished first.

Every figure image found is accounted for: it becomes a sample or a row of
``report/skips.parquet`` with a reason, so ``n_images == samples + skips`` holds exactly.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from biomedica_kit.enrich import sample_fields
from biomedica_kit.images import ImagePolicy, ImageRejected, process_image
from biomedica_kit.jats import JatsError, parse_jats
from biomedica_kit.licenses import CATEGORIES, LicenseInfo, with_file_list
from biomedica_kit.packages import (
    PackageError,
    PackageLimits,
    article_xml_members,
    read_package,
)
from biomedica_kit.schema import article_fields, sample_key, sample_record
from biomedica_kit.shards import ShardWriter, atomic_write_bytes, write_manifest
from biomedica_kit.sources import PackageRef, discover_local


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
        return PackageResult(ref.name, [row], [], [], time.perf_counter() - t0)


def _process_package(ref: PackageRef, cfg: BuildConfig, t0: float) -> PackageResult:
    if ref.duplicate_of:
        row = _article_row(id=ref.name, package=ref.name, status="skipped",
                           reason="duplicate_package", detail=f"same package as {ref.duplicate_of}")
        return PackageResult(ref.name, [row], [], [], time.perf_counter() - t0)
    try:
        pkg = read_package(ref.location, cfg.package)
        xmls = article_xml_members(pkg)
        if not xmls:
            raise PackageError("no_xml", f"no article XML among {len(pkg.names)} members")
    except PackageError as exc:
        row = _article_row(id=ref.pmcid or ref.name, package=ref.name, pmcid=ref.pmcid,
                           pmid=ref.pmid, status="failed", reason=exc.reason, detail=exc.detail)
        return PackageResult(ref.name, [row], [], [], time.perf_counter() - t0)

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
    return PackageResult(ref.name, rows, samples, skips, time.perf_counter() - t0)


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
    for fi, fig in enumerate(art.figures):
        if not fig.graphics:
            n_images += 1
            skip(fig, None, "no_graphic", "figure has no graphic element")
            continue
        for gi, g in enumerate(fig.graphics):
            n_images += 1
            key = sample_key(art.id, fig.id, gi, len(fig.graphics))
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
    from biomedica_kit.entrez import load_cached

    return load_cached([pmid], cache).get(str(pmid))


# ----------------------------------------------------------------------------- distributors


def run_local(refs: list[PackageRef], cfg: BuildConfig, workers: int | None
              ) -> Iterator[PackageResult]:
    """Process packages on local worker processes, yielding results in input order.

    At most ``4 * workers`` packages are in flight, so memory stays flat however long the list.
    """
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(refs) <= 1:
        for r in refs:
            yield process_package(r, cfg)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        window: deque[Future] = deque()
        it = iter(refs)
        for r in it:
            window.append(pool.submit(process_package, r, cfg))
            if len(window) >= 4 * workers:
                break
        while window:
            yield window.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                window.append(pool.submit(process_package, nxt, cfg))


# ----------------------------------------------------------------------------------- writer


class DatasetWriter:
    """Single writer: shards per licence subset, duplicate flags, report tables."""

    def __init__(self, out: Path, cfg: BuildConfig) -> None:
        self.out = out
        self.cfg = cfg
        self.writers = {c: ShardWriter(out, c, max_samples=cfg.shard_max_samples,
                                       max_bytes=cfg.shard_max_bytes) for c in CATEGORIES}
        self.articles: list[dict] = []
        self.skips: list[dict] = []
        self.first_by_sha: dict[str, str] = {}
        self.seen_ids: dict[str, str] = {}
        self.seen_keys: set[str] = set()
        self.n_samples = 0
        self.duplicates = 0

    def add(self, res: PackageResult) -> None:
        by_article: dict[str, list[Sample]] = {}
        for s in res.samples:
            by_article.setdefault(s.meta["article_id"], []).append(s)
        for row in res.articles:
            aid = row["id"]
            if row["status"] == "ok" and aid in self.seen_ids:
                # The same article in two packages: keep the first, account for the second.
                row.update(status="skipped", reason="duplicate_article",
                           detail=f"already built from package {self.seen_ids[aid]}",
                           n_samples=0)
                for s in by_article.pop(aid, []):
                    self.skips.append({"article_id": aid, "figure_id": s.meta["figure_id"],
                                       "key": s.key, "graphic": s.meta["graphic_href"],
                                       "reason": "duplicate_article", "detail": row["detail"],
                                       "package": res.package})
            elif row["status"] == "ok":
                self.seen_ids[aid] = res.package
            self.articles.append(row)
        for rows in by_article.values():
            for s in rows:
                self._write(s)
        self.skips.extend(res.skips)

    def _write(self, s: Sample) -> None:
        first = self.first_by_sha.setdefault(s.meta["image_sha256"], s.key)
        if first != s.key:
            s.meta["duplicate_of"] = first
            self.duplicates += 1
        members = [(s.image_ext, s.image), ("txt", s.caption.encode()),
                   ("json", json.dumps(s.meta, ensure_ascii=False, sort_keys=True).encode())]
        self.writers[s.subset].write(s.key, members)
        self.n_samples += 1

    def close(self) -> list:
        return [info for w in self.writers.values() for info in w.close()]

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


# ------------------------------------------------------------------------------------ build


@dataclass
class BuildSummary:
    """Counts of a finished build (printed by the CLI, stored in report/build.json)."""

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

    @property
    def reconciles(self) -> bool:
        return self.images == self.samples + sum(self.skips.values())


def build(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    file_list: str | os.PathLike | None = None,
    workers: int | None = None,
    limit: int | None = None,
    config: BuildConfig | None = None,
    progress: bool = True,
    runner: Callable[[list[PackageRef], BuildConfig], Iterable[PackageResult]] | None = None,
) -> BuildSummary:
    """Build a dataset from a local folder of PMC OA packages into ``out``."""
    cfg = config or BuildConfig()
    out = Path(out)
    if (out / "manifest.json").exists():
        raise FileExistsError(f"{out} already holds a dataset; choose a new --out")
    t0 = time.perf_counter()
    refs = discover_local(source, file_list)
    if limit is not None:
        refs = refs[:limit]
    out.mkdir(parents=True, exist_ok=True)
    writer = DatasetWriter(out, cfg)
    results = runner(refs, cfg) if runner else run_local(refs, cfg, workers)
    try:
        from tqdm import tqdm

        for res in tqdm(results, total=len(refs), unit="pkg", disable=not progress,
                        file=sys.stderr):
            writer.add(res)
        shards = writer.close()
    except BaseException:
        writer.abort()
        raise
    return _finish(out, refs, writer, shards, cfg, time.perf_counter() - t0)


def _finish(out: Path, refs, writer: DatasetWriter, shards, cfg, seconds) -> BuildSummary:
    status = Counter(r["status"] for r in writer.articles)
    skips = Counter(s["reason"] for s in writer.skips)
    by_subset = Counter()
    for s in shards:
        by_subset[s.subset] += s.samples
    counts = {
        "packages": len(refs),
        "articles": dict(status),
        "figures": sum(r["n_figures"] for r in writer.articles),
        "images": sum(r["n_images"] for r in writer.articles),
        "skips": dict(skips),
        "samples_by_subset": {c: by_subset.get(c, 0) for c in CATEGORIES},
        "exact_duplicates": writer.duplicates,
    }
    manifest = write_manifest(out, shards, parent=None, config=_config_dict(cfg), counts=counts)
    _write_reports(out, writer)
    summary = BuildSummary(
        out=str(out), dataset_version=manifest["dataset_version"], packages=len(refs),
        articles=dict(status), figures=counts["figures"], images=counts["images"],
        samples=writer.n_samples, skips=dict(skips), samples_by_subset=counts["samples_by_subset"],
        exact_duplicates=writer.duplicates, shards=len(shards), seconds=round(seconds, 3))
    atomic_write_bytes(out / "report" / "build.json",
                       json.dumps({**asdict(summary), "reconciles": summary.reconciles},
                                  indent=2).encode())
    return summary


def _config_dict(cfg: BuildConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


ARTICLE_COLUMNS = ("id", "status", "reason", "detail", "package", "pmcid", "pmid", "doi",
                   "journal", "year", "license_code", "license_category", "license_source",
                   "n_figures", "n_images", "n_samples", "warnings")
SKIP_COLUMNS = ("article_id", "figure_id", "key", "graphic", "reason", "detail", "package")


def _write_reports(out: Path, writer: DatasetWriter) -> None:
    import pyarrow as pa

    arts = pa.table({c: [r.get(c) for r in writer.articles] for c in ARTICLE_COLUMNS},
                    schema=_article_schema())
    skips = pa.table({c: [r.get(c) for r in writer.skips] for c in SKIP_COLUMNS},
                     schema=pa.schema([(c, pa.string()) for c in SKIP_COLUMNS]))
    _write_parquet(arts, out / "report" / "articles.parquet")
    _write_parquet(skips, out / "report" / "skips.parquet")


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
