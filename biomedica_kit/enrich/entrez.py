"""NCBI E-utilities (Entrez) enrichment: fetch PubMed records, cache them, parse them.

BIOMEDICA takes an article's abstract, MeSH terms and reference PMIDs from PubMed rather than
from the PMC nXML. This module is that enrichment step:

- :func:`fetch_pubmed` POSTs PMIDs to ``efetch.fcgi`` in batches, under a shared rate limit,
  with retries, and keeps every ``<PubmedArticle>`` / ``<PubmedBookArticle>`` in a resumable
  on-disk cache (one file per PMID). Every requested PMID ends up ``ok``, ``not_found`` or
  ``failed`` (with a reason).
- :func:`parse_pubmed_article` turns one record into a plain dict of fields.
- :func:`load_cached`, :func:`entrez_table` and :func:`write_entrez_parquet` read the cache back
  at build time and export it to Parquet.
- :func:`load_mesh_descriptors`, :func:`mesh_top_categories` and :func:`mesh_rollup` roll MeSH
  descriptors up to NLM's 16 top-level tree categories and their second-level trees.

``docs/entrez.md`` describes the cache layout, the fields and how statuses are decided.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import multiprocessing
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from lxml import etree

if TYPE_CHECKING:
    import pyarrow as pa
    import requests

__all__ = [
    "EUTILS_BASE_URL",
    "MAX_BATCH_SIZE",
    "MESH_CATEGORIES",
    "FetchSummary",
    "MeshCategories",
    "MeshDescriptors",
    "PmidOutcome",
    "RateLimiter",
    "cache_status",
    "entrez_schema",
    "entrez_table",
    "fetch_pubmed",
    "iter_cached_pmids",
    "load_cached",
    "load_mesh_descriptors",
    "mesh_rollup",
    "mesh_top_categories",
    "parse_pubmed_article",
    "parse_pubmed_articles",
    "write_entrez_parquet",
]

_log = logging.getLogger(__name__)

EUTILS_BASE_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"
#: NCBI asks for at most 200 UIDs per efetch request.
MAX_BATCH_SIZE = 200
#: NCBI's published limits: 3 requests/s per IP without an API key, 10/s with one.
DEFAULT_RATE = 3.0
DEFAULT_RATE_WITH_KEY = 10.0
# A server asking us to wait longer than this is treated as if it asked for this long, so a
# bogus Retry-After cannot stall a build for hours.
_MAX_RETRY_AFTER = 600.0

Status = Literal["ok", "not_found", "failed"]
STATUSES: tuple[Status, ...] = ("ok", "not_found", "failed")

_RECORD_TAGS = ("PubmedArticle", "PubmedBookArticle")

#: NLM's 16 top-level MeSH tree categories, keyed by tree letter.
MESH_CATEGORIES: dict[str, str] = {
    "A": "Anatomy",
    "B": "Organisms",
    "C": "Diseases",
    "D": "Chemicals and Drugs",
    "E": "Analytical, Diagnostic and Therapeutic Techniques, and Equipment",
    "F": "Psychiatry and Psychology",
    "G": "Phenomena and Processes",
    "H": "Disciplines and Occupations",
    "I": "Anthropology, Education, Sociology, and Social Phenomena",
    "J": "Technology, Industry, and Agriculture",
    "K": "Humanities",
    "L": "Information Science",
    "M": "Named Groups",
    "N": "Health Care",
    "V": "Publication Characteristics",
    "Z": "Geographicals",
}
_TREE_NUMBER = re.compile(r"^([A-NVZ])(\d{2})(?:\.\d{3})*$")


# --------------------------------------------------------------------------------------------
# XML parsing
# --------------------------------------------------------------------------------------------

_parsers = threading.local()


def _parser() -> etree.XMLParser:
    """One hardened parser per thread (lxml parser objects must not be shared across threads).

    Real efetch responses carry a DOCTYPE pointing at NLM's DTD: never load it, never resolve
    entities and never touch the network while parsing.
    """
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            remove_comments=True,
            remove_pis=True,
        )
        _parsers.parser = parser
    return parser


def _text(el: etree._Element | None) -> str | None:
    """Element text with inline markup (<i>, <sup>, MathML) flattened and whitespace collapsed."""
    if el is None:
        return None
    text = " ".join("".join(el.itertext()).split())
    return text or None


def _texts(elements: Iterable[etree._Element]) -> list[str]:
    """Non-empty texts of ``elements``, first occurrence kept, order preserved."""
    return list(dict.fromkeys(t for t in map(_text, elements) if t))


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
        text, label = _text(part), (part.get("Label") or "").strip() or None
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
            "grant_id": _text(g.find("GrantID")),
            "acronym": _text(g.find("Acronym")),
            "agency": _text(g.find("Agency")),
            "country": _text(g.find("Country")),
        }
        for g in grant_list
    ]


def _chemical(chemical: etree._Element) -> dict[str, str | None]:
    substance = chemical.find("NameOfSubstance")
    registry = _text(chemical.find("RegistryNumber"))
    return {
        "name": _text(substance),
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
    rec["languages"] = _texts(el.iterfind("Language"))
    rec["abstract"], rec["abstract_sections"] = _abstract(el.find("Abstract"))
    pub_types = el.findall(pub_type_path)
    rec["publication_types"] = [_text(p) or "" for p in pub_types]
    rec["publication_type_uis"] = [p.get("UI") or "" for p in pub_types]
    rec["grants"] = _grants(el.iterfind("GrantList/Grant"))


def _parse_journal_article(el: etree._Element) -> dict[str, Any]:
    citation = el.find("MedlineCitation")
    pmid = _text(citation.find("PMID")) if citation is not None else None
    if not pmid:
        raise ValueError("PubmedArticle without MedlineCitation/PMID")
    rec = _empty_record(pmid, "PubmedArticle")
    rec["citation_status"] = citation.get("Status")
    rec["indexing_method"] = citation.get("IndexingMethod")

    article = citation.find("Article")
    if article is not None:
        journal = article.find("Journal")
        rec["title"] = _text(article.find("ArticleTitle"))
        rec["vernacular_title"] = _text(article.find("VernacularTitle"))
        if journal is not None:
            rec["journal"] = _text(journal.find("Title"))
            rec["journal_iso"] = _text(journal.find("ISOAbbreviation"))
            rec["pub_year"] = _year(journal.find("JournalIssue/PubDate"))
        if rec["pub_year"] is None:
            rec["pub_year"] = _year(article.find("ArticleDate"))
        _fill_shared(rec, article, "PublicationTypeList/PublicationType")

    mesh = []
    for heading in citation.iterfind("MeshHeadingList/MeshHeading"):
        descriptor = heading.find("DescriptorName")
        if descriptor is None:
            continue
        mesh.append(
            {
                "ui": descriptor.get("UI"),
                "name": _text(descriptor),
                "major_topic": descriptor.get("MajorTopicYN") == "Y",
                "qualifiers": [
                    {
                        "ui": q.get("UI"),
                        "name": _text(q),
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
        {"ui": s.get("UI"), "name": _text(s), "type": s.get("Type")}
        for s in citation.iterfind("SupplMeshList/SupplMeshName")
    ]
    rec["chemicals"] = [_chemical(c) for c in citation.iterfind("ChemicalList/Chemical")]
    rec["keywords"] = _texts(citation.iterfind("KeywordList/Keyword"))
    rec["comments_corrections"] = [
        {
            "ref_type": cc.get("RefType"),
            "ref_source": _text(cc.find("RefSource")),
            "pmid": _text(cc.find("PMID")),
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
    pmid = _text(doc.find("PMID")) if doc is not None else None
    if not pmid:
        raise ValueError("PubmedBookArticle without BookDocument/PMID")
    rec = _empty_record(pmid, "PubmedBookArticle")
    book = doc.find("Book")
    if book is not None:
        rec["book_title"] = _text(book.find("BookTitle"))
        rec["pub_year"] = _year(book.find("PubDate")) or _year(book.find("BeginningDate"))
    # A whole-book record has no ArticleTitle: its title is the book's.
    rec["title"] = _text(doc.find("ArticleTitle")) or rec["book_title"]
    rec["vernacular_title"] = _text(doc.find("VernacularTitle"))
    _fill_shared(rec, doc, "PublicationType")
    rec["keywords"] = _texts(doc.iterfind("KeywordList/Keyword"))
    rec["reference_pmids"], rec["reference_count"] = _references(doc.findall("ReferenceList"))
    ids = _article_ids(
        [*doc.iterfind("ArticleIdList"), *el.iterfind("PubmedBookData/ArticleIdList")]
    )
    doi = ids.get("doi")
    if doi is None and book is not None:
        doi = _text(book.find("ELocationID[@EIdType='doi']"))
    rec["doi"] = doi
    return rec


def _as_element(source: etree._Element | bytes | str | os.PathLike[str]) -> etree._Element:
    if isinstance(source, etree._Element):
        return source
    if isinstance(source, os.PathLike):
        return etree.parse(os.fspath(source), _parser()).getroot()
    if isinstance(source, str):
        source = source.encode("utf-8")
    return etree.fromstring(source, _parser())


def parse_pubmed_article(source: etree._Element | bytes | str | os.PathLike[str]) -> dict:
    """Parse one PubMed record into a dict of enrichment fields.

    ``source`` is a ``<PubmedArticle>`` or ``<PubmedBookArticle>`` element, or the XML of one
    (bytes, str or a path), or a ``<PubmedArticleSet>`` holding exactly one record. The
    result always has the same keys (see ``docs/entrez.md``); absent lists are empty, absent
    scalars ``None``. Raises ``ValueError`` for anything that is not exactly one record.
    """
    el = _as_element(source)
    if el.tag == "PubmedArticleSet":
        records = [child for child in el if child.tag in _RECORD_TAGS]
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
    return [parse_pubmed_article(child) for child in root if child.tag in _RECORD_TAGS]


def _record_pmid(el: etree._Element) -> str | None:
    path = "MedlineCitation/PMID" if el.tag == "PubmedArticle" else "BookDocument/PMID"
    return _text(el.find(path))


# --------------------------------------------------------------------------------------------
# On-disk cache
# --------------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Cache:
    """``<dir>/<last 3 PMID digits>/<pmid>.xml`` (the record) and ``<pmid>.status.json``.

    Sharding by the last digits spreads millions of PMIDs evenly over 1,000 directories.
    A record file wins over a status file: it is only written from a real answer.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _dir(self, pmid: str) -> Path:
        return self.root / pmid[-3:].zfill(3)

    def record_path(self, pmid: str) -> Path:
        return self._dir(pmid) / f"{pmid}.xml"

    def status_path(self, pmid: str) -> Path:
        return self._dir(pmid) / f"{pmid}.status.json"

    def lookup(self, pmid: str) -> tuple[Status | None, str | None]:
        """(status, reason) from the cache; (None, None) when the PMID was never fetched."""
        if self.record_path(pmid).is_file():
            return "ok", None
        try:
            info = json.loads(self.status_path(pmid).read_bytes())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            return "failed", f"unreadable status file: {exc}"
        status = info.get("status")
        if status not in STATUSES:
            return "failed", f"bad status in status file: {status!r}"
        return status, info.get("reason")

    def put_record(self, pmid: str, xml: bytes) -> None:
        _atomic_write(self.record_path(pmid), xml)
        self.status_path(pmid).unlink(missing_ok=True)

    def put_status(self, pmid: str, status: Status, reason: str | None) -> None:
        info = {
            "pmid": pmid,
            "status": status,
            "reason": reason,
            "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _atomic_write(self.status_path(pmid), json.dumps(info).encode())


# --------------------------------------------------------------------------------------------
# Rate limiting
# --------------------------------------------------------------------------------------------


class RateLimiter:
    """Spaces request starts at least ``1/rate`` seconds apart, across threads.

    A caller may start only once ``1/rate`` has passed since the previous start, checked
    under a lock after every sleep: a thread that wakes late pushes the next start back
    instead of letting two requests go out together.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")  # earliest time the next request may start
        self.rate = rate

    @property
    def rate(self) -> float:
        """Requests per second."""
        return 1.0 / self._interval

    @rate.setter
    def rate(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        with self._lock:
            self._interval = 1.0 / rate

    def acquire(self) -> float:
        """Block until a request may start; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                if now >= self._next:
                    self._next = now + self._interval
                    return waited
                wait = self._next - now
            self._sleep(wait)
            waited += wait

    def defer(self, seconds: float) -> None:
        """Hold every user of this limiter back for ``seconds`` (a server's Retry-After)."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)


_LIMITERS: dict[tuple[str, str | None], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def _shared_limiter(base_url: str, api_key: str | None, rate: float) -> RateLimiter:
    """The process-wide limiter for one host and key: NCBI counts per IP or per API key, so
    separate ``fetch_pubmed`` calls (and threads) must draw from the same budget."""
    key = (urlsplit(base_url).netloc.lower(), api_key)
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = RateLimiter(rate)
        elif limiter.rate != rate:
            limiter.rate = rate
        return limiter


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PmidOutcome:
    """What happened to one requested PMID."""

    status: Status
    reason: str | None = None
    #: True when the answer came from the cache, with no request for this PMID in this run.
    from_cache: bool = False


@dataclass
class FetchSummary:
    """The result of :func:`fetch_pubmed`: one outcome per requested PMID.

    ``outcomes`` holds the valid PMIDs (canonical form, de-duplicated) in input order, then
    each input that is not a PMID, keyed by its text, as ``failed``.
    """

    outcomes: dict[str, PmidOutcome]
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0  # requests that repeated an earlier attempt
    batches: int = 0  # batches sent (each one efetch call, however many attempts)
    elapsed_s: float = 0.0

    def counts(self) -> dict[str, int]:
        """Number of PMIDs per status (every status present, possibly 0)."""
        counts = dict.fromkeys(STATUSES, 0)
        for outcome in self.outcomes.values():
            counts[outcome.status] += 1
        return counts

    def pmids(self, status: Status) -> list[str]:
        """PMIDs with ``status``, in input order."""
        return [p for p, o in self.outcomes.items() if o.status == status]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready digest (counts, request stats, reasons of the PMIDs that are not ok)."""
        return {
            "counts": self.counts(),
            "requests": self.requests,
            "retries": self.retries,
            "batches": self.batches,
            "elapsed_s": round(self.elapsed_s, 3),
            "from_cache": sum(o.from_cache for o in self.outcomes.values()),
            "reasons": {p: o.reason for p, o in self.outcomes.items() if o.status != "ok"},
        }


class _RetryableResponse(Exception):
    """A response worth asking again for (throttled, server error, broken body)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


class _RefusedResponse(Exception):
    """A definitive answer that asking again would not change (4xx other than 429)."""


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), _MAX_RETRY_AFTER)


def _read_efetch_body(body: bytes) -> tuple[dict[str, bytes], str | None]:
    """Split an efetch body into {pmid: record XML} and NCBI's <ERROR> text, if any.

    Raises _RetryableResponse when the body is not XML (truncated, empty, an HTML error page):
    those say nothing about whether the PMIDs exist.
    """
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise _RetryableResponse(f"unparseable response body ({len(body)} bytes): {exc}") from exc
    errors = _texts([root] if root.tag == "ERROR" else root.iterfind("ERROR"))
    if root.tag != "PubmedArticleSet" and not errors:
        raise _RetryableResponse(f"unexpected response document <{root.tag}>")
    records: dict[str, bytes] = {}
    for child in root:
        if child.tag in _RECORD_TAGS:
            pmid = _record_pmid(child)
            if pmid:
                records[pmid] = etree.tostring(
                    child, encoding="UTF-8", xml_declaration=True, with_tail=False
                )
    return records, "; ".join(errors) or None


def _normalise_pmids(pmids: Iterable[str | int]) -> tuple[list[str], dict[str, PmidOutcome]]:
    """Canonical PMIDs (digits, no leading zeros), de-duplicated in first-seen order, plus a
    ``failed`` outcome for every value that cannot be a PMID."""
    valid: dict[str, None] = {}
    invalid: dict[str, PmidOutcome] = {}
    for raw in pmids:
        text = str(raw).strip()
        if text.isascii() and text.isdigit() and int(text) > 0:
            valid.setdefault(str(int(text)), None)
        else:
            invalid[text] = PmidOutcome("failed", f"invalid PMID {text!r}: not a positive integer")
    return list(valid), invalid


def _refresh_statuses(refresh: bool | Collection[str]) -> frozenset[str]:
    if refresh is True:
        return frozenset({"not_found"})
    if refresh is False:
        return frozenset()
    statuses = frozenset(refresh)
    if not statuses <= {"ok", "not_found"}:
        raise ValueError(f"refresh accepts 'ok' and 'not_found', got {sorted(statuses)}")
    return statuses


@dataclass
class _BatchResult:
    outcomes: dict[str, PmidOutcome]
    requests: int = 0
    retries: int = 0


@dataclass
class _Fetcher:
    url: str
    params: dict[str, str]
    cache: _Cache
    limiter: RateLimiter
    retries: int
    backoff: float
    max_backoff: float
    timeout: float | tuple[float, float]
    session_for_thread: Callable[[], requests.Session]
    refreshing_ok: set[str] = field(default_factory=set)

    def _delay(self, attempt: int) -> float:
        # Jitter keeps parallel workers from retrying in lockstep.
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1)

    def _post(self, ids: list[str]) -> tuple[dict[str, bytes], str | None]:
        """One efetch attempt. Returns the records and NCBI's error text; raises
        _RetryableResponse for transient trouble and _RefusedResponse for a refusal."""
        import requests

        self.limiter.acquire()
        try:
            response = self.session_for_thread().post(
                self.url, data={**self.params, "id": ",".join(ids)}, timeout=self.timeout
            )
        except requests.Timeout as exc:
            raise _RetryableResponse(f"timed out after {self.timeout}s ({exc})") from exc
        except requests.RequestException as exc:
            # Connection refused/reset, and a body cut short of its Content-Length
            # (ChunkedEncodingError) all land here.
            raise _RetryableResponse(f"{type(exc).__name__}: {exc}") from exc
        code = response.status_code
        if code == 429 or code >= 500:
            wait = _retry_after(response.headers.get("Retry-After"))
            if code == 429 and wait is not None:
                self.limiter.defer(wait)
            raise _RetryableResponse(f"HTTP {code}: {_snippet(response.content)}", wait)
        if code != 200:
            raise _RefusedResponse(f"HTTP {code}: {_snippet(response.content)}")
        return _read_efetch_body(response.content)

    def fetch(self, ids: list[str]) -> _BatchResult:
        result = _BatchResult({})
        reason = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                result.retries += 1
            result.requests += 1
            try:
                records, error = self._post(ids)
            except _RetryableResponse as exc:
                reason = str(exc)
                _log.info(
                    "efetch attempt %d/%d for %d ids failed: %s",
                    attempt + 1,
                    self.retries + 1,
                    len(ids),
                    reason,
                )
                if attempt < self.retries:
                    time.sleep(max(self._delay(attempt + 1), exc.wait or 0.0))
                continue
            except _RefusedResponse as exc:
                reason = str(exc)
                break
            for pmid in ids:
                if pmid in records:
                    self.cache.put_record(pmid, records[pmid])
                    result.outcomes[pmid] = PmidOutcome("ok")
                else:
                    why = f"NCBI error: {error}" if error else "no record returned by efetch"
                    self.cache.put_status(pmid, "not_found", why)
                    result.outcomes[pmid] = PmidOutcome("not_found", why)
            return result
        else:  # no break: every attempt hit a transient problem
            reason = f"{reason} (gave up after {self.retries + 1} attempts)"
        for pmid in ids:
            if pmid in self.refreshing_ok:
                # A failed refresh must not throw away a good record.
                result.outcomes[pmid] = PmidOutcome(
                    "ok", f"refresh failed, cached record kept: {reason}", from_cache=True
                )
            else:
                self.cache.put_status(pmid, "failed", reason)
                result.outcomes[pmid] = PmidOutcome("failed", reason)
        return result


def _snippet(body: bytes, limit: int = 200) -> str:
    text = " ".join(body[: limit * 2].decode("utf-8", "replace").split())
    return text[:limit] or "(empty body)"


def fetch_pubmed(
    pmids: Iterable[str | int],
    cache_dir: str | os.PathLike[str],
    *,
    base_url: str = EUTILS_BASE_URL,
    tool: str = "biomedica-kit",
    email: str | None = None,
    api_key: str | None = None,
    batch_size: int = MAX_BATCH_SIZE,
    rate: float | RateLimiter | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    timeout: float | tuple[float, float] = 30.0,
    session: requests.Session | None = None,
    progress: bool = False,
    refresh: bool | Collection[str] = False,
    workers: int = 1,
) -> FetchSummary:
    """Fetch PubMed records for ``pmids`` into ``cache_dir`` and account for every PMID.

    PMIDs already answered in the cache are not requested again: ``ok`` records are reused,
    ``not_found`` ones are kept unless ``refresh`` asks for them (``True`` means
    ``{"not_found"}``; ``{"ok", "not_found"}`` re-fetches everything, e.g. to pick up MeSH
    indexing of records that were In-Process), and ``failed`` ones are always retried.

    The rest are POSTed to ``efetch.fcgi`` (db=pubmed, retmode=xml) in batches of at most
    ``batch_size`` (<= 200) ids. ``rate`` is requests per second (default 3, or 10 with an API
    key), shared by every call to the same host with the same key in this process; pass a
    :class:`RateLimiter` to share one explicitly. 429 (honouring Retry-After), 5xx, connection
    errors, timeouts and truncated or unparseable bodies are retried ``retries`` times with
    exponential backoff (``backoff * 2**n`` seconds, jittered, capped at ``max_backoff``); other
    HTTP errors fail the batch at once. ``timeout`` is requests' connect/read timeout.

    ``api_key`` defaults to ``$NCBI_API_KEY``. ``workers`` > 1 sends batches from that many
    threads (still under the one rate limit). ``session`` is used from all threads when given.
    """
    import requests

    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be within 1..{MAX_BATCH_SIZE}, got {batch_size}")
    if retries < 0 or workers < 1:
        raise ValueError("retries must be >= 0 and workers >= 1")
    refresh_set = _refresh_statuses(refresh)
    if api_key is None:
        api_key = os.environ.get("NCBI_API_KEY") or None
    if isinstance(rate, RateLimiter):
        limiter = rate
    else:
        default = DEFAULT_RATE_WITH_KEY if api_key else DEFAULT_RATE
        limiter = _shared_limiter(base_url, api_key, default if rate is None else rate)

    started = time.monotonic()
    cache = _Cache(cache_dir)
    wanted, invalid = _normalise_pmids(pmids)
    outcomes: dict[str, PmidOutcome] = {}
    to_fetch: list[str] = []
    refreshing_ok: set[str] = set()
    for pmid in wanted:
        status, reason = cache.lookup(pmid)
        if status is None or status == "failed" or status in refresh_set:
            to_fetch.append(pmid)
            if status == "ok":
                refreshing_ok.add(pmid)
        else:
            outcomes[pmid] = PmidOutcome(status, reason, from_cache=True)

    params = {"db": "pubmed", "retmode": "xml", "tool": tool}
    if email:
        params["email"] = email
    if api_key:
        params["api_key"] = api_key

    local = threading.local()
    own_sessions: list[requests.Session] = []
    sessions_lock = threading.Lock()

    def session_for_thread() -> requests.Session:
        if session is not None:
            return session
        if getattr(local, "session", None) is None:
            local.session = requests.Session()
            with sessions_lock:
                own_sessions.append(local.session)
        return local.session

    fetcher = _Fetcher(
        url=base_url.rstrip("/") + "/efetch.fcgi",
        params=params,
        cache=cache,
        limiter=limiter,
        retries=retries,
        backoff=backoff,
        max_backoff=max_backoff,
        timeout=timeout,
        session_for_thread=session_for_thread,
        refreshing_ok=refreshing_ok,
    )
    batches = [to_fetch[i : i + batch_size] for i in range(0, len(to_fetch), batch_size)]
    summary = FetchSummary(outcomes={}, batches=len(batches))
    bar = None
    if progress and to_fetch:
        from tqdm import tqdm

        bar = tqdm(total=len(to_fetch), unit="pmid", desc="efetch")

    def collect(result: _BatchResult) -> None:
        outcomes.update(result.outcomes)
        summary.requests += result.requests
        summary.retries += result.retries
        if bar is not None:
            bar.update(len(result.outcomes))

    try:
        if workers == 1:
            for batch in batches:
                collect(fetcher.fetch(batch))
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="efetch") as pool:
                try:
                    for future in as_completed([pool.submit(fetcher.fetch, b) for b in batches]):
                        collect(future.result())
                except BaseException:
                    # A write error or Ctrl-C: stop queued batches instead of sending them all.
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        if bar is not None:
            bar.close()
        for own in own_sessions:
            own.close()

    summary.outcomes = {p: outcomes[p] for p in wanted} | invalid
    summary.elapsed_s = time.monotonic() - started
    counts = summary.counts()
    _log.info(
        "efetch: %d ok, %d not_found, %d failed (%d requests, %.1fs)",
        counts["ok"],
        counts["not_found"],
        counts["failed"],
        summary.requests,
        summary.elapsed_s,
    )
    return summary


# --------------------------------------------------------------------------------------------
# Reading the cache back, Parquet export
# --------------------------------------------------------------------------------------------


def cache_status(
    pmids: Iterable[str | int], cache_dir: str | os.PathLike[str]
) -> dict[str, tuple[Status | None, str | None]]:
    """(status, reason) per PMID as the cache knows it; status ``None`` = never fetched."""
    cache = _Cache(cache_dir)
    wanted, invalid = _normalise_pmids(pmids)
    result: dict[str, tuple[Status | None, str | None]] = {p: cache.lookup(p) for p in wanted}
    result.update({p: (o.status, o.reason) for p, o in invalid.items()})
    return result


def _read_cached(cache: _Cache, pmid: str) -> dict[str, Any]:
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
    cache = _Cache(cache_dir)
    records = {}
    for pmid in _normalise_pmids(pmids)[0]:
        if not cache.record_path(pmid).is_file():
            continue
        try:
            records[pmid] = _read_cached(cache, pmid)
        except (OSError, etree.XMLSyntaxError, ValueError) as exc:
            _log.warning("skipping unreadable cache file for %s: %s", pmid, exc)
    return records


_LIST_FIELDS = (
    "languages",
    "abstract_sections",
    "mesh_terms",
    "mesh_major",
    "mesh",
    "supplementary_concepts",
    "publication_types",
    "publication_type_uis",
    "chemicals",
    "keywords",
    "grants",
    "reference_pmids",
    "comments_corrections",
)


def entrez_schema() -> pa.Schema:
    """The Arrow schema of the Entrez table: structured fields are native struct columns."""
    import pyarrow as pa

    string, strings = pa.string(), pa.list_(pa.string())
    qualifier = pa.struct([("ui", string), ("name", string), ("major_topic", pa.bool_())])
    return pa.schema(
        [
            ("pmid", string),
            ("status", string),
            ("reason", string),
            ("record_type", string),
            ("citation_status", string),
            ("indexing_method", string),
            ("title", string),
            ("vernacular_title", string),
            ("journal", string),
            ("journal_iso", string),
            ("book_title", string),
            ("pub_year", pa.int32()),
            ("languages", strings),
            ("abstract", string),
            (
                "abstract_sections",
                pa.list_(
                    pa.struct([("label", string), ("nlm_category", string), ("text", string)])
                ),
            ),
            ("mesh_terms", strings),
            ("mesh_major", strings),
            (
                "mesh",
                pa.list_(
                    pa.struct(
                        [
                            ("ui", string),
                            ("name", string),
                            ("major_topic", pa.bool_()),
                            ("qualifiers", pa.list_(qualifier)),
                        ]
                    )
                ),
            ),
            (
                "supplementary_concepts",
                pa.list_(pa.struct([("ui", string), ("name", string), ("type", string)])),
            ),
            ("publication_types", strings),
            ("publication_type_uis", strings),
            (
                "chemicals",
                pa.list_(
                    pa.struct([("name", string), ("ui", string), ("registry_number", string)])
                ),
            ),
            ("keywords", strings),
            (
                "grants",
                pa.list_(
                    pa.struct(
                        [
                            ("grant_id", string),
                            ("acronym", string),
                            ("agency", string),
                            ("country", string),
                        ]
                    )
                ),
            ),
            ("reference_pmids", strings),
            ("reference_count", pa.int32()),
            (
                "comments_corrections",
                pa.list_(
                    pa.struct([("ref_type", string), ("ref_source", string), ("pmid", string)])
                ),
            ),
            ("doi", string),
            ("pmcid", string),
            ("mesh_categories", strings),
            ("mesh_major_categories", strings),
            ("mesh_trees", strings),
        ]
    )


def _table_rows(
    pmids: list[str], cache_dir: str, descriptors: MeshDescriptors | None
) -> list[dict[str, Any]]:
    """Rows for ``pmids``."""
    cache = _Cache(cache_dir)
    rows = []
    for pmid in pmids:
        status, reason = cache.lookup(pmid)
        row: dict[str, Any] = {"pmid": pmid}
        if status == "ok":
            try:
                row.update(_read_cached(cache, pmid))
                row["status"], row["reason"] = "ok", None
            except (OSError, etree.XMLSyntaxError, ValueError) as exc:
                row["status"], row["reason"] = "failed", f"unreadable cache file: {exc}"
        else:
            row["status"] = status or "failed"
            row["reason"] = reason if status else "not in cache (never fetched)"
        if descriptors is not None and row["status"] == "ok":
            uis = [m["ui"] for m in row["mesh"] if m["ui"]]
            major = [
                m["ui"]
                for m in row["mesh"]
                if m["ui"] and (m["major_topic"] or any(q["major_topic"] for q in m["qualifiers"]))
            ]
            everything = mesh_rollup(uis, descriptors)
            row["mesh_categories"] = list(everything.names)
            row["mesh_trees"] = list(everything.trees)
            row["mesh_major_categories"] = list(mesh_rollup(major, descriptors).names)
        rows.append(row)
    return rows


# Set once per worker process, so the descriptor table is sent to each worker once, not with
# every chunk.
_worker_args: tuple[str, MeshDescriptors | None] = ("", None)


def _init_table_worker(cache_dir: str, descriptors: MeshDescriptors | None) -> None:
    global _worker_args
    _worker_args = (cache_dir, descriptors)


def _table_rows_in_worker(pmids: list[str]) -> list[dict[str, Any]]:
    return _table_rows(pmids, *_worker_args)


def entrez_table(
    pmids: Iterable[str | int],
    cache_dir: str | os.PathLike[str],
    *,
    descriptors: MeshDescriptors | None = None,
    workers: int = 1,
    chunk_size: int = 2000,
) -> pa.Table:
    """One row per requested PMID from the cache: valid PMIDs de-duplicated in input order,
    then the inputs that are not PMIDs (``failed``).

    ``status`` is ``ok`` / ``not_found`` / ``failed`` with a ``reason`` for the latter two
    (a PMID never fetched is ``failed``, "not in cache"). The record columns are filled for
    ``ok`` rows and null otherwise. With ``descriptors`` (from :func:`load_mesh_descriptors`)
    the MeSH rollup columns are filled too. ``workers`` > 1 parses in that many processes
    (started with spawn: a script calling this needs an ``if __name__ == "__main__":`` guard).
    """
    import pyarrow as pa

    wanted, invalid = _normalise_pmids(pmids)
    chunks = [wanted[i : i + chunk_size] for i in range(0, len(wanted), chunk_size)]
    root = os.fspath(cache_dir)
    if workers > 1 and len(chunks) > 1:
        # spawn, not fork: the caller may be running threads (a server, a progress bar).
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, context, _init_table_worker, (root, descriptors)) as pool:
            parts = list(pool.map(_table_rows_in_worker, chunks))
    else:
        parts = [_table_rows(chunk, root, descriptors) for chunk in chunks]
    rows = [row for part in parts for row in part]
    rows += [{"pmid": p, "status": o.status, "reason": o.reason} for p, o in invalid.items()]
    return pa.Table.from_pylist(rows, schema=entrez_schema())


def write_entrez_parquet(
    records: pa.Table | Iterable[Mapping[str, Any]], path: str | os.PathLike[str]
) -> Path:
    """Write an Entrez table (or parsed records) to Parquet atomically; return the path.

    Dicts from :func:`parse_pubmed_article` are accepted as they are (status ``ok``);
    missing columns become null, keys outside :func:`entrez_schema` are ignored.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(records, pa.Table):
        table = records.select(entrez_schema().names).cast(entrez_schema())
    else:
        rows = []
        for record in records:
            row = dict(record)
            row.setdefault("status", "ok")
            if row["status"] == "ok":
                for name in _LIST_FIELDS:
                    row.setdefault(name, [])
            rows.append(row)
        table = pa.Table.from_pylist(rows, schema=entrez_schema())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------
# MeSH rollup
# --------------------------------------------------------------------------------------------


class MeshDescriptors(dict[str, list[str]]):
    """``{descriptor UI: [tree numbers]}`` from NLM's descriptor file, plus names.

    ``names`` maps UI -> preferred name; ``tree_names`` maps a second-level tree number
    (e.g. ``C04``) to the name of the descriptor heading that tree (``Neoplasms``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[str, str] = {}
        self.tree_names: dict[str, str] = {}


def load_mesh_descriptors(path: str | os.PathLike[str]) -> MeshDescriptors:
    """Stream NLM's MeSH descriptor XML (``descYYYY.xml``, optionally gzipped).

    Reads only each DescriptorRecord's own DescriptorUI / DescriptorName/String /
    TreeNumberList: the same element names recur inside cross-references
    (SeeRelatedList, PharmacologicalActionList, ...), which must not leak in.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    result = MeshDescriptors()
    with opener(path, "rb") as fh:
        for _, rec in etree.iterparse(
            fh,
            events=("end",),
            tag="DescriptorRecord",
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=True,
        ):
            ui = (rec.findtext("DescriptorUI") or "").strip()
            if ui:
                result[ui] = _texts(rec.iterfind("TreeNumberList/TreeNumber"))
                name = _text(rec.find("DescriptorName/String"))
                if name:
                    result.names[ui] = name
                    for tree in result[ui]:
                        if "." not in tree:
                            result.tree_names[tree] = name
            # Free what has been read: the full file is ~300 MB.
            rec.clear()
            while rec.getprevious() is not None:
                del rec.getparent()[0]
    return result


@dataclass(frozen=True)
class MeshCategories:
    """Top-level categories and second-level trees reached by some tree numbers."""

    codes: tuple[str, ...]  # category letters, e.g. ("B", "C")
    names: tuple[str, ...]  # the same categories by name, e.g. ("Organisms", "Diseases")
    trees: tuple[str, ...]  # second-level trees, e.g. ("B01", "C04")
    unknown_uis: tuple[str, ...] = ()  # descriptor UIs absent from the descriptor file


def mesh_top_categories(tree_numbers: Iterable[str]) -> MeshCategories:
    """Map MeSH tree numbers (``C04.588.180``) to their top category and second-level tree.

    Results are de-duplicated and sorted. Raises ``ValueError`` on a malformed tree number.
    """
    codes: set[str] = set()
    trees: set[str] = set()
    for tree in tree_numbers:
        match = _TREE_NUMBER.match(tree.strip())
        if not match:
            raise ValueError(f"not a MeSH tree number: {tree!r}")
        codes.add(match.group(1))
        trees.add(match.group(1) + match.group(2))
    ordered = tuple(sorted(codes))
    return MeshCategories(ordered, tuple(MESH_CATEGORIES[c] for c in ordered), tuple(sorted(trees)))


def mesh_rollup(
    descriptor_uis: Iterable[str], descriptors: Mapping[str, list[str]]
) -> MeshCategories:
    """Categories and trees of a record's MeSH descriptors (by UI, e.g. ``record["mesh"]``)."""
    uis = list(descriptor_uis)
    known = [t for ui in uis if ui in descriptors for t in descriptors[ui]]
    result = mesh_top_categories(known)
    unknown = tuple(dict.fromkeys(ui for ui in uis if ui not in descriptors))
    return MeshCategories(result.codes, result.names, result.trees, unknown)


def iter_cached_pmids(cache_dir: str | os.PathLike[str]) -> Iterator[str]:
    """Every PMID with a record in the cache (any order)."""
    for path in Path(cache_dir).glob("[0-9][0-9][0-9]/*.xml"):
        yield path.stem
