"""Where packages come from: a local folder (NCBI layout with oa_file_list.csv, or a plain folder
of packages) and the PMC OA file list that describes them.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from biomedica_kit.packages import ARCHIVE_SUFFIXES, XML_EXTS, package_stem

FILE_LIST = "oa_file_list.csv"
#: The columns of NCBI's oa_file_list.csv, in order.
FILE_LIST_COLUMNS = ("File", "Article Citation", "Accession ID",
                     "Last Updated (YYYY-MM-DD HH:MM:SS)", "PMID", "License")


@dataclass(frozen=True)
class PackageRef:
    """One package to process, with what the file list says about it (if anything)."""

    name: str  # package stem, e.g. PMC11376217
    location: str  # local path (or URL for remote sources)
    file: str | None = None  # the file list's File column (relative path in the mirror)
    pmcid: str | None = None
    pmid: str | None = None
    citation: str | None = None
    last_updated: str | None = None
    license: str | None = None
    duplicate_of: str | None = None  # set when another package with the same name wins


def read_file_list(data: bytes | str | os.PathLike) -> list[dict[str, str]]:
    """Parse NCBI's oa_file_list.csv (bytes, text, or a path) into dict rows."""
    if isinstance(data, bytes):
        text = data.decode("utf-8-sig")
    elif isinstance(data, str) and "\n" in data:
        text = data
    else:
        text = Path(data).read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("File", "Accession ID") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"file list lacks columns {missing}; has {reader.fieldnames}")
    return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def ref_from_row(row: dict[str, str], location: str) -> PackageRef:
    """A PackageRef from one file-list row."""
    return PackageRef(
        name=package_stem(row["File"]),
        location=location,
        file=row["File"],
        pmcid=row.get("Accession ID") or None,
        pmid=row.get("PMID") or None,
        citation=row.get("Article Citation") or None,
        last_updated=row.get("Last Updated (YYYY-MM-DD HH:MM:SS)") or None,
        license=row.get("License") or None,
    )


def write_file_list(rows: list[dict[str, str]], path: Path) -> None:
    """Write rows in NCBI's oa_file_list.csv format."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FILE_LIST_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def discover_local(source: str | os.PathLike, file_list: str | os.PathLike | None = None
                   ) -> list[PackageRef]:
    """List the packages of a local source folder, in a stable order.

    With a file list (``file_list`` or ``SOURCE/oa_file_list.csv``) the packages are its rows,
    at ``SOURCE/<File>``. Without one, every archive, article folder and loose XML file at the top
    of the folder is a package; where an archive and a folder share a name, the archive wins and
    the folder is kept as a recorded duplicate.
    """
    src = Path(source)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    fl = Path(file_list) if file_list else src / FILE_LIST
    if fl.is_file():
        return [ref_from_row(r, str(src / r["File"])) for r in read_file_list(fl)]
    entries = sorted(src.iterdir(), key=lambda p: p.name)
    refs: dict[str, PackageRef] = {}
    dupes: list[PackageRef] = []
    for p in entries:
        low = p.name.lower()
        if p.name.startswith("."):
            continue
        is_archive = p.is_file() and low.endswith(ARCHIVE_SUFFIXES)
        is_xml = p.is_file() and low.endswith(XML_EXTS)
        is_dir = p.is_dir() and any(
            f.suffix.lower() in XML_EXTS for f in p.rglob("*") if f.is_file())
        if not (is_archive or is_xml or is_dir):
            continue
        ref = PackageRef(name=package_stem(p), location=str(p))
        prev = refs.get(ref.name)
        if prev is None:
            refs[ref.name] = ref
        elif is_archive and not prev.location.lower().endswith(ARCHIVE_SUFFIXES):
            dupes.append(PackageRef(prev.name, prev.location, duplicate_of=str(p)))
            refs[ref.name] = ref
        else:
            dupes.append(PackageRef(ref.name, ref.location, duplicate_of=prev.location))
    return sorted([*refs.values(), *dupes], key=lambda r: (r.name, r.duplicate_of or ""))
