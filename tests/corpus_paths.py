"""Where the real data lies (``../shared`` beside the checkout, the bundled sample) and helpers
that write packages from it. A plain module, not the conftest: test folders have conftests of
their own, and ``from corpus_paths import`` would find whichever one was imported first.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CORPUS", "ROOT", "SAMPLE", "SHARED", "folder_members", "lock_held_by_another_process",
           "make_tar"]

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus" / "pmc_oa"
SAMPLE = ROOT / "data" / "sample" / "packages"


def make_tar(dest: Path, folder: str, members: dict[str, bytes]) -> Path:
    """Write a PMC-style package: a .tar.gz holding ``folder/<name>`` for each member."""
    import io
    import tarfile

    with tarfile.open(dest, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def folder_members(folder: Path) -> dict[str, bytes]:
    """Every file of a corpus article folder, by name."""
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()}


@contextmanager
def lock_held_by_another_process(dataset: Path, command: str) -> Iterator[None]:
    """A real second process holding ``dataset``'s writer lock (as a running build would)."""
    script = textwrap.dedent(f"""
        import sys
        from biomedica_kit.dataset.lock import dataset_lock
        with dataset_lock({str(dataset)!r}, {command!r}):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.communicate("\n", timeout=30)
