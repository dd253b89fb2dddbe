"""Background subset exports for the subset builder: progress, cancel, no overwrite.

:class:`SubsetJob` runs :func:`biomedica_kit.tables.subset.subset` in a child process (this
module's ``__main__``), so the notebook stays responsive and a cancel really stops the copy:
the child is terminated and the half-written output folder, which the job created, is removed.
Progress is the bytes written under ``OUT/shards/`` over the bytes the selection holds (image,
caption and json members plus tar headers), polled a few times a second.

Output folders are resolved by :func:`resolve_out`: an absolute path as it is, a relative one
against the dataset's parent folder (never the kernel's working directory), and a folder that
exists and is not empty is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from biomedica_kit.tables.sql import scalar

if TYPE_CHECKING:
    import duckdb

    from biomedica_kit.tables.subset import SubsetSummary

__all__ = [
    "JobState", "SubsetJob", "resolve_out", "selection_bytes",
]

#: Bytes of tar header per member, and members per sample, for the progress estimate.
_HEADER, _MEMBERS = 512, 3


def resolve_out(dataset: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The absolute output folder: ``out`` if absolute, else beside the dataset (resolved
    against the dataset's parent). Raises FileExistsError for a non-empty folder."""
    if not str(out).strip():
        raise ValueError("no output folder given")
    p = Path(out).expanduser()
    if not p.is_absolute():
        p = Path(dataset).resolve().parent / p
    p = p.resolve()
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise FileExistsError(f"{p} exists and is not empty; choose a new folder")
    return p


def selection_bytes(con: duckdb.DuckDBPyConnection, where: str) -> int:
    """About how many bytes a subset of ``where`` writes (members plus tar headers)."""
    total = scalar(con,
        f"SELECT coalesce(sum(image_length + coalesce(txt_length, 0) + coalesce(json_length, 0)"
        f" + {_HEADER * _MEMBERS}), 0) FROM figures WHERE ({where})")
    return int(total)


@dataclass
class JobState:
    """Where a job stands: ``running``, ``done``, ``failed`` or ``cancelled``."""

    status: str = "running"
    fraction: float = 0.0
    message: str = ""
    summary: SubsetSummary | None = None


class SubsetJob:
    """One subset export in a child process.

    ``on_update(state)`` is called from a helper thread after every poll and once at the end.
    :meth:`wait` blocks until the end and returns the state.
    """

    def __init__(self, dataset: str | os.PathLike, where: str, out: str | os.PathLike, *,
                 expected_bytes: int, on_update: Callable[[JobState], None] | None = None,
                 poll: float = 0.25) -> None:
        self.dataset = Path(dataset).resolve()
        self.where = where
        self.out = resolve_out(self.dataset, out)
        self.expected = max(1, expected_bytes)
        self.on_update = on_update
        self.poll = poll
        self.state = JobState(message=f"exporting to {self.out}")
        self._created = not self.out.exists()
        self._cancel = threading.Event()
        self._tmp = Path(tempfile.mkdtemp(prefix="biomedica-subset-"))
        self._result = self._tmp / "result.json"
        with open(self._tmp / "stderr", "wb") as err:  # the child keeps its own handle
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "biomedica_kit.analysis.jobs", str(self.dataset), where,
                 str(self.out), str(self._result)], stdout=subprocess.DEVNULL, stderr=err)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Stop the export; the output folder it created is removed."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> JobState:
        """Block until the job has ended (or ``timeout`` seconds); return its state."""
        self._thread.join(timeout)
        return self.state

    @property
    def running(self) -> bool:
        """Whether the child process is still working."""
        return self._thread.is_alive()

    def _written(self) -> int:
        shards = self.out / "shards"
        if not shards.is_dir():
            return 0
        total = 0
        for p in shards.rglob("*"):
            with contextlib.suppress(FileNotFoundError):  # a temporary shard renamed meanwhile
                total += p.stat().st_size if p.is_file() else 0
        return total

    def _emit(self) -> None:
        if self.on_update is not None:
            self.on_update(self.state)

    def _watch(self) -> None:
        from biomedica_kit.tables.subset import SubsetSummary

        try:
            while self._proc.poll() is None:
                if self._cancel.is_set():
                    self._proc.terminate()
                    try:
                        self._proc.wait(10)
                    except subprocess.TimeoutExpired:
                        self._proc.kill()
                        self._proc.wait()
                    if self._created:
                        shutil.rmtree(self.out, ignore_errors=True)
                    self.state.status = "cancelled"
                    self.state.message = f"cancelled; {self.out} removed" if self._created \
                        else "cancelled"
                    return
                self.state.fraction = min(0.99, self._written() / self.expected)
                self._emit()
                time.sleep(self.poll)
            if self._proc.returncode == 0 and self._result.is_file():
                self.state.summary = SubsetSummary(**json.loads(self._result.read_text()))
                self.state.status, self.state.fraction = "done", 1.0
                self.state.message = f"done: {self.out}"
            else:
                err = (self._tmp / "stderr").read_text(errors="replace").strip().splitlines()
                self.state.status = "failed"
                self.state.message = err[-1] if err else f"exit code {self._proc.returncode}"
                if self._created:  # nothing half-written stays behind
                    shutil.rmtree(self.out, ignore_errors=True)
        finally:
            self._emit()
            shutil.rmtree(self._tmp, ignore_errors=True)


def _main(argv: list[str]) -> int:
    """Child process: ``python -m biomedica_kit.analysis.jobs DATASET WHERE OUT RESULT``."""
    from dataclasses import asdict

    from biomedica_kit.tables.subset import subset

    dataset, where, out, result = argv
    summary = subset(dataset, where, out)
    Path(result).write_text(json.dumps(asdict(summary)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
