"""Tests for biomedica_kit.enrich.entrez.

Records are real NCBI efetch responses from ``../shared/corpus/pubmed_efetch/`` (see its
SOURCES.md), served by a real HTTP server on 127.0.0.1 (``tests/eutils_server.py``). An autouse
guard makes any connection or name lookup beyond loopback an error.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import threading
from pathlib import Path

import pytest
from eutils_server import EutilsServer, load_corpus_records
from lxml import etree

from biomedica_kit.base import atomic
from biomedica_kit.base.http import RateLimiter
from biomedica_kit.enrich import efetch as entrez
from biomedica_kit.enrich.efetch import fetch_pubmed
from biomedica_kit.enrich.table import entrez_table, write_entrez_parquet
from biomedica_kit.etl.mesh import (
    MESH_CATEGORIES,
    load_mesh_descriptors,
    mesh_rollup,
    mesh_top_categories,
)
from biomedica_kit.etl.pubmed import load_cached, parse_pubmed_article, parse_pubmed_articles
from biomedica_kit.ingest.entrez_cache import cache_status, iter_cached_pmids

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "pubmed_efetch"

#: Every PMID with a PubmedArticle in the corpus (SOURCES.md, efetch table).
CORPUS_PMIDS = {
    "12091962",
    "9997",
    "11748933",
    "11700088",
    "27797938",
    "28775130",
    "29963580",
    "219391",
    "11636720",
    "23657305",
    "33856845",
    "35830032",
    "38329942",
    "38958301",
    "38147649",
    "38048813",
    "38534005",
    "32051057",
    "24349601",
    "38833988",
    "28731372",
    "29768149",
    "28356292",
    "32025781",
}
#: The corpus records without MeshHeadingList (SOURCES.md "Mesh" column).
CORPUS_WITHOUT_MESH = {"11700088", "28775130", "29963580", "24349601", "38833988", "32025781"}
#: metapub__metapub__37909814.xml is NCBI's real (empty) answer for this PMID.
NO_RECORD_PMID = "37909814"

# Small timings keep the suite fast; the rate is high unless a test is about the rate.
FAST = {"rate": 200.0, "backoff": 0.01, "max_backoff": 0.05, "timeout": 5.0}
# Loopback scheduling jitter allowed when checking request spacing.
SPACING_TOLERANCE = 0.02

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Refuse every connection and name lookup that is not loopback; return what was refused."""
    refused: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in _LOOPBACK:
            refused.append(str(host))
            raise ConnectionRefusedError(f"test guard: no connections beyond loopback ({host})")
        return real_connect(sock, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host not in _LOOPBACK:
            refused.append(str(host))
            raise socket.gaierror(f"test guard: no lookups beyond loopback ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for var in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "NCBI_API_KEY",
    ):
        monkeypatch.delenv(var, raising=False)
    return refused


@pytest.fixture(scope="module")
def corpus_records() -> dict[str, bytes]:
    assert CORPUS.is_dir(), f"shared corpus missing at {CORPUS}"
    return load_corpus_records(CORPUS)


@pytest.fixture(scope="module")
def parsed(corpus_records: dict[str, bytes]) -> dict[str, dict]:
    """Each corpus record parsed straight from the corpus files."""
    records = {}
    for path in sorted(CORPUS.glob("*.xml")):
        for rec in parse_pubmed_articles(path):
            records[rec["pmid"]] = rec
    return records


@pytest.fixture
def server(corpus_records: dict[str, bytes]):
    with EutilsServer(corpus_records) as srv:
        yield srv


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


# ---------------------------------------------------------------------------------------------
# Parsing real records
# ---------------------------------------------------------------------------------------------


def test_every_corpus_record_parses_with_mesh_where_sources_says(parsed: dict[str, dict]):
    assert set(parsed) == CORPUS_PMIDS
    assert {p for p, r in parsed.items() if not r["mesh_terms"]} == CORPUS_WITHOUT_MESH
    assert all(r["record_type"] == "PubmedArticle" and r["title"] for r in parsed.values())


def test_structured_abstract_mesh_and_chemicals_of_23657305(parsed: dict[str, dict]):
    rec = parsed["23657305"]
    assert (
        rec["title"] == "Hfe mutations and iron overload in patients with alcoholic liver disease."
    )
    assert (rec["journal"], rec["journal_iso"], rec["pub_year"]) == (
        "Arquivos de gastroenterologia",
        "Arq Gastroenterol",
        2013,
    )
    assert (rec["citation_status"], rec["indexing_method"], rec["languages"]) == (
        "MEDLINE",
        "Manual",
        ["eng"],
    )
    assert [(s["label"], s["nlm_category"]) for s in rec["abstract_sections"]] == [
        ("CONTEXT", "BACKGROUND"),
        ("OBJECTIVES", "OBJECTIVE"),
        ("METHODS", "METHODS"),
        ("RESULTS", "RESULTS"),
        ("CONCLUSION", "CONCLUSIONS"),
    ]
    assert rec["abstract"].startswith(
        "CONTEXT: Alcoholic liver disease (ALD) is generally associated with iron overload"
    )
    assert " OBJECTIVES: To compare the prevalence of mutations" in rec["abstract"]
    assert "(both P<0.05)" in rec["abstract"]  # &lt; decoded
    assert rec["abstract"].endswith("no detectable effects on liver disease activity or severity.")
    assert rec["mesh_terms"] == [
        "Case-Control Studies",
        "Female",
        "Genotype",
        "Hemochromatosis Protein",
        "Histocompatibility Antigens Class I",
        "Humans",
        "Iron Overload",
        "Liver Diseases, Alcoholic",
        "Male",
        "Membrane Proteins",
        "Middle Aged",
        "Severity of Illness Index",
    ]
    # Major through a qualifier only: no descriptor here has MajorTopicYN="Y".
    assert rec["mesh_major"] == [
        "Histocompatibility Antigens Class I",
        "Iron Overload",
        "Liver Diseases, Alcoholic",
        "Membrane Proteins",
    ]
    assert rec["mesh"][6] == {
        "ui": "D019190",
        "name": "Iron Overload",
        "major_topic": False,
        "qualifiers": [
            {"ui": "Q000235", "name": "genetics", "major_topic": False},
            {"ui": "Q000473", "name": "pathology", "major_topic": True},
        ],
    }
    assert rec["publication_types"] == ["Journal Article", "Research Support, Non-U.S. Gov't"]
    assert rec["publication_type_uis"] == ["D016428", "D013485"]
    assert rec["chemicals"][0] == {
        "name": "HFE protein, human",
        "ui": "C103673",
        "registry_number": None,
    }  # NLM's "0" = none
    assert [c["name"] for c in rec["chemicals"]] == [
        "HFE protein, human",
        "Hemochromatosis Protein",
        "Histocompatibility Antigens Class I",
        "Membrane Proteins",
    ]
    assert (rec["doi"], rec["pmcid"]) == ("10.1590/s0004-28032013000100008", None)
    assert (rec["reference_pmids"], rec["reference_count"]) == ([], 0)


def test_references_mathml_keywords_and_pmcid_of_29963580(parsed: dict[str, dict]):
    rec = parsed["29963580"]
    assert rec["citation_status"] == "PubMed-not-MEDLINE"
    assert rec["reference_count"] == 49
    assert len(rec["reference_pmids"]) == 49
    assert rec["reference_pmids"][:3] == ["25144646", "8028666", "19585597"]
    assert rec["pmcid"] == "PMC6022861"
    assert "29963580" not in rec["reference_pmids"]  # the record's own id is not a reference
    assert rec["keywords"] == [
        "asthma",
        "chronic obstructive lung disease",
        "image processing, biomarkers",
        "magnetic resonance imaging",
        "thoracic computed tomography",
    ]
    # MathML is flattened to its text, with the pretty-printing whitespace collapsed.
    assert "(1) inhaled He 3 / Xe 129 MRI ventilation" in rec["abstract"]
    assert "\n" not in rec["abstract"] and "  " not in rec["abstract"]


def test_grants_and_long_reference_list_of_32051057(parsed: dict[str, dict]):
    rec = parsed["32051057"]
    assert rec["grants"][:2] == [
        {
            "grant_id": "BB/P009042/1",
            "acronym": "BB_",
            "agency": "Biotechnology and Biological Sciences Research Council",
            "country": "United Kingdom",
        },
        {
            "grant_id": "BB/R000093/1",
            "acronym": "BB_",
            "agency": "Biotechnology and Biological Sciences Research Council",
            "country": "United Kingdom",
        },
    ]
    # 597 cited works, 508 distinct PubMed ids among them (counted independently with grep).
    assert (rec["reference_count"], len(rec["reference_pmids"])) == (597, 508)
    assert rec["publication_types"] == [
        "Journal Article",
        "Research Support, Non-U.S. Gov't",
        "Review",
    ]


def test_unlabelled_section_and_supplementary_concept_of_38329942(parsed: dict[str, dict]):
    rec = parsed["38329942"]
    assert [(s["label"], s["nlm_category"]) for s in rec["abstract_sections"]] == [
        ("UNLABELLED", None),
        ("IMPORTANCE", "OBJECTIVE"),
    ]
    assert rec["abstract"].startswith("Imbalanced gut microbiota (GM) and abnormal fecal bile")
    assert "IBS-D. IMPORTANCE: Visceral hypersensitivity" in rec["abstract"]
    assert "such as Bacteroides ovatus was markedly reduced" in rec["abstract"]  # <i> flattened
    assert rec["supplementary_concepts"] == [
        {"ui": "C000649722", "name": "Bacteroides ovatus", "type": "Organism"}
    ]
    assert rec["keywords"] == [
        "TGR5",
        "bile acid",
        "diarrhea-predominant irritable bowel syndrome",
        "gut microbiota",
    ]
    assert parsed["38958301"]["supplementary_concepts"] == [
        {"ui": "C536330", "name": "Polycystic liver disease", "type": "Disease"}
    ]


def test_errata_are_kept_in_both_directions(parsed: dict[str, dict]):
    article = parsed["38147649"]
    assert article["comments_corrections"] == [
        {
            "ref_type": "ErratumIn",
            "pmid": "39705317",
            "ref_source": "Proc Natl Acad Sci U S A. 2025 Jan 7;122(1):e2424381121. "
            "doi: 10.1073/pnas.2424381121.",
        }
    ]
    assert article["mesh_major"][:2] == ["Phobia, Social", "Gastrointestinal Microbiome"]
    assert article["mesh"][3] == {
        "ui": "D000072861",
        "name": "Phobia, Social",
        "major_topic": True,
        "qualifiers": [],
    }
    erratum = parsed["38833988"]
    assert erratum["publication_types"] == ["Published Erratum"]
    assert [(c["ref_type"], c["pmid"]) for c in erratum["comments_corrections"]] == [
        ("ErratumFor", "33279609")
    ]
    assert (erratum["abstract"], erratum["abstract_sections"], erratum["mesh"]) == (None, [], [])


def test_citation_statuses_and_a_record_without_doctype(parsed: dict[str, dict]):
    assert parsed["9997"]["citation_status"] == "MEDLINE"
    assert parsed["11700088"]["citation_status"] == "PubMed-not-MEDLINE"
    assert parsed["28775130"]["citation_status"] == "In-Data-Review"
    in_process = parsed["32025781"]  # the ReCiter file has no XML declaration or DOCTYPE
    assert (in_process["citation_status"], in_process["mesh_terms"]) == ("In-Process", [])
    assert in_process["journal"] == "World journal of surgery"


def test_inline_markup_vernacular_title_and_declared_reference_count(parsed: dict[str, dict]):
    assert parsed["27797938"]["title"] == (
        "Leucocyte telomere length, genetic variants at the TERT gene region and risk of "
        "pancreatic cancer."
    )
    german = parsed["38048813"]
    assert german["languages"] == ["ger"]
    assert (
        german["vernacular_title"]
        == "A Broader Scope – Bio-psycho-soziale Medizin im globalen Fokus."
    )
    assert german["publication_types"] == ["Editorial"]
    # No ReferenceList in this 1990 record, only <NumberOfReferences>63</NumberOfReferences>.
    assert (parsed["12091962"]["reference_count"], parsed["12091962"]["reference_pmids"]) == (
        63,
        [],
    )


# Hand-written excerpt (not an NCBI response: the corpus holds no book record), following the
# BookDocument content model of NLM's pubmed_250101.dtd, with made-up content.
BOOK_RECORD = b"""<PubmedBookArticle><BookDocument><PMID Version="1">99000001</PMID>
<ArticleIdList><ArticleId IdType="bookaccession">NBK000001</ArticleId></ArticleIdList>
<Book><Publisher><PublisherName>Example Press</PublisherName></Publisher>
<BookTitle book="example">Example Reviews<sup>R</sup></BookTitle>
<PubDate><Year>1993</Year></PubDate><BeginningDate><Year>1993</Year></BeginningDate>
<Medium>Internet</Medium></Book>
<LocationLabel Type="chapter">Chapter 7</LocationLabel>
<ArticleTitle book="example" part="ch7">An Example Condition</ArticleTitle>
<Language>eng</Language>
<AuthorList Type="authors"><Author><LastName>Writer</LastName><ForeName>Ann</ForeName></Author>
</AuthorList>
<PublicationType UI="D016454">Review</PublicationType>
<Abstract><AbstractText Label="CLINICAL CHARACTERISTICS">Onset is <i>variable</i>.</AbstractText>
<AbstractText Label="MANAGEMENT">Supportive care.</AbstractText>
<CopyrightInformation>Copyright Example Press.</CopyrightInformation></Abstract>
<KeywordList Owner="NOTNLM"><Keyword>example</Keyword></KeywordList>
<ReferenceList><Reference><Citation>A cited paper.</Citation><ArticleIdList>
<ArticleId IdType="pubmed">23657305</ArticleId></ArticleIdList></Reference>
<Reference><Citation>A citation without ids.</Citation></Reference></ReferenceList>
</BookDocument><PubmedBookData><History><PubMedPubDate PubStatus="pubmed"><Year>2010</Year>
</PubMedPubDate></History><PublicationStatus>ppublish</PublicationStatus><ArticleIdList>
<ArticleId IdType="pubmed">99000001</ArticleId>
<ArticleId IdType="doi">10.0000/example.ch7</ArticleId></ArticleIdList></PubmedBookData>
</PubmedBookArticle>"""


def test_book_article_fields():
    rec = parse_pubmed_article(BOOK_RECORD)
    assert (rec["pmid"], rec["record_type"]) == ("99000001", "PubmedBookArticle")
    assert (rec["title"], rec["book_title"], rec["journal"]) == (
        "An Example Condition",
        "Example ReviewsR",
        None,
    )
    assert (rec["pub_year"], rec["languages"], rec["doi"]) == (1993, ["eng"], "10.0000/example.ch7")
    assert rec["abstract"] == (
        "CLINICAL CHARACTERISTICS: Onset is variable. MANAGEMENT: Supportive care."
    )
    assert (rec["publication_types"], rec["publication_type_uis"]) == (["Review"], ["D016454"])
    assert (rec["reference_pmids"], rec["reference_count"]) == (["23657305"], 2)
    assert (rec["keywords"], rec["mesh"], rec["citation_status"]) == (["example"], [], None)


def test_entities_and_dtds_are_never_resolved(tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    xml = (
        f'<?xml version="1.0"?><!DOCTYPE PubmedArticle [<!ENTITY x SYSTEM "{secret.as_uri()}">]>'
        "<PubmedArticle><MedlineCitation><PMID>1</PMID><Article><ArticleTitle>a &x; b"
        "</ArticleTitle></Article></MedlineCitation></PubmedArticle>"
    ).encode()
    rec = parse_pubmed_article(xml)
    assert rec["pmid"] == "1" and "TOP-SECRET" not in (rec["title"] or "")


def test_parse_rejects_what_is_not_exactly_one_record(corpus_records: dict[str, bytes]):
    with pytest.raises(ValueError, match="exactly one record"):
        parse_pubmed_article((CORPUS / "biopython__biopython__pubmed1.xml").read_bytes())
    with pytest.raises(ValueError, match="not a PubMed record"):
        parse_pubmed_article((CORPUS / "biopython__biopython__esummary8.xml").read_bytes())
    one = (CORPUS / "metapub__metapub__219391.xml").read_bytes()
    assert parse_pubmed_article(one)["pmid"] == "219391"


# ---------------------------------------------------------------------------------------------
# Fetching through the loopback server
# ---------------------------------------------------------------------------------------------


def test_fetch_corpus_caches_every_record_and_a_rerun_sends_nothing(
    server: EutilsServer, tmp_path: Path, parsed: dict[str, dict]
):
    wanted = sorted(CORPUS_PMIDS) + [NO_RECORD_PMID]
    first = fetch_pubmed(
        wanted, tmp_path, base_url=server.base_url, email="dev@example.org", **FAST
    )
    assert len(server.requests) == 1 and first.batches == 1
    assert first.counts() == {"ok": 24, "not_found": 1, "failed": 0}
    assert list(first.outcomes) == wanted
    assert first.outcomes[NO_RECORD_PMID].reason == "no record returned by efetch"
    for pmid in CORPUS_PMIDS:
        cached = tmp_path / pmid[-3:].zfill(3) / f"{pmid}.xml"
        assert etree.parse(str(cached)).getroot().tag == "PubmedArticle"
        assert parse_pubmed_article(cached) == parsed[pmid]
    status = json.loads((tmp_path / "814" / f"{NO_RECORD_PMID}.status.json").read_text())
    assert status["status"] == "not_found"
    assert sorted(iter_cached_pmids(tmp_path)) == sorted(CORPUS_PMIDS)

    second = fetch_pubmed(wanted, tmp_path, base_url=server.base_url, **FAST)
    assert len(server.requests) == 1  # nothing new went out
    assert second.requests == 0 and second.counts() == first.counts()
    assert all(o.from_cache for o in second.outcomes.values())

    third = fetch_pubmed(wanted, tmp_path, base_url=server.base_url, refresh=True, **FAST)
    assert [r.ids for r in server.requests[1:]] == [[NO_RECORD_PMID]]
    assert third.outcomes[NO_RECORD_PMID].status == "not_found"
    assert not list(tmp_path.rglob("*.tmp"))


def test_posts_in_batches_of_at_most_batch_size(server: EutilsServer, tmp_path: Path):
    ids = ["23657305", "9997", "219391", "38147649", "29963580"]
    summary = fetch_pubmed(
        ids, tmp_path, base_url=server.base_url, batch_size=2, email="dev@example.org", **FAST
    )
    seen = server.requests
    assert len(seen) == 3 and summary.batches == 3 and summary.requests == 3
    assert [len(r.ids) for r in seen] == [2, 2, 1]
    assert [i for r in seen for i in r.ids] == ids
    for request in seen:
        assert request.method == "POST" and request.path == "/entrez/eutils/efetch.fcgi"
        assert request.params["db"] == "pubmed" and request.params["retmode"] == "xml"
        assert request.params["tool"] == "biomedica-kit"
        assert request.params["email"] == "dev@example.org"
        assert "api_key" not in request.params
    assert summary.counts()["ok"] == 5


def test_batch_size_above_ncbi_maximum_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="batch_size"):
        fetch_pubmed(["1"], tmp_path, batch_size=201)


def test_rate_limit_spaces_requests_within_and_across_calls(server: EutilsServer, tmp_path: Path):
    fetch_pubmed(
        ["23657305", "9997", "219391", "38147649"],
        tmp_path / "a",
        base_url=server.base_url,
        batch_size=1,
        rate=5.0,
        backoff=0.01,
    )
    fetch_pubmed(
        ["29963580", "12091962"],
        tmp_path / "b",
        base_url=server.base_url,
        batch_size=1,
        rate=5.0,
        backoff=0.01,
    )
    times = [r.t for r in server.requests]
    assert len(times) == 6
    assert min(gaps(times)) >= 0.2 - SPACING_TOLERANCE, gaps(times)


def test_rate_limit_holds_across_worker_threads(server: EutilsServer, tmp_path: Path):
    ids = sorted(CORPUS_PMIDS)[:8]
    summary = fetch_pubmed(
        ids, tmp_path, base_url=server.base_url, batch_size=1, rate=10.0, workers=4, backoff=0.01
    )
    times = sorted(r.t for r in server.requests)
    assert summary.counts()["ok"] == 8 and len(times) == 8
    assert min(gaps(times)) >= 0.1 - SPACING_TOLERANCE, gaps(times)


def test_default_rate_is_3_per_second_and_10_with_an_api_key(
    server: EutilsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    fetch_pubmed(
        ["23657305", "9997", "219391"],
        tmp_path / "a",
        base_url=server.base_url,
        batch_size=1,
        backoff=0.01,
    )
    without_key = [r.t for r in server.requests]
    assert min(gaps(without_key)) >= 1 / 3 - SPACING_TOLERANCE

    monkeypatch.setenv("NCBI_API_KEY", "test-key-123")
    fetch_pubmed(
        ["38147649", "29963580", "12091962"],
        tmp_path / "b",
        base_url=server.base_url,
        batch_size=1,
        backoff=0.01,
    )
    keyed = server.requests[3:]
    assert all(r.params["api_key"] == "test-key-123" for r in keyed)
    keyed_gaps = gaps([r.t for r in keyed])
    # At least 1/10 s apart, and clearly closer than the keyless 1/3 s.
    assert all(0.1 - SPACING_TOLERANCE <= g < 0.3 for g in keyed_gaps), keyed_gaps


def test_429_is_retried_after_retry_after(server: EutilsServer, tmp_path: Path):
    server.inject(
        "status",
        status=429,
        headers={"Retry-After": "1"},
        body=b'{"error":"API rate limit exceeded","count":"4"}',
    )
    summary = fetch_pubmed(["23657305"], tmp_path, base_url=server.base_url, **FAST)
    assert summary.outcomes["23657305"].status == "ok"
    assert (summary.requests, summary.retries) == (2, 1)
    assert gaps([r.t for r in server.requests])[0] >= 1.0 - SPACING_TOLERANCE


def test_429_holds_back_the_other_worker_threads_too(server: EutilsServer, tmp_path: Path):
    server.inject("status", status=429, headers={"Retry-After": "1"})
    ids = ["23657305", "9997", "219391"]
    summary = fetch_pubmed(
        ids, tmp_path, base_url=server.base_url, batch_size=1, workers=2, rate=5.0, backoff=0.01
    )
    assert summary.counts()["ok"] == 3
    first, *rest = server.requests
    assert first.fault == "status" and len(rest) == 3
    # The other thread was already waiting for its turn (0.2 s) when the 429 came back: it
    # waits the Retry-After out as well.
    assert min(r.t - first.t for r in rest) >= 1.0 - SPACING_TOLERANCE


def test_server_errors_are_retried_until_success(server: EutilsServer, tmp_path: Path):
    server.inject("status", times=3, status=500, body=b"Internal Server Error")
    summary = fetch_pubmed(["23657305", "9997"], tmp_path, base_url=server.base_url, **FAST)
    assert summary.counts()["ok"] == 2
    assert (summary.requests, summary.retries, len(server.requests)) == (4, 3, 4)


def test_truncated_body_is_retried(
    server: EutilsServer, tmp_path: Path, parsed: dict[str, dict], caplog: pytest.LogCaptureFixture
):
    server.inject("truncate")
    with caplog.at_level(logging.INFO, logger="biomedica_kit.enrich.efetch"):
        summary = fetch_pubmed(["32051057"], tmp_path, base_url=server.base_url, **FAST)
    assert [r.fault for r in server.requests] == ["truncate", None]
    assert summary.outcomes["32051057"].status == "ok"
    assert load_cached(["32051057"], tmp_path)["32051057"] == parsed["32051057"]
    assert "attempt 1/6" in caplog.text and (
        "IncompleteRead" in caplog.text or "unparseable" in caplog.text
    )


def test_html_page_with_status_200_is_retried(server: EutilsServer, tmp_path: Path):
    server.inject("status", status=200, body=b"<html><body>Service unavailable</body>")
    summary = fetch_pubmed(["9997"], tmp_path, base_url=server.base_url, **FAST)
    assert summary.outcomes["9997"].status == "ok" and len(server.requests) == 2


def test_timeouts_end_failed_and_a_rerun_recovers(server: EutilsServer, tmp_path: Path):
    server.inject("hang", times=3, seconds=10)
    ids = ["23657305", "9997"]
    summary = fetch_pubmed(
        ids, tmp_path, base_url=server.base_url, **{**FAST, "timeout": 0.25}, retries=2
    )
    assert len(server.requests) == 3 and summary.counts()["failed"] == 2
    for pmid in ids:
        reason = summary.outcomes[pmid].reason
        assert "timed out" in reason and "gave up after 3 attempts" in reason
    assert cache_status(ids, tmp_path) == {p: ("failed", summary.outcomes[p].reason) for p in ids}
    assert not list(tmp_path.rglob("*.xml"))

    again = fetch_pubmed(ids, tmp_path, base_url=server.base_url, **FAST)
    assert again.counts()["ok"] == 2 and len(server.requests) == 4
    assert not list(tmp_path.rglob("*.status.json"))  # the failure notes are gone


def test_persistent_5xx_ends_failed_with_reason(server: EutilsServer, tmp_path: Path):
    server.inject("status", times=10, status=503, body=b"Service Unavailable")
    summary = fetch_pubmed(["23657305"], tmp_path, base_url=server.base_url, retries=2, **FAST)
    outcome = summary.outcomes["23657305"]
    assert outcome.status == "failed" and len(server.requests) == 3
    assert outcome.reason == "HTTP 503: Service Unavailable (gave up after 3 attempts)"


def test_client_errors_are_not_retried(server: EutilsServer, tmp_path: Path):
    server.inject("status", status=400, body=b'{"error":"API key invalid"}')
    summary = fetch_pubmed(["23657305"], tmp_path, base_url=server.base_url, **FAST)
    assert len(server.requests) == 1
    assert summary.outcomes["23657305"] == entrez.PmidOutcome(
        "failed", 'HTTP 400: {"error":"API key invalid"}'
    )


def test_unknown_pmids_in_a_mixed_batch_are_not_found(server: EutilsServer, tmp_path: Path):
    summary = fetch_pubmed(
        ["23657305", "1", NO_RECORD_PMID], tmp_path, base_url=server.base_url, **FAST
    )
    assert {p: o.status for p, o in summary.outcomes.items()} == {
        "23657305": "ok",
        "1": "not_found",
        NO_RECORD_PMID: "not_found",
    }


def test_error_document_means_not_found_with_ncbi_message(
    corpus_records: dict[str, bytes], tmp_path: Path
):
    with EutilsServer(corpus_records, unknown="error") as srv:
        summary = fetch_pubmed(["1", "2"], tmp_path, base_url=srv.base_url, **FAST)
    for pmid in ("1", "2"):
        assert summary.outcomes[pmid] == entrez.PmidOutcome(
            "not_found", "NCBI error: Cannot retrieve records: no UIDs found"
        )


def test_invalid_and_duplicate_pmids_are_accounted_for(server: EutilsServer, tmp_path: Path):
    summary = fetch_pubmed(
        [" 23657305", 23657305, "023657305", "abc", "0", "12a"],
        tmp_path,
        base_url=server.base_url,
        **FAST,
    )
    assert [r.ids for r in server.requests] == [["23657305"]]
    assert {p: o.status for p, o in summary.outcomes.items()} == {
        "23657305": "ok",
        "abc": "failed",
        "0": "failed",
        "12a": "failed",
    }
    assert "invalid PMID" in summary.outcomes["abc"].reason


def test_a_failed_refresh_keeps_the_cached_record(server: EutilsServer, tmp_path: Path):
    fetch_pubmed(["9997"], tmp_path, base_url=server.base_url, **FAST)
    server.inject("status", times=5, status=502)
    summary = fetch_pubmed(
        ["9997"], tmp_path, base_url=server.base_url, refresh={"ok"}, retries=1, **FAST
    )
    outcome = summary.outcomes["9997"]
    assert outcome.status == "ok" and outcome.reason.startswith("refresh failed")
    assert len(server.requests) == 3
    assert cache_status(["9997"], tmp_path) == {"9997": ("ok", None)}


def test_an_interrupted_write_leaves_no_partial_file(
    server: EutilsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        fetch_pubmed(["23657305"], tmp_path, base_url=server.base_url, **FAST)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_progress_bar_reports_pmids(
    server: EutilsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    fetch_pubmed(["23657305", "9997"], tmp_path, base_url=server.base_url, progress=True, **FAST)
    assert "efetch: 100%" in capsys.readouterr().err


def test_default_endpoint_is_ncbi_and_the_guard_keeps_it_offline(
    tmp_path: Path, loopback_only: list[str]
):
    summary = fetch_pubmed(["23657305"], tmp_path, retries=0, rate=100.0)
    assert loopback_only == ["eutils.ncbi.nlm.nih.gov"]
    assert summary.outcomes["23657305"].status == "failed"
    assert "ConnectionError" in summary.outcomes["23657305"].reason


def test_rate_limiter_defer_holds_back_the_next_slot():
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(0.25)
    limiter.defer(5.0)
    assert limiter.acquire() == pytest.approx(5.0)
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_rate_limiter_is_safe_under_contention():
    limiter = RateLimiter(50.0)
    starts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            limiter.acquire()
            with lock:
                starts.append(entrez.time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(starts) == 20
    assert min(gaps(sorted(starts))) >= 0.02 - SPACING_TOLERANCE / 2


# ---------------------------------------------------------------------------------------------
# Reading the cache back and Parquet
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def filled_cache(server: EutilsServer, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    server.inject("hang", times=1, seconds=10)  # 219391's batch times out: a "failed" row
    fetch_pubmed(["219391"], cache, base_url=server.base_url, retries=0, **{**FAST, "timeout": 0.2})
    fetch_pubmed(["23657305", "38147649", NO_RECORD_PMID], cache, base_url=server.base_url, **FAST)
    return cache


def test_load_cached_returns_only_cached_records(filled_cache: Path, parsed: dict[str, dict]):
    records = load_cached(["38147649", "219391", NO_RECORD_PMID, "23657305", "5"], filled_cache)
    assert list(records) == ["38147649", "23657305"]
    assert records["23657305"] == parsed["23657305"]


def test_entrez_table_accounts_for_every_pmid_and_round_trips(filled_cache: Path, tmp_path: Path):
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    pmids = ["23657305", NO_RECORD_PMID, "219391", "38147649", "424242", "x1"]
    table = entrez_table(pmids, filled_cache)
    assert table.column("pmid").to_pylist() == pmids
    assert table.column("status").to_pylist() == [
        "ok",
        "not_found",
        "failed",
        "ok",
        "failed",
        "failed",
    ]
    reasons = table.column("reason").to_pylist()
    assert reasons[0] is None and reasons[1] == "no record returned by efetch"
    assert "timed out" in reasons[2] and reasons[4] == "not in cache (never fetched)"
    assert reasons[5].startswith("invalid PMID")
    assert table.schema.field("mesh_terms").type == pa.list_(pa.string())
    assert table.schema.field("pmid").type == pa.string()
    assert table.column("mesh_terms").to_pylist()[1] is None  # unknown, not "no MeSH"
    assert table.column("reference_count").to_pylist()[3] == 71

    out = write_entrez_parquet(table, tmp_path / "meta" / "entrez.parquet")
    assert pq.read_table(out).equals(table)
    assert [p.name for p in out.parent.iterdir()] == ["entrez.parquet"]  # no temp left behind
    hits = duckdb.sql(
        f"SELECT pmid, list_transform(list_filter(mesh, lambda m: m.major_topic), lambda m: m.ui) "
        f"FROM read_parquet('{out}') WHERE list_contains(mesh_major, 'Phobia, Social')"
    ).fetchall()
    assert hits == [("38147649", ["D000072861", "D000069196"])]


def test_entrez_table_in_worker_processes_matches_serial(filled_cache: Path, descriptor_file: Path):
    desc = load_mesh_descriptors(descriptor_file)
    pmids = ["23657305", NO_RECORD_PMID, "219391", "38147649", "424242"]
    serial = entrez_table(pmids, filled_cache, descriptors=desc)
    parallel = entrez_table(pmids, filled_cache, descriptors=desc, workers=2, chunk_size=2)
    assert parallel.equals(serial)
    assert parallel.column("mesh_trees").to_pylist()[3] == ["B01"]


def test_a_cache_file_holding_another_pmid_is_not_trusted(filled_cache: Path):
    other = (filled_cache / "649" / "38147649.xml").read_bytes()
    (filled_cache / "305" / "23657305.xml").write_bytes(other)
    assert list(load_cached(["23657305", "38147649"], filled_cache)) == ["38147649"]
    row = entrez_table(["23657305"], filled_cache).to_pylist()[0]
    assert row["status"] == "failed"
    assert row["reason"] == "unreadable cache file: cache file for 23657305 holds PMID 38147649"


def test_write_entrez_parquet_accepts_parsed_records(parsed: dict[str, dict], tmp_path: Path):
    import pyarrow.parquet as pq

    path = write_entrez_parquet(
        [parsed["29963580"], parse_pubmed_article(BOOK_RECORD)], tmp_path / "entrez.parquet"
    )
    rows = pq.read_table(path).to_pylist()
    assert [(r["pmid"], r["status"], r["record_type"]) for r in rows] == [
        ("29963580", "ok", "PubmedArticle"),
        ("99000001", "ok", "PubmedBookArticle"),
    ]
    assert rows[0]["reference_pmids"][:3] == ["25144646", "8028666", "19585597"]
    assert rows[1]["abstract_sections"][0] == {
        "label": "CLINICAL CHARACTERISTICS",
        "nlm_category": None,
        "text": "Onset is variable.",
    }


def test_book_record_goes_through_fetch_and_cache(corpus_records: dict[str, bytes], tmp_path: Path):
    with EutilsServer({**corpus_records, "99000001": BOOK_RECORD}) as srv:
        summary = fetch_pubmed(["99000001", "9997"], tmp_path, base_url=srv.base_url, **FAST)
    assert summary.counts()["ok"] == 2
    assert load_cached(["99000001"], tmp_path)["99000001"]["book_title"] == "Example ReviewsR"


# ---------------------------------------------------------------------------------------------
# MeSH rollup
# ---------------------------------------------------------------------------------------------

# Hand-written excerpt in the format of NLM's descriptor file (descYYYY.xml), trimmed (dates,
# concept and term UIs, most lists left out). UIs, names and tree numbers are the real ones;
# the SeeRelatedList and AllowableQualifiersList are there because they repeat DescriptorUI /
# DescriptorName / String inside a record, which must not be mistaken for the record's own.
MESH_EXCERPT = """<?xml version="1.0"?>
<!DOCTYPE DescriptorRecordSet SYSTEM "https://www.nlm.nih.gov/databases/dtd/nlmdescriptorrecordset_20250101.dtd">
<DescriptorRecordSet LanguageCode = "eng">
<DescriptorRecord DescriptorClass = "1">
  <DescriptorUI>D009369</DescriptorUI>
  <DescriptorName>
   <String>Neoplasms</String>
  </DescriptorName>
  <AllowableQualifiersList>
   <AllowableQualifier>
    <QualifierReferredTo>
     <QualifierUI>Q000235</QualifierUI>
     <QualifierName>
      <String>genetics</String>
     </QualifierName>
    </QualifierReferredTo>
    <Abbreviation>GE</Abbreviation>
   </AllowableQualifier>
  </AllowableQualifiersList>
  <SeeRelatedList>
   <SeeRelatedDescriptor>
    <DescriptorReferredTo>
     <DescriptorUI>D000912</DescriptorUI>
     <DescriptorName>
      <String>Antibodies, Neoplasm</String>
     </DescriptorName>
    </DescriptorReferredTo>
   </SeeRelatedDescriptor>
  </SeeRelatedList>
  <TreeNumberList>
   <TreeNumber>C04</TreeNumber>
  </TreeNumberList>
  <ConceptList>
   <Concept PreferredConceptYN="Y">
    <ConceptName>
     <String>Neoplasms</String>
    </ConceptName>
    <TermList>
     <Term ConceptPreferredTermYN="Y" IsPermutedTermYN="N" LexicalTag="NON">
      <String>Neoplasms</String>
     </Term>
     <Term ConceptPreferredTermYN="N" IsPermutedTermYN="N" LexicalTag="NON">
      <String>Tumors</String>
     </Term>
    </TermList>
   </Concept>
  </ConceptList>
</DescriptorRecord>
<DescriptorRecord DescriptorClass = "1">
  <DescriptorUI>D001943</DescriptorUI>
  <DescriptorName>
   <String>Breast Neoplasms</String>
  </DescriptorName>
  <TreeNumberList>
   <TreeNumber>C04.588.180</TreeNumber>
   <TreeNumber>C17.800.090.500</TreeNumber>
  </TreeNumberList>
</DescriptorRecord>
<DescriptorRecord DescriptorClass = "1">
  <DescriptorUI>D003920</DescriptorUI>
  <DescriptorName>
   <String>Diabetes Mellitus</String>
  </DescriptorName>
  <TreeNumberList>
   <TreeNumber>C18.452.394.750</TreeNumber>
   <TreeNumber>C19.246</TreeNumber>
  </TreeNumberList>
</DescriptorRecord>
<DescriptorRecord DescriptorClass = "3">
  <DescriptorUI>D000818</DescriptorUI>
  <DescriptorName>
   <String>Animals</String>
  </DescriptorName>
  <TreeNumberList>
   <TreeNumber>B01</TreeNumber>
  </TreeNumberList>
</DescriptorRecord>
<DescriptorRecord DescriptorClass = "3">
  <DescriptorUI>D006801</DescriptorUI>
  <DescriptorName>
   <String>Humans</String>
  </DescriptorName>
  <TreeNumberList>
   <TreeNumber>B01.050.150.900.649.313.988.400.112.400.400</TreeNumber>
  </TreeNumberList>
</DescriptorRecord>
</DescriptorRecordSet>
"""


@pytest.fixture
def descriptor_file(tmp_path: Path) -> Path:
    path = tmp_path / "desc2025.xml"
    path.write_text(MESH_EXCERPT, encoding="utf-8")
    return path


def test_load_mesh_descriptors_reads_each_records_own_fields(descriptor_file: Path):
    desc = load_mesh_descriptors(descriptor_file)
    assert desc == {
        "D009369": ["C04"],
        "D001943": ["C04.588.180", "C17.800.090.500"],
        "D003920": ["C18.452.394.750", "C19.246"],
        "D000818": ["B01"],
        "D006801": ["B01.050.150.900.649.313.988.400.112.400.400"],
    }
    assert desc.names["D009369"] == "Neoplasms" and desc.names["D006801"] == "Humans"
    assert desc.tree_names == {"C04": "Neoplasms", "B01": "Animals"}
    gz = descriptor_file.with_suffix(".xml.gz")
    gz.write_bytes(gzip.compress(descriptor_file.read_bytes()))
    assert load_mesh_descriptors(gz) == desc


def test_mesh_top_categories_maps_to_the_16_categories_and_second_level_trees():
    assert len(MESH_CATEGORIES) == 16
    result = mesh_top_categories(
        ["C04.588.180", "C17.800.090.500", "B01.050.150.900.649.313.988.400.112.400.400", "C04"]
    )
    assert result.codes == ("B", "C")
    assert result.names == ("Organisms", "Diseases")
    assert result.trees == ("B01", "C04", "C17")
    assert mesh_top_categories(["Z01.107", "V02.600", "E01"]).names == (
        "Analytical, Diagnostic and Therapeutic Techniques, and Equipment",
        "Publication Characteristics",
        "Geographicals",
    )
    for bad in ("C4", "X01", "C04.58", "D009369"):
        with pytest.raises(ValueError, match="not a MeSH tree number"):
            mesh_top_categories([bad])


def test_mesh_rollup_of_a_real_record(descriptor_file: Path, parsed: dict[str, dict]):
    desc = load_mesh_descriptors(descriptor_file)
    rec = parsed["38147649"]  # Humans, Animals, Mice, ...
    result = mesh_rollup([m["ui"] for m in rec["mesh"]], desc)
    assert (result.codes, result.trees) == (("B",), ("B01",))
    assert "D006801" not in result.unknown_uis and "D051379" in result.unknown_uis
    assert len(result.unknown_uis) == len(rec["mesh"]) - 2
    diabetes = mesh_rollup(["D003920", "D001943"], desc)
    assert diabetes.trees == ("C04", "C17", "C18", "C19")


def test_entrez_table_fills_rollup_columns_with_descriptors(
    filled_cache: Path, descriptor_file: Path
):
    desc = load_mesh_descriptors(descriptor_file)
    table = entrez_table(["38147649", NO_RECORD_PMID], filled_cache, descriptors=desc)
    assert table.column("mesh_categories").to_pylist() == [["Organisms"], None]
    assert table.column("mesh_trees").to_pylist() == [["B01"], None]
    assert table.column("mesh_major_categories").to_pylist() == [[], None]
    assert entrez_table(["38147649"], filled_cache).column("mesh_categories").to_pylist() == [None]


def test_importing_the_module_does_not_import_pyarrow_or_requests():
    import subprocess
    import sys

    code = (
        "import sys, biomedica_kit.enrich.efetch, biomedica_kit.etl.pubmed; "
        "print(sorted(m for m in ('pyarrow', 'requests') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ},
    )
    assert out.stdout.strip() == "[]"
