"""The label taxonomy as data: loaded, validated, and checked against expert cluster labels.

A taxonomy folder holds (``curation/taxonomy/`` is the default, BIOMEDICA's)::

    taxonomy_collapsed_and_filtered.json   primary label -> [secondary labels]   (required)
    label_descriptions.json                descriptions and caption keywords per label
    cluster_labels.json                    expert labels of clusters (BIOMEDICA's 2,000)

A user's own taxonomy is a folder of the same files, or one JSON file of the first shape.
:func:`load_taxonomy` refuses a taxonomy that cannot be used (:class:`TaxonomyError`: no
labels, a secondary label under two primaries, descriptions of unknown labels) and
:func:`check_cluster_labels` reports what is inconsistent in expert labels without refusing
them: primary or secondary labels the taxonomy lacks, a secondary label none of the cluster's
primaries holds, primary and secondary lists of different lengths, clusters with more than one
primary label, and panel types that contradict their subtype ("multiple" with "single panel").
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_TAXONOMY", "PANEL_TYPES", "ClusterLabelReport", "Label", "Taxonomy",
           "TaxonomyError", "check_cluster_labels", "load_cluster_labels", "load_taxonomy"]

DEFAULT_TAXONOMY = Path(__file__).resolve().parents[2] / "curation" / "taxonomy"
TAXONOMY_FILE = "taxonomy_collapsed_and_filtered.json"
DESCRIPTIONS_FILE = "label_descriptions.json"
CLUSTER_LABELS_FILE = "cluster_labels.json"
#: BIOMEDICA's panel types; ``multiple`` figures have several panels.
PANEL_TYPES = ("single", "multiple")


class TaxonomyError(ValueError):
    """A taxonomy that cannot be used (the message says why)."""


@dataclass(frozen=True)
class Label:
    """A secondary label with its primary, description (the prompt) and caption keywords."""

    primary: str
    secondary: str
    description: str
    keywords: tuple[str, ...] = ()


@dataclass
class Taxonomy:
    """Primary labels -> secondary labels, with descriptions; ``version`` hashes the content."""

    tree: dict[str, list[str]]
    labels: list[Label]
    primary_descriptions: dict[str, str]
    source: str
    version: str
    warnings: list[str] = field(default_factory=list)

    def parent(self, secondary: str) -> str:
        """The primary label of a secondary label."""
        for lab in self.labels:
            if lab.secondary == secondary:
                return lab.primary
        raise KeyError(f"{secondary!r} is not a secondary label of this taxonomy")

    def holds(self, primary: str | None, secondary: str | None) -> bool:
        """Whether ``secondary`` is a label under ``primary`` (None for both: no label)."""
        if primary is None and secondary is None:
            return True
        return primary in self.tree and (secondary is None or secondary in self.tree[primary])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TaxonomyError(f"{path}: cannot read: {exc}") from None


def _tree(data: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(data, dict) or not data:
        raise TaxonomyError(f"{where}: expected an object primary label -> [secondary labels]")
    seen: dict[str, str] = {}
    tree = {}
    for primary, secs in data.items():
        if not isinstance(secs, list) or not secs or not all(
                isinstance(s, str) and s.strip() for s in secs):
            raise TaxonomyError(f"{where}: {primary!r} must list secondary labels (strings)")
        for s in secs:
            if s in seen:
                raise TaxonomyError(f"{where}: secondary label {s!r} is under both "
                                    f"{seen[s]!r} and {primary!r}")
            seen[s] = primary
        tree[str(primary)] = list(secs)
    return tree


def load_taxonomy(path: str | os.PathLike[str] | None = None) -> Taxonomy:
    """A taxonomy from a folder (see module doc) or one JSON file; default: BIOMEDICA's."""
    p = Path(path) if path is not None else DEFAULT_TAXONOMY
    tree_file = p / TAXONOMY_FILE if p.is_dir() else p
    tree = _tree(_read_json(tree_file), str(tree_file))
    desc_file = p / DESCRIPTIONS_FILE if p.is_dir() else p.with_name(DESCRIPTIONS_FILE)
    desc: dict[str, Any] = _read_json(desc_file) if desc_file.is_file() else {}
    secondary = desc.get("secondary", {})
    primary = desc.get("primary", {})
    known = {s for secs in tree.values() for s in secs}
    unknown = sorted(set(secondary) - known) + sorted(set(primary) - set(tree))
    if unknown:
        raise TaxonomyError(f"{desc_file}: describes labels the taxonomy lacks: {unknown[:5]}")
    warnings = [f"no description for {s!r} (its name is the prompt)"
                for s in sorted(known - set(secondary))]
    labels = []
    for prim, secs in tree.items():
        for s in secs:
            d = secondary.get(s, {})
            labels.append(Label(prim, s, str(d.get("description") or s),
                                tuple(str(k).lower() for k in d.get("keywords", []))))
    content = json.dumps([tree, desc], sort_keys=True).encode()
    return Taxonomy(tree=tree, labels=labels,
                    primary_descriptions={k: str(primary.get(k, k)) for k in tree},
                    source=str(p), version=hashlib.sha256(content).hexdigest()[:12],
                    warnings=warnings)


@dataclass
class ClusterLabelReport:
    """Inconsistencies in expert cluster labels (counts, and up to 5 cluster ids each)."""

    clusters: int
    counts: dict[str, int]
    examples: dict[str, list[str]]

    def format_lines(self) -> list[str]:
        """One line per kind of inconsistency found."""
        return [f"{name}: {n} clusters (e.g. {', '.join(self.examples[name])})"
                for name, n in self.counts.items() if n]


def load_cluster_labels(path: str | os.PathLike[str] | None = None) -> dict[str, dict]:
    """Expert cluster labels (``cluster_labels.json`` of a taxonomy folder, or a file)."""
    p = Path(path) if path is not None else DEFAULT_TAXONOMY
    f = p / CLUSTER_LABELS_FILE if p.is_dir() else p
    data = _read_json(f)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise TaxonomyError(f"{f}: expected an object cluster id -> labels")
    return data


def check_cluster_labels(tax: Taxonomy, labels: dict[str, dict]) -> ClusterLabelReport:
    """Report the inconsistencies of expert cluster labels against ``tax`` (module doc)."""
    found: dict[str, list[str]] = {name: [] for name in (
        "unknown primary label", "unknown secondary label",
        "secondary label under none of the cluster's primaries",
        "primary and secondary lists of different lengths", "more than one primary label",
        "the same primary label repeated",
        "panel type 'multiple' with subtype 'single panel'",
        "panel type 'single' with a 'multiple panels' subtype", "unknown panel type")}
    known = {lab.secondary: lab.primary for lab in tax.labels}
    for cid, v in labels.items():
        prim = list(v.get("global_class") or [])
        sec = list(v.get("local_class") or [])
        ptype, sub = v.get("panel_type"), str(v.get("panel_subtype") or "")
        checks = {
            "unknown primary label": any(p not in tax.tree for p in prim),
            "unknown secondary label": any(s not in known for s in sec),
            "secondary label under none of the cluster's primaries": any(
                s in known and known[s] not in prim for s in sec),
            "primary and secondary lists of different lengths": len(prim) != len(sec),
            "more than one primary label": len(prim) > 1,
            "the same primary label repeated": len(set(prim)) < len(prim),
            "panel type 'multiple' with subtype 'single panel'":
                ptype == "multiple" and sub == "single panel",
            "panel type 'single' with a 'multiple panels' subtype":
                ptype == "single" and sub.startswith("multiple"),
            "unknown panel type": ptype not in PANEL_TYPES,
        }
        for name, bad in checks.items():
            if bad:
                found[name].append(cid)
    return ClusterLabelReport(clusters=len(labels),
                              counts={k: len(v) for k, v in found.items()},
                              examples={k: sorted(v, key=_num)[:5] for k, v in found.items()})


def _num(cid: str) -> tuple[int, str]:
    return (int(cid), cid) if cid.isdigit() else (1 << 62, cid)

