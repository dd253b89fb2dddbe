"""``biomedica import-pairs``: a dataset from image-caption pairs, built exactly as ``build``.

The pairs file is read by :func:`biomedica_kit.ingest.pairs.read_pairs`; each article's pairs
(a :class:`~biomedica_kit.ingest.pairs.PairGroup`) become one "package": a file-list row
(``File`` = ``<pairs file>#<group>``, ``Accession ID`` = its PMCID, ``License`` = its licence)
handed to :func:`biomedica_kit.etl.build.build` with a runner that turns each group into the
build's :class:`~biomedica_kit.etl.worker.PackageResult` through the same per-article code as
a JATS package (:mod:`biomedica_kit.etl.worker`): the same image policy, skip reasons,
licence categories (the licence given, classified as the file list's ``License`` column is;
none given -> ``other``), sample keys and json. The build's writer, report, manifest,
resumption and lock do the rest, so ``verify`` checks the result like any build.

Fields of a pair that the build does not know are kept in the sample json (prefixed with
``pair_`` where a name is taken). Re-importing into the same ``--out`` adds the articles that
are new; an article already imported is not re-read.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from biomedica_kit.base.atomic import atomic_path
from biomedica_kit.base.pool import ordered_window
from biomedica_kit.dataset.licenses import classify_license
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.etl.article import Article, Figure, Graphic
from biomedica_kit.etl.build import BuildConfig, BuildSummary, NothingToBuild, build
from biomedica_kit.etl.worker import PackageResult, process_article
from biomedica_kit.ingest.packages import Package
from biomedica_kit.ingest.pairs import PairGroup, read_pairs
from biomedica_kit.ingest.sources import FILE_LIST_COLUMNS, LAST_UPDATED, PackageRef

__all__ = ["import_pairs", "process_group"]

PAIRS_CACHE = Path("cache") / "pairs"


def _year(value: object) -> int | None:
    try:
        return int(str(value)[:4])
    except (TypeError, ValueError):
        return None


def _article(group: PairGroup, files: set[str]) -> Article:
    pmcid, doi = group.field("pmcid"), group.field("doi")
    lic = classify_license(file_list=group.field("license"))
    art_id = pmcid or (f"doi_{doi}" if doi else f"pairs_{group.id}")
    figures = []
    for i, r in enumerate(group.rows):
        fid = str(r.extra.get("figure_id") or r.extra.get("id") or f"pair{i + 1}")
        figures.append(Figure(
            id=fid, label=r.fields.get("figure_label"), caption=r.caption.strip(),
            caption_title=None, kind="figure",
            graphics=[Graphic(href=r.image, file=r.image if r.image in files else None)],
            inline_refs=[]))
    return Article(
        id=art_id, id_source="pmcid" if pmcid else "doi" if doi else "pairs", pmcid=pmcid,
        pmid=None, doi=doi, title=group.field("paper_title") or group.field("title"),
        abstract=None, journal=group.field("journal"), journal_nlm_ta=None, issn=None,
        publisher=None, pub_date=None, year=_year(group.field("year")), article_type=None,
        language=None, subjects=[], keywords=[], license_url=None, license_type=None,
        license_text=group.field("license"), license_code=lic.code,
        license_category=lic.category, license_source=lic.source, copyright=None,
        source_file=None, figures=figures)


def process_group(item: tuple[PackageRef, PairGroup], cfg: BuildConfig, base: str
                  ) -> PackageResult:
    """One article's pairs -> the build's result (images read relative to ``base``)."""
    ref, group = item
    files: dict[str, bytes] = {}
    rejected: dict[str, str] = {}
    h = hashlib.sha256(group.digest().encode())
    for r in group.rows:
        path = Path(base) / r.image
        try:
            data = path.read_bytes()
        except OSError as exc:
            rejected[r.image] = f"image_missing: {exc.strerror or exc}"
            continue
        files[r.image] = data
        h.update(hashlib.sha256(data).digest())
    art = _article(group, set(files))
    pkg = Package(name=ref.name, files=files, names=sorted(files), rejected=rejected)
    row, samples, skips = process_article(art, ref, pkg, cfg)
    for s in samples:  # one figure per row, so a sample's figure_index is its row
        for k, v in group.rows[s.meta["figure_index"]].extra.items():
            s.meta[k if k not in s.meta else f"pair_{k}"] = v
    return PackageResult(ref.name, [row], samples, skips, 0.0, ref, h.hexdigest())


def _write_file_list(path: Path, pairs_name: str, groups: list[PairGroup]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FILE_LIST_COLUMNS)
        w.writeheader()
        for g in groups:
            w.writerow({"File": f"{pairs_name}#{g.id}", "Article Citation": "",
                        "Accession ID": g.field("pmcid") or "", LAST_UPDATED: "",
                        "PMID": "", "License": g.field("license") or ""})


def import_pairs(pairs: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 workers: int | None = None, progress: bool = True,
                 config: BuildConfig | None = None) -> BuildSummary:
    """Build (or add to) the dataset ``out`` from a pairs file (see module doc).

    :class:`NothingToBuild` when the file holds no pairs; the summary's ``problem`` says when
    no sample could be written.
    """
    pairs = Path(pairs).resolve()
    groups = read_pairs(pairs)
    if not groups:
        raise NothingToBuild(f"{pairs} holds no image-caption pairs")
    out = Path(out)
    file_list = out / PAIRS_CACHE / f"{pairs.name}.oa_file_list.csv"
    by_file = {f"{pairs.name}#{g.id}": g for g in groups}
    base = str(pairs.parent)

    def runner(refs: Iterable[PackageRef], cfg: BuildConfig) -> Iterator[PackageResult]:
        items = ((r, by_file[r.file or r.name]) for r in refs)
        fn = partial(process_group, cfg=cfg, base=base)
        n = workers if workers is not None else (os.cpu_count() or 1)
        if n <= 1:
            yield from map(fn, items)
            return
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
            yield from ordered_window(pool, fn, items, 4 * n)

    with dataset_lock(out, "import-pairs"):  # the build takes it again (re-entrant)
        _write_file_list(file_list, pairs.name, groups)
        return build(pairs.parent, out, file_list=file_list, config=config,
                     progress=progress, runner=runner)
