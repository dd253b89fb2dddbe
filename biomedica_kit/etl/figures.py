"""Figures and table graphics of an article, each with its images and citing paragraphs.

Every ``<fig>`` and every ``<table-wrap>`` that holds an image is one :class:`Figure`; each
separate image in it is one :class:`Graphic` (an ``<alternatives>`` group is one image, and so is
a graphic with thumbnails of itself beside it). Which package file each image is, is decided by
:mod:`biomedica_kit.etl.graphics`.
"""

from __future__ import annotations

from lxml import etree

from biomedica_kit.etl.article import Figure, Graphic
from biomedica_kit.etl.graphics import FileIndex, choose_graphic, href_of, is_thumbnail
from biomedica_kit.etl.inline_refs import citations
from biomedica_kit.etl.jats_text import element_text, elements, inside

__all__ = ["figures"]

_FIG_XPATH = ".//fig | .//table-wrap"
_NOT_FIGURE_IMAGE = {"disp-formula", "inline-formula", "chem-struct", "caption"}


def figures(article: etree._Element, files: FileIndex) -> list[Figure]:
    """The figures of one ``<article>`` (translations' copies and quoted figures left out)."""
    cites = citations(article)
    figs: list[Figure] = []
    main_hrefs: set[str] = set()
    for el in elements(article, _FIG_XPATH):
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
        fid: str = el.get("id") or f"{kind}{len(figs) + 1}"
        caption_el = el.find("caption")
        title = element_text(caption_el.find("title")) if caption_el is not None else None
        caption = element_text(caption_el) if caption_el is not None else ""
        parent = el.getparent()
        group = parent if parent is not None and parent.tag == "fig-group" else None
        group_id = group.get("id") if group is not None else None
        if not caption and group is not None and group.find("caption") is not None:
            caption = element_text(group.find("caption"))
        figs.append(Figure(
            id=fid,
            label=element_text(el.find("label")) or None,
            caption=caption,
            caption_title=title or None,
            kind=kind,
            graphics=graphics,
            inline_refs=cites.get(fid, []) + (cites.get(group_id, []) if group_id else []),
            group_id=group_id,
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


def _graphics(el: etree._Element, files: FileIndex) -> list[Graphic]:
    """Every image of a figure; each ``<alternatives>`` group counts as one image, and a
    thumbnail beside a full-size graphic is recorded as that graphic's alternative."""
    skip = (_NOT_FIGURE_IMAGE | {"table", "fig"}) if el.tag == "table-wrap" else _NOT_FIGURE_IMAGE
    out: list[tuple[Graphic, bool]] = []  # (graphic, is a lone thumbnail)
    seen_alt: set[int] = set()
    for g in el.iter("graphic"):
        if inside(g, el, skip):
            continue
        parent = g.getparent()
        if parent is not None and parent.tag == "alternatives":
            if id(parent) in seen_alt:
                continue
            seen_alt.add(id(parent))
            cands = [x for x in parent if x.tag == "graphic" and href_of(x)]
        else:
            cands = [g] if href_of(g) else []
        if not cands:
            continue
        out.append((choose_graphic(cands, files), all(is_thumbnail(c) for c in cands)))
    full = [gr for gr, thumb in out if not thumb]
    if not full:
        return [gr for gr, _ in out]
    target = full[0]  # thumbnails before the first full-size graphic belong to it
    for gr, thumb in out:
        if not thumb:
            target = gr
        else:  # a thumbnail of the graphic before it, not an image of its own
            target.alternatives = list(dict.fromkeys([*target.alternatives, gr.href]))
    return full
