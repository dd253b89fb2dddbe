"""The real PubMed corpus (``../shared/corpus/pubmed_efetch/``, see its SOURCES.md) for the
E-utilities client, parser, MeSH and Entrez-table tests: constants and fixtures (loaded as a
plugin by tests/conftest.py). ``loopback_only`` makes any connection or name lookup beyond
loopback an error; the test modules that talk HTTP use it for every test.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from eutils_server import EutilsServer, load_corpus_records

from biomedica_kit.enrich.efetch import fetch_pubmed
from biomedica_kit.etl.pubmed import parse_pubmed_articles

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


@pytest.fixture
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


@pytest.fixture
def filled_cache(server: EutilsServer, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    server.inject("hang", times=1, seconds=10)  # 219391's batch times out: a "failed" row
    fetch_pubmed(["219391"], cache, base_url=server.base_url, retries=0, **{**FAST, "timeout": 0.2})
    fetch_pubmed(["23657305", "38147649", NO_RECORD_PMID], cache, base_url=server.base_url, **FAST)
    return cache
