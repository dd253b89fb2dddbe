"""A source folder whose articles sit one level down (``ccby/articles/<article>/``) is read as
one package per article, not as one package holding every article."""

from __future__ import annotations

from pathlib import Path

from corpus_paths import SHARED

from biomedica_kit.dataset.verify import verify
from biomedica_kit.etl.build import build
from biomedica_kit.ingest.sources import discover_local

CCBY = SHARED / "corpus" / "ccby"


def test_each_article_of_a_container_folder_is_its_own_package():
    refs = list(discover_local(CCBY))
    assert len(refs) == 14  # corpus/ccby/SOURCES.md lists 14 articles
    assert len({r.id for r in refs}) == 14


def test_the_ccby_corpus_builds_every_figure_with_a_file(tmp_path: Path):
    s = build(CCBY, tmp_path / "ds", workers=1, progress=False)
    assert (s.packages, s.new_packages) == (14, 14)
    assert (s.images, s.samples, s.skips) == (110, 108, {"no_caption": 2})
    assert s.samples_by_subset["commercial"] == 108  # CC BY / CC0 throughout
    assert verify(tmp_path / "ds").ok
