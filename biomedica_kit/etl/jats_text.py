"""Readable text out of JATS elements: whitespace collapsed, MathML flattened to its tokens,
floats and non-prose elements left out, and character spans of marked elements kept (so the
inline-reference extractor can tell which sentence cites a figure)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from lxml import etree

__all__ = ["FLOATS", "SKIP_TEXT", "element_text", "elements", "first_text", "inside", "local_name",
           "strip_namespaces", "text_with_spans", "unique"]

# Elements whose text never belongs to readable prose.
SKIP_TEXT = {"object-id", "graphic", "inline-graphic", "media", "tex-math", "annotation"}
# Elements after which a space is inserted so adjacent blocks do not run together.
_BLOCK = {"p", "title", "label", "list-item", "sec", "caption", "td", "th", "tr", "disp-quote"}
#: Floats anchored inside a paragraph are not part of its prose.
FLOATS = {"fig", "fig-group", "table-wrap", "table-wrap-group", "table", "boxed-text",
          "supplementary-material", "media"}

# Private-use sentinels bracketing a marked element's text, so spans survive normalisation.
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARKS = re.compile(f"([{_OPEN}{_CLOSE}])")
_MATH_TEXT = ".//text()[not(ancestor::*[starts-with(local-name(), 'annotation')])]"


def _walk(el, out: list[str], skip: set[str], marks: set | None) -> None:
    """Append ``el``'s raw text pieces to ``out`` (whitespace is normalised once, later)."""
    tag = local_name(el.tag)
    if tag in skip or tag in SKIP_TEXT:
        return  # the caller still adds this element's tail
    if tag == "alternatives":
        # Prefer MathML, then any text-bearing alternative; never emit two renditions.
        kids = [k for k in el if isinstance(k.tag, str)]
        pick = next((k for k in kids if local_name(k.tag) == "math"), None)
        if pick is None:
            pick = next((k for k in kids if local_name(k.tag) not in SKIP_TEXT), None)
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


def element_text(el, skip_tags: set[str] | None = None) -> str:
    """Readable text of an element: whitespace collapsed, MathML flattened to its tokens."""
    if el is None:
        return ""
    out: list[str] = []
    _walk(el, out, skip_tags or set(), None)
    return " ".join("".join(out).split())


def text_with_spans(el, targets: list) -> tuple[str, list[tuple[int, int]]]:
    """Text of ``el`` (floats left out) plus the (start, end) span of each target element."""
    out: list[str] = []
    _walk(el, out, FLOATS, set(targets))
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
            edge = " " if part[0].isspace() and not (pieces and pieces[-1].endswith(" ")) else ""
            trail = " " if part[-1].isspace() and body else ""
            part = edge + body + trail
            if part:
                pieces.append(part)
                pos += len(part)
    text = "".join(pieces)
    lead = len(text) - len(text.lstrip())
    return text.strip(), [(a - lead, b - lead) for a, b in spans]


def elements(node: etree._Element, path: str) -> list[etree._Element]:
    """The elements an XPath selects under ``node`` (typed: ``xpath`` may return anything)."""
    found = node.xpath(path)
    return [x for x in found if isinstance(x, etree._Element)] if isinstance(found, list) else []


def first_text(el, *paths: str) -> str | None:
    """Text of the first of ``paths`` (ElementPath, tried in order) under ``el`` that has any."""
    if el is None:
        return None
    for p in paths:
        found = el.find(p)
        if found is not None:
            t = element_text(found)
            if t:
                return t
    return None


def unique(items: Iterable[str]) -> list[str]:
    """Non-empty items, first occurrence kept, order preserved."""
    seen: dict[str, None] = {}
    for i in items:
        if i and i not in seen:
            seen[i] = None
    return list(seen)


def local_name(tag) -> str:
    """Tag name without its namespace; "" for comments, processing instructions, entities."""
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2]


def inside(node, stop, tags: set[str]) -> bool:
    """Whether an ancestor of ``node`` below ``stop`` has one of ``tags``."""
    for anc in node.iterancestors():
        if anc is stop:
            return False
        if anc.tag in tags:
            return True
    return False


def strip_namespaces(el: etree._Element, uris: set[str]) -> None:
    """Drop the JATS default namespace (and ALI's, ...) from element tags so plain names match.

    MathML keeps its namespace; attributes (``xlink:href``) are untouched. Iterating per
    namespace with lxml's tag filter keeps the scan in C.
    """
    for uri in uris:
        for node in list(el.iter(f"{{{uri}}}*")):
            node.tag = etree.QName(node.tag).localname
