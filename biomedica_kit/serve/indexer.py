"""``biomedica index``: the catalog, keyword index and vector indexes of a dataset, updated
incrementally.

:func:`index_dataset` refreshes the metadata (a no-op when current), takes the dataset's
writer lock and brings ``DATASET/index/`` up to date with the current version:

- the catalog (:mod:`biomedica_kit.tables.catalog`): new samples get new ids, changed rows
  are marked, samples no longer in the version are marked not live;
- the keyword index (:mod:`biomedica_kit.tables.keyword_index`): only new and changed ids are
  written, removed ones deleted;
- one vector index per kind of each embeddings store (:mod:`biomedica_kit.embed.index`):
  only vectors the index lacks are added.

``index/info.json`` records the dataset version indexed, the catalog's generation (a new one
when the catalog is rebuilt, which rebuilds every index over it) and what each index holds.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from biomedica_kit.base.atomic import atomic_write_bytes, sweep_temporaries
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.embed.index import update_vector_index
from biomedica_kit.embed.store import EmbeddingStore, list_stores
from biomedica_kit.tables.catalog import INDEX_DIR, update_catalog
from biomedica_kit.tables.export import export
from biomedica_kit.tables.keyword_index import KeywordIndex

__all__ = ["INFO_FILE", "IndexSummary", "index_dataset", "read_index_info"]

INFO_FILE = "info.json"


@dataclass
class IndexSummary:
    """What :func:`index_dataset` did (also ``index/info.json``)."""

    dataset: str
    dataset_version: str
    generation: str
    samples: int  # live catalog ids
    ids: int  # all catalog ids (live or not)
    added: int
    changed: int
    removed: int
    keyword_docs: int
    keyword_written: int
    vectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # store -> kind -> info
    seconds: float = 0.0
    updated: str = ""

    def format_lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        out = [f"index     {Path(self.dataset) / INDEX_DIR} (version {self.dataset_version})",
               f"catalog   {self.samples} samples ({self.added} new, {self.changed} changed, "
               f"{self.removed} removed; {self.ids} ids)",
               f"keyword   {self.keyword_docs} documents ({self.keyword_written} written)"]
        for store, kinds in self.vectors.items():
            for kind, info in kinds.items():
                tuned = (f", nprobe {info['nprobe']} of {info['nlist']}, recall@10 "
                         f"{info['recall_at_10']:.3f}") if info["factory"] == "ivf" else ""
                out.append(f"vectors   {store}/{kind}: {info['count']} x {info['dims']} "
                           f"({info['factory']}{tuned}; {info['seconds']:.1f} s)")
        out.append(f"time      {self.seconds:.1f} s")
        return out


def read_index_info(dataset: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``index/info.json`` of a dataset, None before the first ``biomedica index``."""
    path = Path(dataset) / INDEX_DIR / INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def index_dataset(dataset: str | os.PathLike[str], *,
                  embeddings: Sequence[str] | None = None, rebuild: bool = False,
                  refresh: bool = True) -> IndexSummary:
    """Bring ``DATASET/index/`` up to date (module doc). ``embeddings`` names the stores to
    index (default: every store of the dataset; an empty list: none); ``refresh=False``
    indexes ``metadata/figures.parquet`` as it is, without exporting it first."""
    t0 = time.perf_counter()
    root = Path(dataset)
    if refresh:
        export(root)
    names = list_stores(root) if embeddings is None else list(embeddings)
    known = set(list_stores(root))
    missing = [n for n in names if n not in known]
    if missing:
        raise FileNotFoundError(f"no embeddings store {missing[0]!r} in {root} (stores: "
                                f"{sorted(known) or 'none; run biomedica embed'})")
    with dataset_lock(root, "index"):
        sweep_temporaries(root / INDEX_DIR)
        version = read_manifest(root)["dataset_version"]
        previous = read_index_info(root)
        rebuild = rebuild or previous is None
        generation = uuid.uuid4().hex[:16] if rebuild else previous["generation"]  # type: ignore[index]
        upd = update_catalog(root, rebuild=rebuild)
        catalog = upd.catalog
        keyword = KeywordIndex(root, create=True)
        if rebuild:
            keyword.clear()
        written = keyword.update(upd.iter_rows(), removed=upd.removed)

        def ids_of(keys: Sequence[str]) -> np.ndarray:
            return np.array([-1 if (i := catalog.id_of(k)) is None else i for k in keys],
                            dtype=np.int64)

        vectors: dict[str, dict[str, Any]] = dict(previous.get("vectors", {})) \
            if previous and not rebuild else {}
        for name in names:
            store = EmbeddingStore(root, name)
            vectors[name] = {
                kind: asdict(update_vector_index(root, store, kind, ids_of, len(catalog),
                                                 generation=generation,
                                                 dataset_version=version))
                for kind in store.kinds()}
        summary = IndexSummary(
            dataset=str(root), dataset_version=version, generation=generation,
            samples=int(catalog.live.sum()), ids=len(catalog), added=len(upd.added),
            changed=len(upd.changed), removed=len(upd.removed),
            keyword_docs=keyword.num_docs(), keyword_written=written, vectors=vectors,
            seconds=round(time.perf_counter() - t0, 3),
            updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        atomic_write_bytes(root / INDEX_DIR / INFO_FILE,
                           json.dumps(asdict(summary), indent=2).encode())
    return summary
