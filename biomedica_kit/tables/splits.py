"""Train / validation / test splits grouped by article: a decision file, ``DATASET/splits/``.

Public API::

    make_split(dataset, *, name="default", fractions=DEFAULT_FRACTIONS, seed=0,
               previous=True) -> SplitSummary
    read_split(dataset, name="default") -> pyarrow.Table    # key, group, split
    split_keys(dataset, split, name="default") -> set[str]
    split_info(dataset, name="default") -> dict              # what the file records

Evaluation must never see an article that training saw, and the same figure re-published in
two articles must not sit on both sides either. So samples are grouped first:

1. a sample's group is its article (``article_id``; else ``pmcid``, ``doi``, then the key's
   article part) and
2. articles that share an exact image (``image_sha256``) are merged into one group
   (connected components over the shared hashes: usually a handful of groups).

Each group goes to a split by a seeded hash of its name: ``u = sha256(seed/group)`` read as a
number in [0, 1), compared with the cumulative ``fractions``. A group's split depends only on
the seed and the group, so a later dataset version keeps every old article where it was and new
articles spread in proportion (``method = "hash"``). With few groups a hash can leave a split
empty; then groups are ranked by ``u`` and cut at exact counts instead (``method = "rank"``,
recorded). With ``previous=True`` (the default) groups already in the file keep the split they
had, whatever the method, and only new groups are placed: a model trained on an earlier train
split is never evaluated on its own training articles.

The file ``splits/<name>.parquet`` (``key``, ``group``, ``split``) records in its metadata the
seed, the fractions, the method, the counts and the ``dataset_version`` it was made from; it is
written atomically under the dataset's writer lock. DuckDB sees it as the ``splits`` view
(:mod:`biomedica_kit.tables.connect`), with a ``name`` column, so a predicate can say
``key IN (SELECT key FROM splits WHERE name = 'default' AND split = 'test')``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_kit.base.atomic import write_parquet_atomic
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.tables.export import META_DIR, export
from biomedica_kit.tables.sql import sql_literal

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["DEFAULT_FRACTIONS", "SPLITS_DIR", "SPLIT_META", "SPLIT_NAMES", "SplitError",
           "SplitSummary", "group_samples", "make_split", "read_split", "split_digest",
           "split_info", "split_keys", "split_path"]

SPLITS_DIR = "splits"
SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: The Parquet metadata key of a split file's record (seed, fractions, method, version...).
SPLIT_META = b"biomedica_split"


class SplitError(ValueError):
    """A split that cannot be made or read (bad name or fractions, no such split)."""


@dataclass
class SplitSummary:
    """What :func:`make_split` wrote."""

    path: str
    dataset_version: str
    method: str
    groups: dict[str, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    kept: int = 0  # groups that kept the split of the previous file

    def format_lines(self) -> list[str]:
        """Human-readable summary lines (the CLI prints them)."""
        parts = ", ".join(f"{s} {self.samples.get(s, 0)} samples / {self.groups.get(s, 0)} "
                          f"groups" for s in SPLIT_NAMES)
        return [f"{self.path}: {parts}",
                f"method {self.method}; {self.kept} groups kept from the previous split; "
                f"dataset version {self.dataset_version}"]


def split_path(dataset: str | os.PathLike, name: str = "default") -> Path:
    """``DATASET/splits/<name>.parquet`` (the name is checked: letters, digits, ``_.-``)."""
    if not _NAME.match(name):
        raise SplitError(f"bad split name {name!r}: letters, digits, '_', '.', '-' only")
    return Path(dataset) / SPLITS_DIR / f"{name}.parquet"


def _check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    unknown = set(fractions) - set(SPLIT_NAMES)
    if unknown:
        raise SplitError(f"unknown split(s) {sorted(unknown)}; use {SPLIT_NAMES}")
    out = {s: float(fractions.get(s, 0.0)) for s in SPLIT_NAMES}
    if any(v < 0 for v in out.values()) or abs(sum(out.values()) - 1.0) > 1e-6:
        raise SplitError(f"fractions must be >= 0 and sum to 1, got {out}")
    return out


def _unit(seed: int, group: str) -> float:
    """A group's seeded hash as a number in [0, 1)."""
    digest = hashlib.sha256(f"{seed}/{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


class _Groups:
    """Union-find over article names (merged when they share an image)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, a: str) -> str:
        root = a
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(a, a) != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller name names the group: the same whatever the order
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo


def group_samples(dataset: str | os.PathLike) -> pa.Table:
    """``key``, ``group`` for every sample of the dataset (see the module doc)."""
    import duckdb
    import pyarrow as pa

    figures = Path(dataset) / META_DIR / "figures.parquet"
    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW f AS SELECT * FROM read_parquet({sql_literal(str(figures))})")
        have = {r[0] for r in con.execute("DESCRIBE f").fetchall()}
        parts = [c for c in ("article_id", "pmcid", "doi") if c in have]
        article = ("COALESCE(" + ", ".join(f"NULLIF(CAST({c} AS VARCHAR), '')" for c in parts)
                   + ", split_part(key, '/', 1))") if parts else "split_part(key, '/', 1)"
        rows = con.execute(f"SELECT key, {article} AS article FROM f ORDER BY key").fetchall()
        shared: list[tuple[list[str]]] = []
        if "image_sha256" in have:  # images that appear under two or more articles
            shared = con.execute(
                f"SELECT list_sort(list(DISTINCT {article})) FROM f "
                f"WHERE image_sha256 IS NOT NULL GROUP BY image_sha256 "
                f"HAVING count(DISTINCT {article}) > 1").fetchall()
    finally:
        con.close()
    groups = _Groups()
    for (names,) in shared:
        for other in names[1:]:
            groups.union(names[0], other)
    keys = [k for k, _ in rows]
    return pa.table({"key": pa.array(keys, pa.string()),
                     "group": pa.array([groups.find(a) for _, a in rows], pa.string())})


def _assign(names: list[str], fractions: dict[str, float], seed: int,
            fixed: dict[str, str]) -> tuple[dict[str, str], str]:
    """Each group's split: kept ones from ``fixed``, the rest by hash (or rank, see doc)."""
    new = [g for g in names if g not in fixed]
    units = {g: _unit(seed, g) for g in new}
    bounds, acc = [], 0.0
    for s in SPLIT_NAMES:
        acc += fractions[s]
        bounds.append((acc, s))
    out = dict(fixed)
    for g in new:
        out[g] = next((s for b, s in bounds if units[g] < b), bounds[-1][1])
    wanted = [s for s in SPLIT_NAMES if fractions[s] > 0]
    present = set(out[g] for g in names)
    if fixed or len(names) < len(wanted) or all(s in present for s in wanted):
        return out, "hash"
    # Too few groups for the hash to fill every split: exact counts over the hash ranking.
    ranked = sorted(new, key=lambda g: (units[g], g))
    counts = [max(1, round(fractions[s] * len(ranked))) if fractions[s] > 0 else 0
              for s in SPLIT_NAMES]
    while sum(counts) > len(ranked):  # shrink the largest split first
        counts[counts.index(max(counts))] -= 1
    counts[0] += len(ranked) - sum(counts)
    start = 0
    for s, c in zip(SPLIT_NAMES, counts, strict=True):
        for g in ranked[start:start + c]:
            out[g] = s
        start += c
    return out, "rank"


def make_split(dataset: str | os.PathLike, *, name: str = "default",
               fractions: dict[str, float] | None = None, seed: int = 0,
               previous: bool = True) -> SplitSummary:
    """Write ``splits/<name>.parquet`` for the dataset's current version (see module doc).

    ``previous`` keeps the split of every group the existing file already places (the seed
    and fractions must then match the file's, or SplitError says so).
    """
    import pyarrow as pa

    fr = _check_fractions(dict(fractions or DEFAULT_FRACTIONS))
    root = Path(dataset)
    path = split_path(root, name)
    with dataset_lock(root, f"split {name}"):
        export(root)  # the split is made from the current metadata
        version = read_manifest(root)["dataset_version"]
        table = group_samples(root)
        fixed: dict[str, str] = {}
        before = ""
        if previous and path.is_file():
            info = split_info(root, name)
            if info.get("seed") != seed or info.get("fractions") != fr:
                raise SplitError(
                    f"{path} was made with seed {info.get('seed')} and fractions "
                    f"{info.get('fractions')}; keep them, or pass previous=False "
                    f"(--fresh) to make a new split that may move articles")
            before = str(info.get("method", "hash"))
            old = read_split(root, name)
            fixed = dict(zip(old.column("group").to_pylist(), old.column("split").to_pylist(),
                             strict=True))
        groups = table.column("group").to_pylist()
        names = sorted(set(groups))
        present = set(names)
        fixed = {g: s for g, s in fixed.items() if g in present}
        chosen, method = _assign(names, fr, seed, fixed)
        if fixed:  # kept groups keep their method's placement; new ones go by hash
            method = before if len(fixed) == len(names) else before + "+hash"
        splits = [chosen[g] for g in groups]
        summary = SplitSummary(str(path), version, method, kept=len(fixed))
        for s in SPLIT_NAMES:
            summary.samples[s] = splits.count(s)
            summary.groups[s] = sum(1 for g in names if chosen[g] == s)
        meta = {"name": name, "seed": seed, "fractions": fr, "method": method,
                "dataset_version": version, "samples": summary.samples,
                "groups": summary.groups, "kept_groups": len(fixed),
                "grouping": "article_id (else pmcid, doi, key prefix), merged by image_sha256"}
        out = table.append_column("split", pa.array(splits, pa.string()))
        out = out.replace_schema_metadata({SPLIT_META: json.dumps(meta).encode()})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(out, path)
    return summary


def split_info(dataset: str | os.PathLike, name: str = "default") -> dict[str, Any]:
    """What ``splits/<name>.parquet`` records (seed, fractions, method, version, counts)."""
    import pyarrow.parquet as pq

    path = split_path(dataset, name)
    if not path.is_file():
        raise SplitError(f"no split {name!r} in {dataset}: run `biomedica split {dataset}`")
    meta = pq.read_schema(path).metadata or {}
    return dict(json.loads(meta.get(SPLIT_META, b"{}")))


def read_split(dataset: str | os.PathLike, name: str = "default") -> pa.Table:
    """The split decision table: ``key``, ``group``, ``split``."""
    import pyarrow.parquet as pq

    split_info(dataset, name)  # a clear error for a missing split
    return pq.read_table(split_path(dataset, name), columns=["key", "group", "split"])


def split_digest(dataset: str | os.PathLike, name: str = "default") -> str:
    """The sha256 (hex) of ``splits/<name>.parquet``: what a model trained on records, so an
    evaluation can tell the same split from a changed one."""
    split_info(dataset, name)  # a clear error for a missing split
    with open(split_path(dataset, name), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def split_keys(dataset: str | os.PathLike, split: str, name: str = "default") -> set[str]:
    """The keys of one split (``train``, ``validation`` or ``test``)."""
    if split not in SPLIT_NAMES:
        raise SplitError(f"unknown split {split!r}; one of {SPLIT_NAMES}")
    t = read_split(dataset, name)
    return {k for k, s in zip(t.column("key").to_pylist(), t.column("split").to_pylist(),
                              strict=True) if s == split}
