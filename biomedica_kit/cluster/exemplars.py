"""Exemplars per cluster, kept while the assignments stream by.

Three kinds, ``n`` each: ``centroid`` (nearest to the centroid), ``boundary`` (smallest margin
between the distance to their centroid and to the next one: the members most likely to be
misfiled) and ``random`` (a seeded draw: the members whose hash of ``seed`` and key is
smallest, so the draw does not depend on chunking or order). :class:`TopPerCluster` holds at
most ``n`` candidates per cluster at any time, whatever the number of vectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["EXEMPLAR_KINDS", "Exemplars", "TopPerCluster", "key_scores"]

EXEMPLAR_KINDS = ("centroid", "boundary", "random")


def key_scores(keys: Sequence[str], seed: int) -> np.ndarray:
    """A deterministic pseudo-random score in [0, 1) per key (from ``seed`` and the key)."""
    prefix = f"{seed}:".encode()
    raw = b"".join(hashlib.blake2b(prefix + k.encode(), digest_size=8).digest() for k in keys)
    return np.frombuffer(raw, dtype=">u8").astype(np.float64) / 2.0 ** 64


class TopPerCluster:
    """The ``n`` lowest-scoring keys of every cluster (ties broken by key)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.keys = np.empty(0, dtype=object)
        self.cluster = np.empty(0, dtype=np.int64)
        self.score = np.empty(0, dtype=np.float64)
        self.distance = np.empty(0, dtype=np.float32)

    def add(self, keys: Sequence[str], cluster: np.ndarray, score: np.ndarray,
            distance: np.ndarray) -> None:
        """Offer a chunk of candidates."""
        k = np.concatenate([self.keys, np.asarray(keys, dtype=object)])
        c = np.concatenate([self.cluster, np.asarray(cluster, np.int64)])
        s = np.concatenate([self.score, np.asarray(score, np.float64)])
        d = np.concatenate([self.distance, np.asarray(distance, np.float32)])
        order = np.lexsort((k.astype(str), s, c))
        k, c, s, d = k[order], c[order], s[order], d[order]
        starts = np.r_[0, np.flatnonzero(np.diff(c)) + 1]
        rank = np.arange(len(c)) - np.repeat(starts, np.diff(np.r_[starts, len(c)]))
        keep = rank < self.n
        self.keys, self.cluster, self.score, self.distance = k[keep], c[keep], s[keep], d[keep]

    def rows(self, kind: str) -> list[dict]:
        """``{cluster, key, kind, rank, distance}`` rows, by cluster then rank."""
        out, last, rank = [], None, 0
        for key, c, d in zip(self.keys, self.cluster, self.distance, strict=True):
            rank = rank + 1 if c == last else 0
            last = c
            out.append({"cluster": int(c), "key": str(key), "kind": kind, "rank": rank,
                        "distance": float(d)})
        return out


class Exemplars:
    """The three exemplar kinds of every cluster (see module doc)."""

    def __init__(self, n: int, seed: int) -> None:
        self.seed = seed
        self.tops = {kind: TopPerCluster(n) for kind in EXEMPLAR_KINDS}

    def add(self, keys: Sequence[str], cluster: np.ndarray, d1: np.ndarray,
            d2: np.ndarray) -> None:
        """Offer a chunk of assignments (distance to the nearest and the second centroid)."""
        margin = np.where(np.isfinite(d2), d2 - d1, np.inf)
        self.tops["centroid"].add(keys, cluster, d1, d1)
        self.tops["boundary"].add(keys, cluster, margin, d1)
        self.tops["random"].add(keys, cluster, key_scores(keys, self.seed), d1)

    def rows(self) -> list[dict]:
        """Every exemplar row, kind by kind."""
        return [r for kind, top in self.tops.items() for r in top.rows(kind)]
