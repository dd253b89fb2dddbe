"""Shared fixtures: the real corpus beside the checkout (../shared) and datasets built from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus_paths import CORPUS, SAMPLE


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The real PMC OA corpus; its absence is an error, not a skip."""
    assert CORPUS.is_dir(), f"real corpus missing at {CORPUS} (../shared must sit beside the repo)"
    return CORPUS


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """A dataset built once per session from the bundled sample (data/sample/packages)."""
    from biomedica_kit.etl.build import build

    out = tmp_path_factory.mktemp("sample") / "ds"
    build(SAMPLE, out, workers=1, progress=False)
    return out


#: The bundled sample's packages before the CC BY articles with figures were added (issue 9):
#: the analysis dataset keeps them, so its counts do not move with the demo sample.
SAMPLE_BEFORE_CCBY = ("95901-v1-meca.zip", "PMC12419688.tar.gz", "PMC12431436", "PMC13239990",
                      "PMC3166277", "PMC6849754", "PMC7417471.tar.gz", "elife-19405.tar.gz",
                      "elife-94334")

#: Real corpus articles added to the sample for the analysis dataset: elife-32671 brings five
#: figure images without a licence (the "other" category); the XML-only articles add articles
#: of other journals, years and licences (CC BY-NC, public domain) that have no samples.
ANALYSIS_EXTRA = ("elife-32671.tar.gz", "PMC3574550", "PMC2599765", "PMC3460867")


@pytest.fixture(scope="session")
def analysis_dataset(tmp_path_factory, corpus) -> Path:
    """Sample + a few real corpus articles, built and exported once per session (notebooks,
    reports): 13 samples in two licence categories, from four articles."""
    import shutil

    from biomedica_kit.etl.build import build
    from biomedica_kit.tables.export import export

    src = tmp_path_factory.mktemp("analysis-src")
    for p in [*(SAMPLE / name for name in SAMPLE_BEFORE_CCBY),
              *(corpus / name for name in ANALYSIS_EXTRA)]:
        (shutil.copytree if p.is_dir() else shutil.copy)(p, src / p.name)
    out = tmp_path_factory.mktemp("analysis") / "ds"
    build(src, out, workers=1, progress=False)
    export(out, workers=1)
    return out


@pytest.fixture(scope="session")
def mirror(tmp_path_factory, corpus) -> Path:
    """An NCBI-layout mirror (oa_file_list.csv + oa_package/xx/yy/*.tar.gz) of real corpus
    packages, shared read-only by the source, HTTP and resume tests (copy it to change it)."""
    from mirror_server import build_mirror

    root = tmp_path_factory.mktemp("mirror")
    build_mirror(corpus, root)
    return root


@pytest.fixture(scope="session")
def corpus_dataset(corpus, tmp_path_factory) -> Path:
    """The real corpus built once, in shards of 2 samples (7 samples: commercial and other).

    Shared by several modules: a test may export its metadata (idempotent) or read it, but
    must not change its shards (build a dataset of its own for that)."""
    from biomedica_kit.etl.build import BuildConfig, build

    out = tmp_path_factory.mktemp("corpus") / "ds"
    build(corpus, out, workers=1, progress=False, config=BuildConfig(shard_max_samples=2))
    return out


pytest_plugins = ["pubmed_corpus"]
