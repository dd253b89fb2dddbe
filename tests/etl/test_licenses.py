"""Licences are never upgraded: Unicode dashes and spaces, negations, conflicting mentions; and
licences stated only in prose (older PLOS) are read. Real XML from ../shared/corpus, with the
licence element rewritten where a case needs it; real file-list strings through a real build."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from corpus_paths import SHARED

from biomedica_kit.dataset.licenses import classify_license, license_code, normalise
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.etl.build import build
from biomedica_kit.etl.jats import parse_jats
from biomedica_kit.ingest.sources import Selection, license_category, ref_from_row, write_file_list

CCBY = SHARED / "corpus" / "ccby" / "articles"
PMC = SHARED / "corpus" / "pmc_oa"


@pytest.mark.parametrize(("value", "code"), [
    # Unicode hyphens and dashes (U+2010 occurs in the real corpus: PMC13125388 "non‐commercial").
    ("CC BY\u2011NC\u2011ND", "cc-by-nc-nd"),
    ("CC BY\u2013NC", "cc-by-nc"),
    ("CC BY\u2010NC\u2010ND 4.0", "cc-by-nc-nd"),
    ("CC\u00a0BY\u2014NC\u2014SA", "cc-by-nc-sa"),
    ("CC\u202fBY\u2212ND", "cc-by-nd"),
    ("Creative Commons Attribution\u2010NonCommercial\u2010NoDerivs License", "cc-by-nc-nd"),
    ("Creative Commons Attribution-Non\u00adCommercial License", "cc-by-nc"),
    # Negations and conflicts: "other" rather than a guess.
    ("not CC BY", None),
    ("This article is not distributed under a CC BY licence.", None),
    ("CC BY or CC BY-NC", None),
    ("NO-CC CODE", None),
    # Ordinary values still read.
    ("CC BY", "cc-by"),
    ("CC BY-NC-SA", "cc-by-nc-sa"),
    ("http://creativecommons.org/licenses/by-nc/3.0", "cc-by-nc"),
    ("For non-commercial use: CC BY-NC", "cc-by-nc"),
    # BMC's waiver for the data beside the article's CC BY is not a second licence.
    ("This is an Open Access article distributed under the terms of the Creative Commons "
     "Attribution License (http://creativecommons.org/licenses/by/2.0). The Creative Commons "
     "Public Domain Dedication waiver (http://creativecommons.org/publicdomain/zero/1.0/) "
     "applies to the data made available in this article, unless otherwise stated.", "cc-by"),
])
def test_license_code_never_upgrades(value, code):
    assert license_code(value) == code


def test_normalise_maps_every_dash_and_space():
    assert normalise("CC\u00a0BY\u2010NC\u2011ND\u2013x\u2014y\u2212z\u200b") == "cc by-nc-nd-x-y-z"


def _with_license(xml: bytes, license_xml: bytes) -> bytes:
    """The real article with its <license> element replaced."""
    out, n = re.subn(rb"<license[ >].*?</license>", license_xml, xml, count=1, flags=re.S)
    assert n == 1
    return out


def test_xml_licence_text_with_unicode_hyphens_is_noncommercial():
    # Real PMC XML (CC BY by URL) rewritten to state "CC BY‐NC‐ND 4.0" in text only, no URL.
    xml = (PMC / "PMC12419688" / "koaf197.nxml").read_bytes()
    lic = "<license><license-p>CC BY\u2010NC\u2010ND 4.0</license-p></license>".encode()
    (a,) = parse_jats(_with_license(xml, lic), source_file="koaf197.nxml")
    assert (a.license_code, a.license_category, a.license_source) == (
        "cc-by-nc-nd", "noncommercial", "text")
    assert a.license_text == "CC BY\u2010NC\u2010ND 4.0" and a.license_url is None


def test_negated_licence_text_is_other():
    xml = (PMC / "PMC12419688" / "koaf197.nxml").read_bytes()
    lic = (b"<license><license-p>This figure is not CC BY; all rights reserved.</license-p>"
           b"</license>")
    (a,) = parse_jats(_with_license(xml, lic), source_file="koaf197.nxml")
    assert (a.license_code, a.license_category) == ("other", "other")


@pytest.mark.parametrize(("folder", "source"), [
    # 2006/2008 NLM 2.0: no <license>, the statement is <copyright-statement> in article-meta.
    ("pone.0000010", "copyright"),
    ("pgen.1000100", "copyright"),
    # 2013: <license> with the same prose and no href.
    ("pone.0060593", "text"),
    ("pone.0056489", "text"),
])
def test_plos_licence_stated_only_in_prose_is_cc_by(folder, source):
    d = CCBY / folder
    xml = next(d.glob("*.xml"))
    (a,) = parse_jats(xml.read_bytes(), source_file=xml.name)
    assert (a.license_code, a.license_category, a.license_source) == ("cc-by", "commercial",
                                                                      source)
    assert "Creative Commons Attribution License" in (a.copyright or "") + (a.license_text or "")


def test_file_list_strings_with_unicode_dashes():
    assert [license_category(v) for v in ("CC BY\u2011NC\u2011ND", "CC BY\u2013NC", "not CC BY",
                                          "CC BY")] == [
        "noncommercial", "noncommercial", "other", "commercial"]
    info = classify_license(file_list="CC BY\u2011NC", url="https://creativecommons.org/licenses/by/4.0/")
    assert (info.code, info.category, info.source) == ("cc-by-nc", "noncommercial", "file_list")


def test_file_list_licence_puts_articles_in_the_right_shards(tmp_path: Path):
    # Three real CC BY packages under a file list whose License column uses Unicode dashes or a
    # negation: none of them may land in the commercial shards.
    root = tmp_path / "mirror"
    rows = []
    for name, lic in [("PMC12419688", "CC BY\u2011NC\u2011ND"), ("elife-19405", "CC BY\u2013NC"),
                      ("elife-32671", "not CC BY")]:
        rel = f"oa_package/{hashlib.md5(name.encode()).hexdigest()[:2]}/ab/{name}.tar.gz"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PMC / f"{name}.tar.gz", root / rel)
        rows.append({"File": rel, "Article Citation": "", "Accession ID": "",
                     "Last Updated (YYYY-MM-DD HH:MM:SS)": "2025-01-01 00:00:00", "PMID": "",
                     "License": lic})
    write_file_list(rows, root / "oa_file_list.csv")
    refs = [ref_from_row(r, str(root / r["File"])) for r in rows]
    assert Selection(licenses=frozenset({"commercial"})).apply(refs) == []
    s = build(root, tmp_path / "ds", workers=1, progress=False)
    assert s.samples_by_subset == {"commercial": 0, "noncommercial": 2, "other": 5}
    arts = {r["package"]: r for r in pq.read_table(tmp_path / "ds/report/articles.parquet")
            .to_pylist()}
    assert {k: (v["license_code"], v["license_category"]) for k, v in arts.items()} == {
        "PMC12419688": ("cc-by-nc-nd", "noncommercial"),
        "elife-19405": ("cc-by-nc", "noncommercial"), "elife-32671": ("other", "other")}
    assert not (tmp_path / "ds/shards/commercial").exists() or not any(
        (tmp_path / "ds/shards/commercial").glob("*.tar"))
    metas = [json.loads(g["json"]) for p in (tmp_path / "ds/shards").rglob("*.tar")
             for _, g in iter_samples(p)]
    assert {m["license_category"] for m in metas} == {"noncommercial", "other"}
