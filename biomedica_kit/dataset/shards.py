"""WebDataset tar shards: atomic writer, manifest, reader and verifier.

Shards are plain POSIX tars (GNU format for long names) as WebDataset reads them: one sample is
the members ``{key}.jpg|png``, ``{key}.txt`` and ``{key}.json``, adjacent and in that order.
Headers are deterministic (mtime 0, uid/gid 0, mode 0444) so the same samples always produce the
same bytes, whichever process or Ray worker produced them. A shard is written under a temporary
name, fsynced, and renamed into place: a crash never leaves a half-written ``.tar``.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = "biomedica-kit/1"
IMAGE_EXTS = ("jpg", "png")
TMP_PREFIX = ".tmp-"


@dataclass
class ShardInfo:
    """One finished shard, as listed in the manifest."""

    path: str  # relative to the dataset root
    subset: str
    samples: int
    bytes: int
    sha256: str
    first_key: str | None = None
    last_key: str | None = None


@dataclass
class MemberLocation:
    """Where one sample member's bytes lie inside its shard."""

    shard: str
    key: str
    ext: str
    offset: int  # byte offset of the member's data (after its header)
    size: int


class _HashingFile:
    """File writer that counts everything written through it and hashes it on a second thread.

    sha256 costs about a third of writing a shard; hashlib releases the GIL on large buffers,
    so a helper thread hashes one piece while this thread copies the next into the page cache.
    The bounded queue keeps at most a few dozen pieces (one image each, at most) in flight.
    """

    def __init__(self, f) -> None:
        self.f = f
        self.n = 0
        self._h = hashlib.sha256()
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._t = threading.Thread(target=self._hash, daemon=True)
        self._t.start()

    def _hash(self) -> None:
        while (b := self._q.get()) is not None:
            self._h.update(b)

    def write(self, b: bytes) -> None:
        self._q.put(b)
        self.n += len(b)
        self.f.write(b)

    def hexdigest(self) -> str:
        """The sha256 of everything written; ends the hashing thread."""
        self._q.put(None)
        self._t.join()
        return self._h.hexdigest()

    def stop(self) -> None:
        """End the hashing thread without a digest (the shard is being dropped)."""
        self._q.put(None)
        self._t.join()


def _header(name: str, size: int) -> bytes:
    """A deterministic GNU tar header (plus GNU long-name blocks for names over 100 bytes)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def fsync_dir(path: Path) -> None:
    """Persist a rename by fsyncing its directory (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file via temp + fsync + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class ShardWriter:
    """Writes samples of one subset into size- and count-bounded shards.

    ``start`` numbers the first shard, so an incremental build adds shards after the existing
    ones instead of rewriting them.
    """

    def __init__(
        self,
        root: Path,
        subset: str,
        *,
        max_samples: int = 10_000,
        max_bytes: int = 1 << 30,
        start: int = 0,
        name: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.subset = subset
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.next_index = start
        self.name = name  # a fixed file name, for one-shard rewrites (new dataset versions)
        self.finished: list[ShardInfo] = []
        self.locations: list[MemberLocation] = []
        self._raw = None
        self._hf: _HashingFile | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._count = 0
        self._first = self._last = None

    def write(self, key: str, members: list[tuple[str, bytes]]) -> None:
        """Append one sample (its members in order) to the current shard."""
        size = sum(512 + -(-len(d) // 512) * 512 + (512 if len(key) > 90 else 0)
                   for _, d in members)
        if self._hf is not None and (
            self._count >= self.max_samples or self._hf.n + size > self.max_bytes
        ):
            self._finish()
        if self._hf is None:
            self._open()
        for ext, data in members:
            # Header, data and padding written straight through: tarfile.addfile would copy the
            # data again in 16 KiB blocks. The bytes are identical to tarfile's GNU output.
            self._hf.write(_header(f"{key}.{ext}", len(data)))
            data_offset = self._hf.n
            self._hf.write(data)
            pad = -len(data) % tarfile.BLOCKSIZE
            if pad:
                self._hf.write(b"\0" * pad)
            self.locations.append(MemberLocation(self._final_rel, key, ext, data_offset,
                                                 len(data)))
        self._count += 1
        self._first = self._first or key
        self._last = key

    def close(self) -> list[ShardInfo]:
        """Finish the open shard and return every shard this writer produced."""
        if self._hf is not None:
            self._finish()
        return self.finished

    def _open(self) -> None:
        name = self.name or f"{self.subset}-{self.next_index:06d}.tar"
        self.next_index += 1
        d = self.root / "shards" / self.subset
        d.mkdir(parents=True, exist_ok=True)
        self._final = d / name
        self._final_rel = self._final.relative_to(self.root).as_posix()
        self._tmp = d / f"{TMP_PREFIX}{name}.{os.getpid()}"
        # The shard stays open across write() calls; _finish/abort close it.
        self._raw = open(self._tmp, "wb", buffering=1 << 20)  # noqa: SIM115
        self._hf = _HashingFile(self._raw)
        self._count = 0
        self._first = self._last = None

    def _finish(self) -> None:
        # End of archive: two zero blocks, then zero padding to a whole record (as tarfile does).
        end = self._hf.n + 2 * tarfile.BLOCKSIZE
        self._hf.write(b"\0" * (2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE)))
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self._tmp, self._final)
        fsync_dir(self._final.parent)
        self.finished.append(ShardInfo(
            path=self._final_rel, subset=self.subset, samples=self._count, bytes=self._hf.n,
            sha256=self._hf.hexdigest(), first_key=self._first, last_key=self._last))
        self._hf = None

    def abort(self) -> None:
        """Drop the open shard's temporary file (used when a build is interrupted)."""
        if self._hf is not None:
            self._hf.stop()
            self._raw.close()
            self._tmp.unlink(missing_ok=True)
            self._hf = None


# ------------------------------------------------------------------------------ manifest


def version_id(shards: list[ShardInfo | dict]) -> str:
    """Content address of a dataset version: a hash over its shards' paths and checksums."""
    h = hashlib.sha256()
    for s in sorted(shards, key=lambda s: _get(s, "path")):
        h.update(f"{_get(s, 'path')}\0{_get(s, 'sha256')}\n".encode())
    return h.hexdigest()[:16]


def _get(s, k):
    return s[k] if isinstance(s, dict) else getattr(s, k)


def write_manifest(root: Path, shards: list[ShardInfo | dict], *, parent: str | None,
                   config: dict, counts: dict, extra: dict | None = None) -> dict:
    """Write ``versions/<id>.json`` and make it current by atomically replacing manifest.json."""
    entries = [s if isinstance(s, dict) else s.__dict__.copy() for s in shards]
    entries.sort(key=lambda s: s["path"])
    vid = version_id(entries)
    manifest = {
        "format": FORMAT,
        "dataset_version": vid,
        "parent": parent,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        "counts": {**counts, "shards": len(entries),
                   "samples": sum(s["samples"] for s in entries),
                   "bytes": sum(s["bytes"] for s in entries)},
        "shards": entries,
        **(extra or {}),
    }
    data = json.dumps(manifest, indent=2, sort_keys=False).encode()
    atomic_write_bytes(Path(root) / "versions" / f"{vid}.json", data)
    atomic_write_bytes(Path(root) / MANIFEST, data)
    return manifest


def read_manifest(root: Path) -> dict:
    """The dataset's current manifest."""
    return json.loads((Path(root) / MANIFEST).read_text())


# -------------------------------------------------------------------------------- reading


def iter_members(path: Path) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    """Yield (member, data) for every regular file of a shard, in order."""
    with tarfile.open(path, mode="r:") as tar:
        for m in tar:
            if m.isfile():
                f = tar.extractfile(m)
                yield m, f.read() if f else None


def iter_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {ext: bytes}) per sample, grouping adjacent members WebDataset-style."""
    key, group = None, {}
    for m, data in iter_members(path):
        base = m.name.rsplit("/", 1)[-1]
        k, _, ext = base.partition(".")
        if k != key and key is not None:
            yield key, group
            group = {}
        key = k
        group[ext] = data
    if key is not None:
        yield key, group


# ------------------------------------------------------------------------------- verifying


@dataclass
class VerifyResult:
    """Outcome of :func:`verify`: ok only when ``errors`` is empty."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shards: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def verify(root: Path, *, check_report: bool = True) -> VerifyResult:
    """Re-check a dataset: manifest, checksums, sizes, counts, and every sample's members."""
    root = Path(root)
    res = VerifyResult()
    try:
        manifest = read_manifest(root)
    except (OSError, ValueError) as exc:
        res.errors.append(f"manifest unreadable: {exc}")
        return res
    seen_keys: dict[str, str] = {}
    listed = set()
    for s in manifest.get("shards", []):
        rel = s["path"]
        listed.add(rel)
        p = root / rel
        if not p.is_file():
            res.errors.append(f"{rel}: missing")
            continue
        size = p.stat().st_size
        if size != s["bytes"]:
            res.errors.append(f"{rel}: {size} bytes, manifest says {s['bytes']}")
        digest = _sha256_file(p)
        if digest != s["sha256"]:
            res.errors.append(f"{rel}: sha256 mismatch")
            continue
        n = 0
        try:
            for key, group in iter_samples(p):
                n += 1
                _check_sample(rel, key, group, res)
                if key in seen_keys:
                    res.errors.append(f"{rel}: key {key} also in {seen_keys[key]}")
                seen_keys[key] = rel
        except (tarfile.TarError, OSError) as exc:
            res.errors.append(f"{rel}: unreadable tar: {exc}")
        if n != s["samples"]:
            res.errors.append(f"{rel}: {n} samples, manifest says {s['samples']}")
        res.shards += 1
        res.samples += n
    total = manifest.get("counts", {}).get("samples")
    if total is not None and total != res.samples:
        res.errors.append(f"manifest counts.samples={total} but shards hold {res.samples}")
    shard_dir = root / "shards"
    if shard_dir.is_dir():
        for f in shard_dir.rglob("*"):
            rel = f.relative_to(root).as_posix()
            if f.is_file() and f.name.startswith(TMP_PREFIX):
                res.errors.append(f"{rel}: leftover temporary file")
            elif f.is_file() and f.suffix == ".tar" and rel not in listed:
                res.warnings.append(f"{rel}: not in the current manifest (older version?)")
    if check_report:
        _check_report(root, manifest, res)
    if manifest.get("change"):
        from biomedica_kit.dataset.changes import verify_change

        check = verify_change(root, manifest)
        res.errors.extend(f"change from parent: {e}" for e in check.errors)
    return res


def _check_sample(rel: str, key: str, group: dict[str, bytes], res: VerifyResult) -> None:
    images = [e for e in IMAGE_EXTS if e in group]
    if len(images) != 1:
        res.errors.append(f"{rel}: {key} has {len(images)} images")
    if not group.get("txt"):
        res.errors.append(f"{rel}: {key} has no caption")
    try:
        meta = json.loads(group.get("json") or b"")
        if meta.get("key") != key:
            res.errors.append(f"{rel}: {key} json key is {meta.get('key')!r}")
        img = group.get(images[0]) if images else None
        if img is not None and hashlib.sha256(img).hexdigest() != meta.get("image_sha256"):
            res.errors.append(f"{rel}: {key} image sha256 differs from its json")
    except ValueError:
        res.errors.append(f"{rel}: {key} json missing or invalid")


def _check_report(root: Path, manifest: dict, res: VerifyResult) -> None:
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
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
