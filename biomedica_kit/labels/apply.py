"""Reviewed labels into the shards (a new dataset version), and joined by key at stream time.

Shards cannot be edited in place (webdataset #103, #146), so labels reach training two ways:

- **Side table, at once**: :class:`LabelJoin` is a pipeline stage that adds a label version's
  fields to every streamed sample by its key (``sample["labels"]``, None for a key without a
  label). It works on any iterator of samples: the pipelines and subset streams of
  :mod:`biomedica_kit.tables.stream` (decoded ``key`` or raw ``__key__``), e.g.
  ``pipe.append(LabelJoin(dataset))`` before batching.
- **Write-back**: :func:`apply_labels` makes a new dataset version whose sample json carries
  the labels under BIOMEDICA's keys (``image_primary_label`` and ``image_secondary_label`` as
  lists, ``image_panel_type``, ``image_panel_subtype``, ``image_label_id`` = the cluster id)
  and ours (``label_source``, ``label_version``, ``annotators``, ``agreement``), through
  :func:`biomedica_kit.dataset.changes.apply_changes`: image and caption bytes unchanged,
  only shards holding a changed sample rewritten, the manifest naming its parent and the
  change, made current by one atomic rename (a kill -9 leaves the old version current), and
  :func:`biomedica_kit.dataset.verify.verify_change` able to prove that only these fields
  changed. The metadata export is refreshed afterwards, so the Parquet tables, queries and
  subsets see the new labels.

Label rows whose key is not in the dataset are reported (``stale``), not applied.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomedica_kit.dataset.changes import apply_changes
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.labels.table import SOURCES, label_versions, read_labels
from biomedica_kit.tables.export import META_DIR, export

__all__ = ["JOINED", "LABEL_FIELDS", "ApplySummary", "LabelJoin", "apply_labels",
           "sample_fields"]

#: The json fields a write-back sets (declared to apply_changes and verify).
LABEL_FIELDS = ("image_primary_label", "image_secondary_label", "image_panel_type",
                "image_panel_subtype", "image_label_id", "label_source", "label_version",
                "annotators", "agreement")
#: The label-table columns :class:`LabelJoin` hands out.
JOINED = ("primary_label", "secondary_label", "panel_type", "panel_subtype", "cluster",
          "label_source", "label_version", "annotators", "agreement", "reviewed_at")


def sample_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The json fields of one label-table row (BIOMEDICA's shapes: label lists)."""
    agreement = row.get("agreement")
    return {
        "image_primary_label": [row["primary_label"]] if row.get("primary_label") else [],
        "image_secondary_label": [row["secondary_label"]] if row.get("secondary_label")
        else [],
        "image_panel_type": row.get("panel_type"),
        "image_panel_subtype": row.get("panel_subtype"),
        "image_label_id": None if row.get("cluster") is None else str(row["cluster"]),
        "label_source": row.get("label_source"),
        "label_version": row.get("label_version"),
        "annotators": list(row.get("annotators") or []),
        "agreement": None if agreement is None else round(float(agreement), 4),
    }


@dataclass
class ApplySummary:
    """What :func:`apply_labels` did (or, with ``dry_run``, would do)."""

    label_version: str
    parent: str
    dataset_version: str  # the new version (the parent when nothing changed or dry run)
    labelled: int  # samples with a label row
    changed: int  # samples whose json changes
    shards_rewritten: int
    shards_reused: int
    by_source: dict[str, int]
    stale: list[str] = field(default_factory=list)
    dry_run: bool = False

    def format_lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        verb = "would change" if self.dry_run else "changed"
        return [f"labels   version {self.label_version}: {self.labelled} samples ("
                + ", ".join(f"{k} {v}" for k, v in sorted(self.by_source.items())) + ")",
                f"samples  {self.changed} {verb}; shards {self.shards_rewritten} "
                f"{'to rewrite' if self.dry_run else 'rewritten'}, {self.shards_reused} reused",
                f"dataset  {self.parent} -> {self.dataset_version}"
                + (" (dry run)" if self.dry_run else ""),
                *([f"stale    {len(self.stale)} label rows name keys not in the dataset "
                   f"(e.g. {self.stale[0]})"] if self.stale else [])]


def _current_json(root: Path, rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The json member of each figures row, read by its byte range."""
    out: dict[str, dict[str, Any]] = {}
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_shard.setdefault(r["shard"], []).append(r)
    for shard, items in by_shard.items():
        with open(root / shard, "rb") as f:
            for r in sorted(items, key=lambda r: r["json_offset"]):
                f.seek(r["json_offset"])
                out[r["key"]] = json.loads(f.read(r["json_length"]))
    return out


def apply_labels(dataset: str | os.PathLike[str], version: str | None = None, *,
                 dry_run: bool = False, sources: Iterable[str] | None = None) -> ApplySummary:
    """Write label ``version`` (default: the newest) into a new dataset version (module doc).

    ``sources`` limits the rows applied (e.g. ``("expert", "override")``: reviewed only).
    """
    import polars as pl

    root = Path(dataset)
    versions = label_versions(root)
    if not versions or (version is not None and version not in versions):
        raise FileNotFoundError(f"{root}: no label version {version or '(any)'} "
                                f"(have: {versions})")
    version = version or versions[-1]
    wanted = set(sources or SOURCES)
    labels = read_labels(root, version).filter(pl.col("label_source").is_in(sorted(wanted)))
    with dataset_lock(root, "apply-labels"):
        export(root)
        parent = read_manifest(root)["dataset_version"]
        figures = pl.read_parquet(root / META_DIR / "figures.parquet",
                                  columns=["key", "shard", "json_offset", "json_length"])
        present = labels.join(figures, on="key", how="inner")
        stale = sorted(set(labels["key"]) - set(present["key"]))
        rows = present.to_dicts()
        current = _current_json(root, rows)
        changes: dict[str, dict[str, Any]] = {}
        shards: set[str] = set()
        for r in rows:
            upd = sample_fields(r)
            if any(current[r["key"]].get(k, object()) != v for k, v in upd.items()):
                changes[r["key"]] = upd
                shards.add(r["shard"])
        n_shards = len(read_manifest(root)["shards"])
        by_source = dict(Counter(labels["label_source"].to_list()))
        summary = ApplySummary(label_version=version, parent=parent, dataset_version=parent,
                               labelled=len(rows), changed=len(changes),
                               shards_rewritten=len(shards),
                               shards_reused=n_shards - len(shards), by_source=by_source,
                               stale=stale, dry_run=dry_run)
        if dry_run or not changes:
            return summary
        done = apply_changes(root, changes, kind="apply-labels", fields=list(LABEL_FIELDS),
                             note=json.dumps({"labels": version, "samples": len(changes),
                                              "by_source": by_source}))
        if done is not None:
            summary.dataset_version = done.dataset_version
            summary.shards_rewritten = done.shards_rewritten
            summary.shards_reused = done.shards_reused
            summary.changed = done.samples_changed
        export(root)
        return summary


class LabelJoin:
    """A pipeline stage: adds ``sample["labels"]`` (the :data:`JOINED` columns of a label
    version's row for the sample's key, or None) to every sample passing through."""

    def __init__(self, dataset: str | os.PathLike[str], version: str | None = None, *,
                 columns: Sequence[str] = JOINED) -> None:
        table = read_labels(dataset, version)
        known = label_versions(dataset)
        self.version: str | None = version or (known[-1] if known else None)
        self.columns = tuple(columns)
        self._rows = {r["key"]: {c: r[c] for c in self.columns}
                      for r in table.select(["key", *self.columns]).iter_rows(named=True)}

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The labels of ``key`` (a copy), or None."""
        row = self._rows.get(key)
        return None if row is None else dict(row)

    def __call__(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for s in samples:
            key = s.get("key", s.get("__key__"))
            s["labels"] = None if key is None else self.lookup(str(key))
            yield s
