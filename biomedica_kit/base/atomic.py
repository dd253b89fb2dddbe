"""Atomic files: write under a temporary name, fsync, rename, fsync the directory.

Every file a command writes goes through here, so a reader (or a process killed mid-write)
sees the old file or the new one, never a part. Temporary names are
``.tmp-<name>.<pid>``: the owner's pid makes leftovers of dead processes recognisable, and
:func:`sweep_temporaries` removes exactly those.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "TMP_PREFIX", "atomic_path", "atomic_write_bytes", "fsync_dir", "fsync_file",
    "is_temporary", "pid_alive", "sweep_temporaries", "temp_owner", "temp_path",
    "write_parquet_atomic",
]

TMP_PREFIX = ".tmp-"
_OWNER = re.compile(r"\.(\d+)$")


def temp_path(path: Path) -> Path:
    """The temporary name this process writes ``path`` under."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_path` (or a shard writer)."""
    return path.name.startswith(TMP_PREFIX)


def temp_owner(path: Path) -> int | None:
    """The pid that owns a temporary file, from its name (None if it names none)."""
    m = _OWNER.search(path.name)
    return int(m.group(1)) if is_temporary(path) and m else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


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


def fsync_file(path: Path) -> None:
    """Flush a closed file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it is fsynced and
    renamed over ``path``, on an exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp + fsync + rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike[str], **options: Any) -> None:
    """Write a Parquet file atomically; ``options`` go to ``pyarrow.parquet.write_table``."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **options)


def sweep_temporaries(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Remove the temporary files under ``folder`` whose owning process is gone.

    Call it when starting to write (holding the dataset lock): a live owner's file is kept,
    since it may be mid-write. Returns the removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for f in folder.rglob(f"{TMP_PREFIX}*") if recursive else folder.glob(f"{TMP_PREFIX}*"):
        owner = temp_owner(f)
        if f.is_file() and (owner is None or not pid_alive(owner)):
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed
