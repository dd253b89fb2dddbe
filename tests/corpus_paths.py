"""Where the real data lies (``../shared`` beside the checkout, the bundled sample) and helpers
that write packages from it. A plain module, not the conftest: test folders have conftests of
their own, and ``from corpus_paths import`` would find whichever one was imported first.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CORPUS", "ROOT", "SAMPLE", "SHARED", "folder_members", "make_tar"]

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
