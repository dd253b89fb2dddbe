"""The embeddings store: float16 vectors aligned to sample keys, under
``DATASET/embeddings/<name>/``.

Layout of one store::

    info.json                   models (name, model_version, dims), the dataset_version the
                                store was last brought up to date with, part count
    part-000000.parquet         key, row, dataset_version, image_dims, text_dims (one row a key)
    part-000000.image.npy       float16, rows aligned with the part's keys (L2-normalised)
    part-000000.text.npy        the caption vectors, same rows

A part is written as its ``.npy`` files first, then its ``.parquet`` (the commit: a part
without its parquet is not part of the store and is removed on the next write), each through
:func:`biomedica_kit.base.atomic.atomic_path`. A killed run therefore loses at most the part
it was writing, and the next run embeds only the keys no committed part holds (resume and
incremental updates are the same thing). The ``.npy`` files are memory-mapped on reading, so
clustering streams the vectors part by part instead of loading them all.

The DuckDB view ``embeddings`` (:mod:`biomedica_kit.tables.connect`) reads the parquet files:
``key``, ``model`` (the store's name), dims and the dataset version each key was embedded at.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biomedica_kit.base.atomic import atomic_path, atomic_write_bytes, is_temporary

__all__ = ["EMBED_DIR", "KINDS", "EmbeddingStore", "Part", "StoreInfo", "list_stores"]

EMBED_DIR = "embeddings"
KINDS = ("image", "text")
_PART = re.compile(r"^part-(\d{6})\.parquet$")


@dataclass
class StoreInfo:
    """What a store holds (``info.json``)."""

    name: str
    image_model: str | None = None
    image_model_spec: list[str | None] | None = None  # [model, pretrained] for load_encoder
    image_model_version: str | None = None
    image_dims: int | None = None
    text_model: str | None = None
    text_model_spec: list[str | None] | None = None
    text_model_version: str | None = None
    text_dims: int | None = None
    joint: bool = False  # image and text vectors share one space (zero-shot possible)
    dataset_version: str | None = None  # the version the store was last brought up to date with
    count: int = 0
    parts: int = 0
    dtype: str = "float16"
    created: str = ""
    updated: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per embed run

    def dims(self, kind: str) -> int | None:
        """The width of ``kind`` (``image`` or ``text``) vectors, None when not stored."""
        return self.image_dims if kind == "image" else self.text_dims

    def model_version(self, kind: str) -> str | None:
        """The exact model of ``kind`` vectors."""
        return self.image_model_version if kind == "image" else self.text_model_version


@dataclass(frozen=True)
class Part:
    """One committed part: its keys and the paths of its vector files."""

    index: int
    parquet: Path

    def vectors_path(self, kind: str) -> Path:
        """The ``.npy`` file of ``kind`` vectors of this part."""
        return self.parquet.with_name(f"part-{self.index:06d}.{kind}.npy")

    def keys(self) -> list[str]:
        """The part's keys, in row order."""
        import pyarrow.parquet as pq

        return pq.read_table(self.parquet, columns=["key"]).column("key").to_pylist()

    def vectors(self, kind: str) -> np.ndarray:
        """The part's ``kind`` vectors, memory-mapped (float16)."""
        return np.load(self.vectors_path(kind), mmap_mode="r")


def list_stores(dataset: str | os.PathLike[str]) -> list[str]:
    """Names of the embedding stores of a dataset."""
    d = Path(dataset) / EMBED_DIR
    return sorted(p.parent.name for p in d.glob("*/info.json"))


class EmbeddingStore:
    """The store ``DATASET/embeddings/<name>/`` (see module doc)."""

    def __init__(self, dataset: str | os.PathLike[str], name: str) -> None:
        self.dataset = Path(dataset)
        self.name = name
        self.path = self.dataset / EMBED_DIR / name
        self.info = self._read_info()

    def _read_info(self) -> StoreInfo:
        f = self.path / "info.json"
        if not f.is_file():
            return StoreInfo(name=self.name)
        return StoreInfo(**json.loads(f.read_text()))

    def exists(self) -> bool:
        """Whether the store has been written (``info.json`` is there)."""
        return (self.path / "info.json").is_file()

    def save_info(self) -> None:
        """Write ``info.json`` (atomically)."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.info.created = self.info.created or now
        self.info.updated = now
        atomic_write_bytes(self.path / "info.json",
                           json.dumps(asdict(self.info), indent=2).encode())

    def parts(self) -> list[Part]:
        """Committed parts, in order (a parquet whose vector files are all present)."""
        out = []
        for p in sorted(self.path.glob("part-*.parquet")):
            m = _PART.match(p.name)
            if m is None or is_temporary(p):
                continue
            part = Part(int(m.group(1)), p)
            if all(part.vectors_path(k).is_file() for k in self.kinds()):
                out.append(part)
        return out

    def kinds(self) -> list[str]:
        """The vector kinds this store holds."""
        return [k for k in KINDS if self.info.dims(k)]

    def keys(self) -> set[str]:
        """Every key a committed part holds."""
        import pyarrow.parquet as pq

        out: set[str] = set()
        for p in self.parts():
            out.update(pq.read_table(p.parquet, columns=["key"]).column("key").to_pylist())
        return out

    def remove_uncommitted(self) -> list[Path]:
        """Delete vector files of parts that never got their parquet (a killed write)."""
        committed = {p.index for p in self.parts()}
        removed = []
        for f in self.path.glob("part-*.npy"):
            m = re.match(r"^part-(\d{6})\.", f.name)
            if m and int(m.group(1)) not in committed and not is_temporary(f):
                f.unlink()
                removed.append(f)
        return removed

    def write_part(self, keys: Sequence[str], vectors: dict[str, np.ndarray],
                   dataset_version: str) -> Part:
        """Commit one part: ``vectors[kind]`` rows aligned with ``keys``."""
        import pyarrow as pa

        from biomedica_kit.base.atomic import write_parquet_atomic

        index = max((p.index for p in self.parts()), default=-1) + 1
        part = Part(index, self.path / f"part-{index:06d}.parquet")
        for kind in self.kinds():
            arr = np.asarray(vectors[kind], dtype=np.float16)
            if arr.shape != (len(keys), self.info.dims(kind)):
                raise ValueError(f"{kind} vectors {arr.shape} do not fit {len(keys)} keys x "
                                 f"{self.info.dims(kind)}")
            with atomic_path(part.vectors_path(kind)) as tmp, open(tmp, "wb") as f:
                np.save(f, arr)
        n = len(keys)
        table = pa.table({
            "key": pa.array(list(keys), pa.string()),
            "row": pa.array(np.arange(n, dtype=np.int32)),
            "part": pa.array(np.full(n, index, dtype=np.int32)),
            "dataset_version": pa.array([dataset_version] * n, pa.string()),
            "image_dims": pa.array([self.info.image_dims] * n, pa.int32()),
            "text_dims": pa.array([self.info.text_dims] * n, pa.int32()),
        })
        write_parquet_atomic(table, part.parquet)
        self.info.parts = index + 1
        self.info.count += n
        return part

    def iter_vectors(self, kind: str, *, keys: Iterable[str] | None = None,
                     chunk: int = 65536, dtype: Any = np.float32
                     ) -> Iterator[tuple[list[str], np.ndarray]]:
        """``(keys, float32 vectors)`` chunks over the store, part by part (memory-mapped;
        at most ``chunk`` rows in memory). ``keys`` keeps only those keys (e.g. the samples
        of the dataset's current version).

        ``dtype=np.float16`` yields the stored values unconverted: read-only views of the
        memory maps where a chunk's rows are contiguous (nothing is read until used), for
        consumers that convert block by block themselves (:mod:`biomedica_kit.cluster.kmeans`).
        """
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        if kind not in self.kinds():
            raise ValueError(f"store {self.name} has no {kind} vectors")
        raw = np.dtype(dtype) == np.float16
        wanted = pa.array(sorted(set(keys)), pa.string()) if keys is not None else None
        for part in self.parts():
            names = pq.read_table(part.parquet, columns=["key"]).column("key")
            mm = part.vectors(kind)
            rows = np.arange(len(names))
            if wanted is not None:
                mask = pc.is_in(names, value_set=wanted).to_numpy(zero_copy_only=False)
                rows = rows[mask]
            whole = len(rows) == len(names)  # every row: slices, not gathers
            for s in range(0, len(rows), chunk):
                if whole:
                    e = min(s + chunk, len(rows))
                    got, block = names.slice(s, e - s).to_pylist(), mm[s:e]
                else:
                    sel = rows[s: s + chunk]
                    got, block = names.take(pa.array(sel)).to_pylist(), mm[sel]
                yield got, block if raw else np.asarray(block, dtype=dtype)

    def load(self, kind: str, keys: Sequence[str] | None = None
             ) -> tuple[list[str], np.ndarray]:
        """All ``kind`` vectors (float32) in memory, in store order or in the order of
        ``keys`` (every one must be in the store). For small data and lookups."""
        got_keys: list[str] = []
        chunks = []
        for k, v in self.iter_vectors(kind, keys=keys):
            got_keys.extend(k)
            chunks.append(v)
        dims = self.info.dims(kind) or 0
        vecs = np.concatenate(chunks) if chunks else np.zeros((0, dims), np.float32)
        if keys is None:
            return got_keys, vecs
        pos = {k: i for i, k in enumerate(got_keys)}
        missing = [k for k in keys if k not in pos]
        if missing:
            raise KeyError(f"{len(missing)} keys not in store {self.name}, e.g. {missing[:3]}")
        return list(keys), vecs[[pos[k] for k in keys]]
