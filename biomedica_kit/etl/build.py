"""Build a dataset: packages -> (parse + images, in workers) -> shards, manifest and report.

img2dataset's cut: a *reader* lists packages (:mod:`biomedica_kit.ingest.sources`), a *worker*
turns one package into samples (:func:`biomedica_kit.etl.worker.process_package`, a pure function
of the package), a *distributor* runs workers (:mod:`biomedica_kit.base.pool`: local processes by
default, or Ray), and a single *writer* (:class:`biomedica_kit.etl.writer.DatasetWriter`) in the
main process appends samples to shards in package order, so the output does not depend on which
worker finished first. This module ties them together under the dataset's writer lock.

Builds are incremental and resumable (:mod:`biomedica_kit.etl.ledger`): a package already
recorded in the dataset is not processed again, new shards are numbered after the existing ones,
and the writer checkpoints its progress durably every ``checkpoint_every`` packages. Packages of
a remote source are downloaded (rate-limited, verified, cached) by
:mod:`biomedica_kit.ingest.fetch` on the way in.

Every figure image found is accounted for: it becomes a sample or a row of
``report/skips.parquet`` with a reason, so ``n_images == samples + skips`` holds exactly.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from biomedica_kit.base.atomic import atomic_write_bytes
from biomedica_kit.dataset.licenses import CATEGORIES
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import ShardEntry, version_id, write_manifest
from biomedica_kit.etl.config import CHECKPOINT_EVERY, BuildConfig
from biomedica_kit.etl.ledger import DatasetState, file_list_row, records_table_rows
from biomedica_kit.etl.summary import BuildSummary, write_reports
from biomedica_kit.etl.worker import PackageResult, run_local, run_ray
from biomedica_kit.etl.writer import DatasetWriter
from biomedica_kit.ingest.sources import (
    PackageRef,
    Selection,
    describe_folder,
    discover_local,
    is_remote,
    iter_file_list,
    refs_from_file_list,
    source_uri,
    stat_package,
)

if TYPE_CHECKING:  # requests is imported only when a remote source is built
    from biomedica_kit.ingest.fetch import FetchPolicy

__all__ = ["BuildConfig", "BuildSummary", "NothingToBuild", "Runner", "build", "run_local",
           "run_ray"]

Runner = Callable[[Iterable[PackageRef], BuildConfig], Iterable[PackageResult]]


class NothingToBuild(ValueError):
    """The source holds no package, or the selection matched none of them."""


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
    checkpoint_every: int = CHECKPOINT_EVERY,
) -> BuildSummary:
    """Build a dataset from a PMC OA source into ``out``, or add what is new to it.

    ``source`` is a local folder (NCBI layout with ``oa_file_list.csv``, or a flat folder of
    packages) or an ``http(s)://`` mirror in NCBI's layout, whose packages are downloaded into
    ``cache`` (default ``out/cache/packages``) under ``fetch_policy``
    (:class:`biomedica_kit.ingest.fetch.FetchPolicy`). ``selection`` (and ``limit``) pick
    packages; a source without packages, or a selection that matches none, raises
    :class:`NothingToBuild` (saying what the source holds) before a dataset is made.

    When ``out`` already holds a dataset, packages it already recorded are skipped and the rest
    are added as a new version whose parent is the current one. ``resume=None`` (default) does
    this only when the dataset was built from the same source; ``True`` also continues a
    dataset built from another source; ``False`` refuses any existing dataset. The build
    configuration must always match (:class:`FileExistsError` otherwise).

    ``runner`` replaces the distributor (it gets an iterable of refs, yields results in order);
    ``ray`` runs on Ray (``local`` or a cluster address); otherwise ``workers`` local processes.
    The summary's :attr:`~BuildSummary.problem` says when every package of the run failed.
    """
    cfg = config or BuildConfig()
    out = Path(out)
    sel = selection or Selection()
    if limit is not None:
        sel = replace(sel, limit=limit)
    remote = is_remote(source)
    t0 = time.perf_counter()
    info = {"source": source_uri(source), "config": json.loads(json.dumps(asdict(cfg)))}
    selected: list[PackageRef] | None = None
    if not remote:  # a local source is checked before anything is created
        selected = _select(discover_local(source, file_list), sel, source,
                           lambda: describe_folder(source, file_list))
    with dataset_lock(out, "build"):
        state = DatasetState.load(out)
        _check_continuation(state, info, resume, out)
        state.collect_garbage()
        fetcher = None
        if remote:
            from biomedica_kit.ingest.fetch import Fetcher

            fetcher = Fetcher(str(source), cache or out / "cache" / "packages", fetch_policy)
            fl = (file_list if file_list and not is_remote(file_list)
                  else fetcher.fetch_file_list(str(file_list) if file_list else None))
            selected = _select(refs_from_file_list(iter_file_list(fl), info["source"]), sel,
                               source, lambda: "its file list has no rows")
        assert selected is not None
        todo, unchanged = _plan(selected, state, remote)
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


def _select(refs: Iterable[PackageRef], sel: Selection, source: str | os.PathLike,
            contents: Callable[[], str]) -> list[PackageRef]:
    """The selected packages; :class:`NothingToBuild` when there are none, saying why
    (``contents`` says what a source without packages holds)."""
    seen = 0

    def counted() -> Iterable[PackageRef]:
        nonlocal seen
        for r in refs:
            seen += 1
            yield r

    selected = sel.apply(counted())
    if selected:
        return selected
    if not seen:
        raise NothingToBuild(f"no packages in {source}: {contents()}")
    raise NothingToBuild(f"the selection ({sel.describe()}) matched none of the {seen} "
                         f"packages of {source}")


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
        if not remote and not ref.duplicate_of and not ref.failure:
            st = stat_package(ref.location)
            if st is not None:
                ref = replace(ref, size=st[0], mtime_ns=st[1])
        rec = state.records.get(ref.id)
        if (rec is not None and rec.status == "done" and file_list_row(rec) == file_list_row(ref)
                and (remote or ref.duplicate_of or (rec.size, rec.mtime_ns) == (ref.size,
                                                                                ref.mtime_ns))):
            unchanged += 1
            continue
        todo.append(ref)
    return todo, unchanged


def _finish(out: Path, state: DatasetState, writer: DatasetWriter, shards: list[ShardEntry],
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
    if prev is not None and not writer.changed:
        manifest = prev
    else:
        parent = prev["dataset_version"] if prev else None
        if prev and version_id(shards) == parent:
            parent = prev.get("parent")  # same shards (only records changed): same lineage
        # The manifest is the commit point; report/ and the checkpoints follow. Replaying the
        # checkpoints is idempotent, so a crash between these steps loads to the same state.
        manifest = write_manifest(out, shards, parent=parent, config=info["config"],
                                  counts=counts, extra={"build": {
                                      "source": info["source"], "selection": sel.to_dict()}})
        write_reports(out, arts, skips, samples, pkgs)
        state.drop_chunks()
    summary = BuildSummary(
        out=str(out), dataset_version=manifest["dataset_version"], packages=len(pkgs),
        articles=dict(status), figures=counts["figures"], images=counts["images"],
        samples=len(samples), skips=dict(skip_reasons),
        samples_by_subset=counts["samples_by_subset"],
        exact_duplicates=counts["exact_duplicates"], shards=len(shards),
        seconds=round(seconds, 3), new_packages=writer.added, unchanged_packages=unchanged,
        parent=manifest.get("parent"), fetch=fetch, failed_packages=dict(writer.failed))
    atomic_write_bytes(out / "report" / "build.json",
                       json.dumps({**asdict(summary), "reconciles": summary.reconciles},
                                  indent=2).encode())
    return summary

