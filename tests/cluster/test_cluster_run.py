"""Clustering the real pairs' embeddings: determinism, the run's files, real separation of
medical images from pathway figures, streaming, near-duplicate groups."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from curate_datasets import PCA, STORE, K, clustered_dataset, copy_of, embedded_dataset

from biomedica_kit.cluster import kmeans
from biomedica_kit.cluster.run import ClusterConfig, cluster, latest_run
from biomedica_kit.embed.store import EmbeddingStore


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> tuple[Path, str]:
    return clustered_dataset(tmp_path_factory)


def _assign(ds: Path, run: str) -> dict[str, tuple[int, float]]:
    t = pq.read_table(ds / "clusters" / run / "assignments.parquet").to_pylist()
    return {r["key"]: (r["cluster"], r["distance"]) for r in t}


@pytest.mark.parametrize("backend", ["faiss", "minibatch"])
def test_same_seed_same_clusters(clustered, backend, tmp_path):
    ds = copy_of(clustered[0], tmp_path)  # new runs: the shared dataset stays as it is
    cfg = ClusterConfig(k=K, pca=PCA, seed=7, backend=backend, map_method="pca")
    a = cluster(ds, cfg, run=f"{backend}-a", montages=False)
    b = cluster(ds, cfg, run=f"{backend}-b", montages=False)
    ta, tb = _assign(ds, a.run), _assign(ds, b.run)
    assert ta.keys() == tb.keys() and len(ta) == 185
    assert all(ta[k][0] == tb[k][0] and abs(ta[k][1] - tb[k][1]) < 1e-6 for k in ta)
    assert len({c for c, _ in ta.values()}) == K
    for name in ("exemplars", "clusters", "map", "near_dups"):
        assert pq.read_table(ds / "clusters" / a.run / f"{name}.parquet").equals(
            pq.read_table(ds / "clusters" / b.run / f"{name}.parquet")), name


def test_run_files(clustered):
    from PIL import Image

    ds, run = clustered
    out = ds / "clusters" / run
    config = json.loads((out / "config.json").read_text())
    manifest = json.loads((ds / "manifest.json").read_text())
    assert config["dataset_version"] == manifest["dataset_version"]
    assert config["embeddings"] == STORE and config["k"] == K and config["n"] == 185
    assign = pq.read_table(out / "assignments.parquet")
    assert assign.schema.metadata[b"biomedica_kit.dataset_version"] == \
        manifest["dataset_version"].encode()
    stats = pq.read_table(out / "clusters.parquet").to_pylist()
    assert sum(s["size"] for s in stats) == 185 and len(stats) == K
    licences = {k: 0 for k in ("commercial", "noncommercial", "other")}
    for s in stats:
        for cat, n in json.loads(s["licenses"]).items():
            licences[cat] += n
        assert s["top_terms"] and all(isinstance(t, str) for t in s["top_terms"])
        with Image.open(out / s["montage"]) as im:
            assert im.format == "JPEG" and im.width >= 128
    assert licences == {"commercial": 2, "noncommercial": 6, "other": 177}
    ex = pq.read_table(out / "exemplars.parquet").to_pylist()
    members = _assign(ds, run)
    assert {e["kind"] for e in ex} == {"centroid", "boundary", "random"}
    assert all(members[e["key"]][0] == e["cluster"] for e in ex)
    # Centroid exemplars are the members nearest their centroid, in rank order.
    for c in range(K):
        near = [e for e in ex if e["cluster"] == c and e["kind"] == "centroid"]
        dists = sorted(d for k, (cc, d) in members.items() if cc == c)
        assert [round(e["distance"], 5) for e in near] == [round(d, 5) for d in
                                                           dists[:len(near)]]
    xy = pq.read_table(out / "map.parquet")
    assert xy.num_rows == 185 and set(xy.column("method").to_pylist()) == {"pca"}
    assert latest_run(ds) is not None


def test_medical_images_get_a_cluster_without_pathway_figures(clustered):
    ds, run = clustered
    hints = {r["key"]: r["modality_hint"] or "" for r in pq.read_table(
        ds / "metadata" / "figures.parquet", columns=["key", "modality_hint"]).to_pylist()}
    members = _assign(ds, run)
    medical = {c for k, (c, _) in members.items() if "Medical images" in hints[k]}
    inside = [hints[k] for k, (c, _) in members.items() if c in medical]
    assert sum("Medical images" in h for h in inside) == 7
    assert not [h for h in inside if "pathway" in h], inside


def test_vectors_stream_in_chunks(tmp_path_factory):
    """Fitting and assignment see chunks of at most ``chunk`` rows, never the whole store."""
    ds = embedded_dataset(tmp_path_factory)
    store = EmbeddingStore(ds, STORE)
    seen = []

    def source():
        for keys, x in store.iter_vectors("image", chunk=16):
            seen.append(len(x))
            yield keys, x

    model = kmeans.fit(source, 4, dims=8, seed=0, backend="minibatch")
    assert sum(len(k) for k, *_ in kmeans.assign(source, model)) == 185
    assert max(seen) <= 16 and model.centroids.shape == (4, 8)


def test_near_duplicates_exact_and_perceptual(tmp_path_factory):
    """A real figure re-encoded (JPEG quality 40, resized) is a perceptual duplicate of its
    original; a second copy of its bytes an exact one; other real figures are neither."""
    import imagehash
    from PIL import Image

    from biomedica_kit.cluster.near_dups import groups_table, phash_pairs

    images = sorted((Path(__file__).resolve().parents[2].parent / "shared" / "corpus" /
                     "figures" / "images").glob("pfocr_*.jpg"))[:30]
    keys, hashes = [], []
    for p in images:
        with Image.open(p) as im:
            keys.append(p.stem)
            hashes.append(str(imagehash.phash(im)))
            buf = io.BytesIO()
            im.convert("RGB").resize((im.width // 2, im.height // 2)).save(buf, "JPEG",
                                                                          quality=40)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        keys.append("reencoded")
        hashes.append(str(imagehash.phash(im)))
    pairs = list(phash_pairs(keys, hashes, max_hamming=4))
    assert ("reencoded" in {a for a, b, _ in pairs} | {b for a, b, _ in pairs})
    assert all({a, b} == {images[-1].stem, "reencoded"} for a, b, _ in pairs), pairs
    table = groups_table({"phash": iter(pairs), "exact": iter([("x2", "x1", 0.0)])})
    rows = table.to_pylist()
    assert {(r["kind"], r["key"], r["group_size"]) for r in rows} == {
        ("phash", images[-1].stem, 2), ("phash", "reencoded", 2),
        ("exact", "x1", 2), ("exact", "x2", 2)}


def test_views_and_cli(clustered, tmp_path):
    import click
    from click.testing import CliRunner

    from biomedica_kit.cli.curate import register
    from biomedica_kit.tables.connect import connect

    ds = copy_of(clustered[0], tmp_path)
    group = click.Group()
    register(group)
    res = CliRunner().invoke(group, ["cluster", str(ds), "--k", "5", "--pca", "16",
                                     "--map", "pca", "--run", "cli"])
    assert res.exit_code == 0, res.output
    assert "proposals 5 clusters" in res.output and "labels version" in res.output
    con = connect(ds)
    assert con.execute("SELECT count(*), count(DISTINCT cluster) FROM clusters").fetchone() \
        == (185, 5)
    assert con.execute("SELECT count(*) FROM proposals").fetchone() == (5,)
    assert con.execute("SELECT count(*) FROM figures_labeled WHERE label_source = "
                       "'proposal'").fetchone() == (185,)
    con.execute("SELECT kind, count(*) FROM near_dups GROUP BY kind").fetchall()
    res = CliRunner().invoke(group, ["cluster", str(ds), "--k", "3", "--embeddings", "none"])
    assert res.exit_code == 1 and "no embeddings 'none'" in res.output
