"""End-to-end builds on real corpus packages: shards, manifest, report, verify, round trip."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from click.testing import CliRunner
from corpus_paths import SAMPLE
from PIL import Image

from biomedica_kit.cli.main import main
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify
from biomedica_kit.etl.build import BuildConfig, build
from biomedica_kit.ingest.sources import write_file_list


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, corpus) -> Path:
    """An NCBI-layout folder: oa_package/xx/yy/<id>.tar.gz plus an oa_file_list.csv.

    Overrides conftest's ``mirror`` here: four packages, with file-list licences that differ
    from the XML's."""
    root = tmp_path_factory.mktemp("mirror")
    rows = []
    for name, pmcid, pmid, lic in [
        ("PMC12419688", "PMC12419688", "40795775", "CC BY"),
        # The file list's License column wins over the XML's CC BY.
        ("PMC7417471", "PMC7417471", "32776254", "CC BY-NC"),
        ("elife-19405", "", "", "CC BY"),
        ("elife-32671", "", "", "NO-CC CODE"),
    ]:
        rel = f"oa_package/{hashlib.md5(name.encode()).hexdigest()[:2]}/ab/{name}.tar.gz"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / f"{name}.tar.gz", root / rel)
        rows.append({"File": rel, "Article Citation": "", "Accession ID": pmcid,
                     "Last Updated (YYYY-MM-DD HH:MM:SS)": "2025-01-01 00:00:00",
                     "PMID": pmid, "License": lic})
    write_file_list(rows, root / "oa_file_list.csv")
    return root


@pytest.fixture(scope="module")
def built(mirror, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "ds"
    summary = build(mirror, out, workers=2, progress=False,
                    config=BuildConfig(shard_max_samples=3))
    return out, summary


def test_counts_reconcile_and_verify(built):
    out, s = built
    assert s.reconciles
    assert s.articles == {"ok": 4}
    # PMC12419688: 1 fig; PMC7417471: 6 figs, no images; elife-19405: 1; elife-32671: 5.
    assert (s.figures, s.images, s.samples) == (13, 13, 7)
    assert s.skips == {"image_missing": 6}
    assert s.samples_by_subset == {"commercial": 2, "noncommercial": 0, "other": 5}
    res = verify(out)
    assert res.ok, res.errors
    assert (res.samples, res.shards) == (7, 3)  # other/ holds 5 samples in shards of <= 3


def test_manifest_lists_every_shard(built):
    out, _ = built
    m = read_manifest(out)
    assert m["counts"]["samples"] == 7
    for s in m["shards"]:
        p = out / s["path"]
        assert p.stat().st_size == s["bytes"]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == s["sha256"]
    assert (out / "versions" / f"{m['dataset_version']}.json").is_file()
    assert {s["path"] for s in m["shards"]} == {
        "shards/commercial/commercial-000000.tar", "shards/other/other-000000.tar",
        "shards/other/other-000001.tar"}


def test_report_tables(built):
    out, _ = built
    arts = {r["id"]: r for r in pq.read_table(out / "report" / "articles.parquet").to_pylist()}
    assert arts["PMC7417471"]["license_category"] == "noncommercial"  # file list wins
    assert arts["PMC7417471"]["license_source"] == "file_list"
    assert arts["PMC7417471"]["n_samples"] == 0 and arts["PMC7417471"]["n_figures"] == 6
    # elife-32671 has no ids in its XML: the package name is its stable id.
    assert arts["elife-32671"]["license_category"] == "other"
    assert arts["doi_10.7554/eLife.19405"]["n_samples"] == 1
    skips = pq.read_table(out / "report" / "skips.parquet").to_pylist()
    assert {s["article_id"] for s in skips} == {"PMC7417471"}
    assert {s["reason"] for s in skips} == {"image_missing"}


def test_sample_members_and_json(built):
    out, _ = built
    samples = dict(iter_samples(out / "shards/commercial/commercial-000000.tar"))
    s = samples["PMC12419688_koaf197-F1"]
    assert set(s) == {"jpg", "txt", "json"}
    meta = json.loads(s["json"])
    assert s["txt"].decode() == meta["caption"]
    assert s["txt"].decode().startswith("Transcriptional regulation of PSRs by SlPHR3")
    # The JPEG is stored byte for byte from the package (no re-encoding).
    with tarfile.open(Path(__file__).resolve().parents[2] / "shared/corpus/pmc_oa/"
                      "PMC12419688.tar.gz") as t:
        original = t.extractfile("PMC12419688/koaf197f1.jpg").read()
    assert s["jpg"] == original
    assert meta["image_sha256"] == hashlib.sha256(original).hexdigest()
    assert (meta["pmcid"], meta["pmid"], meta["year"]) == ("PMC12419688", "40795775", 2025)
    assert meta["n_inline_refs"] == 1
    assert meta["image_source_format"] == "JPEG" and not meta["image_converted"]
    w, h = Image.open(io.BytesIO(s["jpg"])).size
    assert [meta["image_width"], meta["image_height"]] == [w, h] == meta["image_size"]
    assert len(meta["image_phash"]) == 16
    # BIOMEDICA's published keys, for loaders written against its shards.
    assert meta["article_accession_id"] == "PMC12419688"
    assert meta["image_file_name"] == "koaf197f1.jpg"
    assert meta["article_license"] == "CC BY"
    assert meta["image_context"] == {"koaf197f1.jpg": [meta["inline_refs"][0]["paragraph"]]}
    assert meta["article_date"] == "1754697600"  # 2025-08-09 UTC


def test_tiff_converted_to_jpeg(built):
    out, _ = built
    samples = dict(iter_samples(out / "shards/commercial/commercial-000000.tar"))
    s = samples["doi_10_7554_eLife_19405_fig1"]
    meta = json.loads(s["json"])
    assert set(s) == {"jpg", "txt", "json"}
    assert meta["image_source_format"] == "TIFF" and meta["image_converted"]
    assert Image.open(io.BytesIO(s["jpg"])).format == "JPEG"


def test_webdataset_reads_our_shards(built):
    out, _ = built
    urls = sorted(str(p) for p in (out / "shards").rglob("*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg;png",
                                                                           "txt", "json")
    rows = list(ds)
    assert len(rows) == 7
    for key, img, txt, meta in rows:
        assert meta["key"] == key and meta["caption"] == txt
        assert img.size == (meta["image_width"], meta["image_height"])


def test_build_is_deterministic(mirror, built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    build(mirror, again, workers=1, progress=False, config=BuildConfig(shard_max_samples=3))
    assert read_manifest(again)["dataset_version"] == read_manifest(out)["dataset_version"]


def test_refuses_to_overwrite(built, mirror):
    out, _ = built
    with pytest.raises(FileExistsError):
        build(mirror, out, progress=False)


def test_exact_duplicates_flagged_not_dropped(corpus, tmp_path):
    # The same real package under two names: two articles (no PMCID in the XML, so the package
    # name is the id) whose five images are byte-identical.
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(corpus / "elife-32671.tar.gz", src / "elife-32671.tar.gz")
    shutil.copytree(corpus / "elife-32671", src / "elife-32671-copy")
    s = build(src, tmp_path / "ds", workers=1, progress=False)
    assert s.samples == 10 and s.exact_duplicates == 5
    metas = [json.loads(g["json"]) for p in sorted((tmp_path / "ds/shards").rglob("*.tar"))
             for _, g in iter_samples(p)]
    dup = {m["key"]: m["duplicate_of"] for m in metas}
    assert dup["elife-32671-copy_fig1"] == "elife-32671_fig1"
    assert dup["elife-32671_fig1"] is None


def test_folder_and_archive_of_same_package(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(corpus / "PMC12419688.tar.gz", src)
    shutil.copytree(corpus / "PMC12419688", src / "PMC12419688")
    s = build(src, tmp_path / "ds", workers=1, progress=False)
    assert s.articles == {"ok": 1, "skipped": 1} and s.samples == 1
    rows = pq.read_table(tmp_path / "ds/report/articles.parquet").to_pylist()
    assert {r["reason"] for r in rows} == {None, "duplicate_package"}


def test_cli_build_and_verify_on_bundled_sample(tmp_path):
    out = tmp_path / "demo"
    runner = CliRunner()
    res = runner.invoke(main, ["build", "--source", str(SAMPLE), "--out", str(out), "--quiet",
                               "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "reconciles: 155 images = 97 samples + 58 skips -> yes" in res.output
    res = runner.invoke(main, ["verify", str(out)])
    assert res.exit_code == 0 and res.output.startswith("OK: 1 shards, 97 samples")
    # Tamper with a shard: verify must now fail.
    shard = next((out / "shards").rglob("*.tar"))
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    res = runner.invoke(main, ["verify", str(out)])
    assert res.exit_code == 1 and "sha256 mismatch" in res.output
