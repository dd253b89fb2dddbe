"""Verify a dataset version: manifest, checksums, counts, every sample, and declared changes.

This sits above both the shard layer and :mod:`biomedica_kit.dataset.changes`, so neither has
to know the other: a version made by a decision table is checked against its parent here.
Shards are read as streams (one sample, or one pair of samples, in memory at a time).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

from biomedica_kit.base.atomic import is_temporary, pid_alive, temp_owner
from biomedica_kit.dataset.changes import untagged
from biomedica_kit.dataset.manifest import (
    MANIFEST,
    VERSIONS_DIR,
    Manifest,
    ManifestError,
    read_manifest,
    read_version,
    shard_path,
    version_id,
)
from biomedica_kit.dataset.shards import IMAGE_EXTS, iter_members, iter_samples

__all__ = ["ChangeCheck", "VerifyResult", "verify", "verify_change"]


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`: ok only when ``errors`` is empty."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        """Whether the dataset passed (warnings do not fail it)."""
        return not self.errors

    def format_lines(self) -> list[str]:
        """The verdict line the CLI prints (warnings and errors go to stderr, one per line)."""
        return [f"{'OK' if self.ok else 'FAILED'}: {self.shards} shards, {self.samples} "
                f"samples, {len(self.errors)} errors"]


@dataclass
class ChangeCheck:
    """Outcome of :func:`verify_change`."""

    errors: list[str] = field(default_factory=list)
    compared: int = 0

    @property
    def ok(self) -> bool:
        """Whether the version differs from its parent only in the declared fields."""
        return not self.errors


def verify(root: str | os.PathLike[str], *, check_report: bool = True) -> VerifyResult:
    """Re-check a dataset: manifest, checksums, sizes, counts, and every sample's members."""
    root = Path(root)
    res = VerifyResult()
    try:
        manifest = read_manifest(root)
    except ManifestError as exc:
        res.errors.append(f"manifest unreadable: {exc}")
        return res
    _check_manifest_record(root, manifest, res)
    seen_keys: dict[str, str] = {}
    listed = set()
    for s in manifest["shards"]:
        rel = s["path"]
        listed.add(rel)
        try:
            p = shard_path(root, s)
        except ManifestError as exc:
            res.errors.append(str(exc))
            continue
        if not p.is_file():
            res.errors.append(f"{rel}: missing")
            continue
        size = p.stat().st_size
        if size != s["bytes"]:
            res.errors.append(f"{rel}: {size} bytes, manifest says {s['bytes']}")
        digest_ok = _sha256_file(p) == s["sha256"]
        if not digest_ok:
            res.errors.append(f"{rel}: sha256 mismatch")
        n, bad_before = 0, len(res.errors)
        try:
            for key, group in iter_samples(p):
                n += 1
                _check_sample(rel, key, group, res)
                if key in seen_keys:
                    res.errors.append(f"{rel}: key {key} also in {seen_keys[key]}")
                seen_keys[key] = rel
        except (ValueError, OSError) as exc:
            res.errors.append(f"{rel}: unreadable tar: {exc}")
        if not digest_ok and len(res.errors) == bad_before:
            res.errors.append(f"{rel}: every sample's members check out, so the change is in "
                              f"caption text, json outside image_sha256, or tar padding")
        if n != s["samples"]:
            res.errors.append(f"{rel}: {n} samples, manifest says {s['samples']}")
        res.shards += 1
        res.samples += n
    total = manifest["counts"].get("samples")
    if total is not None and total != res.samples:
        res.errors.append(f"manifest counts.samples={total} but shards hold {res.samples}")
    _check_folder(root, listed, res)
    if check_report:
        _check_report(root, res)
    if manifest.get("change"):
        check = verify_change(root, manifest)
        res.errors.extend(f"change from parent: {e}" for e in check.errors)
    return res


def _check_manifest_record(root: Path, manifest: Manifest, res: VerifyResult) -> None:
    """The version id is the shards' content address, and manifest.json is that version."""
    vid = manifest["dataset_version"]
    if version_id(manifest["shards"]) != vid:
        res.errors.append(f"manifest dataset_version {vid!r} is not the content address of its "
                          f"shards ({version_id(manifest['shards'])!r}): edited by hand?")
        return
    try:
        recorded = read_version(root, vid)
    except ManifestError:
        res.warnings.append(f"{VERSIONS_DIR}/{vid}.json missing: the version is not recorded")
        return
    if recorded != manifest:
        a, b = dict(recorded), dict(manifest)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        res.errors.append(f"{MANIFEST} differs from {VERSIONS_DIR}/{vid}.json in {diff}")


def _check_sample(rel: str, key: str, group: dict[str, bytes], res: VerifyResult) -> None:
    images = [e for e in IMAGE_EXTS if e in group]
    if len(images) != 1:
        res.errors.append(f"{rel}: {key} has {len(images)} images")
    if not group.get("txt"):
        res.errors.append(f"{rel}: {key} has no caption")
    try:
        meta = json.loads(group.get("json") or b"")
    except ValueError:
        res.errors.append(f"{rel}: {key} json missing or invalid")
        return
    if not isinstance(meta, dict) or meta.get("key") != key:
        res.errors.append(f"{rel}: {key} json key is "
                          f"{meta.get('key') if isinstance(meta, dict) else None!r}")
        return
    img = group.get(images[0]) if images else None
    if img is not None and hashlib.sha256(img).hexdigest() != meta.get("image_sha256"):
        res.errors.append(f"{rel}: {key} image sha256 differs from its json")


def _check_folder(root: Path, listed: set[str], res: VerifyResult) -> None:
    """Temporaries and unlisted shards are warnings: the current version is intact."""
    shard_dir = root / "shards"
    if not shard_dir.is_dir():
        return
    for f in shard_dir.rglob("*"):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and is_temporary(f):
            owner = temp_owner(f)
            state = "being written" if owner and pid_alive(owner) else "left by a dead process"
            res.warnings.append(f"{rel}: temporary file ({state}; removed by the next write)")
        elif f.is_file() and f.suffix == ".tar" and rel not in listed:
            res.warnings.append(f"{rel}: not in the current manifest (older version?)")


def _check_report(root: Path, res: VerifyResult) -> None:
    arts, skips = root / "report" / "articles.parquet", root / "report" / "skips.parquet"
    if not (arts.is_file() and skips.is_file()):
        res.warnings.append("report/ tables missing: counts not reconciled")
        return
    import pyarrow.parquet as pq

    a = pq.read_table(arts, columns=["n_images", "n_samples"]).to_pydict()
    n_skips = pq.read_metadata(skips).num_rows
    images, samples = sum(a["n_images"]), sum(a["n_samples"])
    if samples != res.samples:
        res.errors.append(f"report says {samples} samples written, shards hold {res.samples}")
    if images != samples + n_skips:
        res.errors.append(f"counts do not reconcile: {images} figure images != "
                          f"{samples} samples + {n_skips} skips")


def _sha256_file(p: Path) -> str:
    with open(p, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# ------------------------------------------------------------------------ change from parent


def verify_change(dataset: str | os.PathLike[str], manifest: Manifest | None = None
                  ) -> ChangeCheck:
    """Prove that a version differs from its parent only in its declared fields."""
    root = Path(dataset)
    manifest = manifest or read_manifest(root)
    res = ChangeCheck()
    change, parent_id = manifest.get("change"), manifest.get("parent")
    if not change or not parent_id:
        return res
    try:
        parent = read_version(root, parent_id)
    except ManifestError as exc:
        res.errors.append(f"parent version unreadable: {exc}")
        return res
    allowed = set(change["fields"])
    old = {s["path"]: s for s in parent["shards"]}
    new = {s["path"]: s for s in manifest["shards"]}
    replaced = [p for p in old if p not in new]
    added = [p for p in new if p not in old]
    by_stem = {untagged(p): p for p in added}
    for p in replaced:
        q = by_stem.get(untagged(p))
        if q is None:
            res.errors.append(f"{p}: dropped without a replacement")
            continue
        try:
            _compare_shards(shard_path(root, old[p]), shard_path(root, new[q]), allowed, res)
        except (ManifestError, ValueError, OSError) as exc:
            res.errors.append(f"{q}: cannot compare with {p}: {exc}")
    unmatched = set(added) - {by_stem.get(untagged(p)) for p in replaced}
    for q in sorted(unmatched):
        res.errors.append(f"{q}: new shard with no parent shard")
    return res


def _compare_shards(a: Path, b: Path, allowed: set[str], res: ChangeCheck) -> None:
    """Walk both shards in step: one member of each in memory at a time."""
    pairs: Iterator[tuple[tuple[str, bytes] | None, tuple[str, bytes] | None]] = zip_longest(
        iter_members(a), iter_members(b))
    for left, right in pairs:
        if left is None or right is None or left[0] != right[0]:
            res.errors.append(f"{b.name}: members differ from {a.name} (at "
                              f"{(left or right or ('?',))[0]})")
            return
        (name, x), (_, y) = left, right
        if name.endswith(".json"):
            jx, jy = json.loads(x), json.loads(y)
            diff = {k for k in set(jx) | set(jy) if jx.get(k) != jy.get(k)} - allowed
            if diff:
                res.errors.append(f"{name}: undeclared fields changed {sorted(diff)}")
            res.compared += 1
        elif x != y:
            res.errors.append(f"{name}: bytes changed")
