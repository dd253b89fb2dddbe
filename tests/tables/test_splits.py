"""Article-grouped splits: a decision file, stable across versions, no article on two sides."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from biomedica_kit.cli import main
from biomedica_kit.tables.connect import connect
from biomedica_kit.tables.splits import (
    SplitError,
    group_samples,
    make_split,
    read_split,
    split_info,
    split_keys,
    split_path,
)


@pytest.fixture()
def dataset(sample_dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(sample_dataset, out)
    return out


def _articles(ds: Path) -> dict[str, str]:
    con = connect(ds)
    try:
        return dict(con.execute("SELECT key, article_id FROM figures").fetchall())
    finally:
        con.close()


def test_every_sample_in_one_split_and_no_article_on_two_sides(dataset: Path):
    s = make_split(dataset)
    table = read_split(dataset)
    articles = _articles(dataset)
    assert sorted(table.column("key").to_pylist()) == sorted(articles)
    assert sum(s.samples.values()) == len(articles) == 97
    side: dict[str, set[str]] = {}
    for key, split in zip(table.column("key").to_pylist(), table.column("split").to_pylist(),
                          strict=True):
        side.setdefault(articles[key], set()).add(split)
    assert len(side) == 14  # the bundled sample's articles with samples
    assert all(len(v) == 1 for v in side.values()), side
    # 14 articles are too few for the hash to fill three splits: exact counts, recorded
    assert s.method == "rank" and all(s.groups[x] >= 1 for x in ("train", "validation", "test"))
    info = split_info(dataset)
    assert info["method"] == "rank" and info["seed"] == 0
    assert info["dataset_version"] == s.dataset_version
    assert split_keys(dataset, "test") == {
        k for k, v in zip(table.column("key").to_pylist(), table.column("split").to_pylist(),
                          strict=True) if v == "test"}


def test_same_seed_same_split_other_seed_other_split(dataset: Path, tmp_path: Path):
    make_split(dataset, name="a", seed=7)
    make_split(dataset, name="b", seed=7)
    make_split(dataset, name="c", seed=8)
    a, b, c = (read_split(dataset, n).to_pylist() for n in "abc")
    assert a == b
    assert a != c


def test_rerun_keeps_every_placed_group(dataset: Path):
    make_split(dataset)
    table = read_split(dataset)
    meta = pq.read_schema(split_path(dataset)).metadata
    groups = table.column("group").to_pylist()
    moved = groups[0]
    old = table.column("split").to_pylist()
    target = "test" if old[0] != "test" else "train"
    edited = [target if g == moved else s for g, s in zip(groups, old, strict=True)]
    tampered = table.set_column(2, "split", pa.array(edited)).replace_schema_metadata(meta)
    pq.write_table(tampered, split_path(dataset))
    s = make_split(dataset)
    assert s.kept == 14 and s.method == "rank"
    assert read_split(dataset).column("split").to_pylist() == edited  # the decision stands
    with pytest.raises(SplitError, match="seed 0"):
        make_split(dataset, seed=1)
    make_split(dataset, seed=1, previous=False)
    assert split_info(dataset)["seed"] == 1


def test_hash_placement_is_stable_when_articles_are_added(tmp_path: Path):
    from biomedica_kit.tables.splits import _assign

    fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
    names = [f"article-{i}" for i in range(400)]
    first, method = _assign(names, fractions, 0, {})
    more, method2 = _assign(names + [f"new-{i}" for i in range(400)], fractions, 0, {})
    assert method == method2 == "hash"
    assert all(more[n] == first[n] for n in names)
    share = sum(1 for v in more.values() if v == "train") / len(more)
    assert 0.75 < share < 0.85


def test_articles_sharing_an_image_are_one_group(tmp_path: Path):
    (tmp_path / "metadata").mkdir()
    pq.write_table(pa.table({
        "key": ["a1", "a2", "b1", "c1", "d1"],
        "article_id": ["A", "A", "B", "C", None],
        "pmcid": [None, None, None, None, "PMC9"],
        "image_sha256": ["h1", "h2", "h2", "h9", "h9"],
    }), tmp_path / "metadata" / "figures.parquet")
    g = dict(zip(*(group_samples(tmp_path).column(c).to_pylist() for c in ("key", "group")),
                 strict=True))
    assert g == {"a1": "A", "a2": "A", "b1": "A", "c1": "C", "d1": "C"}


def test_bad_names_and_fractions_are_refused(dataset: Path):
    with pytest.raises(SplitError, match="bad split name"):
        make_split(dataset, name="../x")
    with pytest.raises(SplitError, match="sum to 1"):
        make_split(dataset, fractions={"train": 0.9, "test": 0.2})
    with pytest.raises(SplitError, match="no split"):
        read_split(dataset, "missing")


def test_cli_and_the_splits_view(dataset: Path):
    r = CliRunner().invoke(main, ["split", str(dataset), "--name", "v1", "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert "train" in r.output and "method" in r.output
    con = connect(dataset)
    try:
        rows = con.execute("SELECT name, split, count(*) FROM splits GROUP BY ALL "
                           "ORDER BY split").fetchall()
    finally:
        con.close()
    assert {r[0] for r in rows} == {"v1"} and sum(r[2] for r in rows) == 97
    bad = CliRunner().invoke(main, ["split", str(dataset), "--name", "v1", "--seed", "4"])
    assert bad.exit_code == 1 and "--fresh" in bad.output


def test_a_subset_keeps_its_samples_on_their_side(dataset: Path, tmp_path: Path):
    from biomedica_kit.tables.subset import subset

    make_split(dataset)
    parent = dict(zip(*(read_split(dataset).column(c).to_pylist() for c in ("key", "split")),
                      strict=True))
    new = tmp_path / "new"
    s = subset(dataset, "year >= 2019", new)
    assert 0 < s.samples < 97
    child = dict(zip(*(read_split(new).column(c).to_pylist() for c in ("key", "split")),
                     strict=True))
    assert child == {k: parent[k] for k in child} and len(child) == s.samples
    assert split_info(new)["derived_from"]["dataset_version"] == s.parent_version
    again = make_split(new)  # seed and fractions came along: every group keeps its side
    assert again.kept == sum(again.groups.values())
    assert dict(zip(*(read_split(new).column(c).to_pylist() for c in ("key", "split")),
                    strict=True)) == child
    from biomedica_kit.dataset.verify import verify

    assert verify(new).ok
