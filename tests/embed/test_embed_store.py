"""Embeddings of the real figure-caption pairs: the store, real features, resume after a real
kill, incremental runs, and the model back-ends' loading code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from curate_datasets import PAIRS, STORE, embedded_dataset

from biomedica_kit.embed.store import EmbeddingStore


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    return embedded_dataset(tmp_path_factory)


def _figures(ds: Path) -> list[dict]:
    return pq.read_table(ds / "metadata" / "figures.parquet",
                         columns=["key", "article_id", "modality_hint"]).to_pylist()


def test_store_holds_float16_vectors_aligned_to_every_key(embedded):
    store = EmbeddingStore(embedded, STORE)
    figures = _figures(embedded)
    assert store.keys() == {r["key"] for r in figures}
    info = json.loads((store.path / "info.json").read_text())
    manifest = json.loads((embedded / "manifest.json").read_text())
    assert info["dataset_version"] == manifest["dataset_version"]
    assert info["image_dims"] == 1280 and info["text_dims"] == 384
    assert info["image_model_version"].startswith("torchvision/mobilenet_v2@b0353104")
    assert info["text_model_version"].startswith("sentence-transformers/all-MiniLM-L6-v2")
    part = store.parts()[0]
    assert np.load(part.vectors_path("image"), mmap_mode="r").dtype == np.float16
    keys, vecs = store.load("image")
    assert vecs.shape == (185, 1280)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=2e-3)
    # The DuckDB view: key -> model, dims.
    from biomedica_kit.tables.connect import connect

    row = connect(embedded).execute(
        "SELECT model, count(*), min(image_dims), min(text_dims) FROM embeddings "
        "GROUP BY model").fetchall()
    assert row == [(STORE, 185, 1280, 384)]


def test_real_image_features_find_figures_of_the_same_article(embedded):
    """Measured on these figures: the nearest neighbour of a figure whose article has other
    figures here is one of them ~57% of the time (chance: ~1%)."""
    figures = {r["key"]: r for r in _figures(embedded)}
    keys, vecs = EmbeddingStore(embedded, STORE).load("image")
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    nn = sims.argmax(axis=1)
    art = [figures[k]["article_id"] for k in keys]
    multi = [i for i, a in enumerate(art) if art.count(a) > 1]
    rate = np.mean([art[i] == art[nn[i]] for i in multi])
    chance = np.mean([(art.count(art[i]) - 1) / (len(art) - 1) for i in multi])
    assert len(multi) >= 40
    assert rate >= 0.45 and rate > 10 * chance, (rate, chance)


def test_medical_images_sit_apart_from_pathway_figures(embedded):
    """Each MedICaT medical image (radiology or not) has another medical image as nearest
    neighbour, among 171 PFOCR pathway figures: real features separate the two."""
    figures = {r["key"]: r for r in _figures(embedded)}
    keys, vecs = EmbeddingStore(embedded, STORE).load("image")
    medical = [i for i, k in enumerate(keys) if "Medical images" in (
        figures[k]["modality_hint"] or "")]
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    assert len(medical) == 7
    assert all(int(sims[i].argmax()) in medical for i in medical)


def test_second_run_embeds_nothing_new(embedded):
    from biomedica_kit.embed.run import embed

    s = embed(embedded, workers=0, progress=False)
    assert (s.embedded, s.already, s.total) == (0, 185, 185)


def _subset_pairs(dest: Path, n: int) -> Path:
    """The first ``n`` real pairs in a new file whose image paths lead back to the corpus."""
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()[:n]]
    for r in rows:
        r["image"] = os.path.relpath(PAIRS.parent / r["image"], dest)
    out = dest / "pairs.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_resume_after_kill_embeds_only_what_is_missing(tmp_path):
    from biomedica_kit.embed.run import embed
    from biomedica_kit.etl.pairs import import_pairs

    ds = tmp_path / "ds"
    import_pairs(_subset_pairs(tmp_path, 40), ds, workers=1, progress=False)
    # Images only (the decoding workers and the model; captions resume the same way).
    script = textwrap.dedent(f"""
        from biomedica_kit.embed.run import embed
        embed({str(ds)!r}, text_model="none", batch_size=4, part_size=8, workers=1,
              progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ,
                            "HF_HUB_OFFLINE": "1"}, stderr=subprocess.DEVNULL)
    store_dir = ds / "embeddings" / "mobilenet_v2"
    deadline = time.monotonic() + 300
    try:
        while len(list(store_dir.glob("part-*.parquet"))) < 2:
            assert proc.poll() is None, "the embed run ended before it could be killed"
            assert time.monotonic() < deadline, "no part committed in time"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = EmbeddingStore(ds, "mobilenet_v2").keys()
    assert 16 <= len(before) < 40  # two or more parts of 8, not all five

    s = embed(ds, text_model="none", batch_size=4, part_size=8, workers=1, progress=False)
    assert (s.already, s.embedded) == (len(before), 40 - len(before))
    store = EmbeddingStore(ds, "mobilenet_v2")
    keys, vecs = store.load("image")
    assert sorted(keys) == sorted(r["key"] for r in _figures(ds)) and len(keys) == 40
    assert not [p for p in store.path.iterdir() if p.name.startswith(".tmp-")]
    # The resumed vectors are those a single uninterrupted run computes.
    embed(ds, text_model="none", name="uninterrupted", batch_size=4, part_size=64, workers=0,
          progress=False)
    _, full = EmbeddingStore(ds, "uninterrupted").load("image", keys)
    np.testing.assert_allclose(vecs, full, atol=3e-3)
    # A new dataset version (more pairs imported): only its new keys are embedded.
    grown = import_pairs(_subset_pairs(tmp_path, 48), ds, workers=1, progress=False)
    assert grown.samples > 40
    s = embed(ds, text_model="none", batch_size=4, part_size=8, workers=1, progress=False)
    assert (s.already, s.embedded, s.total) == (40, grown.samples - 40, grown.samples)
    info = json.loads((store.path / "info.json").read_text())
    assert info["dataset_version"] == grown.dataset_version
    assert [h["embedded"] for h in info["history"]] == [40 - len(before), grown.samples - 40]


def test_open_clip_from_a_local_snapshot(tmp_path):
    """``local-dir:`` loading code on a small open_clip model written the way hub snapshots
    are (``open_clip_config.json`` + weights): vectors equal the model's own, both towers."""
    import open_clip
    import torch

    from biomedica_kit.embed.encoders import load_encoder

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64,
                                           "patch_size": 16, "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                        "layers": 2}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg).eval()
    torch.save(model.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    enc = load_encoder(f"local-dir:{tmp_path}")
    assert enc.joint and enc.image_dims == enc.text_dims == 32
    assert enc.image_spec is not None and enc.image_spec.size == 64
    pixels = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_images(pixels), ref, atol=1e-5)
    assert enc.encode_texts(["a western blot", "a chest CT"]).shape == (2, 32)
    assert "@" in enc.model_version  # the weights' digest


def test_hub_names_fail_fast_offline(monkeypatch):
    from biomedica_kit.embed.encoders import ModelUnavailable, load_encoder

    name = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE"):
        load_encoder(name)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # loopback, nothing listens
    with pytest.raises(ModelUnavailable, match="unreachable"):
        load_encoder(name)
    with pytest.raises(ModelUnavailable, match="unreachable"):
        load_encoder("sentence-transformers:someone/not-cached-model")
    assert time.monotonic() - t0 < 10


def test_torchvision_without_weights_says_how_to_get_them():
    from biomedica_kit.embed.encoders import ModelUnavailable, load_encoder

    with pytest.raises(ModelUnavailable, match="--pretrained"):
        load_encoder("torchvision:resnet18")
