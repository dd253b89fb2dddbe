"""Search over a dataset's indexes: keyword, vector, hybrid, image and image + text.

A :class:`Searcher` opens the catalog, the keyword index and the vector indexes of one
embeddings store (memory-mapped), and loads the store's own encoders (the models recorded in
its ``info.json``) the first time a query needs them. Every search is one ranked list per
source, each already filtered by the same :class:`~biomedica_kit.tables.catalog.Filters`
(inside tantivy's query and inside faiss's scan), fused by reciprocal-rank fusion
(``score = sum 1 / (60 + rank)``, BIOMEDICA's k=60) when there is more than one:

==============  ===================================================================
``keyword``     BM25 over captions, inline references, titles and abstracts
``vector``      the query's caption-model vector against caption vectors (and
                against image vectors when the model is joint, CLIP-like)
``hybrid``      both of the above, fused
image           the upload's image vector against image vectors (and caption vectors
                for a joint model); with text, fused with the hybrid lists
similar         a sample's own image and caption vectors (itself left out)
==============  ===================================================================

Paging takes the same :data:`FUSE_DEPTH` results (or ``offset + k`` when deeper) from every
list before fusing, so page two is the continuation of page one.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.embed.index import IdFilter, VectorIndex
from biomedica_kit.embed.store import EmbeddingStore, list_stores
from biomedica_kit.serve.indexer import read_index_info
from biomedica_kit.tables.catalog import Catalog, Filters
from biomedica_kit.tables.keyword_index import KeywordIndex

if TYPE_CHECKING:
    from PIL import Image

    from biomedica_kit.embed.encoders import Encoder

__all__ = ["FUSE_DEPTH", "MODES", "RRF_K", "Hit", "NotIndexed", "SearchResult", "Searcher", "rrf"]

MODES = ("keyword", "vector", "hybrid")
RRF_K = 60
#: Results taken from each source before fusing (more when a page reaches deeper), the same
#: for every page, so page two continues page one.
FUSE_DEPTH = 100
#: Columns of the catalog a result carries.
RESULT_COLUMNS = ("key", "caption", "pmcid", "article_id", "title", "license", "license_code",
                  "year", "journal", "kind", "label", "figure_label")
_FILTER_CACHE = 64
_QUERY_CACHE = 512


class NotIndexed(LookupError):
    """A search needs an index (or a model) this dataset does not have."""


@dataclass
class Hit:
    """One result: catalog row fields, fused ``score`` and each source's score and rank."""

    id: int
    score: float
    sources: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class SearchResult:
    """A page of results (``total``: how many match, when a source can tell)."""

    mode: str
    k: int
    offset: int
    hits: list[Hit]
    total: int | None
    took_ms: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # ms per step (encode, search)


def _depth(offset: int, k: int) -> int:
    """How many results to take from each source for the page ``[offset, offset + k)``."""
    return max(FUSE_DEPTH, offset + k)


def _lap(timings: dict[str, float], name: str, since: float) -> None:
    """Add the milliseconds since ``since`` to ``timings[name]``."""
    timings[name] = timings.get(name, 0.0) + (time.perf_counter() - since) * 1e3


def rrf(lists: dict[str, tuple[np.ndarray, np.ndarray]], k: int = RRF_K) -> list[Hit]:
    """Reciprocal-rank fusion of ranked ``(ids, scores)`` lists, best first (ties: smaller
    id). A single list keeps its own scores."""
    hits: dict[int, Hit] = {}
    for name, (ids, scores) in lists.items():
        for rank, (i, s) in enumerate(zip(ids.tolist(), scores.tolist(), strict=True)):
            if i < 0:
                continue
            h = hits.setdefault(i, Hit(i, 0.0))
            h.sources[name] = {"score": float(s), "rank": rank + 1}
            h.score += 1.0 / (k + rank + 1)
    if len(lists) == 1:
        for h in hits.values():
            h.score = next(iter(h.sources.values()))["score"]
    return sorted(hits.values(), key=lambda h: (-h.score, h.id))


class Searcher:
    """The search side of a dataset (module doc). Thread-safe for concurrent queries."""

    def __init__(self, dataset: str | os.PathLike[str], embeddings: str | None = None, *,
                 device: str | None = "cpu", threads: int | None = 1) -> None:
        """``threads``: compute threads of faiss and torch per query (None: their default;
        1 suits a server answering queries concurrently)."""
        self.dataset = Path(dataset).resolve()
        self.catalog = Catalog.open(self.dataset)
        self._all_live = bool(self.catalog.live.all())
        self.keyword = KeywordIndex(self.dataset)
        self.info = read_index_info(self.dataset) or {}
        self.store_name = self._pick_store(embeddings)
        self.vectors: dict[str, VectorIndex] = {}
        self.store: EmbeddingStore | None = None
        if self.store_name is not None:
            self.store = EmbeddingStore(self.dataset, self.store_name)
            for kind in self.store.kinds():
                self.vectors[kind] = VectorIndex(self.dataset, self.store_name, kind)
        self.device = device
        self.threads = threads
        if threads:
            import faiss

            faiss.omp_set_num_threads(threads)
        self._encoders: dict[str, Encoder | None] = {}
        self._lock = threading.Lock()
        self._filters: OrderedDict[Filters, IdFilter] = OrderedDict()
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()

    def _pick_store(self, name: str | None) -> str | None:
        indexed = [s for s in self.info.get("vectors", {}) if s in list_stores(self.dataset)]
        if name is not None:
            if name not in indexed:
                raise NotIndexed(f"embeddings {name!r} are not indexed (indexed: "
                                 f"{indexed or 'none'}); run `biomedica index "
                                 f"{self.dataset} --embeddings {name}`")
            return name
        return indexed[0] if indexed else None

    # ---------------------------------------------------------------------- status

    def has_text_vectors(self) -> bool:
        """Whether a text query can be searched by vector (caption vectors or a joint
        model's image vectors)."""
        return "text" in self.vectors or bool(self.store and self.store.info.joint
                                               and "image" in self.vectors)

    def status(self) -> dict[str, Any]:
        """Versions, counts and what can be searched."""
        current = read_manifest(self.dataset)["dataset_version"]
        return {
            "dataset_version": current,
            "index_version": self.info.get("dataset_version"),
            "stale": self.info.get("dataset_version") != current,
            "samples": int(self.catalog.live.sum()),
            "keyword_docs": self.keyword.num_docs(),
            "embeddings": self.store_name,
            "vectors": {k: len(v) for k, v in self.vectors.items()},
            "modes": list(MODES) if self.has_text_vectors() else ["keyword"],
            "image_search": "image" in self.vectors,
        }

    # ---------------------------------------------------------------------- models

    def encoder(self, kind: str) -> Encoder:
        """The store's ``kind`` encoder (loaded once), NotIndexed when there is none."""
        with self._lock:
            if kind not in self._encoders:
                self._encoders[kind] = self._load_encoder(kind)
        enc = self._encoders[kind]
        if enc is None:
            raise NotIndexed(f"no {kind} model for store {self.store_name}")
        return enc

    def _load_encoder(self, kind: str) -> Encoder | None:
        from biomedica_kit.embed.encoders import load_encoder

        info = self.store.info if self.store is not None else None
        spec = None if info is None else (info.image_model_spec if kind == "image"
                                          else info.text_model_spec)
        if not spec or not spec[0]:
            return None
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        enc = load_encoder(str(spec[0]), pretrained=spec[1], device=self.device)
        if enc.model_version != info.model_version(kind):  # type: ignore[union-attr]
            raise NotIndexed(f"the {kind} model loads as {enc.model_version}, but the store "
                             f"holds {info.model_version(kind)} vectors")  # type: ignore[union-attr]
        return enc

    def embed_text(self, text: str) -> np.ndarray:
        """The query's vector in the caption space (the last few hundred are kept: paging
        and changing filters repeat a query)."""
        with self._lock:
            got = self._queries.get(text)
            if got is not None:
                self._queries.move_to_end(text)
                return got
        vec = self.encoder("text").encode_texts([text])[0]
        with self._lock:
            self._queries[text] = vec
            while len(self._queries) > _QUERY_CACHE:
                self._queries.popitem(last=False)
        return vec

    def embed_image(self, image: Image.Image) -> np.ndarray:
        """An image's vector in the image space, decoded as the store's images were (a JPEG
        at reduced size when the model's input allows: call before ``image.load()``)."""
        from biomedica_kit.embed.decode import fit_image

        enc = self.encoder("image")
        assert enc.image_spec is not None
        image.draft("RGB", (enc.image_spec.resize, enc.image_spec.resize))
        return enc.encode_images(np.array(fit_image(image, enc.image_spec))[None])[0]

    # ---------------------------------------------------------------------- sources

    def id_filter(self, filters: Filters) -> IdFilter | None:
        """The selector of a filter (cached); None when it keeps every indexed id."""
        if filters.empty() and self._all_live:
            return None
        with self._lock:
            got = self._filters.get(filters)
            if got is not None:
                self._filters.move_to_end(filters)
                return got
        made = IdFilter(self.catalog.mask(filters))
        with self._lock:
            self._filters[filters] = made
            while len(self._filters) > _FILTER_CACHE:
                self._filters.popitem(last=False)
        return made

    def _vector_list(self, kind: str, vec: np.ndarray, depth: int, sel: IdFilter | None,
                     timings: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        index = self.vectors.get(kind)
        if index is None:
            raise NotIndexed(f"no {kind} vector index")
        t = time.perf_counter()
        scores, ids = index.search(vec[None], depth, sel)
        _lap(timings, f"{kind}_ann", t)
        return ids[0], scores[0]

    def _text_lists(self, q: str, mode: str, depth: int, filters: Filters,
                    lists: dict[str, tuple[np.ndarray, np.ndarray]],
                    timings: dict[str, float]) -> int | None:
        """Add the text sources of ``mode`` to ``lists``; the keyword match count."""
        total = None
        if mode in ("keyword", "hybrid"):
            t = time.perf_counter()
            ids, scores, total = self.keyword.search(q, depth, filters=filters)
            _lap(timings, "keyword", t)
            lists["keyword"] = (ids, scores)
        if mode in ("vector", "hybrid"):
            if not self.has_text_vectors():
                raise NotIndexed("vector search needs caption vectors: run `biomedica embed` "
                                 "and `biomedica index`")
            t = time.perf_counter()
            vec = self.embed_text(q)
            _lap(timings, "encode_text", t)
            t = time.perf_counter()
            sel = self.id_filter(filters)
            _lap(timings, "filter", t)
            if "text" in self.vectors:
                lists["caption_vector"] = self._vector_list("text", vec, depth, sel, timings)
            if self.store is not None and self.store.info.joint and "image" in self.vectors:
                lists["image_vector"] = self._vector_list("image", vec, depth, sel, timings)
        return total

    def _page(self, mode: str, lists: dict[str, tuple[np.ndarray, np.ndarray]], k: int,
              offset: int, total: int | None, t0: float, timings: dict[str, float],
              drop: int | None = None) -> SearchResult:
        t = time.perf_counter()
        hits = [h for h in rrf(lists) if h.id != drop]
        _lap(timings, "fuse", t)
        if total is None or len(lists) > 1:
            total = None if len(hits) >= offset + k else len(hits)
        return SearchResult(mode, k, offset, hits[offset: offset + k], total,
                            round((time.perf_counter() - t0) * 1e3, 3),
                            {k: round(v, 3) for k, v in timings.items()})

    # ---------------------------------------------------------------------- searches

    def search(self, q: str, *, mode: str = "hybrid", k: int = 10, offset: int = 0,
               filters: Filters | None = None) -> SearchResult:
        """Text search (module doc); ValueError for a query without words or a bad mode."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        t0 = time.perf_counter()
        filters = filters or Filters()
        lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        timings: dict[str, float] = {}
        total = self._text_lists(q, mode, _depth(offset, k), filters, lists, timings)
        return self._page(mode, lists, k, offset, total, t0, timings)

    def search_image(self, image: Image.Image, q: str | None = None, *, k: int = 10,
                     offset: int = 0, filters: Filters | None = None) -> SearchResult:
        """Images like ``image`` (with ``q``: fused with the hybrid text lists)."""
        t0 = time.perf_counter()
        filters = filters or Filters()
        if "image" not in self.vectors:
            raise NotIndexed("image search needs image vectors: run `biomedica embed` and "
                             "`biomedica index`")
        depth = _depth(offset, k)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        vec = self.embed_image(image)
        _lap(timings, "encode_image", t)
        sel = self.id_filter(filters)
        lists = {"image_vector": self._vector_list("image", vec, depth, sel, timings)}
        if self.store is not None and self.store.info.joint and "text" in self.vectors:
            lists["caption_vector"] = self._vector_list("text", vec, depth, sel, timings)
        if q and q.strip():
            self._text_lists(q, "hybrid" if self.has_text_vectors() else "keyword", depth,
                             filters, lists, timings)
        return self._page("image+text" if q and q.strip() else "image", lists, k, offset,
                          None, t0, timings)

    def similar(self, key: str, *, k: int = 10, offset: int = 0,
                filters: Filters | None = None) -> SearchResult:
        """More like the sample ``key``: its stored image and caption vectors, fused."""
        t0 = time.perf_counter()
        id_ = self.catalog.id_of(key)
        if id_ is None:
            raise KeyError(key)
        sel = self.id_filter(filters or Filters())
        depth = _depth(offset, k) + 1
        lists = {}
        timings: dict[str, float] = {}
        for kind, index in self.vectors.items():
            vec = index.vector(id_)
            if vec is not None:
                lists[f"{'caption' if kind == 'text' else 'image'}_vector"] = \
                    self._vector_list(kind, vec, depth, sel, timings)
        if not lists:
            raise NotIndexed(f"{key} has no indexed vectors")
        return self._page("similar", lists, k, offset, None, t0, timings, drop=id_)

    # ---------------------------------------------------------------------- results

    def rows(self, hits: Sequence[Hit]) -> list[dict[str, Any]]:
        """The results of a page as JSON-ready dicts (catalog fields, scores, URLs)."""
        rows = self.catalog.rows([h.id for h in hits], RESULT_COLUMNS)
        out = []
        for h, r in zip(hits, rows, strict=True):
            key = quote(r["key"], safe="")
            out.append({**r, "score": round(h.score, 6), "sources": h.sources,
                        "url": f"/samples/{key}", "image_url": f"/samples/{key}/image",
                        "thumbnail_url": f"/samples/{key}/thumbnail",
                        "article_url": "/articles/" + quote(r["pmcid"] or r["article_id"],
                                                            safe="")})
        return out
