"""WebDataset tar shards: the atomic writer and the readers.

Shards are plain POSIX tars (GNU format for long names) as WebDataset reads them: one sample is
the members ``{key}.jpg|png``, ``{key}.txt`` and ``{key}.json``, adjacent and in that order.
Headers are deterministic (mtime 0, uid/gid 0, mode 0444) so the same samples always produce the
same bytes, whichever process or Ray worker produced them. A shard is written under a temporary
name, fsynced, and renamed into place: a crash never leaves a half-written ``.tar``.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from biomedica_kit.base.atomic import fsync_dir, temp_path
from biomedica_kit.dataset.manifest import ShardInfo
from biomedica_kit.dataset.tario import iter_tar_files, iter_tar_stream

__all__ = ["IMAGE_EXTS", "SHARD_NAME", "DuplicateKey", "ShardWriter", "iter_members",
           "iter_samples", "shard_keys", "split_name", "untagged"]

IMAGE_EXTS = ("jpg", "png")
#: ``subset-000012.tar``, or ``subset-000012-v1a2b3c4d.tar`` as a new version rewrites it.
SHARD_NAME = re.compile(r"^(?P<subset>[A-Za-z0-9_]+)-(?P<n>\d+)(?P<tag>-v[0-9a-f]+)?\.tar$")


def untagged(path: str) -> str:
    """A shard path without its version tag or suffix: ``x/c-000001-v1a2b3c4d.tar`` ->
    ``x/c-000001`` (the name every version of that shard shares)."""
    folder, _, name = path.rpartition("/")
    m = SHARD_NAME.match(name)
    if m is None:
        return path.removesuffix(".tar")
    return f"{folder}/{m['subset']}-{m['n']}" if folder else f"{m['subset']}-{m['n']}"


class DuplicateKey(ValueError):
    """A sample key was written twice into one shard (keys must be unique by construction)."""


class _HashingFile:
    """File writer that counts everything written through it and hashes it on a second thread.

    sha256 costs about a third of writing a shard; hashlib releases the GIL on large buffers,
    so a helper thread hashes one piece while this thread copies the next into the page cache.
    The bounded queue keeps at most a few dozen pieces (one image each, at most) in flight.
    """

    def __init__(self, f: BinaryIO) -> None:
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


class ShardWriter:
    """Writes samples of one subset into size- and count-bounded shards.

    ``start`` numbers the first shard, so an incremental build adds shards after the existing
    ones instead of rewriting them. Memory stays flat: the writer keeps the finished shards'
    entries and the open shard's keys (to refuse a duplicate), nothing per member.
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
        #: The shard (relative path) the last sample went to.
        self.current_shard: str | None = None
        self._raw: BinaryIO | None = None
        self._hf: _HashingFile | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._count = 0
        self._keys: set[str] = set()
        self._first: str | None = None
        self._last: str | None = None

    def write(self, key: str, members: list[tuple[str, bytes]]) -> None:
        """Append one sample (its members in order) to the current shard.

        Raises :class:`DuplicateKey` if the open shard already holds ``key``: WebDataset would
        merge the two samples' members into one.
        """
        size = sum(512 + -(-len(d) // 512) * 512 + (512 if len(key) > 90 else 0)
                   for _, d in members)
        if self._hf is not None and (
            self._count >= self.max_samples or self._hf.n + size > self.max_bytes
        ):
            self._finish()
        if self._hf is None:
            self._open()
        assert self._hf is not None
        if key in self._keys:
            raise DuplicateKey(f"sample key {key!r} written twice into {self.current_shard}")
        self._keys.add(key)
        for ext, data in members:
            # Header, data and padding written straight through: tarfile.addfile would copy the
            # data again in 16 KiB blocks. The bytes are identical to tarfile's GNU output.
            self._hf.write(_header(f"{key}.{ext}", len(data)))
            self._hf.write(data)
            pad = -len(data) % tarfile.BLOCKSIZE
            if pad:
                self._hf.write(b"\0" * pad)
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
        self.current_shard = self._final.relative_to(self.root).as_posix()
        self._tmp = temp_path(self._final)
        # The shard stays open across write() calls; _finish/abort close it.
        self._raw = open(self._tmp, "wb", buffering=1 << 20)  # noqa: SIM115
        self._hf = _HashingFile(self._raw)
        self._count = 0
        self._keys = set()
        self._first = self._last = None

    def _finish(self) -> None:
        assert self._hf is not None and self._raw is not None
        assert self._tmp is not None and self._final is not None and self.current_shard
        # End of archive: two zero blocks, then zero padding to a whole record (as tarfile does).
        end = self._hf.n + 2 * tarfile.BLOCKSIZE
        self._hf.write(b"\0" * (2 * tarfile.BLOCKSIZE + (-end % tarfile.RECORDSIZE)))
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self._tmp, self._final)
        fsync_dir(self._final.parent)
        self.finished.append(ShardInfo(
            path=self.current_shard, subset=self.subset, samples=self._count, bytes=self._hf.n,
            sha256=self._hf.hexdigest(), first_key=self._first, last_key=self._last))
        self._hf = None

    def abort(self) -> None:
        """Drop the open shard's temporary file (used when a build is interrupted)."""
        if self._hf is not None:
            self._hf.stop()
            if self._raw is not None:
                self._raw.close()
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
            self._hf = None


# -------------------------------------------------------------------------------- reading


def split_name(name: str) -> tuple[str, str]:
    """``(key, ext)`` of a member name, WebDataset's way: the key ends at the first dot."""
    k, _, ext = name.rsplit("/", 1)[-1].partition(".")
    return k, ext


def iter_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, data)`` for every regular file of a shard, in order (one read each)."""
    with open(path, "rb", buffering=1 << 20) as f:
        for name, data in iter_tar_stream(f, str(path)):
            yield name, data or b""


def iter_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {ext: bytes}) per sample, grouping adjacent members WebDataset-style."""
    key: str | None = None
    group: dict[str, bytes] = {}
    for name, data in iter_members(path):
        k, ext = split_name(name)
        if k != key and key is not None:
            yield key, group
            group = {}
        key = k
        group[ext] = data
    if key is not None:
        yield key, group


def shard_keys(path: Path) -> list[str]:
    """Sample keys of a shard in order, from the tar headers alone (seeks over the data)."""
    keys: list[str] = []
    with open(path, "rb") as f:
        for name, _, _ in iter_tar_files(f, path):
            k = split_name(name)[0]
            if not keys or keys[-1] != k:
                keys.append(k)
    return keys


