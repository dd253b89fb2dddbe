"""The keyword index: BM25 over captions, inline references and article titles/abstracts.

A `tantivy <https://github.com/quickwit-oss/tantivy-py>`_ index in ``DATASET/index/keyword/``
whose documents are catalog ids (:mod:`biomedica_kit.tables.catalog`): the text fields
``caption`` (boosted), ``refs`` (the paragraphs citing the figure), ``title`` and
``abstract`` (English stemming), and the filter fields (licence category and code, label,
journal, kind as exact terms; year as a number). Filters are clauses of the query itself, so
tantivy skips non-matching documents while scoring and a filtered top-k is never short.

Why tantivy (measured in ``bench/bench_search.py``, see the README): it updates in place
(documents added and deleted, segments merged in the background, a commit is atomic: new
segments, then ``meta.json`` swapped), its files are memory-mapped, and filters run inside
the query; ``bm25s`` (BIOMEDICA's choice) rebuilds its whole matrix for any change and DuckDB's
FTS has no incremental update either.

User text never reaches the query parser as syntax: :func:`query_terms` keeps the words
(letters and digits), so field names, operators, wildcards and parentheses in a query string
are just words, and a text without any matches nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biomedica_kit.tables.catalog import INDEX_DIR, TEXT_FIELDS, Filters

if TYPE_CHECKING:
    import tantivy

__all__ = ["KEYWORD_DIR", "KeywordIndex", "query_terms"]

KEYWORD_DIR = "keyword"
_TERMS = ("license", "license_code", "label", "journal", "kind")
_BOOSTS = {"caption": 2.0, "title": 1.0, "refs": 0.7, "abstract": 0.5}
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_MAX_TERMS = 64
_HEAP = 64 << 20


def query_terms(text: str) -> list[str]:
    """The words of a query (lower-cased, at most 64): everything else is dropped."""
    return [w.lower() for w in _WORD.findall(text or "")][:_MAX_TERMS]


def _schema() -> tantivy.Schema:
    import tantivy

    b = tantivy.SchemaBuilder()
    b.add_unsigned_field("id", stored=True, indexed=True, fast=True)
    for name in TEXT_FIELDS:
        b.add_text_field(name, stored=False, tokenizer_name="en_stem", index_option="freq")
    for name in _TERMS:
        b.add_text_field(name, stored=False, tokenizer_name="raw", index_option="basic")
    b.add_integer_field("year", stored=False, indexed=True, fast=True)
    return b.build()


class KeywordIndex:
    """The tantivy index of a dataset (see module doc)."""

    def __init__(self, dataset: str | os.PathLike[str], *, create: bool = False) -> None:
        import tantivy

        self.path = Path(dataset) / INDEX_DIR / KEYWORD_DIR
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not (self.path / "meta.json").is_file():
            raise FileNotFoundError(f"{self.path}: no keyword index; run `biomedica index "
                                    f"{dataset}`")
        self.schema = _schema()
        self.index = tantivy.Index(self.schema, path=str(self.path), reuse=True)

    # ------------------------------------------------------------------------- writing

    def clear(self) -> None:
        """Delete every document (a rebuild)."""
        w = self.index.writer(_HEAP, 1)
        w.delete_all_documents()
        w.commit()
        w.wait_merging_threads()

    def update(self, batches: Iterable[Sequence[Mapping[str, Any]]], removed: Iterable[int] = ()
               ) -> int:
        """Write rows (``id``, text and filter fields; an id already there is replaced) and
        delete ``removed`` ids, in one commit. Returns the number of rows written."""
        import tantivy

        w = self.index.writer(_HEAP, 1)
        n = 0
        gone = [int(i) for i in removed]
        if gone:
            w.delete_documents_by_query(tantivy.Query.term_set_query(self.schema, "id", gone))
        for rows in batches:
            # A delete applies to documents committed before it: the old versions only.
            w.delete_documents_by_query(tantivy.Query.term_set_query(
                self.schema, "id", [int(r["id"]) for r in rows]))
            for r in rows:
                doc = tantivy.Document()
                doc.add_unsigned("id", int(r["id"]))
                for name in TEXT_FIELDS:
                    if r.get(name):
                        doc.add_text(name, str(r[name]))
                for name in _TERMS:
                    if r.get(name) is not None:
                        doc.add_text(name, str(r[name]))
                if r.get("year") is not None:
                    doc.add_integer("year", int(r["year"]))
                w.add_document(doc)
                n += 1
        w.commit()
        w.wait_merging_threads()
        self.index.reload()
        return n

    # ------------------------------------------------------------------------- reading

    def num_docs(self) -> int:
        """Documents in the index."""
        return int(self.index.searcher().num_docs)

    def _filter_clauses(self, filters: Filters) -> list[tantivy.Query]:
        import tantivy

        out = []
        for name, values in filters.strings().items():
            out.append(tantivy.Query.term_set_query(self.schema, name, list(values)))
        lo, hi = filters.years
        if lo is not None or hi is not None:
            out.append(tantivy.Query.range_query(self.schema, "year", tantivy.FieldType.Integer,
                                                 lo, hi))
        return out

    def query(self, text: str, filters: Filters | None = None) -> tantivy.Query | None:
        """The tantivy query for user text and filters (None: ``text`` has no words)."""
        import tantivy

        words = query_terms(text)
        if not words:
            return None
        parsed = self.index.parse_query(" ".join(words), list(TEXT_FIELDS),
                                        field_boosts=_BOOSTS)
        clauses = [(tantivy.Occur.Must, parsed)]
        if filters is not None and not filters.empty():
            clauses += [(tantivy.Occur.Must, q) for q in self._filter_clauses(filters)]
        return tantivy.Query.boolean_query(clauses)

    def search(self, text: str, k: int = 10, *, filters: Filters | None = None,
               offset: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
        """``(ids, BM25 scores, matching documents)``: the best ``k`` after ``offset`` (none
        for a text without words)."""
        query = self.query(text, filters)
        if query is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), 0
        searcher = self.index.searcher()
        res = searcher.search(query, limit=k, offset=offset, count=True)
        hits = res.hits
        ids = searcher.fast_field_values("id", [a for _, a in hits]) if hits else []
        return (np.asarray(ids, dtype=np.int64), np.asarray([s for s, _ in hits], np.float32),
                int(getattr(res, "count", 0) or 0))
