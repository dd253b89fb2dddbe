"""Evaluation metrics on vectors and scores: retrieval recall@k and zero-shot accuracy.

Pure numpy, independent of models and datasets, so each number :mod:`biomedica_train.evaluate`
reports can be checked on inputs whose answer is known.

**Retrieval.** Queries and gallery are the same ``n`` samples (images one side, captions the
other, L2-normalised). Two samples are *equivalent* when they share a caption text or an image
(:func:`equivalence_classes`: connected components of "same caption" and "same image
digest"): a query is answered correctly by any sample of its class, since the gallery cannot
tell identical captions (or identical images) apart. A query's rank is the number of gallery
items scoring strictly above its best-scoring equivalent item (0 = first); recall@k is the
share of queries with rank < k. With ``n <= k``, recall@k is 1 by construction.

**Zero-shot.** ``scores[i, c]`` is the similarity of sample ``i`` to class ``c``; ``truth[i]``
its class index. top-k accuracy is the share of samples whose class is among their ``k``
highest scores (ties broken by class order, as ``argsort`` does); balanced accuracy is the mean
over the classes present in ``truth`` of their top-1 recall (classes without samples are not
averaged in, as scikit-learn's ``balanced_accuracy_score`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ZeroShot", "equivalence_classes", "recall_at", "retrieval_ranks", "topk_hits",
           "zero_shot"]


def equivalence_classes(*keys: Sequence[object | None]) -> np.ndarray:
    """A class id per sample: samples equal in any of the ``keys`` sequences (None never
    matches) end up in one class (union-find over each sequence's equal values)."""
    n = len(keys[0]) if keys else 0
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for seq in keys:
        if len(seq) != n:
            raise ValueError("every key sequence must have one value per sample")
        first: dict[object, int] = {}
        for i, v in enumerate(seq):
            if v is None or v == "":
                continue
            j = first.setdefault(v, i)
            if j != i:
                ra, rb = find(i), find(j)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray, classes: np.ndarray, *,
                    block: int = 1024) -> np.ndarray:
    """Each query's rank (0-based) of its best equivalent gallery item (see module doc).

    ``queries[i]`` and ``gallery[i]`` are sample ``i``; ``classes[i]`` its equivalence class.
    Computed ``block`` queries at a time, so memory is ``block x n``, not ``n x n``.
    """
    q = np.asarray(queries, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    cls = np.asarray(classes)
    if not (len(q) == len(g) == len(cls)):
        raise ValueError(f"queries ({len(q)}), gallery ({len(g)}) and classes ({len(cls)}) "
                         f"must have one row per sample")
    ranks = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), block):
        sims = q[start:start + block] @ g.T
        pos = cls[None, :] == cls[start:start + block, None]
        best = np.where(pos, sims, -np.inf).max(axis=1)
        ranks[start:start + block] = (sims > best[:, None]).sum(axis=1)
    return ranks


def recall_at(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose rank is below ``k`` (NaN without queries)."""
    r = np.asarray(ranks)
    return float(np.mean(r < k)) if len(r) else float("nan")


def topk_hits(scores: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    """Whether each sample's class is among its ``k`` highest-scoring classes."""
    s = np.asarray(scores)
    t = np.asarray(truth)
    if len(s) == 0:
        return np.zeros(0, dtype=bool)
    k = min(k, s.shape[1])
    # A stable descending order: the higher score first, the lower class index on ties.
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return (order == t[:, None]).any(axis=1)


@dataclass
class ZeroShot:
    """Zero-shot classification results over ``n`` samples."""

    n: int
    top1: float
    top5: float
    balanced_accuracy: float
    #: class index -> (samples of that class, their top-1 accuracy, their top-5 accuracy)
    per_class: dict[int, tuple[int, float, float]]
    predicted: np.ndarray  # top-1 class index per sample


def zero_shot(scores: np.ndarray, truth: np.ndarray) -> ZeroShot:
    """top-1, top-5 and balanced accuracy, and per-class accuracy (module doc)."""
    t = np.asarray(truth, dtype=np.int64)
    hit1 = topk_hits(scores, t, 1)
    hit5 = topk_hits(scores, t, 5)
    per: dict[int, tuple[int, float, float]] = {}
    for c in np.unique(t):
        m = t == c
        per[int(c)] = (int(m.sum()), float(hit1[m].mean()), float(hit5[m].mean()))
    nan = float("nan")
    pred = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, 0] if len(t) else t
    return ZeroShot(
        n=len(t), top1=float(hit1.mean()) if len(t) else nan,
        top5=float(hit5.mean()) if len(t) else nan,
        balanced_accuracy=float(np.mean([v[1] for v in per.values()])) if per else nan,
        per_class=per, predicted=pred)
