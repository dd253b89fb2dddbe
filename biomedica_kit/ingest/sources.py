"""Where packages come from, and which of them a build takes.

A *source* is a PMC OA mirror in NCBI's layout (``oa_file_list.csv`` at its root, packages at
each row's ``File`` path, e.g. ``oa_package/1e/a1/PMC11376217.tar.gz``), given as a local folder
or as an ``http(s)://`` base URL (NCBI serves it at ``https://ftp.ncbi.nlm.nih.gov/pub/pmc/``).
A local folder without a file list is also a source: every archive, article folder and loose
XML file at its top is a package.

:class:`Selection` picks packages from the file list (licence category, Last Updated range,
publication year from the citation, PMCIDs, a limit) before anything is downloaded.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

from biomedica_kit.dataset.licenses import CATEGORIES, category_of, license_code
from biomedica_kit.ingest.packages import (
    ARCHIVE_SUFFIXES,
    XML_EXTS,
    expand_containers,
    package_stem,
)

__all__ = ["FILE_LIST", "FILE_LIST_COLUMNS", "LAST_UPDATED", "PackageRef", "Selection",
           "citation_year", "describe_folder", "discover_local", "is_remote", "iter_file_list",
           "license_category", "normalise_pmcid", "package_sha256", "parse_date_bound",
           "parse_pmcids", "parse_years", "read_file_list", "ref_from_row", "refs_from_file_list",
           "source_uri", "stat_package", "unsafe_file_path", "write_file_list"]

FILE_LIST = "oa_file_list.csv"
LAST_UPDATED = "Last Updated (YYYY-MM-DD HH:MM:SS)"
#: The columns of NCBI's oa_file_list.csv, in order.
FILE_LIST_COLUMNS = ("File", "Article Citation", "Accession ID", LAST_UPDATED, "PMID", "License")


@dataclass(frozen=True)
class PackageRef:
    """One package to process, with what the file list says about it (if anything).

    The reader fills the file-list fields; the fetch stage fills ``sha256``/``size`` (and points
    ``location`` at the downloaded copy) or ``failure`` when the package could not be had.
    """

    name: str  # package stem, e.g. PMC11376217
    location: str  # local path (or URL for remote sources)
    file: str | None = None  # the file list's File column (relative path in the mirror)
    pmcid: str | None = None
    pmid: str | None = None
    citation: str | None = None
    last_updated: str | None = None
    license: str | None = None
    duplicate_of: str | None = None  # set when another package with the same name wins
    sha256: str | None = None  # content hash, when already known (downloaded packages)
    size: int | None = None  # bytes (archive) or summed file bytes (folder)
    mtime_ns: int | None = None  # newest modification time, for local change detection
    failure: str | None = None  # "reason: detail" when the package could not be fetched

    @property
    def id(self) -> str:
        """Unique key of the package within its source: the File path, else the entry name.

        Not the stem: a flat folder may hold ``PMC1.tar.gz`` and a ``PMC1/`` folder side by
        side, and both are recorded.
        """
        return self.file or PurePosixPath(self.location.replace(os.sep, "/")).name


def is_remote(source: str | os.PathLike) -> bool:
    """True for an ``http(s)://`` source."""
    return str(source).lower().startswith(("http://", "https://"))


def source_uri(source: str | os.PathLike) -> str:
    """A normalised name of a source (absolute path, or URL with a trailing slash).

    Recorded in the manifest so a re-run can tell whether it continues the same source.
    """
    s = str(source)
    if is_remote(s):
        return s if s.endswith("/") else s + "/"
    return str(Path(s).resolve())


# ------------------------------------------------------------------------------ file list


def iter_file_list(data: bytes | str | os.PathLike) -> Iterator[dict[str, str]]:
    """Stream the rows of NCBI's oa_file_list.csv (bytes, text, or a path) as dicts.

    Streaming matters: the real list has ~6.4M rows, and selection keeps only a few.
    """
    if isinstance(data, bytes):
        yield from _rows(io.StringIO(data.decode("utf-8-sig")))
    elif isinstance(data, str) and "\n" in data:
        yield from _rows(io.StringIO(data))
    else:
        with open(data, encoding="utf-8-sig", newline="") as f:
            yield from _rows(f)


def _rows(f) -> Iterator[dict[str, str]]:
    reader = csv.DictReader(f)
    missing = [c for c in ("File", "Accession ID") if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"file list lacks columns {missing}; has {reader.fieldnames}")
    for row in reader:
        yield {k: (v or "").strip() for k, v in row.items() if k}


def read_file_list(data: bytes | str | os.PathLike) -> list[dict[str, str]]:
    """Parse NCBI's oa_file_list.csv (bytes, text, or a path) into dict rows."""
    return list(iter_file_list(data))


def ref_from_row(row: dict[str, str], location: str) -> PackageRef:
    """A PackageRef from one file-list row."""
    return PackageRef(
        name=package_stem(row["File"]),
        location=location,
        file=row["File"],
        pmcid=row.get("Accession ID") or None,
        pmid=row.get("PMID") or None,
        citation=row.get("Article Citation") or None,
        last_updated=row.get(LAST_UPDATED) or None,
        license=row.get("License") or None,
    )


def write_file_list(rows: list[dict[str, str]], path: Path) -> None:
    """Write rows in NCBI's oa_file_list.csv format."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FILE_LIST_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def unsafe_file_path(rel: str) -> bool:
    """Whether a file list's ``File`` value could name a file outside the mirror: absolute,
    with a ``..`` part, or empty."""
    pp = PurePosixPath(rel.replace("\\", "/"))
    return pp.is_absolute() or ".." in pp.parts or not pp.parts or bool(PureWindowsPath(rel).drive)


def refs_from_file_list(rows: Iterable[dict[str, str]], base: str) -> Iterator[PackageRef]:
    """PackageRefs for file-list rows of a mirror at ``base`` (a folder or a URL).

    A row whose ``File`` points outside a local ``base`` (:func:`unsafe_file_path`) is not
    read: its ref carries the failure ``unsafe_path`` (as a remote source's download does).
    """
    remote = is_remote(base)
    for row in rows:
        rel = row["File"]
        if remote:
            yield ref_from_row(row, base.rstrip("/") + "/" + rel.lstrip("/"))
        elif unsafe_file_path(rel):
            yield replace(ref_from_row(row, rel), failure=f"unsafe_path: file list path "
                                                          f"{rel!r} is outside {base}")
        else:
            yield ref_from_row(row, str(Path(base) / rel))


# ------------------------------------------------------------------------------ selection

_YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")


def citation_year(citation: str | None) -> int | None:
    """Publication year in a file-list citation (``Nucleic Acids Res. 2024 Sep 5; 52:e74``).

    The first 18xx/19xx/20xx token: NCBI's citations are ``<journal>. <year> <month> <day>;
    <volume>(<issue>):<pages>``, and journal abbreviations do not hold four-digit numbers.
    """
    m = _YEAR.search(citation or "")
    return int(m.group(1)) if m else None


def license_category(value: str | None) -> str | None:
    """BIOMEDICA category of a file-list ``License`` value; None when the list gives none."""
    if not value:
        return None
    return category_of(license_code(value) or "other")


def normalise_pmcid(value: str) -> str | None:
    """``PMC123``, ``pmc123`` or ``123`` -> ``PMC123``; None when there are no digits."""
    m = re.search(r"(\d+)", value)
    return f"PMC{m.group(1)}" if m else None


def parse_pmcids(value: str | os.PathLike | Iterable[str]) -> frozenset[str]:
    """PMCIDs from a comma/whitespace list, a file of them (one or more per line), or an iterable.

    A string that names an existing file is read as a file.
    """
    if isinstance(value, str | os.PathLike) and Path(value).is_file():
        text = Path(value).read_text(encoding="utf-8-sig")
    elif isinstance(value, str | os.PathLike):
        text = str(value)
    else:
        text = " ".join(value)
    ids = {normalise_pmcid(tok) for tok in re.split(r"[\s,;]+", text) if tok.strip()}
    return frozenset(i for i in ids if i is not None)


#: The forms of a ``--since``/``--until`` bound, and what completes each as a start / an end.
_DATE_FORMS = (("%Y", "-01-01 00:00:00", "-12-31 23:59:59"),
               ("%Y-%m", "-01 00:00:00", "-31 23:59:59"),
               ("%Y-%m-%d", " 00:00:00", " 23:59:59"),
               ("%Y-%m-%d %H:%M", ":00", ":59"),
               ("%Y-%m-%d %H:%M:%S", "", ""))


def parse_date_bound(value: str, *, end: bool = False) -> str:
    """A ``--since`` (``end=False``) or ``--until`` bound as a comparable
    ``YYYY-MM-DD HH:MM:SS`` string: ``2024`` -> ``2024-01-01 00:00:00`` as a start,
    ``2024-12-31 23:59:59`` as an end. Raises ValueError for anything that is not a real date
    in one of the forms ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD``, ``YYYY-MM-DD HH:MM[:SS]``.
    """
    v = value.strip().replace("T", " ")
    for form, start_pad, end_pad in _DATE_FORMS:
        # strptime alone would accept "2024-1-5"; the length pins the zero-padded form.
        if len(v) != len(datetime.datetime(2000, 1, 1).strftime(form)):
            continue
        try:
            datetime.datetime.strptime(v, form)
        except ValueError:
            continue
        # An end bound like 2024-02 becomes 2024-02-31: not a real day, but a correct upper
        # bound for string comparison with real timestamps.
        return v + (end_pad if end else start_pad)
    raise ValueError(f"not a date: {value!r} (use YYYY, YYYY-MM, YYYY-MM-DD or "
                     "YYYY-MM-DD HH:MM[:SS], a real date)")


@dataclass(frozen=True)
class Selection:
    """Which packages of a source a build takes. Every criterion given must hold.

    * ``licenses``: BIOMEDICA categories (commercial / noncommercial / other) of the file list's
      ``License`` column. A package with no ``License`` value (no file list) is not selected
      when this is set: its category is only known after parsing.
    * ``since`` / ``until``: inclusive bounds on ``Last Updated`` (``YYYY``, ``YYYY-MM``,
      ``YYYY-MM-DD`` or a full timestamp; a bare date includes its whole day).
    * ``years``: inclusive publication-year range, read from the citation (:func:`citation_year`).
    * ``pmcids``: Accession IDs to keep.
    * ``limit``: the first N packages that pass, in file-list order.
    """

    licenses: frozenset[str] | None = None
    since: str | None = None
    until: str | None = None
    years: tuple[int, int] | None = None
    pmcids: frozenset[str] | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.licenses is not None:
            bad = set(self.licenses) - set(CATEGORIES)
            if bad:
                raise ValueError(f"unknown licence categories {sorted(bad)}; use {CATEGORIES}")
        # Normalise the bounds once, so matching is a plain string comparison.
        if self.since:
            object.__setattr__(self, "since", parse_date_bound(self.since))
        if self.until:
            object.__setattr__(self, "until", parse_date_bound(self.until, end=True))
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit must be >= 0")

    @property
    def filters(self) -> bool:
        """True when any criterion other than ``limit`` is set."""
        return any(x is not None for x in (self.licenses, self.since, self.until, self.years,
                                           self.pmcids))

    def matches(self, ref: PackageRef) -> bool:
        """Whether one package passes every criterion (``limit`` aside)."""
        if self.licenses is not None and license_category(ref.license) not in self.licenses:
            return False
        if self.since or self.until:
            lu = ref.last_updated
            if not lu or (self.since and lu < self.since) or (self.until and lu > self.until):
                return False
        if self.years is not None:
            y = citation_year(ref.citation)
            if y is None or not self.years[0] <= y <= self.years[1]:
                return False
        if self.pmcids is not None:
            pid = normalise_pmcid(ref.pmcid or ref.name)
            if pid not in self.pmcids:
                return False
        return True

    def apply(self, refs: Iterable[PackageRef]) -> list[PackageRef]:
        """The selected packages, in source order (streams; stops early at ``limit``)."""
        out: list[PackageRef] = []
        if self.limit == 0:
            return out
        for r in refs:
            if self.matches(r):
                out.append(r)
                if self.limit is not None and len(out) >= self.limit:
                    break
        return out

    def describe(self) -> str:
        """The criteria in words, e.g. ``licence commercial, Last Updated >= 2024-01-01``."""
        parts = []
        if self.licenses is not None:
            parts.append("licence " + ",".join(sorted(self.licenses)))
        if self.since:
            parts.append(f"Last Updated >= {self.since}")
        if self.until:
            parts.append(f"Last Updated <= {self.until}")
        if self.years is not None:
            parts.append(f"publication years {self.years[0]}-{self.years[1]}")
        if self.pmcids is not None:
            parts.append(f"{len(self.pmcids)} PMCIDs")
        if self.limit is not None:
            parts.append(f"limit {self.limit}")
        return ", ".join(parts) or "everything"

    def to_dict(self) -> dict:
        """JSON form, recorded with each build."""
        return {
            "licenses": sorted(self.licenses) if self.licenses is not None else None,
            "since": self.since, "until": self.until,
            "years": list(self.years) if self.years else None,
            "pmcids": len(self.pmcids) if self.pmcids is not None else None,
            "limit": self.limit,
        }


def parse_years(value: str) -> tuple[int, int]:
    """``2015-2020``, ``2015-`` , ``-2020`` or ``2018`` -> an inclusive (from, to) range."""
    m = re.fullmatch(r"\s*(\d{4})?\s*(-)?\s*(\d{4})?\s*", value or "")
    if not m or not (m.group(1) or m.group(3)):
        raise ValueError(f"not a year range: {value!r} (use 2015-2020, 2015-, -2020 or 2018)")
    lo = int(m.group(1)) if m.group(1) else 0
    hi = int(m.group(3)) if m.group(3) else (9999 if m.group(2) else lo)
    if lo > hi:
        raise ValueError(f"empty year range: {value!r} ({lo} > {hi})")
    return lo, hi


# ----------------------------------------------------------------------------- local folders


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
        return list(refs_from_file_list(iter_file_list(fl), str(src)))
    entries = expand_containers(sorted(src.iterdir(), key=lambda p: p.name))
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


def describe_folder(source: str | os.PathLike, file_list: str | os.PathLike | None = None, *,
                    limit: int = 100_000) -> str:
    """What a source folder without packages holds, for the message that says so: e.g.
    ``found 185 .jpg and 1 .jsonl (186 files), no JATS/nXML article or package archive``.

    Counts files by extension, looking at ``limit`` entries at most.
    """
    src = Path(source)
    fl = Path(file_list) if file_list else src / FILE_LIST
    if fl.is_file():
        return f"its file list {fl} has no rows"
    counts: Counter[str] = Counter()
    for i, f in enumerate(src.rglob("*")):
        if i >= limit:
            break
        if f.is_file():
            counts[f.suffix.lower() or "(no extension)"] += 1
    wanted = (f"no JATS/nXML article ({', '.join(XML_EXTS)}) or package archive "
              f"({', '.join(ARCHIVE_SUFFIXES)})")
    if not counts:
        return f"the folder is empty: {wanted}"
    kinds = [f"{n} {ext}" for ext, n in counts.most_common(5)]
    more = len(counts) - len(kinds)
    listed = (", ".join(kinds[:-1]) + " and " + kinds[-1] if len(kinds) > 1 else kinds[0])
    return (f"found {listed}" + (f" and {more} other kinds" if more else "")
            + f" ({sum(counts.values())} files), {wanted}")


def stat_package(path: str | os.PathLike) -> tuple[int, int] | None:
    """(bytes, newest mtime_ns) of a package file or folder; None when it does not exist.

    The cheap change check of a re-run: a local package whose size and mtime match what was
    recorded is not read again. Folders sum their files (a folder's own mtime does not change
    when a file inside is rewritten).
    """
    p = Path(path)
    try:
        if not p.is_dir():
            st = p.stat()
            return st.st_size, st.st_mtime_ns
        size = mtime = 0
        for f in p.rglob("*"):
            if f.is_file():
                st = f.stat()
                size += st.st_size
                mtime = max(mtime, st.st_mtime_ns)
        return size, mtime
    except OSError:
        return None


def package_sha256(path: str | os.PathLike) -> str:
    """Content hash of a package: sha256 of the archive's bytes, or of a folder's files.

    A folder hashes each file's relative path and bytes in sorted order, so the hash does not
    depend on the file system's listing order or on timestamps.
    """
    p = Path(path)
    if not p.is_dir():
        with open(p, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    h = hashlib.sha256()
    for file in sorted(x for x in p.rglob("*") if x.is_file()):
        rel = file.relative_to(p).as_posix().encode()
        h.update(len(rel).to_bytes(8, "big") + rel)
        with open(file, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()
