"""Sample keys are unique by construction, WebDataset-safe, and unchanged for ordinary ids.

The collisions of issue 9 are rebuilt from real corpus packages: a figure ``F1`` with two graphics
beside a figure ``F1-1``, and two articles whose DOIs (``10.5555/a.b``, ``10.5555/a_b``)
sanitise alike; each build must write distinct keys that ``verify`` accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
from corpus_paths import make_tar

from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify
from biomedica_kit.etl.article import Figure, Graphic
from biomedica_kit.etl.build import build
from biomedica_kit.etl.schema import sample_key, sample_keys

SAFE = re.compile(r"[A-Za-z0-9_-]+")


def _keys(out: Path) -> list[str]:
    return [k for p in sorted((out / "shards").rglob("*.tar")) for k, _ in iter_samples(p)]


def test_ordinary_keys_are_unchanged():
    # Keys of the bundled sample and of the corpus builds before this change.
    assert sample_key("PMC12419688", "koaf197-F1", 0, 1) == "PMC12419688_koaf197-F1"
    assert sample_key("PMC12431436", "pone.0332245.g001", 0, 1) == "PMC12431436_pone_0332245_g001"
    assert sample_key("doi_10.7554/eLife.19405", "fig1", 0, 1) == "doi_10_7554_eLife_19405_fig1"
    assert sample_key("doi_10.1101/2024.01.24.24301711", "fig1", 0, 1) == (
        "doi_10_1101_2024_01_24_24301711_fig1")
    assert sample_key("manuscript", "fig1", 0, 1) == "manuscript_fig1"
    assert sample_key("elife-32671-copy", "fig1", 0, 1) == "elife-32671-copy_fig1"
    assert sample_key("PMC1", "F2", 1, 3) == "PMC1_F2-2"


def test_keys_are_unique_over_tricky_ids():
    # Every article id against every other (sample_key's article part), and inside each
    # article every figure id, single and with two graphics (sample_keys resolves those).
    articles = ["PMC1", "PMC12", "PMC1.y", "PMC1_y", "doi_10.5555/a.b", "doi_10.5555/a_b",
                "doi_10.5555/a/b", "doi_10.5555/a", "doi_10.5555.a/b", "doi_abc", "a.b", "a_b",
                "a-b", "a", "x.PMC1", "doi.10.5555.a.b", "", "é"]
    figure_ids = ["F1", "F1-1", "F1-2", "b.c", "b_c", "c", "a.b_c", "x__y", "", "fig 1", "F1"]
    figures = [Figure(f, None, "caption", None, "figure", [Graphic("h", "f")] * n, [])
               for f in figure_ids for n in (1, 2)]
    seen: dict[str, str] = {}
    for a in articles:
        for k in (k for row in sample_keys(a, figures) for k in row):
            assert SAFE.fullmatch(k), k  # no dots: WebDataset splits keys at the first dot
            assert k not in seen, (k, seen.get(k), a)
            seen[k] = a
    assert len(seen) == len(articles) * len(figure_ids) * 3


def test_keys_within_an_article_never_repeat():
    def fig(fid: str, n: int) -> Figure:
        return Figure(fid, None, "caption", None, "figure", [Graphic("h", "f")] * n, [])

    figs = [fig("F1", 2), fig("F1-1", 1), fig("F2", 1), fig("F2", 1), fig("F3", 1)]
    keys = sample_keys("PMC9", figs)
    flat = [k for row in keys for k in row]
    assert len(set(flat)) == len(flat) == 6
    assert keys[0][1] == "PMC9_F1-2" and keys[4] == ["PMC9_F3"]  # no collision: unchanged
    assert keys[0][0] != keys[1][0] and keys[2] != keys[3]
    assert sample_keys("PMC9", figs) == keys  # deterministic


def test_figure_with_two_graphics_beside_figure_f1_1(corpus, tmp_path: Path):
    # The real PMC12419688 figure koaf197-F1, given a second graphic, plus a copy of it as
    # figure koaf197-F1-1: today's keys would both be PMC12419688_koaf197-F1-1.
    d = corpus / "PMC12419688"
    xml = (d / "koaf197.nxml").read_text(encoding="utf-8")
    fig = re.search(r'<fig position="float" id="koaf197-F1".*?</fig>', xml, re.S).group(0)
    two = fig.replace('<graphic xlink:href="koaf197f1" position="float"/>',
                      '<graphic xlink:href="koaf197f1" position="float"/>'
                      '<graphic xlink:href="koaf197f1.gif" position="float"/>')
    other = fig.replace('id="koaf197-F1"', 'id="koaf197-F1-1"')
    xml = xml.replace(fig, two + other)
    src = tmp_path / "src"
    src.mkdir()
    make_tar(src / "PMC12419688.tar.gz", "PMC12419688",
             {"koaf197.nxml": xml.encode(), "koaf197f1.jpg": (d / "koaf197f1.jpg").read_bytes(),
              "koaf197f1.gif": (d / "koaf197f1.gif").read_bytes()})
    out = tmp_path / "ds"
    s = build(src, out, workers=1, progress=False)
    keys = _keys(out)
    assert s.samples == 3 and len(set(keys)) == 3, keys
    assert "PMC12419688_koaf197-F1-2" in keys  # the graphic that collides with nothing
    res = verify(out)
    assert res.ok and res.samples == 3, res.errors
    images = {json.loads(g["json"])["figure_id"] for p in (out / "shards").rglob("*.tar")
              for _, g in iter_samples(p)}
    assert images == {"koaf197-F1", "koaf197-F1-1"}


def test_dois_that_sanitise_alike(corpus, tmp_path: Path):
    # The real elife-19405 package twice, its DOI rewritten: no PMCID, so the DOI is the id.
    d = corpus / "elife-19405"
    xml = (d / "elife-19405.xml").read_bytes()
    src = tmp_path / "src"
    src.mkdir()
    for name, doi in (("a-dot", b"10.5555/a.b"), ("a-underscore", b"10.5555/a_b")):
        make_tar(src / f"{name}.tar.gz", name, {
            "elife-19405.xml": xml.replace(b"10.7554/eLife.19405", doi),
            "elife-19405-fig1.tif": (d / "elife-19405-fig1.tif").read_bytes()})
    out = tmp_path / "ds"
    s = build(src, out, workers=1, progress=False)
    keys = _keys(out)
    assert s.samples == 2 and len(set(keys)) == 2, keys
    assert "doi_10_5555_a_b_fig1" in keys  # the DOI its key reads back to keeps the plain form
    assert verify(out).ok
    arts = pq.read_table(out / "report/articles.parquet").to_pylist()
    assert sorted(a["id"] for a in arts) == ["doi_10.5555/a.b", "doi_10.5555/a_b"]
