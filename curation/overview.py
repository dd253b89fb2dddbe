"""What the review notebook (``notebooks/06_review.ipynb``) shows, from local files only.

:func:`review_overview` reads a run's review folder (the last pull's task snapshot and report,
``DATASET/review/<run>/``) and the label table: review progress per task kind and per expert,
agreement, the label distribution before review (the label version the pull started from)
and after it, the samples whose labels changed, and a Label Studio link for every task. It
needs no running server.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.labels.table import LABELS_DIR, read_labels
from curation.pull import tasks_snapshot
from curation.push import REVIEW_DIR, read_project, review_dir

if TYPE_CHECKING:
    import polars as pl

__all__ = ["ReviewOverview", "label_parent", "latest_pushed_run", "review_overview"]


@dataclass
class ReviewOverview:
    """The tables of the review notebook."""

    run: str
    project_url: str
    progress: pl.DataFrame  # kind, tasks, reviewed, annotations
    experts: pl.DataFrame  # annotator, annotations (not skipped)
    agreement: dict[str, Any]
    conflicts: list[dict[str, Any]]
    bad: list[dict[str, Any]]
    before: str | None  # label versions compared
    after: str | None
    distribution: pl.DataFrame  # primary_label, before, after
    changed: pl.DataFrame  # key, labels before and after, label_source
    links: pl.DataFrame  # ref, task, url


def _who(annotation: dict[str, Any]) -> str:
    """An annotation's author: Label Studio's ``created_username`` is ``" email, id"``."""
    name = str(annotation.get("created_username") or "").strip()
    return name.rsplit(",", 1)[0].strip() or f"user {annotation.get('completed_by')}"


def latest_pushed_run(dataset: str | os.PathLike[str]) -> str:
    """The most recently pushed run of ``dataset``."""
    pushed = sorted((Path(dataset) / REVIEW_DIR).glob("*/project.json"),
                    key=lambda p: p.stat().st_mtime_ns)
    if not pushed:
        raise FileNotFoundError(f"{dataset}: nothing pushed for review yet")
    return pushed[-1].parent.name


def label_parent(dataset: str | os.PathLike[str], version: str) -> str | None:
    """The label version ``version`` was made from (None for the first)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(Path(dataset) / LABELS_DIR / f"{version}.parquet").metadata or {}
    parent = meta.get(b"biomedica_kit.label_parent", b"").decode()
    return parent or None


def review_overview(dataset: str | os.PathLike[str], run: str | None = None
                    ) -> ReviewOverview:
    """The review's progress, agreement and effect (module doc)."""
    import polars as pl

    root = Path(dataset)
    run = run or latest_pushed_run(root)
    rec = read_project(root, run) or {}
    folder = review_dir(root, run)
    tasks = tasks_snapshot(folder)
    report_path = folder / "pull-report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    rows = []
    for tid, t in sorted(tasks.items()):
        done = [a for a in t["annotations"] if not a.get("was_cancelled")]
        rows.append({"kind": str(t.get("ref") or "other/").split("/")[0], "task": tid,
                     "ref": t.get("ref"), "annotations": len(done),
                     "annotators": [_who(a) for a in done]})
    tasks_df = pl.DataFrame(rows, schema={"kind": pl.String, "task": pl.Int64,
                                          "ref": pl.String, "annotations": pl.Int64,
                                          "annotators": pl.List(pl.String)})
    progress = tasks_df.group_by("kind").agg(
        tasks=pl.len(), reviewed=(pl.col("annotations") > 0).sum(),
        annotations=pl.col("annotations").sum()).sort("kind")
    after = report.get("label_version")
    before = label_parent(root, after) if after else None
    new = read_labels(root, after) if after else read_labels(root)
    old = read_labels(root, before) if before else new.clear()
    experts = (tasks_df.explode("annotators").drop_nulls("annotators")
               .group_by("annotators").agg(annotations=pl.len())
               .rename({"annotators": "annotator"}).sort("annotator"))
    dist = (old.group_by("primary_label").agg(before=pl.len())
            .join(new.group_by("primary_label").agg(after=pl.len()), on="primary_label",
                  how="full", coalesce=True)
            .fill_null(0).sort("after", descending=True))
    changed = (old.select("key", before_primary="primary_label",
                          before_secondary="secondary_label")
               .join(new.select("key", "primary_label", "secondary_label", "label_source",
                                "annotators", "agreement"), on="key", how="inner")
               .filter((pl.col("before_primary") != pl.col("primary_label"))
                       | (pl.col("before_secondary") != pl.col("secondary_label"))
                       | pl.col("before_secondary").is_null()
                       != pl.col("secondary_label").is_null())
               .sort("key"))
    url = f"{rec.get('url', '')}/projects/{rec.get('project', '')}"
    links = tasks_df.select("ref", "task").with_columns(
        url=pl.format(f"{url}/data?task={{}}", pl.col("task")))
    return ReviewOverview(run=run, project_url=url, progress=progress, experts=experts,
                          agreement=report.get("agreement", {}),
                          conflicts=report.get("conflicts", []), bad=report.get("bad", []),
                          before=before, after=after, distribution=dist, changed=changed,
                          links=links)
