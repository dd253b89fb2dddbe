"""The dataset manifest: which shards make up the current version, and every version's record.

``manifest.json`` names the current version; ``versions/<id>.json`` keeps every version (the
current one too), so older versions stay readable. A version id is a content address: a hash
over its shards' paths and checksums. The manifest is replaced by an atomic rename, so readers
always see one complete version.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from biomedica_kit.base.atomic import atomic_write_bytes

__all__ = [
    "FORMAT", "MANIFEST", "VERSIONS_DIR", "Change", "Manifest", "ManifestError", "ShardEntry",
    "ShardInfo", "read_manifest", "read_version", "shard_path", "version_id", "write_manifest",
]

MANIFEST = "manifest.json"
VERSIONS_DIR = "versions"
FORMAT = "biomedica-kit/1"


class ShardEntry(TypedDict):
    """One shard as the manifest lists it."""

    path: str  # relative to the dataset root, always under shards/
    subset: str
    samples: int
    bytes: int
    sha256: str
    first_key: str | None
    last_key: str | None


class Change(TypedDict):
    """What a decision table changed (versions made by :mod:`biomedica_kit.dataset.changes`)."""

    kind: str
    fields: list[str]
    tag: str
    note: str | None
    samples_changed: int


class Manifest(TypedDict):
    """A dataset version."""

    format: str
    dataset_version: str
    parent: str | None
    created: str
    config: dict[str, Any]
    counts: dict[str, Any]
    shards: list[ShardEntry]
    change: NotRequired[Change]
    build: NotRequired[dict[str, Any]]
    derived_from: NotRequired[dict[str, Any]]


@dataclass
class ShardInfo:
    """One finished shard, as a writer reports it (:meth:`entry` is its manifest row)."""

    path: str
    subset: str
    samples: int
    bytes: int
    sha256: str
    first_key: str | None = None
    last_key: str | None = None

    def entry(self) -> ShardEntry:
        """This shard as a manifest entry."""
        return ShardEntry(**asdict(self))  # type: ignore[typeddict-item]


class ManifestError(ValueError):
    """The manifest is missing, not JSON, or not shaped like one."""


def version_id(shards: Sequence[ShardEntry | ShardInfo]) -> str:
    """Content address of a dataset version: a hash over its shards' paths and checksums."""
    entries = [s.entry() if isinstance(s, ShardInfo) else s for s in shards]
    h = hashlib.sha256()
    for s in sorted(entries, key=lambda s: s["path"]):
        h.update(f"{s['path']}\0{s['sha256']}\n".encode())
    return h.hexdigest()[:16]


def write_manifest(root: Path, shards: Sequence[ShardEntry | ShardInfo], *, parent: str | None,
                   config: Mapping[str, Any], counts: Mapping[str, Any],
                   extra: Mapping[str, Any] | None = None) -> Manifest:
    """Write ``versions/<id>.json`` and make it current by atomically replacing manifest.json.

    ``extra`` adds top-level keys: ``change`` (a decision table's new version), ``build``
    (source and selection) or ``derived_from`` (a subset's predicate).
    """
    entries: list[ShardEntry] = sorted(
        (s.entry() if isinstance(s, ShardInfo) else s for s in shards), key=lambda s: s["path"])
    vid = version_id(entries)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "dataset_version": vid,
        "parent": parent,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": dict(config),
        "counts": {**counts, "shards": len(entries),
                   "samples": sum(s["samples"] for s in entries),
                   "bytes": sum(s["bytes"] for s in entries)},
        "shards": entries,
        **(extra or {}),
    }
    data = json.dumps(manifest, indent=2, sort_keys=False).encode()
    atomic_write_bytes(Path(root) / VERSIONS_DIR / f"{vid}.json", data)
    atomic_write_bytes(Path(root) / MANIFEST, data)
    return manifest  # type: ignore[return-value]


def _checked(data: Any, where: str) -> Manifest:
    """``data`` if it has a manifest's shape, else :class:`ManifestError` naming what is wrong."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: not a JSON object")
    for key, kind in (("dataset_version", str), ("shards", list), ("counts", dict)):
        if not isinstance(data.get(key), kind):
            raise ManifestError(f"{where}: {key!r} missing or not a {kind.__name__}")
    for i, s in enumerate(data["shards"]):
        if not isinstance(s, dict) or not all(
                isinstance(s.get(k), t) for k, t in (("path", str), ("subset", str),
                                                     ("samples", int), ("bytes", int),
                                                     ("sha256", str))):
            raise ManifestError(f"{where}: shard entry {i} is malformed")
    return data  # type: ignore[return-value]


def _read(path: Path) -> Manifest:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest (not a dataset?)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable: {exc}") from None
    try:
        return _checked(json.loads(text), str(path))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from None


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """The dataset's current manifest (:class:`ManifestError` if missing or malformed)."""
    return _read(Path(root) / MANIFEST)


def read_version(root: str | os.PathLike[str], version: str) -> Manifest:
    """The manifest of one version, current or older."""
    return _read(Path(root) / VERSIONS_DIR / f"{version}.json")


def shard_path(root: Path, entry: Mapping[str, Any]) -> Path:
    """The file of a manifest shard entry; refuses paths that leave ``root/shards/``."""
    rel = str(entry["path"])
    p = (root / rel).resolve()
    base = (root / "shards").resolve()
    if os.path.isabs(rel) or ".." in Path(rel).parts or not p.is_relative_to(base):
        raise ManifestError(f"shard path {rel!r} is outside the dataset's shards/ folder")
    return root / rel
