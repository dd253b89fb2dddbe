"""The JATS parser against real PMC OA articles (../shared/corpus/pmc_oa), one edge case each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from biomedica_kit.cli.main import main
from biomedica_kit.dataset.licenses import classify_license, license_code
from biomedica_kit.etl.jats import parse_jats


def load(corpus: Path, folder: str):
    d = corpus / folder
    files = [f.name for f in d.iterdir()]
    xml = next(f for f in d.iterdir() if f.suffix in (".xml", ".nxml"))
    return parse_jats(xml.read_bytes(), source_file=xml.name, files=files)


def test_article_metadata_from_xml_not_citation(corpus):
    (a,) = load(corpus, "PMC12419688")
    assert (a.pmcid, a.pmid, a.doi) == ("PMC12419688", "40795775", "10.1093/plcell/koaf197")
    assert a.title.startswith("Deciphering the tomato phosphate starvation response")
    assert a.journal == "The Plant Cell"
    assert a.publisher == "Oxford University Press"
    assert (a.pub_date, a.year) == ("2025-08-09", 2025)
    assert a.article_type == "news"
    assert a.license_url == "https://creativecommons.org/licenses/by/4.0/"
    assert (a.license_code, a.license_category) == ("cc-by", "commercial")


def test_extensionless_href_resolves_to_best_file(corpus):
    # The genuine NCBI package has koaf197f1.jpg and PMC's GIF thumbnail; href has no extension.
    (a,) = load(corpus, "PMC12419688")
    (fig,) = a.figures
    assert fig.graphics[0].href == "koaf197f1"
    assert fig.graphics[0].file == "koaf197f1.jpg"
    assert fig.caption.startswith("Transcriptional regulation of PSRs by SlPHR3 and SlPHR4 in "
                                  "tomato. Under phosphate deficiency (−Pi), tomato plants")


def test_inline_refs_paragraph_and_citing_sentence(corpus):
    (a,) = load(corpus, "PMC12419688")
    (ref,) = a.figures[0].inline_refs
    assert ref.paragraph.startswith("However, analysis of Pi and total P contents")
    assert ref.sentences == [
        "Loss of SlMYB28, in particular, resulted in reduced Pi and total P content in both roots "
        "and shoots across all Pi conditions, suggesting that it plays a broad role in regulating "
        "phosphate homeostasis systemically throughout the plant (Fig.)."]


def test_alternatives_with_thumbnails_pick_full_image(corpus):
    (a,) = load(corpus, "PMC13125388")
    assert len(a.figures) == 5
    fig = a.figures[0]
    assert fig.label == "FIGURE 1"
    assert fig.caption == (
        "Oligo‐homogalacturonan structure (A) represented in a DP5DM4 methylated species with its "
        "simplified (B) SNFG representation that shows the possible methylation positions.")
    assert [(g.href, g.alternatives) for g in fig.graphics] == [
        ("RCM-40-e70073-g003.jpg", ["RCM-40-e70073-g003.gif"])]
    assert sum(len(f.inline_refs) for f in a.figures) == 10
    assert (a.license_code, a.license_category) == ("cc-by-nc-nd", "noncommercial")


def test_fig_group_members_are_figures(corpus):
    (a,) = load(corpus, "elife-94334")
    assert len(a.figures) == 19
    labels = [f.label for f in a.figures]
    assert "Figure 2—figure supplement 3." in labels
    assert a.id == "doi_10.7554/eLife.94334" and a.id_source == "doi"


def test_mathml_caption_flattened(corpus):
    (a,) = load(corpus, "PMC13170065")
    fig = next(f for f in a.figures if f.id == "rcm70104-fig-0004")
    assert "logCV=−0.5logFrequency+2" in fig.caption
    assert "<" not in fig.caption


def test_table_graphics_kept_as_tables(corpus):
    (a,) = load(corpus, "PMC3585041")
    assert [(f.id, f.kind) for f in a.figures] == [
        ("pntd-0002065-g001", "figure"), ("pntd-0002065-t001", "table"),
        ("pntd-0002065-t002", "table"), ("pntd-0002065-t003", "table"),
        ("pntd-0002065-t004", "table"), ("pntd-0002065-t005", "table")]
    (b,) = load(corpus, "PMC12431436")
    assert sorted(f.id for f in b.figures if f.kind == "table") == [
        "pone.0332245.t001", "pone.0332245.t002", "pone.0332245.t003", "pone.0332245.t004"]


def test_articleset_yields_every_article(corpus):
    arts = load(corpus, "PMC6358576_PMC6358589")
    assert [a.pmcid for a in arts] == [
        "PMC6358576", "PMC6358577", "PMC6358578", "PMC6358579", "PMC6358580", "PMC6358581",
        "PMC6358585", "PMC6358587", "PMC6358588", "PMC6358589"]
    assert [len(a.figures) for a in arts] == [3, 5, 2, 4, 1, 3, 3, 3, 11, 6]
    assert {a.license_category for a in arts} == {"noncommercial"}
    assert [a.license_code for a in arts].count("cc-by-nc-sa") == 1


def test_translated_sub_article_does_not_duplicate_figures(corpus):
    (a,) = load(corpus, "PMC13183359")
    # The Portuguese translation repeats F1-F4 as F5-F8; only the main article's count.
    assert [f.id for f in a.figures] == ["F1", "F2", "F3", "F4"]
    assert all(f.sub_article is None for f in a.figures)


def test_missing_license_falls_back_to_other(corpus):
    (a,) = load(corpus, "PMC2386533")
    assert (a.license_code, a.license_category, a.license_source) == ("none", "other", "none")
    assert a.copyright == "© Springer Science+Business Media, LLC 2007"
    assert len(a.figures) == 9


def test_article_without_pmcid_gets_stable_id(corpus):
    (a,) = load(corpus, "elife-32671")
    assert (a.pmcid, a.doi, a.id_source) == (None, None, "file")
    assert a.id == "manuscript"
    assert [g.file for f in a.figures for g in f.graphics] == [f"fig{i}.jpg" for i in range(1, 6)]


def test_inline_graphic_is_not_a_figure(corpus):
    (a,) = load(corpus, "elife-19405")
    assert [f.id for f in a.figures] == ["fig1"]
    assert a.figures[0].graphics[0].file == "elife-19405-fig1.tif"


@pytest.mark.parametrize(("value", "code"), [
    ("http://creativecommons.org/licenses/by-nc/3.0", "cc-by-nc"),
    ("CC BY-NC-SA", "cc-by-nc-sa"),
    ("CC0", "cc0"),
    ("https://creativecommons.org/publicdomain/zero/1.0/", "cc0"),
    ("This is an open-access article distributed under the terms of the Creative Commons "
     "Attribution License", "cc-by"),
    ("Creative Commons Attribution-NonCommercial-NoDerivatives 4.0 License", "cc-by-nc-nd"),
    ("NO-CC CODE", None),
    ("© Springer Science+Business Media, LLC 2007", None),
])
def test_license_codes(value, code):
    assert license_code(value) == code


def test_file_list_license_wins():
    info = classify_license(file_list="CC BY-NC", url="http://creativecommons.org/licenses/by/4.0")
    assert (info.code, info.category, info.source) == ("cc-by-nc", "noncommercial", "file_list")


def test_cli_parse_prints_json_lines(corpus):
    f = corpus / "PMC6358576_PMC6358589" / "PMC6358576_PMC6358589.xml"
    g = corpus / "PMC12419688" / "koaf197.nxml"
    res = CliRunner().invoke(main, ["parse", str(f), str(g)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert len(rows) == 11
    last = rows[-1]
    for k in ("pmcid", "pmid", "doi", "title", "abstract", "journal", "publisher", "pub_date",
              "year", "article_type", "subjects", "keywords", "license_url", "license_type",
              "license_text", "license_category", "figures"):
        assert k in last
    fig = last["figures"][0]
    assert {"id", "label", "caption", "graphics", "kind", "inline_refs"} <= set(fig)
    assert fig["graphics"][0]["file"] == "koaf197f1.jpg"


def test_cli_parse_reports_bad_file(tmp_path, corpus):
    bad = tmp_path / "bad.nxml"
    bad.write_bytes((corpus / "PMC3166277" / "1471-2180-11-174.nxml").read_bytes()[:5000])
    res = CliRunner().invoke(main, ["parse", str(bad)])
    assert res.exit_code == 1
    assert json.loads(res.output)["reason"] == "malformed_xml"
