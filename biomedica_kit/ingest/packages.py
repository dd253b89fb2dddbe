"""Read one PMC OA article package (tar.gz, tar, MECA zip, or folder) safely into memory.

Nothing is extracted to disk. Members with absolute paths, ``..`` components, links, devices or
oversized bodies are refused one by one and recorded with a reason; the rest of the package is
still used. A truncated or corrupt archive fails the whole package (its contents cannot be
trusted), with a reason. Only XML and image members are read; the names of all members are kept
so that graphic hrefs can be resolved against what the package really holds.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

__all__ = ["ARCHIVE_SUFFIXES", "IMAGE_EXTS", "WANTED_EXTS", "XML_EXTS", "Package", "PackageError",
           "PackageLimits", "article_xml_members", "expand_containers", "is_container",
           "package_stem", "read_package"]

XML_EXTS = (".nxml", ".xml")
#: Image members read from a package (lower-cased extensions), PLOS renditions included; the
#: ETL's preference among them is ``biomedica_kit.etl.graphics.IMAGE_EXT_PREFERENCE``.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif",
              ".png_l", ".png_m", ".png_i", ".png_s")
WANTED_EXTS = XML_EXTS + IMAGE_EXTS
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class PackageError(ValueError):
    """The package as a whole cannot be read; ``reason`` is a short code for the report."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PackageLimits:
    """Size limits applied while reading a package."""

    max_member_bytes: int = 512 * 1024 * 1024
    max_package_bytes: int = 4 * 1024 * 1024 * 1024


@dataclass
class Package:
    """The useful contents of a package: file name -> bytes, plus what was refused and why."""

    name: str
    files: dict[str, bytes]
    names: list[str]
    rejected: dict[str, str] = field(default_factory=dict)


def package_stem(path: str | os.PathLike) -> str:
    """Package name without its archive suffix (``PMC123.tar.gz`` -> ``PMC123``)."""
    name = PurePosixPath(str(path)).name
    for suf in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _holds_xml(folder: Path) -> bool:
    return any(f.is_file() and f.suffix.lower() in XML_EXTS for f in folder.rglob("*"))


def _is_package_entry(p: Path) -> bool:
    low = p.name.lower()
    if p.name.startswith("."):
        return False
    if p.is_file():
        return low.endswith(ARCHIVE_SUFFIXES) or low.endswith(XML_EXTS)
    return p.is_dir() and _holds_xml(p)


def is_container(folder: str | os.PathLike) -> bool:
    """Whether a folder is a folder *of packages* rather than one package.

    It is when it holds no XML file at its top and two or more of its entries are packages
    (archives, XML files, or folders holding XML), or its one such entry is a container:
    ``ccby/articles/<id>/`` is fourteen packages, while ``PMC1/`` (XML at its top) or
    ``PMC1/PMC1/x.nxml`` (one folder) is one.
    """
    d = Path(folder)
    if not d.is_dir() or d.is_symlink():
        return False
    kids = sorted(d.iterdir(), key=lambda p: p.name)
    if any(k.is_file() and k.suffix.lower() in XML_EXTS for k in kids):
        return False
    found = [k for k in kids if _is_package_entry(k)]
    # One folder of packages, wrapped (``ccby/articles/``): the wrapper is a container too.
    return len(found) >= 2 or (len(found) == 1 and found[0].is_dir() and is_container(found[0]))


def expand_containers(entries: list[Path], *, max_depth: int = 4) -> list[Path]:
    """Source-folder entries with every container folder (:func:`is_container`) replaced by its
    entries, recursively up to ``max_depth`` levels, each level in name order."""
    out: list[Path] = []
    for p in entries:
        if max_depth > 0 and is_container(p):
            out += expand_containers(sorted(p.iterdir(), key=lambda x: x.name),
                                     max_depth=max_depth - 1)
        else:
            out.append(p)
    return out


def read_package(path: str | os.PathLike, limits: PackageLimits | None = None) -> Package:
    """Read a package from disk: an archive file, a folder, or a single XML file."""
    limits = limits or PackageLimits()
    p = Path(path)
    if not p.exists():
        raise PackageError("package_missing", f"{p} does not exist")
    if p.is_dir():
        return _read_dir(p, limits)
    name = p.name.lower()
    if name.endswith(XML_EXTS):
        return Package(package_stem(p), {p.name: p.read_bytes()}, [p.name])
    if name.endswith(".zip"):
        return _read_zip(p, limits)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return _read_tar(p, limits)
    raise PackageError("unknown_package_format", p.name)


def _member_problem(name: str) -> str | None:
    pp = PurePosixPath(name.replace("\\", "/"))
    if pp.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "unsafe_path: absolute"
    if ".." in pp.parts:
        return "unsafe_path: parent reference"
    return None


def _relative(name: str) -> str:
    """Member path inside the package, dropping the leading ``PMCxxxx/`` folder."""
    parts = [x for x in PurePosixPath(name).parts if x not in (".", "")]
    return "/".join(parts[1:]) if len(parts) > 1 else "/".join(parts)


def _wanted(name: str) -> bool:
    return name.lower().endswith(WANTED_EXTS)


def _read_tar(p: Path, limits: PackageLimits) -> Package:
    pkg = Package(package_stem(p), {}, [])
    total = 0
    try:
        with tarfile.open(p, mode="r:*") as tar:
            for m in tar:
                problem = _member_problem(m.name)
                rel = _relative(m.name)
                if problem is None and (m.issym() or m.islnk()):
                    problem = f"unsafe_member: link to {m.linkname!r}"
                elif problem is None and not (m.isfile() or m.isdir()):
                    problem = "unsafe_member: device or special file"
                if problem:
                    pkg.rejected[m.name] = problem
                    continue
                if m.isdir():
                    continue
                pkg.names.append(rel)
                if not _wanted(rel):
                    continue
                if m.size > limits.max_member_bytes:
                    pkg.rejected[rel] = f"member_too_large: {m.size} bytes"
                    continue
                total += m.size
                if total > limits.max_package_bytes:
                    raise PackageError("package_too_large", f"> {limits.max_package_bytes} bytes")
                f = tar.extractfile(m)
                data = f.read() if f is not None else b""
                if len(data) != m.size:
                    raise PackageError("truncated_archive", f"{m.name}: short read")
                pkg.files[rel] = data
    except PackageError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise PackageError("truncated_archive" if isinstance(exc, EOFError | zlib.error) or
                           "compressed file ended" in str(exc) or "unexpected end" in str(exc)
                           else "corrupt_archive", f"{type(exc).__name__}: {exc}") from None
    return pkg


def _read_zip(p: Path, limits: PackageLimits) -> Package:
    pkg = Package(package_stem(p), {}, [])
    total = 0
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                problem = _member_problem(info.filename)
                if problem is None and (info.external_attr >> 16) & 0o170000 == 0o120000:
                    problem = "unsafe_member: symlink"
                if problem:
                    pkg.rejected[info.filename] = problem
                    continue
                # MECA zips keep files under content/; keep the relative path as written.
                rel = info.filename
                pkg.names.append(rel)
                if not _wanted(rel):
                    continue
                if info.file_size > limits.max_member_bytes:
                    pkg.rejected[rel] = f"member_too_large: {info.file_size} bytes"
                    continue
                total += info.file_size
                if total > limits.max_package_bytes:
                    raise PackageError("package_too_large", f"> {limits.max_package_bytes} bytes")
                pkg.files[rel] = zf.read(info)
    except PackageError:
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        raise PackageError("corrupt_archive", f"{type(exc).__name__}: {exc}") from None
    return pkg


def _read_dir(p: Path, limits: PackageLimits) -> Package:
    pkg = Package(p.name, {}, [])
    root = p.resolve()
    total = 0
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p).as_posix()
        if f.is_symlink():
            target = f.resolve()
            if not target.is_relative_to(root):
                pkg.rejected[rel] = "unsafe_member: link outside the package"
                continue
        if not f.is_file():
            continue
        pkg.names.append(rel)
        if not _wanted(rel):
            continue
        size = f.stat().st_size
        if size > limits.max_member_bytes:
            pkg.rejected[rel] = f"member_too_large: {size} bytes"
            continue
        total += size
        if total > limits.max_package_bytes:
            raise PackageError("package_too_large", f"> {limits.max_package_bytes} bytes")
        pkg.files[rel] = f.read_bytes()
    return pkg


def article_xml_members(pkg: Package) -> list[str]:
    """The package's article XML files: ``.nxml`` if any, else ``.xml`` (MECA: not manifest)."""
    nxml = sorted(n for n in pkg.files if n.lower().endswith(".nxml"))
    if nxml:
        return nxml
    skip = {"manifest.xml", "directives.xml", "transfer.xml"}
    return sorted(n for n in pkg.files
                  if n.lower().endswith(".xml") and PurePosixPath(n).name.lower() not in skip)
