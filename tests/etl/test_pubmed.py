"""PubMed efetch XML -> record dicts (biomedica_kit.etl.pubmed), on real NCBI responses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pubmed_corpus import (
    BOOK_RECORD,
    CORPUS,
    CORPUS_PMIDS,
    CORPUS_WITHOUT_MESH,
)

from biomedica_kit.etl.pubmed import parse_pubmed_article

pytestmark = pytest.mark.usefixtures("loopback_only")


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
