"""``import-pairs``: the 185 real pairs and a pairs file with every kind of bad row, built
exactly as ``build`` builds (image policy, skip reasons, licence categories, verify)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from curate_datasets import PAIRS, pairs_dataset
from PIL import Image

from biomedica_kit.cli.curate import register
from biomedica_kit.dataset.verify import verify
from biomedica_kit.etl.build import NothingToBuild
from biomedica_kit.etl.pairs import import_pairs
from biomedica_kit.ingest.pairs import PairsError, read_pairs


def _cli() -> click.Group:
    group = click.Group()
    register(group)
    return group


def test_the_real_pairs_become_a_verified_dataset(tmp_path_factory):
    ds = pairs_dataset(tmp_path_factory)
    build = json.loads((ds / "report" / "build.json").read_text())
    assert build["samples"] == 185 and build["images"] == 185 and build["reconciles"]
    # Licences as the pairs give them: CC BY (PMC packages), MedICaT's unpaywall NC licences,
    # and no licence at all (PFOCR) -> other.
    assert build["samples_by_subset"] == {"commercial": 2, "noncommercial": 6, "other": 177}
    assert verify(ds).ok
    rows = {r["key"]: r for r in pq.read_table(ds / "metadata" / "figures.parquet").to_pylist()}
    src = [json.loads(line) for line in PAIRS.read_text().splitlines()]
    by_image = {r["image_file"]: r for r in rows.values()}
    for pair in src:
        row = by_image[pair["image"]]
        assert row["caption"] == pair["caption"].strip()
        assert row["pmcid"] == pair["pmcid"] and row["source_dataset"] == pair["source_dataset"]
        assert row["modality_hint"] == pair["modality_hint"]  # other fields kept


def _jpeg(src: Path, size: tuple[int, int] | None = None) -> bytes:
    with Image.open(src) as im:
        im = im.convert("RGB")
        if size:
            im = im.resize(size)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        return buf.getvalue()


def test_bad_rows_become_skips_with_reasons(tmp_path):
    images = sorted((PAIRS.parent / "images").glob("pfocr_*.jpg"))
    folder = tmp_path / "src"
    (folder / "img").mkdir(parents=True)
    shutil.copy(images[0], folder / "img" / "good.jpg")
    shutil.copy(images[1], folder / "img" / "good2.jpg")
    (folder / "img" / "tiny.jpg").write_bytes(_jpeg(images[2], (16, 16)))
    (folder / "img" / "truncated.jpg").write_bytes(images[3].read_bytes()[:1500])
    (folder / "img" / "empty.jpg").write_bytes(b"")
    rows = [
        {"image": "img/good.jpg", "caption": "A signalling pathway.", "pmcid": "PMC1",
         "license": "CC BY 4.0", "year": 2020, "journal": "J One", "caption_title": "x",
         "modality": "pathway"},
        {"image": "img/good2.jpg", "caption": "Second figure.", "pmcid": "PMC1"},
        {"image": "img/tiny.jpg", "caption": "Tiny.", "doi": "10.1/tiny",
         "license": "cc-by-nc"},
        {"image": "img/truncated.jpg", "caption": "Truncated.", "doi": "10.1/trunc"},
        {"image": "img/empty.jpg", "caption": "Empty file."},
        {"image": "img/missing.jpg", "caption": "No such file."},
        {"image": "img/good.jpg", "caption": "   ", "paper_title": "No caption"},
    ]
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ds"
    s = import_pairs(pairs, out, workers=1, progress=False)
    assert s.samples == 2 and s.images == 7 and s.reconciles
    skips = {r["reason"] for r in pq.read_table(out / "report" / "skips.parquet").to_pylist()}
    assert skips == {"too_small", "decode_error", "empty_image", "image_missing", "no_caption"}
    assert s.samples_by_subset == {"commercial": 2, "noncommercial": 0, "other": 0}
    assert verify(out).ok
    from biomedica_kit.tables.export import export

    export(out, workers=1)
    fig = {r["caption"]: r for r in pq.read_table(out / "metadata" / "figures.parquet")
           .to_pylist()}
    good = fig["A signalling pathway."]
    assert (good["pmcid"], good["year"], good["journal"], good["license_code"]) == (
        "PMC1", 2020, "J One", "cc-by")
    assert good["modality"] == "pathway" and good["pair_caption_title"] == "x"
    again = import_pairs(pairs, out, workers=1, progress=False)
    assert again.new_packages == 0 and again.samples == 2


def test_malformed_and_empty_pairs_files_are_refused(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.jpg", "caption": "ok"}\n{"caption": "no image"}\n')
    with pytest.raises(PairsError, match=r"bad.jsonl:2"):
        read_pairs(bad)
    bad.write_text('{"image": "a.jpg", "caption": "x", "pmcid": "12345"}\n')
    with pytest.raises(PairsError, match="PMC<digits>"):
        read_pairs(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(NothingToBuild):
        import_pairs(empty, tmp_path / "ds")
    res = CliRunner().invoke(_cli(), ["import-pairs", str(empty), "--out",
                                      str(tmp_path / "ds2")])
    assert res.exit_code == 1 and "holds no image-caption pairs" in res.output
    only_missing = tmp_path / "missing.jsonl"
    only_missing.write_text('{"image": "nowhere.jpg", "caption": "gone"}\n')
    res = CliRunner().invoke(_cli(), ["import-pairs", str(only_missing), "--out",
                                      str(tmp_path / "ds3"), "--no-progress"])
    assert res.exit_code == 1 and "no sample was written" in res.output
