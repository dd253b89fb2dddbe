"""What the JATS parser returns: an article, its figures, their images and citing paragraphs.

Plain dataclasses (``Article.to_dict`` is what ``biomedica parse`` prints); the parser lives in
:mod:`biomedica_kit.etl.jats`, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["Article", "Figure", "Graphic", "InlineRef"]


@dataclass
class InlineRef:
    """A paragraph of the main article that cites a figure, and its citing sentences."""

    paragraph: str
    sentences: list[str]
    section: str | None = None


@dataclass
class Graphic:
    """One image of a figure: the href as written, the chosen file, and the alternatives seen.

    ``alternatives`` names the other renditions of the same image: the other hrefs of an
    ``<alternatives>`` group, thumbnails, and the other package files the href resolves to
    (PLOS ``.tif`` / ``.PNG_M``..., PMC's ``.gif`` beside the ``.jpg``).
    """

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
