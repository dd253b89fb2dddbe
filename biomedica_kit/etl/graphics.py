"""Graphic hrefs -> package files, and which rendition of an image is stored.

An href is matched against the package's file names, trying in order:

1. the href's file name (for an absolute URL, the last segment of its path, so SciELO
   document-store URLs find their SHA-1 named files), as written and URL-decoded; package file
   names are URL-decoded too (``10%2E1371%2Fjournal%2Epbio.0020294.g001.tif``);
2. for ``info:doi/`` or ``doi:`` hrefs (PLOS: ``info:doi/10.1371/journal.pgen.1000100.g001``), the
   DOI, its suffix (``journal.pgen.1000100.g001``), and the suffix without its leading dotted
   parts (``pgen.1000100.g001``);
3. each of these as a file *stem*, i.e. without an image extension: hrefs written without one
   (PMC's ``koaf197f1``, PLOS), or with one the package does not hold (``fig1.tif`` ->
   ``fig1.jpg``).

An exact file name wins. Among the files sharing a stem (the renditions of one image), the
first of :data:`IMAGE_EXT_PREFERENCE` is stored: a JPEG or PNG that can be stored byte for byte
first, PLOS's ``.PNG_L`` (a lossless PNG at the master's full size) next, then TIFF masters and
other formats (converted to JPEG), then the reduced renditions (PLOS ``.PNG_M``, ``.PNG_I``,
``.PNG_S``) and GIF thumbnails last. The other renditions are recorded as alternatives. Files in
the XML's own folder are preferred over same-named files elsewhere in the package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from lxml import etree

from biomedica_kit.etl.article import Graphic

__all__ = ["IMAGE_EXT_PREFERENCE", "XLINK", "FileIndex", "choose_graphic", "ext_rank", "href_keys",
           "href_of", "image_stem", "is_thumbnail"]

XLINK = "{http://www.w3.org/1999/xlink}"

#: Preference among the renditions of one image (lower-cased extensions), best first.
IMAGE_EXT_PREFERENCE = (".jpg", ".jpeg", ".png", ".png_l", ".tif", ".tiff", ".webp", ".bmp",
                        ".png_m", ".png_i", ".png_s", ".gif")
_THUMB_HINTS = ("thumb", "icon", "small")
_SIZED_RENDITION = re.compile(r"scielo-\d+x\d+")  # SciELO SPS thumbnails: scielo-267x140
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DOI_HREF = re.compile(r"^(?:info:doi/|doi:)\s*(.+)$", re.IGNORECASE)


def is_thumbnail(g: etree._Element) -> bool:
    """A graphic marked as a thumbnail (``content-type``/``specific-use`` with thumb, icon,
    small, or SciELO's sized ``scielo-267x140`` renditions)."""
    hint = f"{g.get('content-type', '')} {g.get('specific-use', '')}".lower()
    return any(h in hint for h in _THUMB_HINTS) or bool(_SIZED_RENDITION.search(hint))


def href_of(g: etree._Element) -> str:
    """A graphic's ``xlink:href``, stripped ("" when absent)."""
    return (g.get(XLINK + "href") or "").strip()


def ext_rank(name: str) -> int:
    """Position of a file's extension in :data:`IMAGE_EXT_PREFERENCE` (unknown: last)."""
    ext = PurePosixPath(name).suffix.lower()
    return IMAGE_EXT_PREFERENCE.index(ext) if ext in IMAGE_EXT_PREFERENCE else len(
        IMAGE_EXT_PREFERENCE)


def image_stem(name: str) -> str | None:
    """``name`` without an image extension of :data:`IMAGE_EXT_PREFERENCE`, else None."""
    p = PurePosixPath(name)
    return name[: -len(p.suffix)] if p.suffix.lower() in IMAGE_EXT_PREFERENCE else None


def href_keys(href: str) -> list[str]:
    """The lower-cased file names an href may mean, most specific first."""
    h = href.strip()
    keys: list[str] = []
    m = _DOI_HREF.match(h)
    if m:
        doi = "".join(m.group(1).split())
        suffix = doi.rsplit("/", 1)[-1]
        keys += [doi, suffix]
        parts = suffix.split(".")
        keys += [".".join(parts[i:]) for i in range(1, len(parts) - 1)]
    else:
        if _URL.match(h):
            h = urlsplit("".join(h.split())).path
        base = h.replace("\\", "/").rsplit("/", 1)[-1]
        decoded = unquote(base)
        keys += [base, decoded, decoded.rsplit("/", 1)[-1]]
    return list(dict.fromkeys(k.lower() for k in keys if k))


class FileIndex:
    """Package file names, looked up by the names an href may mean (see the module doc).

    ``base_dir`` is the folder of the XML inside the package: its files win over same-named
    files elsewhere (a folder holding several articles).
    """

    def __init__(self, files: Iterable[str], base_dir: str = "") -> None:
        self.base = base_dir.strip("/")
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        for f in dict.fromkeys(files):
            base = PurePosixPath(f).name
            decoded = unquote(base)
            for n in dict.fromkeys(x.lower() for x in (base, decoded, decoded.rsplit("/", 1)[-1])):
                self.by_name.setdefault(n, []).append(f)
                stem = image_stem(n)
                if stem:
                    self.by_stem.setdefault(stem, []).append(f)
        for table in (self.by_name, self.by_stem):
            for k, v in table.items():
                table[k] = sorted(v, key=self._order)
        self.empty = not self.by_name

    def _place(self, f: str) -> int:
        parent = PurePosixPath(f).parent.as_posix()
        parent = "" if parent == "." else parent
        if parent == self.base:
            return 0
        return 1 if not self.base or parent.startswith(self.base + "/") else 2

    def _order(self, f: str) -> tuple:
        return self._place(f), ext_rank(f), f

    def resolve_all(self, href: str) -> list[str]:
        """Every package file the href may mean: the one to store first, then its other
        renditions (same stem, same folder); empty when none matches.

        The XML's own folder (and below) is searched first, by exact name then by stem; only
        then the rest of the package.
        """
        keys = href_keys(href)
        chosen = self._find(keys, local=True) or self._find(keys, local=False)
        if chosen is None:
            return []
        folder = PurePosixPath(chosen).parent
        stem = image_stem(PurePosixPath(chosen).name.lower())
        siblings = [f for f in self.by_stem.get(stem or "", [])
                    if f != chosen and PurePosixPath(f).parent == folder]
        return [chosen, *dict.fromkeys(siblings)]

    def _find(self, keys: list[str], *, local: bool) -> str | None:
        def ok(hits: list[str] | None) -> list[str]:
            return [f for f in hits or [] if not local or self._place(f) < 2]

        for k in keys:
            hit = ok(self.by_name.get(k))
            if hit:
                return hit[0]
        for k in keys:
            stem = image_stem(k)
            hit = ok(self.by_stem.get(k)) or ok(self.by_stem.get(stem) if stem else None)
            if hit:
                return min(hit, key=self._order)
        return None

    def resolve(self, href: str) -> str | None:
        """The package file an href points to, or None; without files, the href's file name."""
        if self.empty:
            return PurePosixPath(href).name or None
        found = self.resolve_all(href)
        return found[0] if found else None


def choose_graphic(cands: list[etree._Element], files: FileIndex) -> Graphic:
    """One image out of a graphic and its alternatives: thumbnails only when nothing else is
    there, then a present file, best rendition first; everything else becomes an alternative."""
    hrefs = [href_of(c) for c in cands]
    full = [c for c in cands if not is_thumbnail(c)] or cands
    resolved: list[tuple[str, str | None, list[str]]] = []
    for c in full:
        h = href_of(c)
        if files.empty:
            resolved.append((h, files.resolve(h), []))
        else:
            found = files.resolve_all(h)
            resolved.append((h, found[0] if found else None, found[1:]))
    present = [r for r in resolved if r[1]]
    href, chosen, renditions = (min(present, key=lambda r: ext_rank(r[1] or ""))
                                if present else resolved[0])
    named = {PurePosixPath(h).name.lower() for h in hrefs}
    alternatives = [h for h in hrefs if h != href]
    alternatives += [f for f in renditions if PurePosixPath(f).name.lower() not in named]
    return Graphic(href=href, file=chosen, alternatives=list(dict.fromkeys(alternatives)))
