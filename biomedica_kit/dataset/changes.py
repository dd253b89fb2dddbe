"""Dataset versions: apply a decision table (per-key json field updates) as a new version.

Only shards holding a changed sample are rewritten (under new file names); every other shard is
reused as is. The new manifest names its parent and records which fields the change may touch;
it becomes current by an atomic rename of ``manifest.json``, so a crash leaves the old version
current and the old shards are never modified (every version stays readable through
``versions/<id>.json``). :func:`verify_change` proves that nothing but the declared fields
changed: same keys in the same order, byte-identical images and captions, and json equal outside
the declared fields.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from biomedica_kit.dataset.shards import (
    ShardWriter,
    iter_members,
    iter_samples,
    read_manifest,
    write_manifest,
)


@dataclass
class ChangeSummary:
    """What :func:`apply_changes` did."""

    dataset_version: str
    parent: str
    shards_rewritten: int
    shards_reused: int
    samples_changed: int


def shard_keys(path: Path) -> list[str]:
    """Sample keys of a shard in order, read from tar headers only."""
    import tarfile

    keys: list[str] = []
    with tarfile.open(path, mode="r:") as tar:
        for m in tar:
            k = m.name.rsplit("/", 1)[-1].partition(".")[0]
            if not keys or keys[-1] != k:
                keys.append(k)
    return keys


def _base(path: str) -> str:
    """Shard path without its version tag: ``x/c-000001-v1a2b3c4d.tar`` -> ``x/c-000001``."""
    return re.sub(r"-v[0-9a-f]{8}$", "", path.removesuffix(".tar"))


def _change_tag(changes: Mapping[str, Mapping], kind: str) -> str:
    h = hashlib.sha256(kind.encode())
    for k in sorted(changes):
        h.update(k.encode() + json.dumps(changes[k], sort_keys=True, default=str).encode())
    return h.hexdigest()[:8]


def apply_changes(
    dataset: str | Path,
    changes: Mapping[str, Mapping],
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
    manifest = read_manifest(root)
    allowed = set(fields)
    for key, upd in changes.items():
        extra = set(upd) - allowed
        if extra:
            raise ValueError(f"change for {key} sets undeclared fields {sorted(extra)}")
    tag = _change_tag(changes, kind)
    new_entries, rewritten, changed = [], 0, 0
    for entry in manifest["shards"]:
        path = root / entry["path"]
        keys = shard_keys(path)
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
    change = {"kind": kind, "fields": sorted(allowed), "tag": tag, "note": note,
              "samples_changed": changed}
    counts = {k: v for k, v in manifest.get("counts", {}).items()
              if k not in ("shards", "samples", "bytes")}
    new = write_manifest(root, new_entries, parent=manifest["dataset_version"],
                         config=manifest.get("config", {}), counts=counts,
                         extra={"change": change})
    return ChangeSummary(new["dataset_version"], manifest["dataset_version"], rewritten,
                         len(new_entries) - rewritten, changed)


def _rewrite(root: Path, entry: dict, changes: Mapping[str, Mapping], tag: str):
    """Copy one shard sample by sample, merging changes into json; returns (changed, info)."""
    src = root / entry["path"]
    stem = _base(src.name)
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
    return n, {**entry, **info.__dict__}


@dataclass
class ChangeCheck:
    """Outcome of :func:`verify_change`."""

    errors: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def verify_change(dataset: str | Path, manifest: dict | None = None) -> ChangeCheck:
    """Prove that a version differs from its parent only in its declared fields."""
    root = Path(dataset)
    manifest = manifest or read_manifest(root)
    res = ChangeCheck()
    change, parent_id = manifest.get("change"), manifest.get("parent")
    if not change or not parent_id:
        return res
    parent = json.loads((root / "versions" / f"{parent_id}.json").read_text())
    allowed = set(change["fields"])
    old = {s["path"]: s for s in parent["shards"]}
    new = {s["path"]: s for s in manifest["shards"]}
    replaced = [p for p in old if p not in new]
    added = [p for p in new if p not in old]
    by_stem = {_base(p): p for p in added}
    for p in replaced:
        q = by_stem.get(_base(p))
        if q is None:
            res.errors.append(f"{p}: dropped without a replacement")
            continue
        _compare_shards(root / p, root / q, allowed, res)
    unmatched = set(added) - {by_stem.get(_base(p)) for p in replaced}
    for q in sorted(unmatched):
        res.errors.append(f"{q}: new shard with no parent shard")
    return res


def _compare_shards(a: Path, b: Path, allowed: set[str], res: ChangeCheck) -> None:
    left, right = list(iter_members(a)), list(iter_members(b))
    if [m.name for m, _ in left] != [m.name for m, _ in right]:
        res.errors.append(f"{b.name}: members differ from {a.name}")
        return
    for (m, x), (_, y) in zip(left, right, strict=True):
        if m.name.endswith(".json"):
            jx, jy = json.loads(x), json.loads(y)
            diff = {k for k in set(jx) | set(jy) if jx.get(k) != jy.get(k)} - allowed
            if diff:
                res.errors.append(f"{m.name}: undeclared fields changed {sorted(diff)}")
            res.compared += 1
        elif x != y:
            res.errors.append(f"{m.name}: bytes changed")
