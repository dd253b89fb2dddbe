"""Publisher JATS, not only PMC nXML: the 14 real CC BY articles of ../shared/corpus/ccby (eLife,
PLOS, SciELO, a Ukrainian journal) and variants of them made by renaming files or rewriting hrefs
the way other publishers write them (URL-encoded names, document-store URLs with SHA-1 names,
hrefs without extension, thumbnails, an internal DTD subset)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from corpus_paths import SHARED
from PIL import Image

from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify
from biomedica_kit.etl.build import build
from biomedica_kit.etl.graphics import IMAGE_EXT_PREFERENCE, FileIndex
from biomedica_kit.etl.jats import parse_jats
from biomedica_kit.ingest.packages import IMAGE_EXTS, expand_containers, is_container

CCBY = SHARED / "corpus" / "ccby"
ARTICLES = CCBY / "articles"

#: package -> (figure images in the XML, samples, licence code); every image file is present.
EXPECTED = {
    "1414-431X-bjmbr-37-04-459-477": (9, 7, "cc-by"),  # two table images without a caption
    "2236-8906-hoehnea-49-e1112020": (3, 3, "cc-by"),
    "elife-30274": (5, 5, "cc-by"),
    "elife-43154": (3, 3, "cc-by"),
    "elife-46472": (8, 8, "cc0"),
    "elife-46793": (19, 19, "cc-by"),
    "elife-52882": (12, 12, "cc-by"),
    "pgen.1000100": (10, 10, "cc-by"),  # licence only in <copyright-statement> prose
    "pmgp.v3i2.107": (3, 3, "cc-by"),
    "pone.0000010": (3, 3, "cc-by"),  # licence only in <copyright-statement> prose
    "pone.0056489": (6, 6, "cc-by"),  # <license> prose, no href
    "pone.0060593": (4, 4, "cc-by"),  # <license> prose, no href
    "pone.0091296": (14, 14, "cc-by"),
    "pone.0178565": (11, 11, "cc-by"),
}


def _metas(out: Path) -> list[dict]:
    return [json.loads(g["json"]) for p in sorted((out / "shards").rglob("*.tar"))
            for _, g in iter_samples(p)]


@pytest.fixture(scope="module")
def ccby_build(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("ccby") / "ds"
    return out, build(ARTICLES, out, workers=2, progress=False)


def test_every_present_figure_image_becomes_a_sample(ccby_build):
    out, s = ccby_build
    assert s.reconciles and s.articles == {"ok": 14}
    assert (s.images, s.samples) == (110, 108)
    assert s.skips == {"no_caption": 2}  # the two SciELO table images have no caption at all
    assert s.samples_by_subset == {"commercial": 108, "noncommercial": 0, "other": 0}
    arts = {r["package"]: r for r in pq.read_table(out / "report/articles.parquet").to_pylist()}
    assert {p: (r["n_images"], r["n_samples"], r["license_code"]) for p, r in arts.items()} == (
        EXPECTED)
    assert {r["license_category"] for r in arts.values()} == {"commercial"}
    skips = pq.read_table(out / "report/skips.parquet").to_pylist()
    assert [(k["package"], k["figure_id"], k["reason"]) for k in skips] == [
        ("1414-431X-bjmbr-37-04-459-477", "t01", "no_caption"),
        ("1414-431X-bjmbr-37-04-459-477", "t02", "no_caption")]
    assert verify(out).ok


def test_each_sample_holds_its_own_articles_image(ccby_build):
    # eLife articles all name their files fig1.jpg...: each must get the one in its own folder.
    out, _ = ccby_build
    for m in _metas(out):
        path = ARTICLES / m["package"] / m["image_file"]
        data = path.read_bytes()
        if not m["image_converted"]:
            assert hashlib.sha256(data).hexdigest() == m["image_sha256"], m["key"]
        assert m["image_source_bytes"] == len(data)


def test_two_articles_in_one_package_keep_their_own_images(tmp_path: Path):
    # One zip holding two eLife articles, both naming their files fig1.jpg, fig2.jpg: each
    # figure resolves in its own XML's folder first.
    pkg = tmp_path / "src" / "two-elife.zip"
    pkg.parent.mkdir()
    with zipfile.ZipFile(pkg, "w") as z:
        for name in ("elife-30274", "elife-43154"):
            for f in sorted((ARTICLES / name).iterdir()):
                z.write(f, f"{name}/{f.name}")
    s = build(tmp_path / "src", tmp_path / "ds", workers=1, progress=False)
    assert (s.samples, s.exact_duplicates) == (8, 0)
    for m in _metas(tmp_path / "ds"):
        folder = {"doi_10.7554/eLife.30274": "elife-30274",
                  "doi_10.7554/eLife.43154": "elife-43154"}[m["article_id"]]
        assert m["image_file"].startswith(folder + "/")
        data = (ARTICLES / m["image_file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == m["image_sha256"], m["key"]


def test_own_folder_wins_over_an_exact_name_elsewhere():
    # An href naming fig1.tif: the other article's fig1.tif must not beat this article's
    # fig1.jpg (the same image, another rendition) in its own folder.
    files = ["elife-30274/fig1.tif", "elife-43154/fig1.jpg", "elife-43154/main.jats.xml"]
    assert FileIndex(files, "elife-43154").resolve_all("fig1.tif") == ["elife-43154/fig1.jpg"]
    assert FileIndex(files, "elife-30274").resolve_all("fig1.tif") == ["elife-30274/fig1.tif"]
    assert FileIndex(files, "").resolve_all("fig1.tif") == ["elife-30274/fig1.tif"]


def test_plos_info_doi_hrefs_pick_the_large_png_rendition(ccby_build):
    out, _ = ccby_build
    by_key = {m["key"]: m for m in _metas(out)}
    m = by_key["doi_10_1371_journal_pgen_1000100_pgen-1000100-g001"]
    assert m["graphic_href"] == "info:doi/10.1371/journal.pgen.1000100.g001"
    assert m["image_file"] == "pgen.1000100.g001.PNG_L"
    assert m["image_alternatives"] == ["pgen.1000100.g001.tif", "pgen.1000100.g001.PNG_M",
                                       "pgen.1000100.g001.PNG_S"]
    # PNG_L is the TIFF master's full size, lossless: stored byte for byte as PNG.
    assert (m["image_format"], m["image_converted"], m["image_width"], m["image_height"]) == (
        "png", False, 1535, 482)
    plos = [m for m in by_key.values() if m["package"] in ("pgen.1000100", "pone.0056489",
                                                             "pone.0060593")]
    assert len(plos) == 20 and {m["image_file"].rsplit(".", 1)[1] for m in plos} == {"PNG_L"}


def test_fig_without_id_and_figure_supplements(ccby_build):
    out, _ = ccby_build
    metas = _metas(out)
    hoehnea = sorted(m["figure_id"] for m in metas
                     if m["package"] == "2236-8906-hoehnea-49-e1112020")
    assert hoehnea == ["f2", "f3", "figure1"]
    # eLife figure supplements (child figs in an id-less <fig-group>) are figures of their own.
    elife = sorted(m["figure_id"] for m in metas if m["package"] == "elife-52882")
    assert elife == ["fig1", "fig2", "fig2s1", "fig2s2", "fig3", "fig3s1", "fig3s2", "fig4",
                     "fig4s1", "fig5", "fig5s1", "fig5s2"]
    assert len({m["key"] for m in metas}) == len(metas) == 108


def test_a_folder_of_article_folders_is_a_container():
    # ../shared/corpus/ccby holds SOURCES.md, provenance.json and articles/<id>/: fourteen
    # packages, not one (discovery of the source folder uses expand_containers).
    assert is_container(ARTICLES) and is_container(CCBY)
    assert not is_container(ARTICLES / "elife-30274")
    entries = expand_containers(sorted(CCBY.iterdir(), key=lambda p: p.name))
    dirs = [p.name for p in entries if p.is_dir()]
    assert dirs == sorted(EXPECTED)
    pmc = SHARED / "corpus" / "pmc_oa"
    assert not is_container(pmc / "PMC12419688")  # a package folder: XML at its top


def test_packages_read_every_image_the_etl_can_choose():
    assert sorted(IMAGE_EXTS) == sorted(IMAGE_EXT_PREFERENCE)


def _copy(name: str, dest: Path) -> Path:
    shutil.copytree(ARTICLES / name, dest / name)
    return dest / name


def test_url_encoded_file_names(tmp_path: Path):
    # pgen.1000100's TIFF masters under the URL-encoded DOI names some PLOS packages use; the
    # PNG renditions left out, so only the renamed files can match.
    pkg = _copy("pgen.1000100", tmp_path / "src")
    for f in list(pkg.iterdir()):
        if ".PNG_" in f.name:
            f.unlink()
        elif f.suffix == ".tif":
            f.rename(pkg / ("10%2E1371%2Fjournal%2E" + f.name.replace(".", "%2E", 1)))
    assert (pkg / "10%2E1371%2Fjournal%2Epgen%2E1000100.g001.tif").is_file()
    s = build(tmp_path / "src", tmp_path / "ds", workers=1, progress=False)
    assert (s.images, s.samples, s.skips) == (10, 10, {})
    files = sorted(m["image_file"] for m in _metas(tmp_path / "ds"))
    assert files[0] == "10%2E1371%2Fjournal%2Epgen%2E1000100.g001.tif"


def _sha1_name(data: bytes, ext: str) -> str:
    return hashlib.sha1(data).hexdigest() + ext


def test_document_store_urls_with_sha1_names_and_scielo_thumbnails(tmp_path: Path):
    # The real SciELO hoehnea article as the SciELO document store publishes it: each graphic
    # an <alternatives> of the full image and a 267x140 thumbnail, both absolute URLs whose last
    # segment is a SHA-1 file name.
    pkg = _copy("2236-8906-hoehnea-49-e1112020", tmp_path / "src")
    xml_path = pkg / "2236-8906-hoehnea-49-e1112020.xml"
    xml = xml_path.read_text(encoding="utf-8")
    base = "https://minio.scielo.br/documentstore/2236-8906/rQRTPbt6jkrncZTsPdCyXsn/"
    full_names = []
    for jpg in sorted(pkg.glob("*.jpg")):
        data = jpg.read_bytes()
        thumb = io.BytesIO()
        img = Image.open(io.BytesIO(data))
        img.thumbnail((267, 140))
        img.save(thumb, format="JPEG")
        full, small = _sha1_name(data, ".jpg"), _sha1_name(thumb.getvalue(), ".jpg")
        (pkg / full).write_bytes(data)
        (pkg / small).write_bytes(thumb.getvalue())
        jpg.unlink()
        full_names.append(full)
        xml = xml.replace(
            f'<graphic xlink:href="{jpg.name}"/>',
            f'<alternatives><graphic xlink:href="{base}{full}" specific-use="scielo-web"/>'
            f'<graphic xlink:href="{base}{small}" specific-use="scielo-web" '
            f'content-type="scielo-267x140"/></alternatives>')
    assert xml.count("<alternatives>") == 3
    xml_path.write_text(xml, encoding="utf-8")
    s = build(tmp_path / "src", tmp_path / "ds", workers=1, progress=False)
    assert (s.images, s.samples, s.skips) == (3, 3, {})
    metas = _metas(tmp_path / "ds")
    assert sorted(m["image_file"] for m in metas) == sorted(full_names)
    for m in metas:
        assert m["graphic_href"].startswith(base) and m["image_width"] > 267
        (alt,) = m["image_alternatives"]
        assert alt.startswith(base) and alt != m["graphic_href"]


def test_a_thumbnail_beside_its_graphic_is_not_an_image_of_its_own(tmp_path: Path):
    pkg = _copy("2236-8906-hoehnea-49-e1112020", tmp_path / "src")
    xml_path = pkg / "2236-8906-hoehnea-49-e1112020.xml"
    xml = xml_path.read_text(encoding="utf-8")
    name = "2236-8906-hoehnea-49-e1112020-gf2.jpg"
    xml = xml.replace(f'<graphic xlink:href="{name}"/>',
                      f'<graphic xlink:href="{name}"/><graphic xlink:href="{name}" '
                      'specific-use="scielo-web" content-type="scielo-267x140"/>')
    xml_path.write_text(xml, encoding="utf-8")
    (a,) = parse_jats(xml.encode(), source_file=xml_path.name,
                      files=[p.name for p in pkg.iterdir()])
    assert [len(f.graphics) for f in a.figures] == [1, 1, 1]


def test_hrefs_without_extension(tmp_path: Path):
    pkg = _copy("elife-43154", tmp_path / "src")
    xml = (pkg / "main.jats.xml").read_text(encoding="utf-8")
    xml, n = re.subn(r'xlink:href="((?:resp-)?fig\d)\.jpg"', r'xlink:href="\1"', xml)
    assert n == 3
    (pkg / "main.jats.xml").write_text(xml, encoding="utf-8")
    s = build(tmp_path / "src", tmp_path / "ds", workers=1, progress=False)
    assert (s.samples, s.skips) == (3, {})
    assert sorted(m["image_file"] for m in _metas(tmp_path / "ds")) == [
        "fig1.jpg", "fig2.jpg", "resp-fig1.jpg"]


def test_internal_dtd_subset_of_character_entities_is_accepted():
    # Older PLOS/NLM files declare character entities in an internal subset.
    d = ARTICLES / "pgen.1000100"
    xml = (d / "pgen.1000100.xml").read_bytes()
    xml = xml.replace(b'"http://dtd.nlm.nih.gov/publishing/2.0/journalpublishing.dtd">',
                      b'"http://dtd.nlm.nih.gov/publishing/2.0/journalpublishing.dtd" [\n'
                      b'<!ENTITY delta "&#160;">\n<!ENTITY mdash "&#x2014;">\n]>', 1)
    xml = xml.replace(b"<title>Experimental design.</title>",
                      b"<title>Experimental&delta;design&mdash;primates.</title>", 1)
    assert b"<!ENTITY delta" in xml
    (a,) = parse_jats(xml, source_file="pgen.1000100.xml", files=[p.name for p in d.iterdir()])
    fig = a.figures[0]
    assert fig.caption_title == "Experimental design\u2014primates."  # NBSP: whitespace, as always
    assert len(a.figures) == 10 and fig.graphics[0].file == "pgen.1000100.g001.PNG_L"


def test_entities_only_the_external_dtd_defines_are_read():
    # PLOS ONE 2006 (NLM 2.0) writes &iacute;, &hairsp;, &equals;, &percnt; ... and never
    # declares them: their characters come from the W3C entity table, not from the void.
    d = ARTICLES / "pone.0000010"
    (a,) = parse_jats((d / "pone.0000010.xml").read_bytes(), source_file="pone.0000010.xml",
                      files=[p.name for p in d.iterdir()])
    assert a.figures[0].caption.startswith(
        "Distribution of GAS pharyngitis according to age in Brussels and Bras\u00edlia. "
        "Percentage of positive GAS throat culture")
    assert "p = 0,003 for the comparison" in a.figures[0].caption  # &hairsp;=&hairsp;
    assert "(26%) than in Brussels (20%)" not in a.figures[0].caption  # body text, not caption
    assert "Group A Streptococcus (GAS)" in (a.abstract or "")
