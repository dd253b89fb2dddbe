"""The worker: one package in, its samples, article rows and skipped figure images out.

:func:`process_package` is a pure function of one package and the build config, so any
distributor (:mod:`biomedica_kit.base.pool`: local processes or Ray) can run it anywhere; it
never raises for bad input (every failure becomes an article row with a reason). Every figure
image found is accounted for: it becomes a :class:`Sample` or a skip row with a reason.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from biomedica_kit.base import pool
from biomedica_kit.dataset.licenses import LicenseInfo, with_file_list
from biomedica_kit.etl.article import Article
from biomedica_kit.etl.config import BuildConfig
from biomedica_kit.etl.images import ImageRejected, process_image
from biomedica_kit.etl.jats import JatsError, parse_jats
from biomedica_kit.etl.pubmed import load_cached, sample_fields
from biomedica_kit.etl.schema import article_fields, sample_keys, sample_record
from biomedica_kit.ingest.packages import (
    Package,
    PackageError,
    article_xml_members,
    read_package,
)
from biomedica_kit.ingest.sources import PackageRef, package_sha256

__all__ = ["PRELOAD", "PackageResult", "Sample", "article_row", "process_article",
           "process_package", "run_local", "run_ray", "worker_died"]


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


def article_row(**kw: Any) -> dict[str, Any]:
    """An article row of report/articles.parquet: the defaults, updated with ``kw``."""
    row: dict[str, Any] = {
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
        row = article_row(id=ref.pmcid or ref.name, package=ref.name, pmcid=ref.pmcid,
                           pmid=ref.pmid, status="failed", reason="internal_error",
                           detail=f"{type(exc).__name__}: {exc}"[:500])
        return PackageResult(ref.name, [row], [], [], time.perf_counter() - t0, ref)


def _process_package(ref: PackageRef, cfg: BuildConfig, t0: float) -> PackageResult:
    if ref.duplicate_of:
        row = article_row(id=ref.name, package=ref.name, status="skipped",
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
        row = article_row(id=ref.pmcid or ref.name, package=ref.name, pmcid=ref.pmcid,
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
            rows.append(article_row(
                id=ref.pmcid or (ref.name if len(xmls) == 1 else f"{ref.name}/{xml_name}"),
                package=ref.name, pmcid=ref.pmcid, pmid=ref.pmid, status="failed",
                reason=exc.reason, detail=exc.detail[:500], warnings=warnings))
            continue
        for art in articles:
            if art.id_source != "pmcid" and len(articles) == 1 and ref.pmcid:
                art.id, art.pmcid, art.id_source = ref.pmcid, ref.pmcid, "file_list"
            elif art.id_source == "file":
                art.id = ref.name if len(articles) == 1 else art.id
            row, s, k = process_article(art, ref, pkg, cfg)
            row["warnings"] = warnings
            rows.append(row)
            samples += s
            skips += k
    return PackageResult(ref.name, rows, samples, skips, time.perf_counter() - t0, ref, sha)


def process_article(art: Article, ref: PackageRef, pkg: Package, cfg: BuildConfig
                    ) -> tuple[dict[str, Any], list[Sample], list[dict[str, Any]]]:
    """One parsed article of a package -> ``(article row, samples, skips)``.

    The seam between reading a source and writing shards: :func:`process_package` calls it for
    every article of a PMC package, :func:`biomedica_kit.etl.pairs.process_group` for an
    article assembled from figure-caption pairs. ``pkg.files`` holds the image bytes by member
    name (``pkg.rejected`` says why a member was refused); each figure graphic whose ``file``
    is there becomes a :class:`Sample`, every other one a skip row with a reason. The file
    list's licence in ``ref`` (when given) overrides the article's own, in place on ``art``.
    Bad images are recorded, never raised.
    """
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
    row = article_row(
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


def worker_died(ref: PackageRef, detail: str) -> PackageResult:
    """The result recorded for a package whose worker process died twice (reason
    ``worker_died``); its bytes are not hashed, so its record says ``retry``."""
    row = article_row(id=ref.pmcid or ref.name, package=ref.name, pmcid=ref.pmcid,
                      pmid=ref.pmid, status="failed", reason="worker_died", detail=detail)
    return PackageResult(ref.name, [row], [], [], 0.0, ref)


#: What the fork server imports once for every worker process: this module, and what the
#: first package would otherwise import in each worker (imagehash imports scipy.fftpack on its
#: first pHash, Pillow its format plugins on its first open): about a second per worker.
PRELOAD = ("biomedica_kit.etl.worker", "scipy.fftpack", "PIL.JpegImagePlugin",
           "PIL.PngImagePlugin", "PIL.TiffImagePlugin", "PIL.GifImagePlugin")


def run_local(refs: Iterable[PackageRef], cfg: BuildConfig, workers: int | None, *,
              worker: pool.Worker[PackageRef, BuildConfig, PackageResult] = process_package
              ) -> Iterator[PackageResult]:
    """Process packages on local worker processes, yielding results in input order.

    At most ``4 * workers`` packages are in flight, so memory stays flat however long the list;
    a package whose worker dies twice is recorded by :func:`worker_died`.
    """
    return pool.run_local(refs, cfg, workers, worker=worker, on_death=worker_died,
                          preload=PRELOAD)


def run_ray(refs: Iterable[PackageRef], cfg: BuildConfig, address: str = "local", *,
            num_cpus: int | None = None) -> Iterator[PackageResult]:
    """Process packages as Ray tasks (``address``: ``local``, ``auto`` or a cluster address),
    yielding results in input order; see :func:`biomedica_kit.base.pool.run_ray`."""
    return pool.run_ray(refs, cfg, address, worker=process_package, num_cpus=num_cpus,
                        on_death=worker_died)
