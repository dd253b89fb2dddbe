"""Expert review -> per-sample labels: votes resolved by majority, agreement, a label version.

Review tools (the Label Studio bridge in ``curation/``) hand in :class:`Vote` objects, one per
expert and review target, each already checked against the taxonomy. A target is a cluster
of a run (the vote applies to every member) or one sample (it overrides the sample's cluster).

:func:`resolve` groups votes by target and takes the majority label (a label pair, or a flag
such as ``not a figure`` when no label was given); a tie is a conflict that is listed and not
applied. Every disagreement is listed too, with each expert's vote. Agreement is recorded per
target (the share of its experts voting for the winner) and overall: Fleiss' kappa (with a
kappa per label) and Krippendorff's alpha over targets with two or more experts
(:mod:`biomedica_kit.labels.agreement`). Panel type and subtype are majority votes of their
own among the experts who gave them.

:func:`record_review` writes the result as a new version of the label table
(:mod:`biomedica_kit.labels.table`): cluster reviews as ``expert`` rows for every member of
the cluster, sample reviews as ``override`` rows, with ``annotators``, ``agreement``,
``reviewed_at`` and a ``note`` that starts with the review's ``origin``. Rows of an earlier
pull of the same origin are replaced as a whole (a changed review replaces the old one, and a
withdrawn one gives its samples back their proposal); other rows follow the table's
precedence (an override outlives a cluster review).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.cluster.run import run_dir
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.labels.agreement import fleiss_kappa, krippendorff_alpha
from biomedica_kit.labels.table import read_labels, write_version

if TYPE_CHECKING:
    import polars as pl

__all__ = ["TARGET_KINDS", "Agreement", "Conflict", "Resolution", "Resolved", "Vote",
           "record_review", "resolve", "review_rows"]

#: What a vote is about: a whole cluster of a run, or one sample.
TARGET_KINDS = ("cluster", "sample")


@dataclass(frozen=True)
class Vote:
    """One expert's labels for one target (the latest annotation of that expert there)."""

    kind: str  # cluster | sample
    target: str  # cluster id (as text) or sample key
    annotator: str
    primary: str | None
    secondary: str | None
    panel_type: str | None = None
    panel_subtype: str | None = None
    flags: tuple[str, ...] = ()
    at: str = ""  # when it was made (ISO 8601)
    ref: str = ""  # where it came from (a task, an annotation id)

    @property
    def value(self) -> str:
        """What counts in the vote: ``primary / secondary``, else the first flag."""
        if "not a figure" in self.flags:
            return "not a figure"
        if self.secondary is not None:
            return f"{self.primary} / {self.secondary}"
        return self.flags[0] if self.flags else "(none)"


@dataclass(frozen=True)
class Resolved:
    """The outcome for one target: the winning labels and how they were reached."""

    kind: str
    target: str
    primary: str | None
    secondary: str | None
    panel_type: str | None
    panel_subtype: str | None
    flag: str | None  # the winning flag when no label won (e.g. "not a figure")
    annotators: tuple[str, ...]
    agreement: float | None  # share of experts voting for the winner (None: one expert)
    reviewed_at: str
    status: str  # single | unanimous | majority


@dataclass(frozen=True)
class Conflict:
    """A target whose experts disagreed: every vote, and what came of it."""

    kind: str
    target: str
    votes: dict[str, str]  # annotator -> vote value
    outcome: str  # "majority: <value>" or "tie: not applied"


@dataclass(frozen=True)
class Agreement:
    """Agreement over targets with two or more experts."""

    targets: int
    fleiss_kappa: float | None
    kappa_per_label: dict[str, float | None]
    krippendorff_alpha: float | None
    observed: float | None  # mean per-target share agreeing with the winner


@dataclass
class Resolution:
    """What :func:`resolve` found."""

    resolved: list[Resolved]
    conflicts: list[Conflict]
    agreement: Agreement
    votes: int = 0
    ignored: list[str] = field(default_factory=list)  # votes that could not count, and why


def _majority(values: Iterable[str | None]) -> str | None:
    counts = Counter(v for v in values if v is not None)
    if not counts:
        return None
    (best, n), *rest = counts.most_common()
    return None if rest and rest[0][1] == n else best


def resolve(votes: Iterable[Vote]) -> Resolution:
    """Resolve votes per target (module doc). An expert's later vote on the same target
    replaces their earlier one."""
    latest: dict[tuple[str, str], dict[str, Vote]] = defaultdict(dict)
    ignored: list[str] = []
    n = 0
    for v in votes:
        n += 1
        if v.kind not in TARGET_KINDS:
            ignored.append(f"{v.ref}: unknown target kind {v.kind!r}")
            continue
        prev = latest[(v.kind, v.target)].get(v.annotator)
        if prev is None or (v.at, v.ref) >= (prev.at, prev.ref):
            latest[(v.kind, v.target)][v.annotator] = v
    resolved, conflicts, counts, units, shares = [], [], [], [], []
    for (kind, target), by in sorted(latest.items()):
        vs = [by[a] for a in sorted(by)]
        values = Counter(v.value for v in vs)
        (top, top_n), *rest = values.most_common()
        if len(vs) >= 2:
            counts.append(dict(values))
            units.append([v.value for v in vs])
        if rest:
            tie = rest[0][1] == top_n
            conflicts.append(Conflict(kind, target, {v.annotator: v.value for v in vs},
                                      "tie: not applied" if tie else f"majority: {top}"))
            if tie:
                continue
        winners = [v for v in vs if v.value == top]
        share = None if len(vs) < 2 else top_n / len(vs)
        if share is not None:
            shares.append(share)
        w = winners[0]
        labelled = w.secondary is not None and top != "not a figure"
        resolved.append(Resolved(
            kind=kind, target=target, primary=w.primary if labelled else None,
            secondary=w.secondary if labelled else None,
            panel_type=_majority(v.panel_type for v in vs),
            panel_subtype=_majority(v.panel_subtype for v in vs),
            flag=None if labelled else top, annotators=tuple(v.annotator for v in vs),
            agreement=share, reviewed_at=max(v.at for v in vs),
            status="single" if len(vs) == 1 else ("unanimous" if not rest else "majority")))
    kappa = fleiss_kappa(counts)
    overall = Agreement(targets=kappa.items, fleiss_kappa=kappa.overall,
                        kappa_per_label=kappa.per_label,
                        krippendorff_alpha=krippendorff_alpha(units),
                        observed=sum(shares) / len(shares) if shares else None)
    return Resolution(resolved, conflicts, overall, n, ignored)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def review_rows(dataset: str | Path, run: str, resolution: Resolution, *,
                origin: str) -> pl.DataFrame:
    """Label-table rows for every sample a resolution covers (module doc); a sample review
    wins over its cluster's."""
    import polars as pl

    root = Path(dataset)
    assigned = pl.read_parquet(run_dir(root, run) / "assignments.parquet",
                               columns=["key", "cluster"])
    version = read_manifest(root)["dataset_version"]
    parts = []
    for r in resolution.resolved:
        if r.kind == "cluster":
            keys = assigned.filter(pl.col("cluster") == int(r.target))
        else:
            keys = assigned.filter(pl.col("key") == r.target)
            if keys.is_empty():  # a sample outside the run keeps no cluster
                keys = pl.DataFrame({"key": [r.target], "cluster": [None]},
                                    schema={"key": pl.String, "cluster": pl.Int32})
        note = f"{origin}; {r.kind} {r.target}; {r.status}" + (f"; {r.flag}" if r.flag else "")
        parts.append(keys.with_columns(
            primary_label=pl.lit(r.primary, pl.String),
            secondary_label=pl.lit(r.secondary, pl.String),
            panel_type=pl.lit(r.panel_type, pl.String),
            panel_subtype=pl.lit(r.panel_subtype, pl.String),
            label_source=pl.lit("expert" if r.kind == "cluster" else "override"),
            run=pl.lit(run), decided_by=pl.lit(", ".join(r.annotators)),
            decided_at=pl.lit(_now()), note=pl.lit(note), dataset_version=pl.lit(version),
            annotators=pl.lit(list(r.annotators), pl.List(pl.String)),
            agreement=pl.lit(r.agreement, pl.Float32), reviewed_at=pl.lit(r.reviewed_at),
            _rank=pl.lit(0 if r.kind == "cluster" else 1)))
    if not parts:
        return pl.DataFrame(schema={"key": pl.String})
    rows = pl.concat(parts, how="vertical_relaxed")
    return (rows.sort(["key", "_rank"], descending=[False, True]).unique("key", keep="first")
            .drop("_rank"))


def _proposal_rows(root: Path, run: str, keys: list[str]) -> pl.DataFrame:
    import polars as pl

    out = run_dir(root, run)
    props = pl.read_parquet(out / "proposals.parquet").select(
        "cluster", "primary_label", "secondary_label", "panel_type", "score", "model_version")
    return (pl.read_parquet(out / "assignments.parquet", columns=["key", "cluster"])
            .filter(pl.col("key").is_in(keys)).join(props, on="cluster", how="left")
            .with_columns(label_source=pl.lit("proposal"), run=pl.lit(run),
                          decided_at=pl.lit(_now()),
                          dataset_version=pl.lit(read_manifest(root)["dataset_version"])))


def _same(old: pl.DataFrame, rows: pl.DataFrame) -> bool:
    """Whether two tables hold the same labels (times and versions aside)."""
    import polars as pl

    if old.is_empty() or old.height != rows.height:
        return False
    cols = [c for c in old.columns if c not in ("decided_at", "label_version")]
    a = old.select(cols).sort("key")
    b = rows.select([pl.col(c).cast(old.schema[c]) for c in cols]).sort("key")
    return a.equals(b)


def record_review(dataset: str | Path, run: str, resolution: Resolution, *,
                  origin: str, change: dict[str, Any] | None = None) -> str:
    """Write the resolution as a new label version (module doc); returns the version."""
    import polars as pl

    root = Path(dataset)
    with dataset_lock(root, "review"):
        new = review_rows(root, run, resolution, origin=origin)
        old = read_labels(root)
        mine = old["note"].fill_null("").str.starts_with(f"{origin};")
        covered = new["key"].to_list() if not new.is_empty() else []
        withdrawn = old.filter(mine & ~pl.col("key").is_in(covered))
        kept = old.filter(~mine)
        if not new.is_empty():
            # An override from elsewhere outlives a cluster review; anything else yields.
            stays = kept.filter(pl.col("label_source") == "override").select("key")
            new = pl.concat([
                new.filter(pl.col("label_source") == "override"),
                new.filter(pl.col("label_source") == "expert").join(stays, on="key",
                                                                    how="anti")],
                how="vertical_relaxed")
            kept = kept.join(new.select("key"), on="key", how="anti")
        restored = _proposal_rows(root, run, withdrawn["key"].to_list())
        rows = pl.concat([kept, new, restored], how="diagonal_relaxed")
        if _same(old, rows):  # nothing changed since the last pull: no new version
            return str(old["label_version"][0])
        info = {"kind": "review", "run": run, "origin": origin,
                "targets": len(resolution.resolved), "conflicts": len(resolution.conflicts),
                "samples": new.height, "restored": restored.height,
                "fleiss_kappa": resolution.agreement.fleiss_kappa,
                "krippendorff_alpha": resolution.agreement.krippendorff_alpha}
        return write_version(root, rows, {**info, **(change or {})})
