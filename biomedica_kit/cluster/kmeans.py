"""PCA + k-means over vectors that never need to be in memory at once.

The vectors come as chunks (``(keys, float32 array)``, e.g.
:meth:`biomedica_kit.embed.store.EmbeddingStore.iter_vectors`); a *source* is a callable that
starts such a stream again, since fitting reads it twice and assigning once more.

1. **PCA** (:func:`fit_pca`): the mean and the top ``dims`` principal axes from the covariance
   of a seeded sample of at most ``pca_sample`` vectors (an eigendecomposition of a
   ``D x D`` matrix: exact for the sample, deterministic, cheap for D in the hundreds).
2. **k-means** (:func:`fit_kmeans`), on the projected vectors, seeded and deterministic:

   - ``faiss`` (default when installed): ``niter`` Lloyd iterations on a seeded sample of
     ``sample_per_centroid * k`` vectors (faiss's own sampling rule, 128 per centroid by
     default: 256k vectors for k = 2,000), random initialisation from ``seed``;
   - ``minibatch``: scikit-learn's ``MiniBatchKMeans.partial_fit`` over every chunk of the
     stream, for ``epochs`` passes (true streaming: memory is one chunk plus the centroids).

3. **Assignment** (:func:`assign`): every vector's nearest centroid, its distance and the
   distance to the second nearest (the margin: small margins are boundary members), chunk by
   chunk with exact matrix products.

:class:`ClusterModel` (mean, axes, centroids) is saved as ``model.npz`` beside a run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomedica_kit.base.atomic import atomic_path

__all__ = ["BACKENDS", "ClusterModel", "Source", "assign", "count", "default_backend",
           "fit", "fit_kmeans", "fit_pca", "nearest_two", "sample_rows"]

#: A restartable stream of ``(keys, float32 vectors)`` chunks.
Source = Callable[[], Iterator[tuple[list[str], np.ndarray]]]
BACKENDS = ("faiss", "minibatch")


def default_backend() -> str:
    """``faiss`` when it is installed, else ``minibatch`` (scikit-learn)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "minibatch"
    return "faiss"


@dataclass
class ClusterModel:
    """A fitted PCA (``mean``, ``axes``: D x d, or None for none) and k-means ``centroids``."""

    mean: np.ndarray
    axes: np.ndarray | None
    centroids: np.ndarray
    inertia: float = 0.0

    def project(self, x: np.ndarray) -> np.ndarray:
        """Vectors in the k-means space (centred, projected when a PCA was fitted)."""
        x = np.asarray(x, dtype=np.float32) - self.mean
        return x @ self.axes if self.axes is not None else x

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``model.npz`` atomically."""
        inertia = np.array(self.inertia)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            if self.axes is None:
                np.savez(f, mean=self.mean, centroids=self.centroids, inertia=inertia)
            else:
                np.savez(f, mean=self.mean, centroids=self.centroids, inertia=inertia,
                         axes=self.axes)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClusterModel:
        """Read a saved model."""
        with np.load(Path(path)) as z:
            axes = z["axes"] if "axes" in z.files else None
            return cls(z["mean"], axes, z["centroids"], float(z["inertia"]))


def count(source: Source) -> tuple[int, int]:
    """``(vectors, dims)`` of a stream (one pass reading only shapes of memory maps)."""
    n, dims = 0, 0
    for _, x in source():
        n += len(x)
        dims = x.shape[1]
    return n, dims


def sample_rows(source: Source, n: int, m: int, seed: int,
                transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """``m`` of the ``n`` vectors, chosen with ``seed`` (all when ``m >= n``), in stream
    order, each passed through ``transform`` chunk by chunk."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n) if m >= n else np.sort(rng.choice(n, size=m, replace=False))
    out, start = [], 0
    for _, x in source():
        lo, hi = np.searchsorted(idx, [start, start + len(x)])
        if hi > lo:
            sel = x[idx[lo:hi] - start]
            out.append(transform(sel) if transform else sel)
        start += len(x)
    return np.concatenate(out).astype(np.float32, copy=False)


def fit_pca(sample: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mean, axes)`` of a sample: the top ``dims`` eigenvectors of its covariance (from
    the covariance, or the SVD of the sample when it has fewer rows than columns), signs
    fixed (largest component positive) so the result does not depend on the solver.
    ``dims <= 0`` or ``dims >= D`` means no projection (axes None)."""
    mean = sample.mean(axis=0).astype(np.float32)
    d = sample.shape[1]
    if dims <= 0 or dims >= d:
        return mean, None
    dims = min(dims, max(1, len(sample) - 1))
    centred = np.asarray(sample - mean, np.float32)
    if len(sample) <= d:  # fewer rows than columns: the SVD of the sample is cheaper
        _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
        axes = vt[:dims].T
    else:  # the D x D covariance (float32 product, float64 eigendecomposition)
        values, vectors = np.linalg.eigh((centred.T @ centred).astype(np.float64))
        axes = vectors[:, np.argsort(values)[::-1][:dims]]
    signs = np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(dims)])
    return mean, (axes * signs).astype(np.float32)


def nearest_two(x: np.ndarray, centroids: np.ndarray, block: int = 8192
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(nearest index, its distance, second-nearest distance)`` per row (Euclidean): an
    exact faiss search when faiss is installed (2-3x numpy here), else blocked numpy."""
    if len(centroids) > 1 and default_backend() == "faiss":
        import faiss

        index = faiss.IndexFlatL2(centroids.shape[1])
        index.add(np.ascontiguousarray(centroids, np.float32))
        d, i = index.search(np.ascontiguousarray(x, np.float32), 2)
        return (i[:, 0].astype(np.int64), np.sqrt(np.maximum(d[:, 0], 0)),
                np.sqrt(np.maximum(d[:, 1], 0)))
    c2 = (centroids.astype(np.float32) ** 2).sum(axis=1)
    n = len(x)
    first = np.empty(n, np.int64)
    d1 = np.empty(n, np.float32)
    d2 = np.empty(n, np.float32)
    for s in range(0, n, block):
        xb = x[s: s + block]
        dist = (xb ** 2).sum(axis=1, keepdims=True) - 2.0 * (xb @ centroids.T) + c2
        if centroids.shape[0] == 1:
            first[s: s + len(xb)] = 0
            d1[s: s + len(xb)] = dist[:, 0]
            d2[s: s + len(xb)] = np.inf
            continue
        two = np.argpartition(dist, 1, axis=1)[:, :2]
        pair = np.take_along_axis(dist, two, axis=1)
        order = np.argsort(pair, axis=1, kind="stable")
        two = np.take_along_axis(two, order, axis=1)
        pair = np.take_along_axis(pair, order, axis=1)
        first[s: s + len(xb)] = two[:, 0]
        d1[s: s + len(xb)], d2[s: s + len(xb)] = pair[:, 0], pair[:, 1]
    return first, np.sqrt(np.maximum(d1, 0)), np.sqrt(np.maximum(d2, 0))


def fit_kmeans(projected: Source, n: int, k: int, *, seed: int, backend: str,
               niter: int = 20, sample_per_centroid: int = 128, epochs: int = 3,
               transform: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> tuple[np.ndarray, float]:
    """``(centroids, inertia)`` of k-means on a stream (see module doc for the back-ends).

    ``transform`` maps raw chunks to the k-means space (the PCA projection).
    """
    if backend == "faiss":
        import faiss

        sample = sample_rows(projected, n, sample_per_centroid * k, seed, transform)
        km = faiss.Kmeans(sample.shape[1], k, niter=niter, seed=seed, verbose=False,
                          max_points_per_centroid=sample_per_centroid,
                          min_points_per_centroid=1)
        km.train(np.ascontiguousarray(sample))
        obj = km.obj
        return (np.asarray(km.centroids, np.float32),
                float(obj[-1]) if obj is not None and len(obj) else 0.0)
    if backend == "minibatch":
        from sklearn.cluster import MiniBatchKMeans

        init = sample_rows(projected, n, min(n, max(3 * k, 1024)), seed, transform)
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, init="k-means++",
                             batch_size=min(4096, max(k, 256)), init_size=len(init))
        km.partial_fit(init)
        for _ in range(epochs):
            for _, x in projected():
                km.partial_fit(transform(x) if transform else x)
        return np.asarray(km.cluster_centers_, np.float32), float(km.inertia_ or 0.0)
    raise ValueError(f"unknown k-means backend {backend!r}; one of {BACKENDS}")


def fit(source: Source, k: int, *, dims: int = 64, seed: int = 0, backend: str | None = None,
        pca_sample: int = 100_000, niter: int = 20, sample_per_centroid: int = 128,
        n: int | None = None) -> ClusterModel:
    """PCA (``dims`` axes; 0 for none) then k-means with ``k`` clusters (at most one per
    vector), both seeded: the same stream and seed give the same model. ``n`` is the number
    of vectors when known (else one pass counts them)."""
    if n is None:
        n, _ = count(source)
    if n == 0:
        raise ValueError("no vectors to cluster")
    mean, axes = fit_pca(sample_rows(source, n, pca_sample, seed), dims)
    model = ClusterModel(mean, axes, np.zeros((0, len(mean)), np.float32))
    centroids, inertia = fit_kmeans(source, n, min(k, n), seed=seed,
                                    backend=backend or default_backend(), niter=niter,
                                    sample_per_centroid=sample_per_centroid,
                                    transform=model.project)
    model.centroids, model.inertia = centroids, inertia
    return model


def assign(source: Source, model: ClusterModel
           ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]:
    """``(keys, cluster, distance, second distance)`` chunk by chunk."""
    for keys, x in source():
        c, d1, d2 = nearest_two(model.project(x), model.centroids)
        yield keys, c, d1, d2
