"""Dataset versions: apply a decision table (per-key json field updates) as a new version.

Only shards holding a changed sample are rewritten (under new file names); every other shard is
reused as is. The new manifest names its parent and records which fields the change may touch;
it becomes current by an atomic rename of ``manifest.json``, so a crash leaves the old version
current and the old shards are never modified (every version stays readable through
``versions/<id>.json``). :func:`biomedica_kit.dataset.verify.verify_change` proves that
nothing but the declared fields changed: same keys in the same order, byte-identical images and
captions, and json equal outside the declared fields. The caller holds the dataset lock
(:func:`biomedica_kit.dataset.lock.dataset_lock`); :func:`apply_changes` takes it too, so a
decision table applied on its own is safe as well.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import (
    Change,
    ShardEntry,
    read_manifest,
    shard_path,
    write_manifest,
)
from biomedica_kit.dataset.shards import ShardWriter, iter_samples, shard_keys, untagged

__all__ = ["ChangeSummary", "apply_changes"]


@dataclass
class ChangeSummary:
    """What :func:`apply_changes` did."""

    dataset_version: str
    parent: str
    shards_rewritten: int
    shards_reused: int
    samples_changed: int


Changes = Mapping[str, Mapping[str, Any]]


def _change_tag(changes: Changes, kind: str) -> str:
    h = hashlib.sha256(kind.encode())
    for k in sorted(changes):
        h.update(k.encode() + json.dumps(changes[k], sort_keys=True, default=str).encode())
    return h.hexdigest()[:8]


def apply_changes(
    dataset: str | Path,
    changes: Changes,
    *,
    kind: str,
    fields: list[str],
    note: str | None = None,
) -> ChangeSummary | None:
    """Write a new version in which sample ``key``'s json gets ``changes[key]`` merged in.

    ``fields`` declares every json field the change may set; a change touching another field is
    refused before anything is written. Returns None when no sample would change.
    """
    root = Path(dataset)
    allowed = set(fields)
    for key, upd in changes.items():
        extra = set(upd) - allowed
        if extra:
            raise ValueError(f"change for {key} sets undeclared fields {sorted(extra)}")
    with dataset_lock(root, kind):
        return _apply(root, changes, kind, allowed, note)


def _apply(root: Path, changes: Changes, kind: str, allowed: set[str], note: str | None
           ) -> ChangeSummary | None:
    manifest = read_manifest(root)
    tag = _change_tag(changes, kind)
    new_entries: list[ShardEntry] = []
    rewritten = changed = 0
    for entry in manifest["shards"]:
        keys = shard_keys(shard_path(root, entry))
        if not any(k in changes for k in keys):
            new_entries.append(entry)
            continue
        n, info = _rewrite(root, entry, changes, tag)
        if n == 0:  # every listed value was already there: keep the old shard
            (root / info["path"]).unlink()
            new_entries.append(entry)
            continue
        changed += n
        rewritten += 1
        new_entries.append(info)
    if not changed:
        return None
    change = Change(kind=kind, fields=sorted(allowed), tag=tag, note=note,
                    samples_changed=changed)
    counts = {k: v for k, v in manifest["counts"].items()
              if k not in ("shards", "samples", "bytes")}
    new = write_manifest(root, new_entries, parent=manifest["dataset_version"],
                         config=manifest.get("config", {}), counts=counts,
                         extra={"change": change})
    return ChangeSummary(new["dataset_version"], manifest["dataset_version"], rewritten,
                         len(new_entries) - rewritten, changed)


def _rewrite(root: Path, entry: ShardEntry, changes: Changes, tag: str
             ) -> tuple[int, ShardEntry]:
    """Copy one shard sample by sample, merging changes into json; returns (changed, entry)."""
    src = shard_path(root, entry)
    stem = untagged(src.name)
    subset = entry["subset"]
    writer = ShardWriter(root, subset, max_samples=1 << 62, max_bytes=1 << 62,
                         name=f"{stem}-v{tag}.tar")
    n = 0
    for key, group in iter_samples(src):
        members = []
        for ext, data in group.items():
            if ext == "json" and key in changes:
                meta = json.loads(data)
                merged = {**meta, **changes[key]}
                if merged != meta:
                    n += 1
                    data = json.dumps(merged, ensure_ascii=False, sort_keys=True).encode()
            members.append((ext, data))
        writer.write(key, members)
    (info,) = writer.close()
    return n, info.entry()
