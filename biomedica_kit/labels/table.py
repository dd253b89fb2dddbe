"""The versioned label table: one row per sample, with provenance, ``DATASET/labels/``.

Every change writes a new version ``labels/<NNNNNN>.parquet`` (never edits one), whose rows are
the whole table: ``key``, ``primary_label``, ``secondary_label``, ``panel_type``,
``label_source`` (``proposal``, ``expert`` or ``override``), ``label_version``, ``cluster`` and
``run`` (where the label came from), ``score`` and ``model_version`` (of a proposal),
``decided_by``, ``decided_at``, ``note``, ``dataset_version``, and from expert review
(:mod:`biomedica_kit.labels.review`) ``panel_subtype``, ``annotators`` (a list), ``agreement``
and ``reviewed_at`` (null elsewhere; older versions read with them null). The file's metadata
records the parent version and the change. Precedence: an ``override`` (one sample) outlives
expert decisions and proposals, an ``expert`` decision (a whole cluster: accept, change,
reject) outlives proposals, so re-proposing never loses curation. Labels not in the taxonomy
are refused. The newest version is what :func:`biomedica_kit.tables.connect.connect` shows as
``labels``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.base.atomic import write_parquet_atomic
from biomedica_kit.cluster.run import run_dir
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.labels.taxonomy import PANEL_TYPES, Taxonomy, load_taxonomy

if TYPE_CHECKING:
    import polars as pl

__all__ = ["COLUMNS", "LABELS_DIR", "SOURCES", "Decision", "LabelError", "decide",
           "label_versions", "override", "propagate", "read_labels", "write_version"]

LABELS_DIR = "labels"
SOURCES = ("proposal", "expert", "override")
_RANK = {s: i for i, s in enumerate(SOURCES)}
_VERSION = re.compile(r"^(\d{6})\.parquet$")
COLUMNS = ("key", "primary_label", "secondary_label", "panel_type", "label_source",
           "label_version", "cluster", "run", "score", "model_version", "decided_by",
           "decided_at", "note", "dataset_version", "panel_subtype", "annotators", "agreement",
           "reviewed_at")


class LabelError(ValueError):
    """A label change that cannot be made (unknown label, run or cluster)."""


@dataclass(frozen=True)
class Decision:
    """An expert's decision on one cluster's proposal."""

    cluster: int
    action: str  # accept | change | reject
    primary_label: str | None = None  # change: the labels to use instead
    secondary_label: str | None = None
    panel_type: str | None = None
    by: str | None = None
    note: str | None = None


def label_versions(dataset: str | os.PathLike[str]) -> list[str]:
    """The label versions, oldest first."""
    d = Path(dataset) / LABELS_DIR
    return sorted(m.group(1) for p in d.glob("*.parquet") if (m := _VERSION.match(p.name)))


def read_labels(dataset: str | os.PathLike[str], version: str | None = None) -> pl.DataFrame:
    """A version of the label table (default: the newest; empty when there is none)."""
    import polars as pl

    versions = label_versions(dataset)
    if version is None and not versions:
        return pl.DataFrame(schema=_schema())
    v = version or versions[-1]
    return _conform(pl.read_parquet(Path(dataset) / LABELS_DIR / f"{v}.parquet"))


def _schema() -> dict[str, Any]:
    import polars as pl

    types: dict[str, Any] = {c: pl.String for c in COLUMNS}
    types.update(cluster=pl.Int32, score=pl.Float32, annotators=pl.List(pl.String),
                 agreement=pl.Float32)
    return types


def _conform(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with every column of the schema, in order (missing ones null)."""
    import polars as pl

    types = _schema()
    return rows.with_columns([pl.lit(None).cast(t).alias(c) for c, t in types.items()
                              if c not in rows.columns]).select(
        [pl.col(c).cast(t) for c, t in types.items()])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _write(dataset: Path, rows: pl.DataFrame, change: dict[str, Any]) -> str:
    import polars as pl

    versions = label_versions(dataset)
    new = f"{int(versions[-1]) + 1 if versions else 1:06d}"
    table = _conform(rows.with_columns(pl.lit(new).alias("label_version"))).sort(
        "key").to_arrow()
    meta = {b"biomedica_kit.label_parent": (versions[-1] if versions else "").encode(),
            b"biomedica_kit.label_change": json.dumps(change).encode()}
    write_parquet_atomic(table.replace_schema_metadata(meta),
                         dataset / LABELS_DIR / f"{new}.parquet")
    return new


def _check_label(tax: Taxonomy, primary: str | None, secondary: str | None,
                 panel: str | None) -> None:
    if not tax.holds(primary, secondary):
        raise LabelError(f"({primary!r}, {secondary!r}) is not a label of taxonomy "
                         f"{tax.source} (a secondary label must sit under its primary)")
    if panel is not None and panel not in PANEL_TYPES:
        raise LabelError(f"panel type {panel!r} is not one of {PANEL_TYPES}")


def _merge(old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """``new`` rows replace ``old`` rows of the same key unless the old label has higher
    precedence (:data:`SOURCES`)."""
    import polars as pl

    both = pl.concat([old.with_columns(pl.lit(0).alias("_age")),
                      new.select(old.columns).with_columns(pl.lit(1).alias("_age"))],
                     how="vertical_relaxed")
    rank = pl.col("label_source").replace_strict(_RANK, default=0)
    return (both.with_columns(rank.alias("_rank"))
            .sort(["key", "_rank", "_age"], descending=[False, True, True])
            .unique("key", keep="first").drop("_rank", "_age"))


def propagate(dataset: str | os.PathLike[str], run: str, *,
              taxonomy: str | os.PathLike[str] | None = None) -> str:
    """A new version giving every sample of ``run`` its cluster's proposal (expert and
    override labels kept). Returns the new label version."""
    import polars as pl

    root = Path(dataset)
    out = run_dir(root, run)
    if not (out / "proposals.parquet").is_file():
        raise LabelError(f"run {run!r} has no proposals; run `biomedica propose` first")
    tax = load_taxonomy(taxonomy)
    props = pl.read_parquet(out / "proposals.parquet")
    for r in props.iter_rows(named=True):
        _check_label(tax, r["primary_label"], r["secondary_label"], r["panel_type"])
    with dataset_lock(root, "propose"):
        version = read_manifest(root)["dataset_version"]
        assigned = pl.read_parquet(out / "assignments.parquet", columns=["key", "cluster"])
        rows = assigned.join(props.select("cluster", "primary_label", "secondary_label",
                                          "panel_type", "score", "model_version"),
                             on="cluster", how="left").with_columns(
            label_source=pl.lit("proposal"), run=pl.lit(run), decided_by=pl.lit(None),
            decided_at=pl.lit(_now()), note=pl.lit(None), dataset_version=pl.lit(version),
            label_version=pl.lit(None))
        rows = _conform(rows)
        return _write(root, _merge(read_labels(root).select(rows.columns), rows),
                      {"kind": "proposal", "run": run})


def decide(dataset: str | os.PathLike[str], run: str, decisions: Iterable[Decision], *,
           taxonomy: str | os.PathLike[str] | None = None) -> str:
    """A new version recording expert decisions on clusters of ``run``: ``accept`` takes the
    proposal, ``change`` the decision's labels, ``reject`` clears the labels (the samples
    stay, labelled as rejected by an expert). Per-sample overrides are kept."""
    import polars as pl

    root = Path(dataset)
    out = run_dir(root, run)
    tax = load_taxonomy(taxonomy)
    props = {r["cluster"]: r for r in pl.read_parquet(out / "proposals.parquet")
             .iter_rows(named=True)}
    new_rows = []
    with dataset_lock(root, "label"):
        version = read_manifest(root)["dataset_version"]
        assigned = pl.read_parquet(out / "assignments.parquet", columns=["key", "cluster"])
        for d in decisions:
            if d.cluster not in props:
                raise LabelError(f"run {run!r} has no cluster {d.cluster}")
            p = props[d.cluster]
            if d.action == "accept":
                labs = (p["primary_label"], p["secondary_label"], p["panel_type"])
            elif d.action == "change":
                labs = (d.primary_label, d.secondary_label, d.panel_type or p["panel_type"])
            elif d.action == "reject":
                labs = (None, None, None)
            else:
                raise LabelError(f"unknown action {d.action!r} (accept, change, reject)")
            _check_label(tax, *labs)
            members = assigned.filter(pl.col("cluster") == d.cluster)
            new_rows.append(members.with_columns(
                primary_label=pl.lit(labs[0]), secondary_label=pl.lit(labs[1]),
                panel_type=pl.lit(labs[2]), label_source=pl.lit("expert"), run=pl.lit(run),
                score=pl.lit(p["score"] if d.action == "accept" else None),
                model_version=pl.lit(p["model_version"] if d.action == "accept" else None),
                decided_by=pl.lit(d.by), decided_at=pl.lit(_now()),
                note=pl.lit(f"{d.action}" + (f": {d.note}" if d.note else "")),
                dataset_version=pl.lit(version), label_version=pl.lit(None)))
        if not new_rows:
            raise LabelError("no decisions given")
        rows = _conform(pl.concat(new_rows))
        merged = _merge(read_labels(root).select(rows.columns), rows)
        return _write(root, merged, {"kind": "expert", "run": run,
                                     "clusters": [d.cluster for d in decisions]})


def override(dataset: str | os.PathLike[str], keys: Iterable[str], *, primary_label: str | None,
             secondary_label: str | None, panel_type: str | None = None,
             by: str | None = None, note: str | None = None,
             taxonomy: str | os.PathLike[str] | None = None) -> str:
    """A new version setting the labels of individual samples (``label_source`` override)."""
    import polars as pl

    root = Path(dataset)
    tax = load_taxonomy(taxonomy)
    _check_label(tax, primary_label, secondary_label, panel_type)
    keys = sorted(set(keys))
    with dataset_lock(root, "label"):
        version = read_manifest(root)["dataset_version"]
        old = read_labels(root)
        prev = {r["key"]: r for r in old.filter(pl.col("key").is_in(keys)).iter_rows(named=True)}
        rows = pl.DataFrame([{
            "key": k, "primary_label": primary_label, "secondary_label": secondary_label,
            "panel_type": panel_type, "label_source": "override", "label_version": None,
            "cluster": prev.get(k, {}).get("cluster"), "run": prev.get(k, {}).get("run"),
            "score": None, "model_version": None, "decided_by": by, "decided_at": _now(),
            "note": note, "dataset_version": version} for k in keys], schema=_schema())
        merged = pl.concat([old.join(rows.select("key"), on="key", how="anti"), rows])
        return _write(root, merged, {"kind": "override", "keys": len(keys)})


def write_version(dataset: str | os.PathLike[str], rows: pl.DataFrame,
                  change: dict[str, Any]) -> str:
    """Write ``rows`` (the whole table) as a new version recording ``change``; returns it.
    Labels not in the taxonomy are the caller's to refuse (review reports them)."""
    root = Path(dataset)
    with dataset_lock(root, "labels"):
        return _write(root, _conform(rows), change)
