"""What a build reports: :class:`BuildSummary` (printed by the CLI, stored in
``report/build.json``) and the ``report/`` tables (articles, skips, samples, packages)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from biomedica_kit.base.atomic import write_parquet_atomic
from biomedica_kit.etl.ledger import PACKAGE_COLUMNS, SAMPLE_COLUMNS

__all__ = ["ARTICLE_COLUMNS", "SKIP_COLUMNS", "BuildSummary", "write_reports"]

ARTICLE_COLUMNS = ("id", "status", "reason", "detail", "package", "pmcid", "pmid", "doi",
                   "journal", "year", "license_code", "license_category", "license_source",
                   "n_figures", "n_images", "n_samples", "warnings", "package_id")
SKIP_COLUMNS = ("article_id", "figure_id", "key", "graphic", "reason", "detail", "package",
                "package_id")


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


@dataclass
class BuildSummary:
    """Counts of the dataset after a build (printed by the CLI, stored in report/build.json).

    Counts are of the whole dataset; ``new_packages`` / ``unchanged_packages`` say what this run
    processed and what it found already built, ``failed_packages`` (reason -> count) which of
    this run's packages gave no usable article.
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
    failed_packages: dict[str, int] = field(default_factory=dict)

    @property
    def reconciles(self) -> bool:
        """Whether every figure image is a sample or a skip row."""
        return self.images == self.samples + sum(self.skips.values())

    @property
    def problem(self) -> str | None:
        """Why this run is a failure although it completed (every package it processed
        failed), or None."""
        n = sum(self.failed_packages.values())
        if not self.new_packages or n < self.new_packages:
            return None
        return (f"all {n} packages processed by this run failed "
                f"({_counts(self.failed_packages)}); see {self.out}/report/articles.parquet")

    def format_lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        skipped = sum(self.skips.values())
        f = self.fetch
        lines = [
            f"dataset {self.out} version {self.dataset_version}"
            + (f" (parent {self.parent})" if self.parent else ""),
            f"this run: {self.new_packages} packages processed, {self.unchanged_packages} "
            "already built"
            + (f"; downloads {f['downloaded']}, from cache {f['cached']}, failed {f['failed']}, "
               f"requests {f['requests']}, retries {f['retries']}" if f else ""),
            f"packages {self.packages}  articles {_counts(self.articles)}",
            f"figures {self.figures}  figure images {self.images}  samples {self.samples}  "
            f"skipped {skipped}  shards {self.shards}  exact duplicates {self.exact_duplicates}",
            "samples by subset " + " ".join(f"{k}={v}" for k, v in self.samples_by_subset.items()),
        ]
        if self.skips:
            lines.append(f"skips by reason {_counts(self.skips)}")
        lines.append(f"reconciles: {self.images} images = {self.samples} samples + {skipped} "
                     f"skips -> {'yes' if self.reconciles else 'NO'}  ({self.seconds:.1f} s)")
        return lines


def write_reports(out: Path, arts: list[dict], skips: list[dict], samples: list[dict],
                  pkgs: list[dict]) -> None:
    """report/: articles and skips (what users read), samples and packages (the build state)."""
    import pyarrow as pa

    def strings(cols: tuple[str, ...]) -> pa.Schema:
        return pa.schema([(c, pa.string()) for c in cols])

    ints = {"year", "n_figures", "n_images", "n_samples"}
    article_schema = pa.schema([
        (c, pa.list_(pa.string()) if c == "warnings" else pa.int64() if c in ints
         else pa.string()) for c in ARTICLE_COLUMNS])
    pkg_schema = pa.schema([(c, pa.int64() if c in ("size", "mtime_ns") else pa.string())
                            for c in PACKAGE_COLUMNS])
    for name, rows, cols, schema in (
        ("articles", arts, ARTICLE_COLUMNS, article_schema),
        ("skips", skips, SKIP_COLUMNS, strings(SKIP_COLUMNS)),
        ("samples", samples, SAMPLE_COLUMNS, strings(SAMPLE_COLUMNS)),
        ("packages", pkgs, PACKAGE_COLUMNS, pkg_schema),
    ):
        table = pa.table({c: [r.get(c) for r in rows] for c in cols}, schema=schema)
        write_parquet_atomic(table, out / "report" / f"{name}.parquet")
