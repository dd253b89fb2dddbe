"""Projecting once (in memory or in a temporary memory-mapped file), the float16 path of the
store and the row-split faiss search: none of them changes a result."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from biomedica_kit.cluster import kmeans
from biomedica_kit.embed.store import EmbeddingStore


def _vectors(n: int = 3000, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((12, d)).astype(np.float32)
    x = centers[rng.integers(0, 12, n)] + 0.3 * rng.standard_normal((n, d), np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def _source(x: np.ndarray, chunk: int = 700) -> kmeans.Source:
    def stream() -> Iterator[tuple[list[str], np.ndarray]]:
        for s in range(0, len(x), chunk):
            yield [f"k{i}" for i in range(s, min(s + chunk, len(x)))], x[s: s + chunk]
    return stream


def _assignments(projected: kmeans.Source | kmeans.Projected, model: kmeans.ClusterModel
                 ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    keys: list[str] = []
    parts: list[list[np.ndarray]] = [[], [], []]
    for k, *arrays in kmeans.assign(projected, model):
        keys.extend(k)
        for p, a in zip(parts, arrays, strict=True):
            p.append(a)
    c, d1, d2 = (np.concatenate(p) for p in parts)
    return keys, c, d1, d2


@pytest.mark.parametrize("backend", ["faiss", "minibatch"])
def test_memmap_over_budget_gives_the_same_clusters(backend, tmp_path):
    x = _vectors()
    source = _source(x)
    kw = dict(dims=8, seed=3, backend=backend, pca_sample=1000, n=len(x))
    model_a, in_memory = kmeans.fit_projected(source, 12, **kw)
    model_b, on_disk = kmeans.fit_projected(source, 12, folder=tmp_path, budget=0, **kw)
    assert not isinstance(in_memory.vectors, np.memmap)
    assert isinstance(on_disk.vectors, np.memmap)
    assert np.array_equal(in_memory.vectors, on_disk.vectors)
    assert np.array_equal(model_a.centroids, model_b.centroids)
    assert np.allclose(in_memory.vectors, model_a.project(x), atol=1e-5)
    with in_memory, on_disk:
        a, b = _assignments(in_memory, model_a), _assignments(on_disk, model_b)
    assert a[0] == b[0] == [f"k{i}" for i in range(len(x))]
    for u, v in zip(a[1:], b[1:], strict=True):
        assert np.array_equal(u, v)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone
    # assigning the stream itself (projected chunk by chunk) gives the same clusters
    streamed = _assignments(source, model_a)
    assert (streamed[1] == a[1]).mean() > 0.999


def test_projection_matches_the_model():
    x = _vectors(1000)
    model, projected = kmeans.fit_projected(_source(x), 5, dims=6, seed=0, backend="faiss")
    with projected:
        assert projected.vectors.shape == (1000, 6)
        assert np.allclose(projected.vectors, model.project(x), atol=1e-5)
        assert sum(len(k) for k, _ in projected.chunks()) == 1000
    with pytest.raises(ValueError, match="expected"):
        kmeans.project(_source(x), model, 999)


def test_nearest_two_does_not_depend_on_the_thread_split(monkeypatch):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 16)).astype(np.float32)
    c = rng.standard_normal((300, 16)).astype(np.float32)
    results = []
    for cores in (1, 2, 3):
        monkeypatch.setattr(kmeans, "_cores", lambda cores=cores: cores)
        results.append(kmeans.nearest_two(x, c))
    for r in results[1:]:
        for u, v in zip(results[0], r, strict=True):
            assert np.array_equal(u, v)
    exact = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    assert np.array_equal(results[0][0], exact.argmin(axis=1))


def test_store_float16_path_is_the_float32_path(tmp_path):
    store = EmbeddingStore(tmp_path, "s")
    store.info.image_dims, store.info.image_model = 8, "X"
    store.save_info()
    x = _vectors(300, 8)
    store.write_part([f"k{i}" for i in range(200)], {"image": x[:200]}, "v1")
    store.write_part([f"k{i}" for i in range(200, 300)], {"image": x[200:]}, "v1")
    for keys in (None, {f"k{i}" for i in range(0, 300, 3)}):
        a = list(store.iter_vectors("image", keys=keys, chunk=64))
        b = list(store.iter_vectors("image", keys=keys, chunk=64, dtype=np.float16))
        assert [k for k, _ in a] == [k for k, _ in b]
        assert all(u.dtype == np.float32 and v.dtype == np.float16 for (_, u), (_, v)
                   in zip(a, b, strict=True))
        assert all(np.array_equal(u, v.astype(np.float32)) for (_, u), (_, v)
                   in zip(a, b, strict=True))
    assert np.array_equal(np.concatenate([v for _, v in a]),
                          x[::3].astype(np.float32))
