"""Inline references: the paragraphs of the main article that cite a figure or table, and the
sentences in them that do."""

from __future__ import annotations

import re

from lxml import etree

from biomedica_kit.etl.article import InlineRef
from biomedica_kit.etl.jats_text import FLOATS, element_text, inside, text_with_spans

__all__ = ["citations", "split_sentences"]

# Abbreviations that end with a dot but do not end a sentence.
_ABBREV = {
    "fig", "figs", "e.g", "i.e", "al", "vs", "cf", "approx", "no", "nos", "ref", "refs", "eq",
    "eqs", "suppl", "supp", "dr", "mr", "ms", "prof", "st", "ca", "resp", "sp", "spp", "var",
    "etc", "tab", "vol", "p", "pp", "ed", "eds", "viz", "min", "max", "mol", "wt", "inc", "co",
}
_NOT_MAIN_TEXT = {"caption", "fig", "table-wrap", "sub-article", "response", "ref-list",
                  "abstract", "front"}


def citations(article: etree._Element) -> dict[str, list[InlineRef]]:
    """Map figure/table id -> distinct citing paragraphs of the main article, document order."""
    out: dict[str, list[InlineRef]] = {}
    # Group citing xrefs by their outermost paragraph (document order is kept by dict order).
    by_p: dict[etree._Element, list[etree._Element]] = {}
    for x in article.iter("xref"):
        if x.get("ref-type") not in ("fig", "table") or not x.get("rid"):
            continue
        # The outermost paragraph: a list nested in a paragraph is part of that paragraph.
        p = next(reversed(list(x.iterancestors("p"))), None)
        if p is not None and not inside(x, p, FLOATS):
            by_p.setdefault(p, []).append(x)
    for p, xrefs in by_p.items():
        if inside(p, article, _NOT_MAIN_TEXT):
            continue
        text, spans = text_with_spans(p, xrefs)
        if not text:
            continue
        sentences = split_sentences(text)
        section = _section_title(p, article)
        per_rid: dict[str, list[str]] = {}
        for x, (start, end) in zip(xrefs, spans, strict=True):
            cited = [s for s, (a, b) in sentences if a < max(end, start + 1) and b > start]
            for rid in (x.get("rid") or "").split():
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
            return element_text(anc.find("title")) or None
    return None


_BOUNDARY = re.compile(r"[.!?]['\")\]]*\s+(?=[A-Z0-9(\[])")
_LAST_WORD = re.compile(r"[A-Za-z.]+$")


def split_sentences(text: str) -> list[tuple[str, tuple[int, int]]]:
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
