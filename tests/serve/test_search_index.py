"""The search indexes on real pairs: incremental updates (new samples, a new version that
changes fields, samples gone), filters inside the keyword query and inside the vector scan
(a selective filter never comes back short), and the IVF index's tuned recall."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from curate_datasets import PAIRS

from biomedica_kit.embed.index import IdFilter, VectorIndex
from biomedica_kit.serve.indexer import index_dataset
from biomedica_kit.tables.catalog import Catalog, Filters
from biomedica_kit.tables.keyword_index import KeywordIndex, query_terms

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _pairs(dest: Path, n: int) -> Path:
    """The first ``n`` real pairs, image paths leading back to the corpus."""
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()[:n]]
    for r in rows:
        r["image"] = os.path.relpath(PAIRS.parent / r["image"], dest)
    out = dest / f"pairs-{n}.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _captions(ds: Path) -> dict[str, str]:
    t = pq.read_table(ds / "metadata" / "figures.parquet", columns=["key", "caption"])
    return dict(zip(t.column("key").to_pylist(), t.column("caption").to_pylist(), strict=True))


@pytest.fixture(scope="module")
def grown(tmp_path_factory) -> dict:
    """10 real pairs indexed with caption vectors, then 10 more added (a new version)."""
    from biomedica_kit.embed.run import embed
    from biomedica_kit.etl.pairs import import_pairs

    tmp = tmp_path_factory.mktemp("grown")
    ds = tmp / "ds"
    import_pairs(_pairs(tmp, 10), ds, workers=1, progress=False)
    embed(ds, model="none", part_size=16, workers=0, progress=False)
    first = index_dataset(ds)
    ids_before = {k: Catalog.open(ds).id_of(k) for k in _captions(ds)}
    import_pairs(_pairs(tmp, 20), ds, workers=1, progress=False)
    embed(ds, model="none", part_size=16, workers=0, progress=False)
    second = index_dataset(ds)
    third = index_dataset(ds)
    return {"ds": ds, "first": first, "second": second, "third": third,
            "ids_before": ids_before}


def test_a_new_version_indexes_only_its_new_samples(grown):
    first, second, third = grown["first"], grown["second"], grown["third"]
    assert (first.added, first.keyword_written, first.samples) == (10, 10, 10)
    assert (second.added, second.changed, second.removed) == (10, 0, 0)
    assert second.keyword_written == 10 and second.keyword_docs == 20
    (store,) = second.vectors
    assert second.vectors[store]["text"]["count"] == 20
    assert (third.added, third.changed, third.keyword_written) == (0, 0, 0)
    assert second.dataset_version != first.dataset_version
    info = json.loads((grown["ds"] / "index" / "info.json").read_text())
    manifest = json.loads((grown["ds"] / "manifest.json").read_text())
    assert info["dataset_version"] == manifest["dataset_version"]
    cat = Catalog.open(grown["ds"])
    assert {k: cat.id_of(k) for k in grown["ids_before"]} == grown["ids_before"]


def test_new_samples_are_found_by_their_own_caption(grown):
    ds = grown["ds"]
    cat, kw = Catalog.open(ds), KeywordIndex(ds)
    new = [k for k in _captions(ds) if k not in grown["ids_before"]]
    (store,) = grown["second"].vectors
    vi = VectorIndex(ds, store, "text")
    for key in new[:5]:
        caption = _captions(ds)[key]
        ids, _, _ = kw.search(caption[:300], 3)
        assert cat.id_of(key) in ids.tolist(), key
        _, vids = vi.search(vi.vector(cat.id_of(key)), 1)
        assert vids[0][0] == cat.id_of(key)


def test_a_version_that_changes_fields_reindexes_those_samples(grown, tmp_path):
    import shutil

    from biomedica_kit.dataset.changes import apply_changes

    ds = tmp_path / "ds"
    shutil.copytree(grown["ds"], ds)
    keys = sorted(_captions(ds))[:2]
    apply_changes(ds, {k: {"journal": "Journal of Index Tests"} for k in keys},
                  kind="test", fields=["journal"])
    s = index_dataset(ds)
    assert (s.added, s.changed, s.removed) == (0, 2, 0)
    assert s.keyword_written == 2 and s.keyword_docs == 20
    cat, kw = Catalog.open(ds), KeywordIndex(ds)
    only = Filters(journal=("Journal of Index Tests",))
    ids, _, total = kw.search(_captions(ds)[keys[0]][:200], 10, filters=only)
    assert total == 2 and sorted(cat.rows(ids, ["key"])[i]["key"] for i in range(2)) == keys
    assert int(cat.mask(only).sum()) == 2


def test_samples_gone_from_the_version_are_never_found(grown, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(grown["ds"], ds)
    # No command makes a version that drops samples yet: figures.parquet without three rows
    # (its export metadata kept, so it still reads as current) stands in for one.
    path = ds / "metadata" / "figures.parquet"
    table = pq.read_table(path)
    gone = sorted(table.column("key").to_pylist())[:3]
    keep = [k not in gone for k in table.column("key").to_pylist()]
    pq.write_table(table.filter(keep), path)
    s = index_dataset(ds)
    assert (s.added, s.changed, s.removed, s.samples, s.keyword_docs) == (0, 0, 3, 17, 17)
    cat, kw = Catalog.open(ds), KeywordIndex(ds)
    (store,) = s.vectors
    vi = VectorIndex(ds, store, "text")
    for key in gone:
        i = cat.id_of(key)
        assert not cat.live[i]
        ids, _, _ = kw.search(_captions(grown["ds"])[key][:300], 20)
        assert i not in ids.tolist()
        _, vids = vi.search(vi.vector(i), 20, IdFilter(cat.mask()))
        assert i not in vids[0].tolist() and len(vids[0][vids[0] >= 0]) == 17


def test_query_text_is_words_only():
    assert query_terms('caption:foo AND (bar*) "x" OR -y') == ["caption", "foo", "and", "bar",
                                                                "x", "or", "y"]
    assert query_terms("!!! ??? _ __init__") == ["init"]
    assert len(query_terms("w " * 500)) == 64


def test_keyword_filters_run_inside_the_query(grown):
    ds = grown["ds"]
    cat, kw = Catalog.open(ds), KeywordIndex(ds)
    years = sorted({y for y in cat.years.tolist() if y > 0})
    lo = years[len(years) // 2]
    ids, _, total = kw.search("figure", 40, filters=Filters(years=(lo, None)))
    assert total == len(ids) > 0
    assert all(r["year"] >= lo for r in cat.rows(ids, ["year"]))
    assert total == int((cat.mask(Filters(years=(lo, None))) & _matches(kw, cat, "figure")).sum())


def _matches(kw: KeywordIndex, cat: Catalog, q: str) -> np.ndarray:
    ids, _, _ = kw.search(q, len(cat))
    out = np.zeros(len(cat), bool)
    out[ids] = True
    return out


# ------------------------------------------------------------------ the IVF index itself


def _synthetic_store(ds: Path, n: int, dims: int, seed: int = 0):
    """A store of clustered synthetic caption vectors, in parts of 1000."""
    from biomedica_kit.embed.store import EmbeddingStore

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, dims)).astype(np.float32)
    low = rng.standard_normal((n, 16)).astype(np.float32) @ rng.standard_normal(
        (16, dims)).astype(np.float32) * 0.15
    x = centres[rng.integers(0, 64, n)] + low
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = EmbeddingStore(ds, "synthetic")
    store.info.text_dims = dims
    store.info.text_model_version = "synthetic"
    keys = [f"k{i:06d}" for i in range(n)]
    for s in range(0, n, 1000):
        store.write_part(keys[s: s + 1000], {"text": x[s: s + 1000]}, "v1")
    store.save_info()
    return store, keys, x


def test_ivf_index_reaches_its_recall_and_a_selective_filter_is_never_short(tmp_path,
                                                                           monkeypatch):
    import biomedica_kit.embed.index as vindex

    monkeypatch.setattr(vindex, "FLAT_LIMIT", 500)
    store, keys, x = _synthetic_store(tmp_path, 4000, 32)
    ids_of = {k: i for i, k in enumerate(keys)}
    info = vindex.update_vector_index(tmp_path, store, "text",
                                      lambda ks: np.array([ids_of[k] for k in ks]), len(keys),
                                      generation="g", dataset_version="v1")
    assert info.factory == "ivf" and info.count == 4000 and info.nlist >= 64
    assert info.recall_at_10 >= vindex.TARGET_RECALL and info.nprobe < info.nlist
    vi = VectorIndex(tmp_path, "synthetic", "text")
    rng = np.random.default_rng(1)
    q = x[rng.choice(4000, 50)] + 0.05 * rng.standard_normal((50, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    _, got = vi.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, got, strict=True)])
    assert recall >= 0.9
    # 12 matching vectors of 4000 (0.3%): all of them come back, best first, and nothing else.
    mask = np.zeros(4000, bool)
    mask[rng.choice(4000, 12, replace=False)] = True
    scores, got = vi.search(q[:5], 10, IdFilter(mask))
    for row, qv in zip(got, q[:5], strict=True):
        allowed = np.flatnonzero(mask)
        best = allowed[np.argsort(-(x[allowed] @ qv))][:10]
        assert row.tolist() == best.tolist()
    # An update adds only what is new, keeping the trained centroids.
    more = [f"n{i:06d}" for i in range(200)]
    store.write_part(more, {"text": x[:200]}, "v2")
    ids_of.update({k: 4000 + i for i, k in enumerate(more)})
    info2 = vindex.update_vector_index(tmp_path, store, "text",
                                       lambda ks: np.array([ids_of[k] for k in ks]), 4200,
                                       generation="g", dataset_version="v2")
    assert info2.count == 4200 and info2.trained_on == info.trained_on
