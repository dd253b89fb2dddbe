"""JATS / PMC nXML -> articles, figures and inline references.

A pure function of the XML bytes (plus, optionally, the names of the files in the package, used
to resolve extension-less graphic hrefs): no I/O, so it runs the same in a worker process, a Ray
task or a notebook. Parsing is hardened: no DTD loading, no entity expansion, no network, and a
size limit; documents that declare internal entities are refused outright.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

from lxml import etree

from biomedica_kit.dataset.licenses import LicenseInfo, classify_license

XLINK = "{http://www.w3.org/1999/xlink}"
MML = "{http://www.w3.org/1998/Math/MathML}"
ALI = "{http://www.niso.org/schemas/ali/1.0/}"

#: Refuse XML documents larger than this (bytes); the largest real PMC nXML is a few MB.
MAX_XML_BYTES = 64 * 1024 * 1024

#: Preference among image files when a graphic has alternatives or an extension-less href:
#: web-ready full-size renditions first, lossless masters next, PMC's GIF thumbnails last.
IMAGE_EXT_PREFERENCE = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif")
_THUMB_HINTS = ("thumb", "icon", "small")

# Elements whose text never belongs to readable prose.
_SKIP_TEXT = {"object-id", "graphic", "inline-graphic", "media", "tex-math", "annotation"}
# Elements after which a space is inserted so adjacent blocks do not run together.
_BLOCK = {"p", "title", "label", "list-item", "sec", "caption", "td", "th", "tr", "disp-quote"}
# Abbreviations that end with a dot but do not end a sentence.
_ABBREV = {
    "fig", "figs", "e.g", "i.e", "al", "vs", "cf", "approx", "no", "nos", "ref", "refs", "eq",
    "eqs", "suppl", "supp", "dr", "mr", "ms", "prof", "st", "ca", "resp", "sp", "spp", "var",
    "etc", "tab", "vol", "p", "pp", "ed", "eds", "viz", "min", "max", "mol", "wt", "inc", "co",
}


class JatsError(ValueError):
    """The XML cannot be turned into articles; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class InlineRef:
    """A paragraph of the main article that cites a figure, and its citing sentences."""

    paragraph: str
    sentences: list[str]
    section: str | None = None


@dataclass
class Graphic:
    """One image of a figure: the href as written, the chosen file, and the alternatives seen."""

    href: str
    file: str | None
    alternatives: list[str] = field(default_factory=list)


@dataclass
class Figure:
    """A ``<fig>`` (kind=figure) or a table graphic (kind=table) of an article."""

    id: str
    label: str | None
    caption: str
    caption_title: str | None
    kind: str
    graphics: list[Graphic]
    inline_refs: list[InlineRef]
    group_id: str | None = None
    sub_article: str | None = None


@dataclass
class Article:
    """Article-level metadata and its figures, as read from one ``<article>`` element."""

    id: str
    id_source: str
    pmcid: str | None
    pmid: str | None
    doi: str | None
    title: str | None
    abstract: str | None
    journal: str | None
    journal_nlm_ta: str | None
    issn: str | None
    publisher: str | None
    pub_date: str | None
    year: int | None
    article_type: str | None
    language: str | None
    subjects: list[str]
    keywords: list[str]
    license_url: str | None
    license_type: str | None
    license_text: str | None
    license_code: str
    license_category: str
    license_source: str
    copyright: str | None
    source_file: str | None
    figures: list[Figure]

    def to_dict(self) -> dict:
        """Plain-JSON form (what ``biomedica parse`` prints)."""
        return asdict(self)


def safe_parser() -> etree.XMLParser:
    """An lxml parser with DTD loading, entity expansion and network access off."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_xml(data: bytes) -> etree._ElementTree:
    """Parse XML bytes safely, raising :class:`JatsError` with a reason code on bad input."""
    if len(data) > MAX_XML_BYTES:
        raise JatsError("xml_too_large", f"{len(data)} bytes > limit {MAX_XML_BYTES}")
    if not data.strip():
        raise JatsError("empty_xml", "no content")
    try:
        root = etree.fromstring(data, safe_parser())
    except etree.XMLSyntaxError as exc:
        msg = str(exc)
        if "entit" in msg.lower():  # libxml2's own amplification / entity-loop guards
            reason = "xml_entities"
        elif "ncoding" in msg or "UTF-8" in msg:
            reason = "encoding_error"
        else:
            reason = "malformed_xml"
        raise JatsError(reason, msg) from None
    except ValueError as exc:  # lxml raises ValueError for some encoding declarations
        raise JatsError("encoding_error", str(exc)) from None
    tree = root.getroottree()
    dtd = tree.docinfo.internalDTD
    if dtd is not None and any(True for _ in dtd.iterentities()):
        # Internal entity declarations are how entity bombs and external-entity reads are
        # smuggled in; real PMC XML never declares its own entities.
        raise JatsError("xml_entities", "document declares internal entities; refused")
    return tree


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

    ``files`` lists the file names present beside the XML (package members); it is used to pick
    the best image among alternatives and to resolve hrefs written without an extension. A
    ``<pmc-articleset>`` (or any wrapper) yields one article per ``<article>``.
    """
    tree = parse_xml(data)
    root = tree.getroot()
    articles = [root] if _local(root.tag) == "article" else root.xpath(_OUTER_ARTICLES)
    if not articles:
        raise JatsError("not_jats", f"no <article> element (root is <{_local(root.tag)}>)")
    index = _FileIndex(files or ())
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


def _article(el: etree._Element, files: _FileIndex, source: str | None, fallback: str | None):
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
    lic = _license(permissions)
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
        copyright=_first_text(permissions, "copyright-statement"),
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


def _license(permissions) -> LicenseInfo:
    url = type_ = text = ali = None
    copyright_ = None
    if permissions is not None:
        lic = permissions.find("license")
        if lic is not None:
            url = lic.get(XLINK + "href") or None
            type_ = lic.get("license-type") or None
            text = _text(lic, skip_tags={"license_ref"}) or None
        ali_el = permissions.find(".//license_ref")
        if ali_el is not None:
            ali = (ali_el.text or "").strip() or None
        copyright_ = _first_text(permissions, "copyright-statement")
    return classify_license(url=url, ali=ali, text=text, license_type=type_,
                            copyright=copyright_)


# --------------------------------------------------------------------------------- figures

_FIG_XPATH = ".//fig | .//table-wrap"


def _figures(article: etree._Element, files: _FileIndex) -> list[Figure]:
    cites = _citations(article)
    figs: list[Figure] = []
    main_hrefs: set[str] = set()
    for el in article.xpath(_FIG_XPATH):
        sub = _enclosing_sub_article(el, article)
        if sub is not None and sub.get("article-type") == "translation":
            continue  # a translation repeats the main article's figures
        kind = "figure" if el.tag == "fig" else "table"
        graphics = _graphics(el, files)
        if kind == "table" and not graphics:
            continue  # a table of text, not an image
        hrefs = {g.href for g in graphics}
        if sub is None:
            main_hrefs |= hrefs
        elif hrefs and hrefs <= main_hrefs:
            continue  # a review quoting a main figure
        fid = el.get("id") or f"{kind}{len(figs) + 1}"
        caption_el = el.find("caption")
        title = _text(caption_el.find("title")) if caption_el is not None else None
        caption = _text(caption_el) if caption_el is not None else ""
        group = el.getparent() if el.getparent().tag == "fig-group" else None
        if not caption and group is not None and group.find("caption") is not None:
            caption = _text(group.find("caption"))
        figs.append(Figure(
            id=fid,
            label=_text(el.find("label")) or None,
            caption=caption,
            caption_title=title or None,
            kind=kind,
            graphics=graphics,
            inline_refs=cites.get(fid, []) + (
                cites.get(group.get("id"), []) if group is not None and group.get("id") else []),
            group_id=group.get("id") if group is not None else None,
            sub_article=(sub.get("id") or sub.get("article-type")) if sub is not None else None,
        ))
    return figs


def _enclosing_sub_article(el, article):
    for anc in el.iterancestors():
        if anc is article:
            return None
        if anc.tag in ("sub-article", "response"):
            return anc
    return None


def _graphics(el: etree._Element, files: _FileIndex) -> list[Graphic]:
    """Every image of a figure; each ``<alternatives>`` group counts as one image."""
    out: list[Graphic] = []
    seen_alt: set[int] = set()
    for g in el.iter("graphic"):
        if _inside(g, el, {"disp-formula", "inline-formula", "chem-struct", "caption",
                           "table", "fig"} if el.tag == "table-wrap" else
                   {"disp-formula", "inline-formula", "chem-struct", "caption"}):
            continue
        parent = g.getparent()
        if parent.tag == "alternatives":
            if id(parent) in seen_alt:
                continue
            seen_alt.add(id(parent))
            cands = [x for x in parent if x.tag == "graphic" and x.get(XLINK + "href")]
        else:
            cands = [g] if g.get(XLINK + "href") else []
        if not cands:
            continue
        out.append(_choose_graphic(cands, files))
    return out


def _inside(node, stop, tags: set[str]) -> bool:
    for anc in node.iterancestors():
        if anc is stop:
            return False
        if anc.tag in tags:
            return True
    return False


def _choose_graphic(cands: list[etree._Element], files: _FileIndex) -> Graphic:
    hrefs = [c.get(XLINK + "href").strip() for c in cands]

    def is_thumb(c) -> bool:
        hint = f"{c.get('content-type', '')} {c.get('specific-use', '')}".lower()
        return any(h in hint for h in _THUMB_HINTS)

    full = [c for c in cands if not is_thumb(c)] or cands
    resolved = [(c.get(XLINK + "href").strip(), files.resolve(c.get(XLINK + "href").strip()))
                for c in full]
    present = [(h, f) for h, f in resolved if f]
    href, chosen = (min(present, key=lambda hf: _ext_rank(hf[1])) if present else resolved[0])
    return Graphic(href=href, file=chosen, alternatives=[h for h in hrefs if h != href])


def _ext_rank(name: str) -> int:
    ext = PurePosixPath(name).suffix.lower()
    return IMAGE_EXT_PREFERENCE.index(ext) if ext in IMAGE_EXT_PREFERENCE else len(
        IMAGE_EXT_PREFERENCE)


class _FileIndex:
    """Package file names, looked up by exact name, base name, or stem (href sans extension)."""

    def __init__(self, files: Iterable[str]) -> None:
        self.by_name: dict[str, str] = {}
        self.by_stem: dict[str, list[str]] = {}
        for f in files:
            base = PurePosixPath(f).name
            self.by_name.setdefault(base.lower(), f)
            self.by_stem.setdefault(PurePosixPath(base).stem.lower(), []).append(f)
        self.empty = not self.by_name

    def resolve(self, href: str) -> str | None:
        """The package file an href points to, or None; without files, the href itself."""
        base = PurePosixPath(href).name
        if self.empty:
            return base or None
        hit = self.by_name.get(base.lower())
        if hit:
            return hit
        images = [f for f in self.by_stem.get(base.lower(), [])
                  + self.by_stem.get(PurePosixPath(base).stem.lower(), [])
                  if PurePosixPath(f).suffix.lower() in IMAGE_EXT_PREFERENCE]
        return min(images, key=_ext_rank) if images else None


# ----------------------------------------------------------------------- inline references


def _citations(article: etree._Element) -> dict[str, list[InlineRef]]:
    """Map figure/table id -> distinct citing paragraphs of the main article, document order."""
    out: dict[str, list[InlineRef]] = {}
    # Group citing xrefs by their innermost paragraph (document order is kept by dict order).
    by_p: dict[etree._Element, list[etree._Element]] = {}
    for x in article.iter("xref"):
        if x.get("ref-type") not in ("fig", "table") or not x.get("rid"):
            continue
        # The outermost paragraph: a list nested in a paragraph is part of that paragraph.
        p = next(reversed(list(x.iterancestors("p"))), None)
        if p is not None and not _inside(x, p, _FLOATS):
            by_p.setdefault(p, []).append(x)
    for p, xrefs in by_p.items():
        if _inside(p, article, {"caption", "fig", "table-wrap", "sub-article", "response",
                                "ref-list", "abstract", "front"}):
            continue
        text, spans = _text_with_spans(p, xrefs)
        if not text:
            continue
        sentences = _sentences(text)
        section = _section_title(p, article)
        per_rid: dict[str, list[str]] = {}
        for x, (start, end) in zip(xrefs, spans, strict=True):
            cited = [s for s, (a, b) in sentences if a < max(end, start + 1) and b > start]
            for rid in x.get("rid").split():
                bucket = per_rid.setdefault(rid, [])
                bucket.extend(s for s in cited if s not in bucket)
        for rid, sents in per_rid.items():
            out.setdefault(rid, []).append(InlineRef(paragraph=text, sentences=sents,
                                                     section=section))
    return out


def _section_title(p, article) -> str | None:
    for anc in p.iterancestors():
        if anc is article:
            return None
        if anc.tag in ("sec", "app") and anc.find("title") is not None:
            return _text(anc.find("title")) or None
    return None


_BOUNDARY = re.compile(r"[.!?]['\")\]]*\s+(?=[A-Z0-9(\[])")
_LAST_WORD = re.compile(r"[A-Za-z.]+$")


def _sentences(text: str) -> list[tuple[str, tuple[int, int]]]:
    """Split prose into sentences with their spans, not breaking after common abbreviations."""
    out = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.start()  # the terminator
        if text[end] == ".":
            # The word before the dot (abbreviations are short: a small window is enough).
            prev = _LAST_WORD.search(text, max(start, end - 16), end)
            word = prev.group(0).lower().strip(".") if prev else ""
            if word in _ABBREV or (len(word) == 1 and word.isalpha()):
                continue
        out.append((text[start:m.end()].strip(), (start, m.end())))
        start = m.end()
    if start < len(text):
        out.append((text[start:].strip(), (start, len(text))))
    return out


# ---------------------------------------------------------------------------- text helpers


# Private-use sentinels bracketing a marked element's text, so spans survive normalisation.
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARKS = re.compile(f"([{_OPEN}{_CLOSE}])")
_MATH_TEXT = ".//text()[not(ancestor::*[starts-with(local-name(), 'annotation')])]"


def _walk(el, out: list[str], skip: set[str], marks: set | None) -> None:
    """Append ``el``'s raw text pieces to ``out`` (whitespace is normalised once, later)."""
    tag = _local(el.tag)
    if tag in skip or tag in _SKIP_TEXT:
        return  # the caller still adds this element's tail
    if tag == "alternatives":
        # Prefer MathML, then any text-bearing alternative; never emit two renditions.
        kids = [k for k in el if isinstance(k.tag, str)]
        pick = next((k for k in kids if _local(k.tag) == "math"), None)
        if pick is None:
            pick = next((k for k in kids if _local(k.tag) not in _SKIP_TEXT), None)
        if pick is not None:
            _walk(pick, out, skip, marks)
        return
    if tag == "math":
        # Flatten MathML to its tokens; indentation between tokens is layout, not spacing.
        out.append("".join(t.strip() for t in el.xpath(_MATH_TEXT)))
        return
    marked = marks is not None and el in marks
    if marked:
        out.append(_OPEN)
    if tag in _BLOCK:
        out.append(" ")
    if el.text:
        out.append(el.text)
    for child in el:
        if isinstance(child.tag, str):
            _walk(child, out, skip, marks)
        if child.tail:
            out.append(child.tail)
    if tag in _BLOCK:
        out.append(" ")
    if marked:
        out.append(_CLOSE)


def _text(el, skip_tags: set[str] | None = None) -> str:
    """Readable text of an element: whitespace collapsed, MathML flattened to its tokens."""
    if el is None:
        return ""
    out: list[str] = []
    _walk(el, out, skip_tags or set(), None)
    return " ".join("".join(out).split())


# Floats anchored inside a paragraph are not part of its prose.
_FLOATS = {"fig", "fig-group", "table-wrap", "table-wrap-group", "table", "boxed-text",
           "supplementary-material", "media"}


def _text_with_spans(el, targets: list) -> tuple[str, list[tuple[int, int]]]:
    """Text of ``el`` plus the (start, end) character span of each target element in it."""
    out: list[str] = []
    _walk(el, out, _FLOATS, set(targets))
    pieces: list[str] = []
    pos = 0
    opened: list[int] = []
    spans: list[tuple[int, int]] = []
    for part in _MARKS.split("".join(out)):
        if part == _OPEN:
            opened.append(pos)
        elif part == _CLOSE:
            spans.append((opened.pop(), pos))
        elif part:
            # Collapse whitespace inside the piece, keeping one space at either edge if present.
            body = " ".join(part.split())
            lead = " " if part[0].isspace() and not (pieces and pieces[-1].endswith(" ")) else ""
            trail = " " if part[-1].isspace() and body else ""
            part = lead + body + trail
            if part:
                pieces.append(part)
                pos += len(part)
    text = "".join(pieces)
    lead = len(text) - len(text.lstrip())
    return text.strip(), [(a - lead, b - lead) for a, b in spans]


def _first_text(el, *paths: str) -> str | None:
    if el is None:
        return None
    for p in paths:
        found = el.find(p)
        if found is not None:
            t = _text(found)
            if t:
                return t
    return None


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in items:
        if i and i not in seen:
            seen[i] = None
    return list(seen)


def _local(tag) -> str:
    if not isinstance(tag, str):
        return ""  # comments and processing instructions
    return tag.rpartition("}")[2]


def _strip_namespaces(el: etree._Element, uris: set[str]) -> None:
    """Drop the JATS default namespace (and ALI's, ...) from element tags so plain names match.

    MathML keeps its namespace; attributes (``xlink:href``) are untouched. Iterating per
    namespace with lxml's tag filter keeps the scan in C.
    """
    for uri in uris:
        for node in list(el.iter(f"{{{uri}}}*")):
            node.tag = etree.QName(node.tag).localname
