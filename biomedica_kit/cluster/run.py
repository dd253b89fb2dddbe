"""``biomedica cluster``: PCA + k-means over an embeddings store, and what experts look at.

A run writes ``DATASET/clusters/<run>/``:

    config.json           parameters, models, dataset_version, counts, timings
    model.npz             PCA mean and axes, centroids (:class:`~.kmeans.ClusterModel`)
    assignments.parquet   key, cluster, distance, margin (to the second-nearest centroid)
    exemplars.parquet     cluster, key, kind (centroid / boundary / random), rank, distance
    clusters.parquet      per-cluster stats (:func:`~.stats.cluster_stats`) + montage path
    montages/<c>.jpg      a grid of exemplars per cluster
    map.parquet           key, cluster, x, y: the 2-D map (:mod:`~.map2d`), computed once
    near_dups.parquet     near-duplicate groups (:mod:`~.near_dups`)

Vectors stream from the store chunk by chunk (memory-mapped float16): the PCA samples them,
then every vector is projected once (:func:`~.kmeans.fit_projected`: n x 64 float32, in
memory up to :data:`~.kmeans.PROJECTED_BUDGET`, else a temporary memory-mapped file in the
run's folder), and k-means, assignment, exemplars, the map and near-duplicates read the
projected vectors, so memory holds a chunk of raw vectors and the projected ones (or the part
of their file the kernel keeps), never all raw vectors. The same store, parameters and seed
give the same run, byte for byte in its tables.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biomedica_kit.base.atomic import atomic_path, atomic_write_bytes, sweep_temporaries
from biomedica_kit.base.atomic import write_parquet_atomic as write_parquet
from biomedica_kit.cluster import kmeans, map2d
from biomedica_kit.cluster.exemplars import Exemplars
from biomedica_kit.cluster.montage import write_montages
from biomedica_kit.cluster.near_dups import embedding_pairs, exact_pairs, groups_table, phash_pairs
from biomedica_kit.cluster.stats import cluster_stats
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.embed.store import EmbeddingStore, list_stores
from biomedica_kit.tables.export import META_DIR, export
from biomedica_kit.tables.samples import ROW_COLUMNS

__all__ = ["CLUSTERS_DIR", "ClusterConfig", "ClusterSummary", "cluster", "latest_run",
           "open_store", "run_dir"]

CLUSTERS_DIR = "clusters"


@dataclass(frozen=True)
class ClusterConfig:
    """Everything that decides a run's result (recorded in ``config.json``)."""

    k: int
    pca: int = 64
    seed: int = 0
    kind: str = "image"  # which vectors of the store: image or text
    backend: str = field(default_factory=kmeans.default_backend)
    niter: int = 20
    sample_per_centroid: int = 128
    pca_sample: int = 100_000
    exemplars: int = 8
    map_method: str = field(default_factory=map2d.default_map_method)
    map_sample: int = 50_000
    min_cosine: float = 0.95
    max_hamming: int = 4
    chunk: int = 65_536


@dataclass
class ClusterSummary:
    """What :func:`cluster` did."""

    run: str
    path: str
    dataset_version: str
    embeddings: str
    n: int
    k: int
    sizes: dict[str, int]  # smallest, median, largest cluster
    near_dup_groups: dict[str, int]
    seconds: dict[str, float]

    def format_lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        t = self.seconds
        return [f"run       {self.path}",
                f"clusters  {self.k} over {self.n} samples of version {self.dataset_version} "
                f"({self.embeddings}); sizes min {self.sizes['min']} median "
                f"{self.sizes['median']} max {self.sizes['max']}",
                "near-dups " + ", ".join(f"{k} {v} groups" for k, v in
                                         self.near_dup_groups.items()),
                "time      " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items())]


def run_dir(dataset: str | os.PathLike[str], run: str) -> Path:
    """The folder of a run."""
    return Path(dataset) / CLUSTERS_DIR / run


def latest_run(dataset: str | os.PathLike[str]) -> str | None:
    """The most recently finished run (by its ``config.json``), or None."""
    done = [p.parent for p in (Path(dataset) / CLUSTERS_DIR).glob("*/config.json")]
    if not done:
        return None
    return max(done, key=lambda p: ((p / "config.json").stat().st_mtime_ns, p.name)).name


def open_store(dataset: str | os.PathLike[str], name: str | None) -> EmbeddingStore:
    """The store ``name``, or the dataset's only (or most recently updated) one."""
    names = list_stores(dataset)
    if name is None:
        if not names:
            raise FileNotFoundError(f"{dataset}: no embeddings yet; run `biomedica embed` first")
        stores = [EmbeddingStore(dataset, n) for n in names]
        return max(stores, key=lambda s: (s.info.updated, s.name))
    if name not in names:
        raise FileNotFoundError(f"{dataset}: no embeddings {name!r} (have: {names})")
    return EmbeddingStore(dataset, name)


def _current_keys(figures: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(figures, columns=["key"]).column("key").to_pylist()


def _source(store: EmbeddingStore, kind: str, keys: set[str] | None,
            chunk: int) -> kmeans.Source:
    def stream() -> Iterator[tuple[list[str], np.ndarray]]:
        # float16 as stored: kmeans converts block by block while projecting
        return store.iter_vectors(kind, keys=keys, chunk=chunk, dtype=np.float16)
    return stream


def _figures_rows(figures: Path, keys: set[str]) -> dict[str, dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(figures, columns=list(ROW_COLUMNS))
    t = t.filter(pc.is_in(t.column("key"), value_set=pa.array(sorted(keys), pa.string())))
    return {r["key"]: r for r in t.to_pylist()}


def cluster(dataset: str | os.PathLike[str], cfg: ClusterConfig, *,
            embeddings: str | None = None, run: str | None = None,
            montages: bool = True, workers: int = 0) -> ClusterSummary:
    """Cluster the current version's vectors of one store and write the run (module doc).

    Every sample of the current version must have been embedded (``biomedica embed``).
    """
    root = Path(dataset)
    export(root)
    with dataset_lock(root, "cluster"), ExitStack() as cleanup:
        return _cluster(root, cfg, embeddings, run, montages, cleanup)


def _cluster(root: Path, cfg: ClusterConfig, embeddings: str | None, run: str | None,
             montages: bool, cleanup: ExitStack) -> ClusterSummary:
    import pyarrow as pa
    import pyarrow.parquet as pq

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    version = read_manifest(root)["dataset_version"]
    figures = root / META_DIR / "figures.parquet"
    store = open_store(root, embeddings)
    kind = cfg.kind if cfg.kind in store.kinds() else store.kinds()[0]
    current = _current_keys(figures)
    have = store.keys()
    missing = [k for k in current if k not in have]
    if missing:
        raise ValueError(f"{len(missing)} samples of version {version} are not in embeddings "
                         f"{store.name} (e.g. {missing[0]}); run `biomedica embed` first")
    wanted = None if len(have) == len(current) else set(current)
    source = _source(store, kind, wanted, cfg.chunk)
    run = run or f"{store.name}-k{cfg.k}-s{cfg.seed}"
    out = run_dir(root, run)
    sweep_temporaries(out)

    model, projected = kmeans.fit_projected(
        source, cfg.k, dims=cfg.pca, seed=cfg.seed, backend=cfg.backend,
        pca_sample=cfg.pca_sample, niter=cfg.niter, sample_per_centroid=cfg.sample_per_centroid,
        n=len(current), folder=out)
    cleanup.callback(projected.close)
    model.save(out / "model.npz")
    times["fit"] = time.perf_counter() - t0

    t = time.perf_counter()
    ex = Exemplars(cfg.exemplars, cfg.seed)
    sizes = np.zeros(len(model.centroids), np.int64)
    schema = pa.schema([("key", pa.string()), ("cluster", pa.int32()),
                        ("distance", pa.float32()), ("margin", pa.float32())])
    meta = {b"biomedica_kit.dataset_version": version.encode(),
            b"biomedica_kit.embeddings": store.name.encode()}
    assignments = out / "assignments.parquet"
    with atomic_path(assignments) as tmp, pq.ParquetWriter(
            tmp, schema.with_metadata(meta)) as w:
        for keys, c, d1, d2 in kmeans.assign(projected, model):
            margin = np.where(np.isfinite(d2), d2 - d1, np.float32(np.nan))
            w.write_table(pa.table({"key": keys, "cluster": c.astype(np.int32),
                                    "distance": d1, "margin": margin.astype(np.float32)},
                                   schema=schema))
            ex.add(keys, c, d1, d2)
            sizes += np.bincount(c, minlength=len(sizes))
    ex_rows = ex.rows()
    write_parquet(pa.Table.from_pylist(ex_rows), out / "exemplars.parquet")
    times["assign"] = time.perf_counter() - t

    t = time.perf_counter()
    stats = cluster_stats(assignments, figures, seed=cfg.seed)
    if montages:
        rows = _figures_rows(figures, {e["key"] for e in ex_rows})
        paths = write_montages(root, out / "montages", ex_rows, rows)
        stats = stats.append_column("montage", pa.array(
            [paths.get(int(c)) for c in stats.column("cluster").to_pylist()], pa.string()))
    write_parquet(stats, out / "clusters.parquet")
    times["stats"] = time.perf_counter() - t

    t = time.perf_counter()
    _write_map(out, projected, model, cfg, len(current), {e["key"] for e in ex_rows})
    times["map"] = time.perf_counter() - t

    t = time.perf_counter()
    groups = _near_dups(out, figures, projected, cfg, assignments)
    times["near_dups"] = time.perf_counter() - t
    times["total"] = time.perf_counter() - t0
    nonzero = np.sort(sizes[sizes > 0])
    summary = ClusterSummary(
        run=run, path=str(out), dataset_version=version, embeddings=store.name,
        n=len(current), k=len(model.centroids),
        sizes={"min": int(nonzero[0]), "median": int(np.median(nonzero)),
               "max": int(nonzero[-1])},
        near_dup_groups=groups, seconds={k: round(v, 2) for k, v in times.items()})
    config = {"run": run, "config": asdict(cfg), "kind": kind, "embeddings": store.name,
              "image_model": store.info.image_model_version,
              "text_model": store.info.text_model_version, "joint": store.info.joint,
              "dataset_version": version, "n": len(current), "k": len(model.centroids),
              "inertia": model.inertia, "summary": asdict(summary),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_bytes(out / "config.json", json.dumps(config, indent=2).encode())
    return summary


def _write_map(out: Path, projected: kmeans.Projected, model: kmeans.ClusterModel,
               cfg: ClusterConfig, n: int, exemplar_keys: set[str]) -> None:
    import pyarrow as pa

    keys, pts = map2d.chosen_points(projected.chunks(), n, cfg.map_sample, cfg.seed,
                                    exemplar_keys)
    xy = map2d.map_coordinates(pts, cfg.map_method, cfg.seed)
    c, _, _ = kmeans.nearest_two(pts, model.centroids)
    write_parquet(pa.table({"key": keys, "cluster": c.astype(np.int32), "x": xy[:, 0],
                            "y": xy[:, 1], "method": [cfg.map_method] * len(keys)}),
                  out / "map.parquet")


def _near_dups(out: Path, figures: Path, projected: kmeans.Projected, cfg: ClusterConfig,
               assignments: Path, budget: int = 2_000_000
               ) -> dict[str, int]:
    import pyarrow.parquet as pq

    f = pq.read_table(figures, columns=["key", "image_phash"])
    # Assignments are in stream order, so a flat array of clusters lines up with the chunks.
    clusters = pq.read_table(assignments, columns=["cluster"]).column("cluster").to_numpy()
    sizes = np.bincount(clusters)
    # Clusters in batches of at most ``budget`` members: one pass over the vectors per batch.
    batches: list[list[int]] = [[]]
    total = 0
    for c in np.argsort(-sizes, kind="stable"):
        if batches[-1] and total + sizes[c] > budget:
            batches.append([])
            total = 0
        batches[-1].append(int(c))
        total += int(sizes[c])

    def members() -> Iterator[tuple[list[str], np.ndarray]]:
        for batch in batches:
            wanted = np.isin(np.arange(len(sizes)), batch)
            keys: list[str] = []
            vecs, labels = [], []
            start = 0
            for k, x in projected.chunks():
                c = clusters[start: start + len(k)]
                m = wanted[c]
                keys.extend(key for key, keep in zip(k, m, strict=True) if keep)
                vecs.append(x[m])
                labels.append(c[m])
                start += len(k)
            lab = np.concatenate(labels)
            pts = np.concatenate(vecs)
            order = np.argsort(lab, kind="stable")
            bounds = np.r_[0, np.flatnonzero(np.diff(lab[order])) + 1, len(order)]
            for s, e in zip(bounds[:-1], bounds[1:], strict=True):
                idx = order[s:e]
                yield [keys[i] for i in idx], pts[idx]

    table = groups_table({
        "exact": exact_pairs(figures),
        "phash": phash_pairs(f.column("key").to_pylist(), f.column("image_phash").to_pylist(),
                             cfg.max_hamming),
        "embedding": embedding_pairs(members(), cfg.min_cosine),
    })
    write_parquet(table, out / "near_dups.parquet")
    kinds = table.column("kind").to_pylist()
    groups = set(zip(kinds, table.column("group").to_pylist(), strict=True))
    return {kind: sum(1 for k, _ in groups if k == kind) for kind in
            ("exact", "phash", "embedding")}
