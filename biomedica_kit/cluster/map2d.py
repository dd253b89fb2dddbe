"""The 2-D map of a clustering, computed once and stored as ``map.parquet``.

The map holds a seeded sample of at most ``sample`` vectors (what a browser can draw; all of
them on small datasets) plus every exemplar, in the k-means space (after the PCA). ``umap``
(umap-learn, seeded) or ``pca`` (the first two principal axes of those points: instant).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["MAP_METHODS", "chosen_points", "default_map_method", "map_coordinates"]

MAP_METHODS = ("umap", "pca")


def default_map_method() -> str:
    """``umap`` when umap-learn is installed, else ``pca``."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return "pca"
    return "umap"


def map_coordinates(points: np.ndarray, method: str, seed: int) -> np.ndarray:
    """``N x 2`` coordinates of ``points`` (rows in the k-means space)."""
    points = np.asarray(points, dtype=np.float32)
    if len(points) < 3 or method == "pca":
        centred = points - points.mean(axis=0)
        if len(points) < 2:
            return np.zeros((len(points), 2), np.float32)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        axes = vt[:2].T
        axes = axes * np.sign(axes[np.argmax(np.abs(axes), axis=0), np.arange(axes.shape[1])])
        xy = centred @ axes
        return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1]))).astype(np.float32)
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_neighbors=min(15, len(points) - 1), random_state=seed, n_jobs=1,
                            n_components=2, metric="euclidean", init="spectral"
                            if len(points) > 16 else "random")
        return np.asarray(reducer.fit_transform(points), np.float32)
    raise ValueError(f"unknown map method {method!r}; one of {MAP_METHODS}")


def chosen_points(chunks: Iterator[tuple[list[str], np.ndarray]], n: int, sample: int,
                  seed: int, extra: set[str]) -> tuple[list[str], np.ndarray]:
    """The seeded sample of ``sample`` of the ``n`` streamed points plus the keys in
    ``extra``, as ``(keys, points)`` in stream order."""
    rng = np.random.default_rng(seed)
    take = np.ones(n, bool) if sample >= n else np.isin(
        np.arange(n), rng.choice(n, size=sample, replace=False))
    keys: list[str] = []
    pts = []
    start = 0
    for k, x in chunks:
        mask = take[start: start + len(k)] | np.fromiter((key in extra for key in k), bool,
                                                         len(k))
        keys.extend(key for key, m in zip(k, mask, strict=True) if m)
        pts.append(x[mask])
        start += len(k)
    return keys, (np.concatenate(pts) if pts else np.zeros((0, 2), np.float32))
