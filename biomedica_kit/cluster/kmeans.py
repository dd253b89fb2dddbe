"""PCA + k-means over vectors that never need to be in memory at once.

The vectors come as chunks (``(keys, float array)``, e.g.
:meth:`biomedica_kit.embed.store.EmbeddingStore.iter_vectors`, float32 or the stored float16);
a *source* is a callable that starts such a stream again. :func:`fit_projected` reads it twice:

1. **PCA** (:func:`fit_pca`): the mean and the top ``dims`` principal axes from the covariance
   of a seeded sample of at most ``pca_sample`` vectors (an eigendecomposition of a
   ``D x D`` matrix: exact for the sample, deterministic, cheap for D in the hundreds).
2. **Projection** (:func:`project`): every vector once into the k-means space, a float32
   ``n x dims`` array (:class:`Projected`: in memory up to ``budget`` bytes, else a temporary
   memory-mapped file in ``folder``), which the k-means sample and the assignment then read
   instead of the store (the raw vectors are 8x wider at 512 -> 64 dims).
3. **k-means** (:func:`fit_kmeans`), on the projected vectors, seeded and deterministic:

   - ``faiss`` (default when installed): ``niter`` Lloyd iterations on a seeded sample of
     ``sample_per_centroid * k`` vectors (faiss's own sampling rule, 128 per centroid by
     default: 256k vectors for k = 2,000), random initialisation from ``seed``;
   - ``minibatch``: scikit-learn's ``MiniBatchKMeans.partial_fit`` over every chunk, for
     ``epochs`` passes.

4. **Assignment** (:func:`assign`): every vector's nearest centroid, its distance and the
   distance to the second nearest (the margin: small margins are boundary members), chunk by
   chunk with exact searches.

faiss runs single-threaded, with inner-product blocks of 256 x 2,048 (2 MiB, cache-sized)
instead of its default 4,096 x 1,024 (16 MiB; 1.3-1.8x faster here): with its OpenMP threads
on a shared 2-core machine, every one of its many barriers waits for a descheduled thread,
and the 1M benchmark took 387 s at load 5 instead of 46 s single-threaded. The assignment
splits rows over threads instead (coarse, barrier-free), aligned so results do not depend on
the number of threads.
:class:`ClusterModel` (mean, axes, centroids) is saved as ``model.npz`` beside a run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from biomedica_kit.base.atomic import atomic_path, temp_path

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["BACKENDS", "PROJECTED_BUDGET", "ClusterModel", "Projected", "Source", "assign",
           "count", "default_backend", "fit", "fit_kmeans", "fit_pca", "fit_projected",
           "nearest_two", "project", "sample_rows"]

#: A restartable stream of ``(keys, float vectors)`` chunks (float32, or float16 as stored).
Source = Callable[[], Iterator[tuple[list[str], np.ndarray]]]
BACKENDS = ("faiss", "minibatch")
#: Bytes of projected vectors held in memory; more go to a temporary memory-mapped file.
PROJECTED_BUDGET = 1 << 30
_BLOCK = 8192  # rows converted to float32 and projected at a time
_FAISS_BLOCKS = (256, 2048)  # query x database rows of faiss's inner-product blocks


@contextmanager
def _faiss_serial() -> Iterator[None]:
    """faiss single-threaded in this thread, with cache-sized blocks (module doc); restored
    after. Parallelism is coarse instead (:func:`nearest_two` splits rows over threads)."""
    import faiss

    cv = faiss.cvar
    saved = cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs
    threads = faiss.omp_get_max_threads()
    cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs = _FAISS_BLOCKS
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)
        cv.distance_compute_blas_query_bs, cv.distance_compute_blas_database_bs = saved


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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


@dataclass
class Projected:
    """Every vector of a stream in the k-means space, in stream order: ``vectors`` (n x d
    float32, in memory, or memory-mapped from a temporary file ``path``) and the keys of
    each chunk of the stream. :meth:`close` (or leaving a ``with`` block) releases the file."""

    vectors: np.ndarray
    keys: list[pa.Array] = field(default_factory=list)
    path: Path | None = None

    def chunks(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """``(keys, projected vectors)`` in the chunks of the projected stream."""
        start = 0
        for k in self.keys:
            yield k.to_pylist(), self.vectors[start: start + len(k)]
            start += len(k)

    def close(self) -> None:
        """Drop the vectors and remove the temporary file, if any."""
        self.vectors = np.zeros((0, self.vectors.shape[1]), np.float32)
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Projected:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def count(source: Source) -> tuple[int, int]:
    """``(vectors, dims)`` of a stream (one pass reading only shapes of memory maps)."""
    n, dims = 0, 0
    for _, x in source():
        n += len(x)
        dims = x.shape[1]
    return n, dims


def _sample_index(n: int, m: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.arange(n) if m >= n else np.sort(rng.choice(n, size=m, replace=False))


def sample_rows(source: Source, n: int, m: int, seed: int,
                transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """``m`` of the ``n`` vectors, chosen with ``seed`` (all when ``m >= n``), in stream
    order, each passed through ``transform`` chunk by chunk."""
    idx = _sample_index(n, m, seed)
    out, start = [], 0
    for _, x in source():
        lo, hi = np.searchsorted(idx, [start, start + len(x)])
        if hi > lo:
            sel = x[idx[lo:hi] - start]
            out.append(transform(sel) if transform else sel)
        start += len(x)
    return np.concatenate(out).astype(np.float32, copy=False)


def _project_block(model: ClusterModel, x: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = model.project(x)`` without the intermediate copies (x may be float16)."""
    centred = np.subtract(x, model.mean, dtype=np.float32)
    if model.axes is None:
        out[:] = centred
    else:
        np.matmul(centred, model.axes, out=out)


def project(source: Source, model: ClusterModel, n: int, *,
            folder: str | os.PathLike[str] | None = None,
            budget: int = PROJECTED_BUDGET) -> Projected:
    """Every one of the ``n`` vectors of ``source`` through ``model.project``, in one pass,
    ``_BLOCK`` rows at a time: in memory when ``n x dims`` float32 fit ``budget`` bytes,
    else in a temporary memory-mapped file in ``folder`` (the system's temporary folder
    when None; its name is a temporary of :mod:`biomedica_kit.base.atomic`, and on POSIX it
    is unlinked at once, so nothing is left behind even if the process is killed)."""
    import pyarrow as pa

    dims = model.axes.shape[1] if model.axes is not None else len(model.mean)
    path = None
    if n * dims * 4 <= budget:
        vectors = np.empty((n, dims), np.float32)
    else:
        import tempfile

        where = Path(folder) if folder is not None else Path(tempfile.gettempdir())
        where.mkdir(parents=True, exist_ok=True)
        path = temp_path(where / "projected.f32")
        vectors = np.memmap(path, np.float32, "w+", shape=(n, dims))
        if os.name == "posix":  # the mapping keeps the data; no name left to clean up
            path.unlink()
            path = None
    out = Projected(vectors, [], path)
    start = 0
    try:
        for keys, x in source():
            if start + len(x) > n:
                raise ValueError(f"the stream has more than the {n} vectors expected")
            for s in range(0, len(x), _BLOCK):
                xb = x[s: s + _BLOCK]
                _project_block(model, xb, vectors[start + s: start + s + len(xb)])
            out.keys.append(pa.array(keys, pa.string()))
            start += len(x)
        if start != n:
            raise ValueError(f"the stream has {start} vectors, {n} expected")
    except BaseException:
        out.close()
        raise
    return out


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
    exact faiss search when faiss is installed (2-3x numpy here; rows split over one thread
    a core, each running faiss single-threaded), else blocked numpy."""
    if len(centroids) > 1 and default_backend() == "faiss":
        import faiss

        index = faiss.IndexFlatL2(centroids.shape[1])
        index.add(np.ascontiguousarray(centroids, np.float32))
        x = np.ascontiguousarray(x, np.float32)
        # Slices start at multiples of faiss's query block, so every row meets the same
        # arithmetic whatever the number of threads: results do not depend on it.
        step = -(-len(x) // _cores() // _FAISS_BLOCKS[0]) * _FAISS_BLOCKS[0]
        parts = [slice(s, s + step) for s in range(0, len(x), max(step, 1))]

        def search(rows: slice) -> tuple[np.ndarray, np.ndarray]:
            faiss.omp_set_num_threads(1)
            return index.search(x[rows], 2)

        with _faiss_serial():
            if len(parts) <= 1:
                found = [index.search(x, 2)]
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(len(parts)) as pool:
                    found = list(pool.map(search, parts))
        d = np.concatenate([f[0] for f in found]) if found else np.zeros((0, 2), np.float32)
        i = np.concatenate([f[1] for f in found]) if found else np.zeros((0, 2), np.int64)
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


def _stream(projected: Source | Projected) -> Iterator[tuple[list[str], np.ndarray]]:
    return projected.chunks() if isinstance(projected, Projected) else projected()


def fit_kmeans(projected: Source | Projected, n: int, k: int, *, seed: int, backend: str,
               niter: int = 20, sample_per_centroid: int = 128, epochs: int = 3,
               transform: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> tuple[np.ndarray, float]:
    """``(centroids, inertia)`` of k-means on a stream or on :class:`Projected` vectors (see
    module doc for the back-ends).

    ``transform`` maps a stream's raw chunks to the k-means space (the PCA projection).
    """
    def sample(m: int) -> np.ndarray:
        if isinstance(projected, Projected):
            got = projected.vectors[_sample_index(n, m, seed)]
            return transform(got) if transform else np.asarray(got, np.float32)
        return sample_rows(projected, n, m, seed, transform)

    if backend == "faiss":
        import faiss

        points = sample(sample_per_centroid * k)
        km = faiss.Kmeans(points.shape[1], k, niter=niter, seed=seed, verbose=False,
                          max_points_per_centroid=sample_per_centroid,
                          min_points_per_centroid=1)
        with _faiss_serial():  # single-threaded: contention-proof (module doc)
            km.train(np.ascontiguousarray(points))
        obj = km.obj
        return (np.asarray(km.centroids, np.float32),
                float(obj[-1]) if obj is not None and len(obj) else 0.0)
    if backend == "minibatch":
        from sklearn.cluster import MiniBatchKMeans

        init = sample(min(n, max(3 * k, 1024)))
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=1, init="k-means++",
                             batch_size=min(4096, max(k, 256)), init_size=len(init))
        km.partial_fit(init)
        for _ in range(epochs):
            for _, x in _stream(projected):
                km.partial_fit(transform(x) if transform else np.asarray(x, np.float32))
        return np.asarray(km.cluster_centers_, np.float32), float(km.inertia_ or 0.0)
    raise ValueError(f"unknown k-means backend {backend!r}; one of {BACKENDS}")


def fit_projected(source: Source, k: int, *, dims: int = 64, seed: int = 0,
                  backend: str | None = None, pca_sample: int = 100_000, niter: int = 20,
                  sample_per_centroid: int = 128, n: int | None = None,
                  folder: str | os.PathLike[str] | None = None,
                  budget: int = PROJECTED_BUDGET) -> tuple[ClusterModel, Projected]:
    """PCA (``dims`` axes; 0 for none), every vector projected once (:func:`project`, with
    ``folder`` and ``budget``), then k-means with ``k`` clusters (at most one per vector) on
    the projected vectors, all seeded: the same stream and seed give the same model,
    wherever the projected vectors are kept. ``n`` is the number of vectors when known (else
    one pass counts them). Returns the model and the projected vectors (to :func:`assign`
    them without reading the stream again; close them after)."""
    if n is None:
        n, _ = count(source)
    if n == 0:
        raise ValueError("no vectors to cluster")
    mean, axes = fit_pca(sample_rows(source, n, pca_sample, seed), dims)
    model = ClusterModel(mean, axes, np.zeros((0, len(mean)), np.float32))
    projected = project(source, model, n, folder=folder, budget=budget)
    try:
        model.centroids, model.inertia = fit_kmeans(
            projected, n, min(k, n), seed=seed, backend=backend or default_backend(),
            niter=niter, sample_per_centroid=sample_per_centroid)
    except BaseException:
        projected.close()
        raise
    return model, projected


def fit(source: Source, k: int, *, dims: int = 64, seed: int = 0, backend: str | None = None,
        pca_sample: int = 100_000, niter: int = 20, sample_per_centroid: int = 128,
        n: int | None = None, folder: str | os.PathLike[str] | None = None,
        budget: int = PROJECTED_BUDGET) -> ClusterModel:
    """The model of :func:`fit_projected`, its projected vectors released."""
    model, projected = fit_projected(
        source, k, dims=dims, seed=seed, backend=backend, pca_sample=pca_sample, niter=niter,
        sample_per_centroid=sample_per_centroid, n=n, folder=folder, budget=budget)
    projected.close()
    return model


def assign(source: Source | Projected, model: ClusterModel
           ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]]:
    """``(keys, cluster, distance, second distance)`` chunk by chunk, of a stream (projected
    here) or of vectors already projected by ``model`` (:func:`fit_projected`)."""
    if isinstance(source, Projected):
        for keys, y in source.chunks():
            yield (keys, *nearest_two(y, model.centroids))
        return
    for keys, x in source():
        c, d1, d2 = nearest_two(model.project(x), model.centroids)
        yield keys, c, d1, d2
