"""PubMed records (efetch XML) -> plain dicts of fields; cached records -> sample json fields.

Pure: no network, no dataset. :func:`parse_pubmed_article` turns one ``<PubmedArticle>`` or
``<PubmedBookArticle>`` into a dict with always the same keys (``docs/entrez.md``);
:func:`load_cached` parses what the cache holds; :func:`sample_fields` says which sample json
fields a record gives (:data:`ENTREZ_FIELDS` lists every one, declared to the new version).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from lxml import etree

from biomedica_kit.base.xml import collapsed_text as element_text
from biomedica_kit.base.xml import thread_parser
from biomedica_kit.etl.mesh import mesh_rollup
from biomedica_kit.ingest.entrez_cache import EntrezCache, normalise_pmids

__all__ = ["ENTREZ_FIELDS", "RECORD_TAGS", "element_texts", "load_cached",
           "parse_pubmed_article", "parse_pubmed_articles", "read_cached", "record_pmid",
           "sample_fields"]

_log = logging.getLogger(__name__)

RECORD_TAGS = ("PubmedArticle", "PubmedBookArticle")


def element_texts(elements: Iterable[etree._Element]) -> list[str]:
    """Non-empty texts of ``elements``, first occurrence kept, order preserved."""
    return list(dict.fromkeys(t for t in map(element_text, elements) if t))


def _year(date: etree._Element | None) -> int | None:
    """Year of a PubDate-like element: <Year>, else the first year inside <MedlineDate>."""
    if date is None:
        return None
    year = (date.findtext("Year") or "").strip()
    if year.isdigit():
        return int(year)
    match = re.search(r"\b(1[5-9]\d\d|2\d\d\d)\b", date.findtext("MedlineDate") or "")
    return int(match.group(1)) if match else None


def _abstract(abstract: etree._Element | None) -> tuple[str | None, list[dict[str, Any]]]:
    """Plain-text abstract ("LABEL: text ...") and its sections.

    Only <AbstractText> counts: <CopyrightInformation> is not abstract text, and <OtherAbstract>
    (translations, plain-language summaries) sits outside <Abstract>.
    """
    if abstract is None:
        return None, []
    sections = []
    for part in abstract.iterfind("AbstractText"):
        text, label = element_text(part), (part.get("Label") or "").strip() or None
        if text is None and label is None:
            continue
        sections.append(
            {"label": label, "nlm_category": part.get("NlmCategory"), "text": text or ""}
        )
    # NLM marks an unlabelled lead paragraph of a structured abstract with Label="UNLABELLED";
    # printing that word would put noise into captions.
    pieces = [
        f"{s['label']}: {s['text']}"
        if s["label"] and s["label"].upper() != "UNLABELLED"
        else s["text"]
        for s in sections
    ]
    return " ".join(p for p in pieces if p) or None, sections


def _references(lists: Iterable[etree._Element]) -> tuple[list[str], int]:
    """Reference PMIDs (unique, in order) and the number of <Reference> entries.

    <ReferenceList> may nest further <ReferenceList>s, hence the descendant search.
    """
    pmids: dict[str, None] = {}
    count = 0
    for ref_list in lists:
        for ref in ref_list.iter("Reference"):
            count += 1
            for aid in ref.iterfind("ArticleIdList/ArticleId[@IdType='pubmed']"):
                if aid.text and aid.text.strip():
                    pmids[aid.text.strip()] = None
    return list(pmids), count


def _article_ids(lists: Iterable[etree._Element]) -> dict[str, str]:
    """IdType -> value over the record's own <ArticleIdList>s (not its references')."""
    ids: dict[str, str] = {}
    for id_list in lists:
        for aid in id_list.iterfind("ArticleId"):
            kind, value = aid.get("IdType"), (aid.text or "").strip()
            if kind and value:
                ids.setdefault(kind, value)
    return ids


def _grants(grant_list: Iterable[etree._Element]) -> list[dict[str, str | None]]:
    return [
        {
            "grant_id": element_text(g.find("GrantID")),
            "acronym": element_text(g.find("Acronym")),
            "agency": element_text(g.find("Agency")),
            "country": element_text(g.find("Country")),
        }
        for g in grant_list
    ]


def _chemical(chemical: etree._Element) -> dict[str, str | None]:
    substance = chemical.find("NameOfSubstance")
    registry = element_text(chemical.find("RegistryNumber"))
    return {
        "name": element_text(substance),
        "ui": substance.get("UI") if substance is not None else None,
        # "0" is NLM's placeholder for "no registry number".
        "registry_number": None if registry in (None, "0") else registry,
    }


def _empty_record(pmid: str, record_type: str) -> dict[str, Any]:
    return {
        "pmid": pmid,
        "record_type": record_type,
        "citation_status": None,
        "indexing_method": None,
        "title": None,
        "vernacular_title": None,
        "journal": None,
        "journal_iso": None,
        "book_title": None,
        "pub_year": None,
        "languages": [],
        "abstract": None,
        "abstract_sections": [],
        "mesh_terms": [],
        "mesh_major": [],
        "mesh": [],
        "supplementary_concepts": [],
        "publication_types": [],
        "publication_type_uis": [],
        "chemicals": [],
        "keywords": [],
        "grants": [],
        "reference_pmids": [],
        "reference_count": 0,
        "comments_corrections": [],
        "doi": None,
        "pmcid": None,
    }


def _fill_shared(rec: dict[str, Any], el: etree._Element, pub_type_path: str) -> None:
    """Fields a journal ``Article`` and a ``BookDocument`` spell the same way."""
    rec["languages"] = element_texts(el.iterfind("Language"))
    rec["abstract"], rec["abstract_sections"] = _abstract(el.find("Abstract"))
    pub_types = el.findall(pub_type_path)
    rec["publication_types"] = [element_text(p) or "" for p in pub_types]
    rec["publication_type_uis"] = [p.get("UI") or "" for p in pub_types]
    rec["grants"] = _grants(el.iterfind("GrantList/Grant"))


def _parse_journal_article(el: etree._Element) -> dict[str, Any]:
    citation = el.find("MedlineCitation")
    pmid = element_text(citation.find("PMID")) if citation is not None else None
    if citation is None or not pmid:
        raise ValueError("PubmedArticle without MedlineCitation/PMID")
    rec = _empty_record(pmid, "PubmedArticle")
    rec["citation_status"] = citation.get("Status")
    rec["indexing_method"] = citation.get("IndexingMethod")

    article = citation.find("Article")
    if article is not None:
        journal = article.find("Journal")
        rec["title"] = element_text(article.find("ArticleTitle"))
        rec["vernacular_title"] = element_text(article.find("VernacularTitle"))
        if journal is not None:
            rec["journal"] = element_text(journal.find("Title"))
            rec["journal_iso"] = element_text(journal.find("ISOAbbreviation"))
            rec["pub_year"] = _year(journal.find("JournalIssue/PubDate"))
        if rec["pub_year"] is None:
            rec["pub_year"] = _year(article.find("ArticleDate"))
        _fill_shared(rec, article, "PublicationTypeList/PublicationType")

    mesh: list[dict[str, Any]] = []
    for heading in citation.iterfind("MeshHeadingList/MeshHeading"):
        descriptor = heading.find("DescriptorName")
        if descriptor is None:
            continue
        mesh.append(
            {
                "ui": descriptor.get("UI"),
                "name": element_text(descriptor),
                "major_topic": descriptor.get("MajorTopicYN") == "Y",
                "qualifiers": [
                    {
                        "ui": q.get("UI"),
                        "name": element_text(q),
                        "major_topic": q.get("MajorTopicYN") == "Y",
                    }
                    for q in heading.iterfind("QualifierName")
                ],
            }
        )
    rec["mesh"] = mesh
    rec["mesh_terms"] = [m["name"] for m in mesh if m["name"]]
    # NLM's convention: a heading is a major topic when the descriptor or any of its
    # qualifiers carries the asterisk.
    rec["mesh_major"] = [
        m["name"]
        for m in mesh
        if m["name"] and (m["major_topic"] or any(q["major_topic"] for q in m["qualifiers"]))
    ]
    rec["supplementary_concepts"] = [
        {"ui": s.get("UI"), "name": element_text(s), "type": s.get("Type")}
        for s in citation.iterfind("SupplMeshList/SupplMeshName")
    ]
    rec["chemicals"] = [_chemical(c) for c in citation.iterfind("ChemicalList/Chemical")]
    rec["keywords"] = element_texts(citation.iterfind("KeywordList/Keyword"))
    rec["comments_corrections"] = [
        {
            "ref_type": cc.get("RefType"),
            "ref_source": element_text(cc.find("RefSource")),
            "pmid": element_text(cc.find("PMID")),
        }
        for cc in citation.iterfind("CommentsCorrectionsList/CommentsCorrections")
    ]

    ref_lists = el.findall("PubmedData/ReferenceList")
    rec["reference_pmids"], rec["reference_count"] = _references(ref_lists)
    if not ref_lists:
        # Older MEDLINE records carry only a count, no list.
        declared = (citation.findtext("NumberOfReferences") or "").strip()
        rec["reference_count"] = int(declared) if declared.isdigit() else 0
    ids = _article_ids(el.iterfind("PubmedData/ArticleIdList"))
    rec["doi"], rec["pmcid"] = ids.get("doi"), ids.get("pmc")
    return rec


def _parse_book_article(el: etree._Element) -> dict[str, Any]:
    doc = el.find("BookDocument")
    pmid = element_text(doc.find("PMID")) if doc is not None else None
    if doc is None or not pmid:
        raise ValueError("PubmedBookArticle without BookDocument/PMID")
    rec = _empty_record(pmid, "PubmedBookArticle")
    book = doc.find("Book")
    if book is not None:
        rec["book_title"] = element_text(book.find("BookTitle"))
        rec["pub_year"] = _year(book.find("PubDate")) or _year(book.find("BeginningDate"))
    # A whole-book record has no ArticleTitle: its title is the book's.
    rec["title"] = element_text(doc.find("ArticleTitle")) or rec["book_title"]
    rec["vernacular_title"] = element_text(doc.find("VernacularTitle"))
    _fill_shared(rec, doc, "PublicationType")
    rec["keywords"] = element_texts(doc.iterfind("KeywordList/Keyword"))
    rec["reference_pmids"], rec["reference_count"] = _references(doc.findall("ReferenceList"))
    ids = _article_ids(
        [*doc.iterfind("ArticleIdList"), *el.iterfind("PubmedBookData/ArticleIdList")]
    )
    doi = ids.get("doi")
    if doi is None and book is not None:
        doi = element_text(book.find("ELocationID[@EIdType='doi']"))
    rec["doi"] = doi
    return rec


def _as_element(source: etree._Element | bytes | str | os.PathLike[str]) -> etree._Element:
    if isinstance(source, etree._Element):
        return source
    if isinstance(source, os.PathLike):
        return etree.parse(os.fspath(source), thread_parser()).getroot()
    if isinstance(source, str):
        source = source.encode("utf-8")
    return etree.fromstring(source, thread_parser())


def parse_pubmed_article(source: etree._Element | bytes | str | os.PathLike[str]) -> dict:
    """Parse one PubMed record into a dict of enrichment fields.

    ``source`` is a ``<PubmedArticle>`` or ``<PubmedBookArticle>`` element, or the XML of one
    (bytes, str or a path), or a ``<PubmedArticleSet>`` holding exactly one record. The
    result always has the same keys (see ``docs/entrez.md``); absent lists are empty, absent
    scalars ``None``. Raises ``ValueError`` for anything that is not exactly one record.
    """
    el = _as_element(source)
    if el.tag == "PubmedArticleSet":
        records = [child for child in el if child.tag in RECORD_TAGS]
        if len(records) != 1:
            raise ValueError(
                f"expected exactly one record in PubmedArticleSet, found {len(records)}"
            )
        el = records[0]
    if el.tag == "PubmedArticle":
        return _parse_journal_article(el)
    if el.tag == "PubmedBookArticle":
        return _parse_book_article(el)
    raise ValueError(f"not a PubMed record: <{el.tag}>")


def parse_pubmed_articles(source: etree._Element | bytes | str | os.PathLike[str]) -> list[dict]:
    """Parse every record of an efetch ``<PubmedArticleSet>`` (journal and book records)."""
    root = _as_element(source)
    return [parse_pubmed_article(child) for child in root if child.tag in RECORD_TAGS]


def record_pmid(el: etree._Element) -> str | None:
    path = "MedlineCitation/PMID" if el.tag == "PubmedArticle" else "BookDocument/PMID"
    return element_text(el.find(path))


def read_cached(cache: EntrezCache, pmid: str) -> dict[str, Any]:
    """Parse a cached record, refusing a file whose record is not the PMID it is named for."""
    record = parse_pubmed_article(cache.record_path(pmid))
    if record["pmid"] != pmid:
        raise ValueError(f"cache file for {pmid} holds PMID {record['pmid']}")
    return record


def load_cached(pmids: Iterable[str | int], cache_dir: str | os.PathLike[str]) -> dict[str, dict]:
    """Parsed records for the PMIDs whose record is in the cache (others are left out).

    A cache file that no longer parses, or holds another PMID, is logged and left out rather
    than failing a build.
    """
    cache = EntrezCache(cache_dir)
    records = {}
    for pmid in normalise_pmids(pmids)[0]:
        if not cache.record_path(pmid).is_file():
            continue
        try:
            records[pmid] = read_cached(cache, pmid)
        except (OSError, etree.XMLSyntaxError, ValueError) as exc:
            _log.warning("skipping unreadable cache file for %s: %s", pmid, exc)
    return records



#: Every sample json field enrichment may set (declared to the version, checked by verify).
ENTREZ_FIELDS = (
    "entrez_status", "mesh_terms", "mesh_major", "mesh", "supplementary_concepts",
    "publication_types", "chemicals", "pubmed_keywords", "grants", "languages",
    "reference_pmids", "reference_count", "pubmed_abstract", "citation_status",
    "mesh_categories",
    # BIOMEDICA's published keys for the same facts.
    "article_mesh_terms", "article_reference_ids", "article_reference_count",
    "article_abstract",
)


def sample_fields(record: Mapping[str, Any], *, has_abstract: bool = True,
                  descriptors: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    """The json fields a parsed PubMed record gives a sample.

    ``has_abstract``: whether the sample's json already has ``article_abstract`` (from the XML).
    ``descriptors`` (NLM's MeSH descriptor file, loaded) adds ``mesh_categories``: the
    top-level MeSH tree categories of the record's descriptors.
    """
    fields = {
        "entrez_status": "ok",
        "mesh_terms": record.get("mesh_terms") or [],
        "mesh_major": record.get("mesh_major") or [],
        "mesh": record.get("mesh") or [],
        "supplementary_concepts": record.get("supplementary_concepts") or [],
        "publication_types": record.get("publication_types") or [],
        "chemicals": record.get("chemicals") or [],
        "pubmed_keywords": record.get("keywords") or [],
        "grants": record.get("grants") or [],
        "languages": record.get("languages") or [],
        "reference_pmids": record.get("reference_pmids") or [],
        "reference_count": record.get("reference_count") or 0,
        "pubmed_abstract": record.get("abstract"),
        "citation_status": record.get("citation_status"),
        "article_mesh_terms": record.get("mesh_terms") or [],
        "article_reference_ids": record.get("reference_pmids") or [],
        "article_reference_count": record.get("reference_count") or 0,
    }
    # The article's own abstract (XML) stays; PubMed's fills the BIOMEDICA key only when the XML
    # had none (BIOMEDICA took its abstracts from Entrez).
    if not has_abstract and record.get("abstract"):
        fields["article_abstract"] = record["abstract"]
    if descriptors is not None:
        uis = [m["ui"] for m in record.get("mesh") or [] if m.get("ui")]
        fields["mesh_categories"] = list(mesh_rollup(uis, descriptors).names)
    return fields
