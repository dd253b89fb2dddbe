"""Near-duplicate groups: exact (same image sha256), perceptual (``image_phash`` Hamming
distance) and embedding similarity. Groups to query and decide on, never deletions.

- ``exact``: samples sharing ``image_sha256`` (a DuckDB group-by over figures).
- ``phash``: 64-bit pHashes at Hamming distance <= ``max_hamming``. Candidates share one of
  ``max_hamming + 1`` bands of the hash exactly (pigeonhole: two hashes that differ in at most
  t bits agree on at least one of t + 1 bands), then the distance is checked exactly.
  Buckets larger than ``max_bucket`` (blank or uniform images all hash alike) are left out.
- ``embedding``: cosine similarity >= ``min_cosine`` between vectors of one k-means cluster
  (the clustering is the blocking; pairs across a cluster boundary are not searched).

Pairs become groups by union-find (transitively: A~B and B~C put A, B, C in one group). The
table has one row per member: ``kind``, ``group`` (numbered per kind by its smallest key),
``key``, ``group_size``, ``score`` (the closest pair the member is in: Hamming distance, or
cosine).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from biomedica_kit.tables.sql import sql_literal

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["NEAR_DUP_KINDS", "embedding_pairs", "exact_pairs", "groups_table", "phash_pairs"]

NEAR_DUP_KINDS = ("exact", "phash", "embedding")
Pair = tuple[str, str, float]


def exact_pairs(figures: Path) -> Iterator[Pair]:
    """Each sample paired with the first (smallest) key of its sha256 group."""
    import duckdb

    con = duckdb.connect()
    rows = con.execute(
        f"SELECT list(key ORDER BY key) FROM read_parquet({sql_literal(str(figures))}) "
        f"WHERE image_sha256 IS NOT NULL GROUP BY image_sha256 HAVING count(*) > 1").fetchall()
    for (keys,) in rows:
        for other in keys[1:]:
            yield keys[0], other, 0.0


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def phash_pairs(keys: list[str], hashes: list[str | None], max_hamming: int = 4,
                max_bucket: int = 2000) -> Iterator[Pair]:
    """Pairs of keys whose 64-bit hex pHashes differ in at most ``max_hamming`` bits."""
    ok = [(k, int(h, 16)) for k, h in zip(keys, hashes, strict=True)
          if h and len(h) == 16]
    if not ok:
        return
    ks = [k for k, _ in ok]
    hs = np.array([h for _, h in ok], dtype=np.uint64)
    bands = max_hamming + 1
    edges = np.linspace(0, 64, bands + 1).astype(int)
    seen: set[tuple[int, int]] = set()
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = (hs >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        sb = band[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sb)) + 1, len(sb)]
        for s, e in zip(starts[:-1], starts[1:], strict=True):
            if e - s < 2 or e - s > max_bucket:
                continue
            idx = order[s:e]
            for a in range(len(idx) - 1):
                rest = idx[a + 1:]
                dist = _popcount(np.bitwise_xor(hs[rest], hs[idx[a]]))
                for j, dj in zip(rest[dist <= max_hamming], dist[dist <= max_hamming],
                                 strict=True):
                    pair = (int(min(idx[a], j)), int(max(idx[a], j)))
                    if pair not in seen:
                        seen.add(pair)
                        yield ks[pair[0]], ks[pair[1]], float(dj)


def embedding_pairs(members: Iterable[tuple[list[str], np.ndarray]],
                    min_cosine: float = 0.95, block: int = 4096) -> Iterator[Pair]:
    """Pairs with cosine >= ``min_cosine`` within each group of ``(keys, vectors)`` (one
    cluster's members; vectors need not be normalised)."""
    for keys, x in members:
        if len(keys) < 2:
            continue
        x = np.asarray(x, np.float32)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        for s in range(0, len(keys), block):
            sims = x[s: s + block] @ x.T
            rows, cols = np.nonzero(sims >= min_cosine)
            for r, c in zip(rows, cols, strict=True):
                i = s + int(r)
                if int(c) > i:
                    yield keys[i], keys[int(c)], float(sims[r, c])


def groups_table(pairs_by_kind: dict[str, Iterable[Pair]]) -> pa.Table:
    """Union-find groups of each kind's pairs as the near_dups table (module doc)."""
    import pyarrow as pa

    rows: list[dict[str, object]] = []
    for kind, pairs in pairs_by_kind.items():
        parent: dict[str, str] = {}
        best: dict[str, float] = {}

        def find(a: str, parent: dict[str, str] = parent) -> str:
            while parent.setdefault(a, a) != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        higher_is_closer = kind == "embedding"
        for a, b, score in pairs:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
            for k in (a, b):
                old = best.get(k)
                if old is None or (score > old if higher_is_closer else score < old):
                    best[k] = score
        members: dict[str, list[str]] = {}
        for k in parent:
            members.setdefault(find(k), []).append(k)
        for g, root in enumerate(sorted(members)):
            group = sorted(members[root])
            rows.extend({"kind": kind, "group": g, "key": k, "group_size": len(group),
                         "score": best[k]} for k in group)
    schema = pa.schema([("kind", pa.string()), ("group", pa.int32()), ("key", pa.string()),
                        ("group_size", pa.int32()), ("score", pa.float32())])
    return pa.Table.from_pylist(rows, schema=schema)
