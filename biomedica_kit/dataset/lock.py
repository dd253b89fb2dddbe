"""The one writer lock of a dataset: build, enrich, subset, apply-labels all take it.

An exclusive ``flock`` on the dataset folder itself: it dies with the process (a kill -9 frees
it) and leaves nothing that has to be cleaned up. A second writer is refused at once with a
message naming the holder (``.writer.json``, informational only: the lock is the flock). The
lock is re-entrant within a process, so a command may call library functions that lock too.
A forked child never holds it: the descriptor is closed in every child at fork (a loader
worker that outlives a killed trainer, say, would otherwise keep the dataset locked), and
:mod:`biomedica_kit.base.pool` starts its workers from a fork server anyway.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from biomedica_kit.base.atomic import sweep_temporaries

__all__ = ["SWEPT", "WRITER_FILE", "DatasetLocked", "dataset_lock"]

WRITER_FILE = ".writer.json"
_held: dict[str, int] = {}  # realpath -> depth, in this process
_fds: dict[str, int] = {}  # realpath -> the locked descriptor, in this process
_guard = threading.Lock()


def _forget_in_child() -> None:
    """In a forked child: close the inherited lock descriptors (only close: an unlock would
    release the parent's lock, which shares the open file) and hold nothing."""
    for fd in _fds.values():
        with suppress(OSError):
            os.close(fd)
    _fds.clear()
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class DatasetLocked(RuntimeError):
    """Another command is writing the dataset."""


def _holder(root: Path) -> str:
    try:
        info = json.loads((root / WRITER_FILE).read_text())
        return f" ({info.get('command')}, pid {info.get('pid')}, since {info.get('since')})"
    except (OSError, ValueError, AttributeError):
        return ""


#: Folders whose temporaries a new writer sweeps (not cache/: millions of files, own naming).
SWEPT = ("shards", "report", "versions", "metadata", "labels", "ledger", "views", "subset",
         "embeddings", "clusters", "tags", "index")


def _sweep(root: Path) -> None:
    """Remove temporaries left by dead writers: holding the lock, no live writer owns one."""
    sweep_temporaries(root, recursive=False)
    for name in SWEPT:
        sweep_temporaries(root / name)


@contextmanager
def dataset_lock(root: str | os.PathLike[str], command: str = "a command") -> Iterator[None]:
    """Hold the dataset's exclusive writer lock, or raise :class:`DatasetLocked` at once.

    On taking it, temporary files left by dead processes (a kill -9 mid-write) are removed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(root)
    with _guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    fd = os.open(root, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatasetLocked(f"another command is writing {root}{_holder(root)}; "
                                f"wait for it to finish") from None
        with _guard:
            _held[key] = 1
            _fds[key] = fd
        _sweep(root)
        info = {"command": command, "pid": os.getpid(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        # Informational only: failing to write it must not stop the writer (the flock counts).
        with suppress(OSError):
            (root / WRITER_FILE).write_text(json.dumps(info))
        try:
            yield
        finally:
            with _guard:
                del _held[key]
                del _fds[key]
            (root / WRITER_FILE).unlink(missing_ok=True)
    finally:
        os.close(fd)
