"""Approximate-nearest-neighbour indexes over an embeddings store, filtered inside the scan.

One faiss index per vector kind of a store (:class:`biomedica_kit.embed.store.EmbeddingStore`),
in ``DATASET/index/vectors/<store>/``::

    <kind>.faiss      the index; its ids are catalog ids (biomedica_kit.tables.catalog)
    <kind>.pos.npy    int32 (part, row) in the store of each catalog id (-1: not indexed)
    <kind>.json       what it holds: store, model, dims, kind of index, nlist, nprobe, the
                      recall@10 measured when it was written, the dataset version

Up to :data:`FLAT_LIMIT` vectors the index is exact (float16 codes, inner product =
cosine on the store's L2-normalised vectors); above, an inverted file over the same float16
codes (``IVF{nlist},SQfp16``, ``nlist`` about ``4 sqrt(N)``), whose ``nprobe`` is chosen when
the index is written: the smallest that reaches :data:`TARGET_RECALL` recall@10 against
exact search on sample queries (centroids of five random stored vectors: they fall between the
data as short text queries do; on 1M vectors around real MiniLM captions, word queries reached
recall@10 0.979 at the nprobe these choose, 96, against 0.905 at the 32 that midpoints chose).
Indexes are read with faiss's memory-mapping flags, so a server's resident memory grows with
what queries touch, not with the file.

**Filters inside the search**: :class:`IdFilter` wraps a boolean array over ids as a faiss
``IDSelectorBitmap`` that the scan consults before scoring a vector; for a filter that keeps
a fraction ``f`` of the vectors, ``nprobe`` is raised to ``nprobe / f`` (up to every list), so
about as many matching vectors are scored as without a filter, and a search that still finds
fewer than ``k`` of the matches is repeated over every list (exact over the matches). A
filtered top-k therefore comes back full whenever ``k`` vectors match.

**Incremental**: :func:`update_vector_index` adds only the store rows whose catalog id the
index lacks (trained centroids are kept until the index has grown fourfold, then it is
retrained), and writes every file atomically (a server keeps reading its old mapping).
Why faiss rather than usearch (measured in ``bench/bench_search.py``): usearch's Python
search has no filter predicate, so filtering would mean post-filtering a top-k.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biomedica_kit.base.atomic import atomic_path, atomic_write_bytes
from biomedica_kit.embed.store import EmbeddingStore

__all__ = ["FLAT_LIMIT", "TARGET_RECALL", "VECTORS_DIR", "IdFilter", "VectorIndex",
           "VectorIndexInfo", "retune", "update_vector_index"]

VECTORS_DIR = "vectors"
#: Up to this many vectors the index is exact.
FLAT_LIMIT = 20_000
#: recall@10 that the chosen nprobe reaches on the sample queries.
TARGET_RECALL = 0.98
_NPROBES = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_SAMPLE_QUERIES = 200


@dataclass
class VectorIndexInfo:
    """``<kind>.json``: what an index holds and how it was tuned."""

    store: str
    kind: str
    model_version: str | None
    dims: int
    count: int = 0
    factory: str = "flat"  # flat | ivf
    nlist: int = 0
    nprobe: int = 0
    trained_on: int = 0  # vectors the IVF centroids were trained with (at that count)
    recall_at_10: float | None = None  # measured on sample queries when written
    catalog_generation: str = ""
    dataset_version: str = ""
    seconds: float = 0.0
    updated: str = ""


class IdFilter:
    """A boolean array over catalog ids as a faiss selector (kept alive with its bits)."""

    def __init__(self, mask: np.ndarray) -> None:
        import faiss

        self.mask = np.asarray(mask, dtype=bool)
        self.count = int(self.mask.sum())
        self.bits = np.packbits(self.mask, bitorder="little")
        self.selector = faiss.IDSelectorBitmap(len(self.mask), faiss.swig_ptr(self.bits))


def _index_dir(dataset: str | os.PathLike[str], store: str) -> Path:
    from biomedica_kit.tables.catalog import INDEX_DIR

    return Path(dataset) / INDEX_DIR / VECTORS_DIR / store


class VectorIndex:
    """One kind of vectors of one store, memory-mapped for searching (see module doc)."""

    def __init__(self, dataset: str | os.PathLike[str], store: str, kind: str) -> None:

        self.dir = _index_dir(dataset, store)
        info_path = self.dir / f"{kind}.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path}: no {kind} vector index for store {store}; "
                                    f"run `biomedica index {dataset} --embeddings {store}`")
        self.info = VectorIndexInfo(**json.loads(info_path.read_text()))
        self.index = _read_mapped(self.dir / f"{kind}.faiss", self.info.factory)
        self.pos = np.load(self.dir / f"{kind}.pos.npy", mmap_mode="r")
        self.store = EmbeddingStore(dataset, store)
        self.kind = kind
        self._parts: dict[int, np.ndarray] = {}

    @property
    def dims(self) -> int:
        """Vector width."""
        return self.info.dims

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, id_filter: IdFilter | None = None,
               *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of the ``k`` nearest (cosine) per query row; ids -1 pad a row
        only when fewer than ``k`` vectors match the filter."""

        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if id_filter is not None and id_filter.count == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        sel = id_filter.selector if id_filter is not None else None
        if self.info.factory != "ivf":
            return self.index.search(q, k, params=_params(sel))
        nlist = self.info.nlist
        probe = nprobe or self.info.nprobe
        if id_filter is not None:
            frac = id_filter.count / max(1, len(self))
            probe = min(nlist, math.ceil(probe / max(frac, 1e-12)))
        scores, ids = self.index.search(q, k, params=_params(sel, min(nlist, probe)))
        want = min(k, id_filter.count if id_filter is not None else len(self))
        if probe < nlist and int((ids >= 0).sum(axis=1).min()) < want:
            scores, ids = self.index.search(q, k, params=_params(sel, nlist))
        return scores, ids

    def vector(self, id_: int) -> np.ndarray | None:
        """The stored vector of a catalog id (float32), None when not indexed."""
        if not 0 <= id_ < len(self.pos):
            return None
        part, row = (int(x) for x in self.pos[id_])
        if part < 0:
            return None
        if part not in self._parts:
            self._parts[part] = np.load(self.store.path / f"part-{part:06d}.{self.kind}.npy",
                                        mmap_mode="r")
        return np.asarray(self._parts[part][row], dtype=np.float32)


def _read_mapped(path: Path, factory: str) -> Any:
    """A written index, memory-mapped read-only (IVF lists read in the searching thread:
    faiss's default prefetch threads on mapped lists cost ~10x the scan of one query)."""
    import faiss

    flags = faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_MMAP if factory == "ivf"
                                       else faiss.IO_FLAG_MMAP_IFC)
    index = faiss.read_index(str(path), flags)
    if factory == "ivf":
        ivf: Any = faiss.extract_index_ivf(index)
        lists: Any = faiss.downcast_InvertedLists(ivf.invlists)
        lists.prefetch_nthread = 0
    return index


def _params(sel: Any, nprobe: int | None = None) -> Any:
    """faiss search parameters: a selector (or None) and, for an IVF index, ``nprobe``."""
    import faiss

    if nprobe is None:
        p = faiss.SearchParameters()
    else:
        p = faiss.SearchParametersIVF()
        p.nprobe = nprobe
    if sel is not None:
        p.sel = sel
    return p


# ----------------------------------------------------------------------------- writing


def _new_index(dims: int, n: int, sample: np.ndarray) -> tuple[Any, str, int]:
    """An empty index for ``n`` vectors: exact up to FLAT_LIMIT, else a trained IVF."""
    import faiss

    sq = faiss.ScalarQuantizer.QT_fp16
    if n <= FLAT_LIMIT:
        return (faiss.IndexIDMap2(faiss.IndexScalarQuantizer(dims, sq,
                                                             faiss.METRIC_INNER_PRODUCT)),
                "flat", 0)
    nlist = int(min(65536, max(64, 4 * math.sqrt(n))))
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dims), dims, nlist, sq,
                                          faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index, "ivf", nlist


def _sample(store: EmbeddingStore, kind: str, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` stored vectors, drawn evenly from every part."""
    parts = store.parts()
    sizes = [len(p.vectors(kind)) for p in parts]
    total = sum(sizes)
    rng = np.random.default_rng(seed)
    out = []
    for p, size in zip(parts, sizes, strict=True):
        take = min(size, max(1, round(n * size / max(1, total))))
        rows = np.sort(rng.choice(size, take, replace=False))
        out.append(np.asarray(p.vectors(kind)[rows], dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, store.info.dims(kind) or 0), np.float32)


def _tune(index: Any, sample: np.ndarray, seed: int = 0) -> tuple[int, float]:
    """``(nprobe, recall@10)``: the smallest nprobe reaching TARGET_RECALL on queries that
    are centroids of five sample vectors, against the same index searched over every list
    (exact)."""
    rng = np.random.default_rng(seed)
    n = min(_SAMPLE_QUERIES, len(sample))
    q = sum(sample[rng.choice(len(sample), n)] for _ in range(5))
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    _, truth = index.search(q, 10, params=_params(None, index.nlist))
    recall = 0.0
    for p in (*[x for x in _NPROBES if x < index.nlist], index.nlist):
        _, got = index.search(q, 10, params=_params(None, p))
        recall = float(np.mean([len(set(t[t >= 0]) & set(g)) / max(1, int((t >= 0).sum()))
                                for t, g in zip(truth, got, strict=True)]))
        if recall >= TARGET_RECALL:
            return p, recall
    return index.nlist, recall


def retune(dataset: str | os.PathLike[str], store: EmbeddingStore, kind: str
           ) -> VectorIndexInfo:
    """Choose an IVF index's nprobe again (the current rule) without rebuilding it."""
    d = _index_dir(dataset, store.name)
    info = VectorIndexInfo(**json.loads((d / f"{kind}.json").read_text()))
    if info.factory == "ivf":
        index = _read_mapped(d / f"{kind}.faiss", info.factory)
        info.nprobe, info.recall_at_10 = _tune(index, _sample(store, kind, 4096, seed=1))
        atomic_write_bytes(d / f"{kind}.json", json.dumps(asdict(info), indent=2).encode())
    return info


def update_vector_index(dataset: str | os.PathLike[str], store: EmbeddingStore, kind: str,
                        ids_of: Callable[[Sequence[str]], np.ndarray], n_ids: int, *,
                        generation: str, dataset_version: str, rebuild: bool = False,
                        chunk: int = 65536) -> VectorIndexInfo:
    """Add the store's ``kind`` vectors that the index lacks (module doc); returns its info.

    ``ids_of`` maps keys to catalog ids (-1: not in the catalog), ``n_ids`` is the catalog's
    size; a catalog of another ``generation`` (rebuilt, ids reassigned) rebuilds the index.
    The caller holds the dataset's writer lock.
    """
    import faiss

    t0 = time.perf_counter()
    d = _index_dir(dataset, store.name)
    dims = store.info.dims(kind)
    if not dims:
        raise ValueError(f"store {store.name} has no {kind} vectors")
    info_path, faiss_path, pos_path = (d / f"{kind}.json", d / f"{kind}.faiss",
                                       d / f"{kind}.pos.npy")
    info = VectorIndexInfo(**json.loads(info_path.read_text())) if info_path.is_file() \
        else None
    if info is not None and (info.catalog_generation != generation or info.dims != dims
                             or info.model_version != store.info.model_version(kind)):
        rebuild = True
    # Which store rows are new: (part, row, id) of keys in the catalog the index lacks.
    pos = np.full((n_ids, 2), -1, np.int32)
    if info is not None and not rebuild:
        old = np.load(pos_path)
        pos[: len(old)] = old
    todo: list[tuple[int, np.ndarray, np.ndarray]] = []
    for part in store.parts():
        ids = np.asarray(ids_of(part.keys()), dtype=np.int64)
        rows = np.flatnonzero(ids >= 0)
        rows = rows[pos[ids[rows], 0] < 0]
        if len(rows):
            todo.append((part.index, rows, ids[rows]))
    new_total = int((pos[:, 0] >= 0).sum()) + sum(len(r) for _, r, _ in todo)
    grown = info is not None and info.factory == "ivf" and new_total >= 4 * info.trained_on
    crossed = info is not None and info.factory == "flat" and new_total > FLAT_LIMIT
    if info is None or rebuild or grown or crossed:
        if info is not None and not rebuild:  # retrain: re-add every indexed row
            return update_vector_index(dataset, store, kind, ids_of, n_ids,
                                       generation=generation, dataset_version=dataset_version,
                                       rebuild=True, chunk=chunk)
        sample = _sample(store, kind, 64 * int(min(65536, max(64, 4 * math.sqrt(new_total)))))
        index, factory, nlist = _new_index(dims, new_total, sample)
        info = VectorIndexInfo(store=store.name, kind=kind,
                               model_version=store.info.model_version(kind), dims=dims,
                               factory=factory, nlist=nlist,
                               trained_on=new_total if factory == "ivf" else 0)
    elif not todo:  # nothing new: only the version it was checked against moves
        info.dataset_version = dataset_version
        atomic_write_bytes(info_path, json.dumps(asdict(info), indent=2).encode())
        return info
    else:
        index = faiss.read_index(str(faiss_path))
    parts = {p.index: p for p in store.parts()}
    for part_index, rows, ids in todo:
        mm = parts[part_index].vectors(kind)
        for s in range(0, len(rows), chunk):
            r, i = rows[s: s + chunk], ids[s: s + chunk]
            index.add_with_ids(np.ascontiguousarray(mm[r], dtype=np.float32), i)
            pos[i, 0], pos[i, 1] = part_index, r
    if info.factory == "ivf":
        info.nprobe, info.recall_at_10 = _tune(index, _sample(store, kind, 4096, seed=1))
    else:
        info.nprobe, info.recall_at_10 = 0, 1.0
    d.mkdir(parents=True, exist_ok=True)
    with atomic_path(faiss_path) as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_path(pos_path) as tmp, open(tmp, "wb") as f:
        np.save(f, pos)
    info.count = int(index.ntotal)
    info.catalog_generation, info.dataset_version = generation, dataset_version
    info.seconds = round(time.perf_counter() - t0, 3)
    info.updated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write_bytes(info_path, json.dumps(asdict(info), indent=2).encode())
    return info
