"""JATS / PMC nXML / publisher JATS -> articles, figures and inline references.

A pure function of the XML bytes (plus, optionally, the names of the files in the package, used
to resolve graphic hrefs): no I/O, so it runs the same in a worker process, a Ray task or a
notebook. Parsing goes through :mod:`biomedica_kit.base.xml` (no network, no DTD, bounded
internal entities, external entities refused). This module reads article metadata and the
licence; figures and their images are read by :mod:`biomedica_kit.etl.figures` (files resolved
by :mod:`biomedica_kit.etl.graphics`), citing paragraphs by :mod:`biomedica_kit.etl.inline_refs`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from lxml import etree

from biomedica_kit.base.xml import MAX_XML_BYTES, XmlRefused, parse_bytes
from biomedica_kit.dataset.licenses import LicenseInfo, classify_license
from biomedica_kit.etl.article import Article, Figure, Graphic, InlineRef
from biomedica_kit.etl.figures import figures as _figures
from biomedica_kit.etl.graphics import IMAGE_EXT_PREFERENCE, FileIndex
from biomedica_kit.etl.jats_text import element_text as _text
from biomedica_kit.etl.jats_text import elements as _elements
from biomedica_kit.etl.jats_text import first_text as _first_text
from biomedica_kit.etl.jats_text import local_name as _local
from biomedica_kit.etl.jats_text import strip_namespaces as _strip_namespaces
from biomedica_kit.etl.jats_text import unique as _unique

__all__ = ["IMAGE_EXT_PREFERENCE", "MAX_XML_BYTES", "Article", "Figure", "Graphic", "InlineRef",
           "JatsError", "parse_jats", "parse_xml"]

XLINK = "{http://www.w3.org/1999/xlink}"
MML = "{http://www.w3.org/1998/Math/MathML}"
ALI = "{http://www.niso.org/schemas/ali/1.0/}"


class JatsError(ValueError):
    """The XML cannot be turned into articles; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_xml(data: bytes) -> etree._ElementTree:
    """Parse XML bytes safely, raising :class:`JatsError` with a reason code on bad input."""
    try:
        return parse_bytes(data).getroottree()
    except XmlRefused as exc:
        raise JatsError(exc.reason, exc.detail) from None


_INLINE_TAGS = ("italic", "bold", "sup", "sub", "sc", "underline", "monospace", "roman",
                "sans-serif", "overline", "strike", "named-content", "styled-content", "abbrev",
                "ext-link", "uri", "email", "span")
_XMLNS = re.compile(rb'xmlns(?::([\w.-]+))?\s*=\s*["\']([^"\']*)["\']')
_TAG_PREFIX = re.compile(rb"<([A-Za-z_][\w.-]*):")
_OUTER_ARTICLES = "//*[local-name()='article' and not(ancestor::*[local-name()='article'])]"


def parse_jats(
    data: bytes, *, source_file: str | None = None, files: Iterable[str] | None = None
) -> list[Article]:
    """Parse JATS XML bytes into articles.

    ``files`` lists the file names present in the package (paths relative to it; the XML's own
    folder, from ``source_file``, is searched first); it is used to pick the best image among
    renditions and to resolve hrefs (module :mod:`biomedica_kit.etl.graphics`). A
    ``<pmc-articleset>`` (or any wrapper) yields one article per ``<article>``.
    """
    tree = parse_xml(data)
    root = tree.getroot()
    articles = [root] if _local(root.tag) == "article" else _elements(root, _OUTER_ARTICLES)
    if not articles:
        raise JatsError("not_jats", f"no <article> element (root is <{_local(root.tag)}>)")
    base_dir = PurePosixPath(source_file).parent.as_posix() if source_file else ""
    index = FileIndex(files or (), "" if base_dir == "." else base_dir)
    stem = PurePosixPath(source_file).stem if source_file else None
    out = []
    # Namespaces that elements use (the default one, or a prefix seen on a tag), MathML aside.
    declared = dict(_XMLNS.findall(data))
    used = set(_TAG_PREFIX.findall(data)) | {b""}
    uris = {declared[p].decode("utf-8", "replace") for p in used if p in declared}
    uris.discard(MML[1:-1])
    for n, el in enumerate(articles):
        _strip_namespaces(el, uris)
        # Inline formatting carries no structure we read; merging it into its parent's text in C
        # shrinks the tree the Python text walker visits several-fold.
        for x in el.iter("xref"):
            if x.get("ref-type") not in ("fig", "table"):
                x.tag = "inline-xref"
        etree.strip_tags(el, *_INLINE_TAGS, "inline-xref")
        fallback = stem if len(articles) == 1 else (f"{stem}-{n + 1}" if stem else None)
        out.append(_article(el, index, source_file, fallback))
    return out


# --------------------------------------------------------------------------- article metadata


def _article(el: etree._Element, files: FileIndex, source: str | None,
             fallback: str | None) -> Article:
    meta = el.find("front/article-meta")
    jmeta = el.find("front/journal-meta")
    ids = _article_ids(meta)
    pmcid = _norm_pmcid(ids.get("pmcid") or ids.get("pmc"))
    doi = ids.get("doi")
    if pmcid:
        aid, id_source = pmcid, "pmcid"
    elif doi:
        aid, id_source = "doi_" + doi, "doi"
    elif fallback:
        aid, id_source = fallback, "file"
    else:
        aid, id_source = "unknown", "none"
    permissions = meta.find("permissions") if meta is not None else None
    lic = _license(permissions, meta)
    pub_date = _pub_date(meta)
    figures = _figures(el, files)
    return Article(
        id=aid,
        id_source=id_source,
        pmcid=pmcid,
        pmid=ids.get("pmid"),
        doi=doi,
        title=_text(meta.find("title-group/article-title")) if meta is not None else None,
        abstract=_abstract(meta),
        journal=_journal(jmeta),
        journal_nlm_ta=_first_text(jmeta, "journal-id[@journal-id-type='nlm-ta']"),
        issn=_first_text(jmeta, "issn[@pub-type='epub']", "issn[@publication-format='electronic']",
                         "issn"),
        publisher=_first_text(jmeta, "publisher/publisher-name"),
        pub_date=pub_date,
        year=int(pub_date[:4]) if pub_date else None,
        article_type=el.get("article-type"),
        language=el.get("{http://www.w3.org/XML/1998/namespace}lang"),
        subjects=_unique(_text(s) for s in meta.iterfind("article-categories//subject"))
        if meta is not None else [],
        keywords=_unique(_text(k) for k in meta.iterfind("kwd-group/kwd"))
        if meta is not None else [],
        license_url=lic.url,
        license_type=lic.type,
        license_text=lic.text,
        license_code=lic.code,
        license_category=lic.category,
        license_source=lic.source,
        copyright=_copyright(permissions, meta),
        source_file=source,
        figures=figures,
    )


def _article_ids(meta) -> dict[str, str]:
    ids: dict[str, str] = {}
    if meta is None:
        return ids
    for a in meta.iterfind("article-id"):
        kind = a.get("pub-id-type")
        val = (a.text or "").strip()
        if kind and val and kind not in ids:
            ids[kind] = val
    return ids


def _norm_pmcid(val: str | None) -> str | None:
    if not val:
        return None
    m = re.search(r"(\d+)", val)
    return f"PMC{m.group(1)}" if m else None


def _journal(jmeta) -> str | None:
    return _first_text(jmeta, "journal-title-group/journal-title", "journal-title",
                       "journal-id[@journal-id-type='nlm-ta']", "journal-id")


def _abstract(meta) -> str | None:
    if meta is None:
        return None
    for ab in meta.iterfind("abstract"):
        if ab.get("abstract-type") in (None, "abstract", "summary", "structured"):
            secs = ab.findall("sec")
            if secs:
                parts = []
                for s in secs:
                    title = _text(s.find("title"))
                    body = " ".join(_text(p) for p in s if _local(p.tag) != "title")
                    parts.append(f"{title}: {body}" if title else body)
                return " ".join(" ".join(parts).split()) or None
            return _text(ab, skip_tags={"title"}) or None
    return None


_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)}
# Publication date preference: electronic publication first (what PMC shows), then print, then
# the issue/collection date; the pmc-release embargo date is only a last resort.
_DATE_PREF = ("epub", "publication", "pub", "ppub", "epub-ppub", "collection", "pmc-release")


def _pub_date(meta) -> str | None:
    if meta is None:
        return None
    dates = meta.findall("pub-date")
    if not dates:
        return None

    def rank(d):
        kind = d.get("pub-type") or d.get("date-type") or ""
        if kind == "pub" and d.get("publication-format") == "print":
            kind = "ppub"
        return _DATE_PREF.index(kind) if kind in _DATE_PREF else len(_DATE_PREF) - 1

    for d in sorted(dates, key=rank):
        year = (d.findtext("year") or "").strip()
        if not re.fullmatch(r"\d{4}", year):
            continue
        out = year
        month = _month(d.findtext("month"))
        if month:
            out += f"-{month:02d}"
            day = (d.findtext("day") or "").strip()
            if day.isdigit() and 1 <= int(day) <= 31:
                out += f"-{int(day):02d}"
        return out
    return None


def _month(val: str | None) -> int | None:
    if not val:
        return None
    val = val.strip().lower()
    if val.isdigit() and 1 <= int(val) <= 12:
        return int(val)
    return _MONTHS.get(val[:3])


def _copyright(permissions, meta) -> str | None:
    """``permissions/copyright-statement``; NLM 2.0 (PLOS 2004-2008) puts it in article-meta."""
    return _first_text(permissions, "copyright-statement") or _first_text(
        meta, "copyright-statement")


def _license(permissions, meta) -> LicenseInfo:
    url = type_ = text = ali = None
    if permissions is not None:
        lic = permissions.find("license")
        if lic is not None:
            url = lic.get(XLINK + "href") or None
            type_ = lic.get("license-type") or None
            text = _text(lic, skip_tags={"license_ref"}) or None
        ali_el = permissions.find(".//license_ref")
        if ali_el is not None:
            ali = (ali_el.text or "").strip() or None
    return classify_license(url=url, ali=ali, text=text, license_type=type_,
                            copyright=_copyright(permissions, meta))
