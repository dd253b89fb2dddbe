"""Subsets: predicate or keys -> exactly those samples, byte for byte, verifiable; hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from corpus_paths import SAMPLE

from biomedica_kit.cli.main import main
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify
from biomedica_kit.etl.build import BuildConfig, build
from biomedica_kit.tables.connect import connect
from biomedica_kit.tables.subset import PredicateError, subset, validate_predicate


@pytest.fixture(scope="module")
def parent(corpus_dataset) -> Path:
    """The real corpus in shards of 2 samples (commercial and other subsets)."""
    return corpus_dataset


@pytest.fixture(scope="module")
def sample_parent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("subset") / "sample"
    build(SAMPLE, out, workers=1, progress=False, config=BuildConfig(shard_max_samples=3))
    return out


def samples(ds: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    out = {}
    for s in read_manifest(ds)["shards"]:
        for key, group in iter_samples(ds / s["path"]):
            out[key] = (s["subset"], group)
    return out


def duckdb_keys(ds: Path, where: str, params=None) -> list[str]:
    con = connect(ds)
    return [r[0] for r in con.execute(
        f"SELECT key FROM figures WHERE {where} ORDER BY shard, image_offset", params or []
    ).fetchall()]


def assert_exact_subset(parent: Path, out: Path, keys: list[str]) -> None:
    """``out`` holds exactly ``keys``, members byte-identical to the parent, and verifies."""
    got, src = samples(out), samples(parent)
    assert sorted(got) == sorted(keys)
    for k, (subset_name, group) in got.items():
        assert subset_name == src[k][0]
        assert group == src[k][1], k
    res = verify(out)
    assert res.ok, res.errors
    assert not res.warnings, res.warnings
    assert res.samples == len(keys)


@pytest.mark.parametrize("where", [
    "license_category = 'other' AND figure_index < 3",
    "year >= 2016",
    "list_contains(keywords, 'spindle orientation') OR caption ILIKE '%microscope%'",
    "true",
])
def test_predicate_subset_matches_duckdb(parent, tmp_path, where):
    keys = duckdb_keys(parent, where)
    assert keys  # each predicate selects something real
    out = tmp_path / "sub"
    s = subset(parent, where, out)
    assert s.samples == len(keys) and s.report_reconciles is True
    assert_exact_subset(parent, out, keys)
    decision = pq.read_table(out / "subset" / "keys.parquet")
    assert decision.column("key").to_pylist() == keys
    m = read_manifest(out)
    d = m["derived_from"]
    assert d["predicate"] == where and d["selected"] == len(keys)
    assert d["dataset"] == str(parent.resolve())
    assert d["dataset_version"] == read_manifest(parent)["dataset_version"]
    assert m["dataset_version"] != d["dataset_version"] or where == "true"


def test_everything_selected_keeps_subsets_and_counts(parent, tmp_path):
    out = tmp_path / "all"
    s = subset(parent, "true", out)
    pm, m = read_manifest(parent), read_manifest(out)
    assert m["counts"]["samples_by_subset"] == pm["counts"]["samples_by_subset"]
    assert s.skips.get("not_selected", 0) == 0
    # Same samples, same shard limits, same deterministic writer: byte-identical shards.
    assert [(x["path"], x["sha256"]) for x in m["shards"]] == \
        [(x["path"], x["sha256"]) for x in pm["shards"]]


def test_params_are_bound(parent, tmp_path):
    keys = duckdb_keys(parent, "license_category = ?", ["commercial"])
    out = tmp_path / "p"
    subset(parent, "license_category = ?", out, params=["commercial"])
    assert_exact_subset(parent, out, keys)
    assert read_manifest(out)["derived_from"]["params"] == ["commercial"]
    assert subset(parent, "key = ?", tmp_path / "h", params=["x' OR '1'='1"]).samples == 0


def test_report_accounts_for_every_image(sample_parent, tmp_path):
    out = tmp_path / "s"
    s = subset(sample_parent, "figure_kind = 'table'", out)
    arts = pq.read_table(out / "report" / "articles.parquet").to_pylist()
    skips = pq.read_table(out / "report" / "skips.parquet").to_pylist()
    assert sum(a["n_samples"] for a in arts) == s.samples > 0
    assert sum(a["n_images"] for a in arts) == s.samples + len(skips)
    not_sel = [k for k in skips if k["reason"] == "not_selected"]
    figs = {r["key"]: r for r in pq.read_table(
        sample_parent / "metadata" / "figures.parquet").to_pylist()}
    touched = {a["id"] for a in arts}
    expected = {k for k, r in figs.items() if r["article_id"] in touched
                and r["figure_kind"] != "table"}
    assert {k["key"] for k in not_sel} == expected
    assert all(k["detail"] == "excluded by predicate: figure_kind = 'table'" for k in not_sel)


def test_keys_file_txt_and_parquet(parent, tmp_path):
    keys = duckdb_keys(parent, "figure_index % 2 = 0")
    txt = tmp_path / "keys.txt"
    txt.write_text("\n".join(reversed(keys)) + "\n\n")
    out = tmp_path / "t"
    s = subset(parent, None, out, keys=txt)
    assert s.keys_file == str(txt)
    assert_exact_subset(parent, out, keys)
    pqf = tmp_path / "keys.parquet"
    pq.write_table(pa.table({"key": keys[:1], "note": ["x"]}), pqf)
    out2 = tmp_path / "q"
    subset(parent, None, out2, keys=pqf)
    assert_exact_subset(parent, out2, keys[:1])
    with pytest.raises(ValueError, match="not in"):
        subset(parent, None, tmp_path / "bad", keys=["no-such-key", keys[0]])
    assert not (tmp_path / "bad").exists()


def test_subset_of_a_subset(parent, tmp_path):
    a = tmp_path / "a"
    subset(parent, "license_category = 'other'", a)
    b = tmp_path / "b"
    subset(a, "figure_index >= 3", b)
    keys = duckdb_keys(parent, "license_category = 'other' AND figure_index >= 3")
    assert_exact_subset(parent, b, keys)
    assert read_manifest(b)["derived_from"]["dataset"] == str(a.resolve())


def test_empty_selection_is_a_valid_dataset(parent, tmp_path):
    out = tmp_path / "e"
    s = subset(parent, "year > 3000", out)
    assert s.samples == 0 and s.shards == 0
    assert verify(out).ok


def test_deterministic(parent, tmp_path):
    where = "license_category = 'other'"
    m1 = read_manifest(Path(subset(parent, where, tmp_path / "x").out))
    m2 = read_manifest(Path(subset(parent, where, tmp_path / "y").out))
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    assert m1["dataset_version"] == m2["dataset_version"]


def test_refuses_existing_dataset(parent, tmp_path):
    with pytest.raises(FileExistsError):
        subset(parent, "true", parent)
    done = tmp_path / "done"
    subset(parent, "year > 3000", done)
    with pytest.raises(FileExistsError):
        subset(parent, "true", done)


HOSTILE = [
    "1=1; DROP TABLE figures",
    "true; COPY figures TO '/tmp/leak.csv'",
    "true) UNION SELECT 'x' --",
    "true /* comment */",
    "key IN (SELECT key FROM figures) ) OR (true",
    "COPY",
    "(SELECT 1 FROM (ATTACH 'x.db'))",
    "INSTALL httpfs",
    "LOAD httpfs",
    "PRAGMA version",
    "CREATE TABLE t AS SELECT 1",
    "key IN (SELECT * FROM query('SELECT 1'))",
    "key IN (SELECT content FROM read_text('/etc/hostname'))",
    "no_such_column = 1",
    "",
    "   ",
]


@pytest.mark.parametrize("where", HOSTILE)
def test_hostile_predicates_refused(parent, tmp_path, where):
    out = tmp_path / "h"
    with pytest.raises(PredicateError):
        subset(parent, where, out)
    assert not out.exists()
    r = CliRunner().invoke(main, ["subset", str(parent), "--where", where, "--out", str(out)])
    assert r.exit_code != 0 and "Error" in r.output
    assert not out.exists()
    assert not Path("/tmp/leak.csv").exists()


def test_validate_predicate_accepts_ordinary_sql():
    for ok in ["year >= 2020", "caption LIKE '%;%'", "caption = 'DROP; COPY'",
               "list_contains(keywords, 'x') AND (a OR (b AND c))", "'a''b' = caption"]:
        assert validate_predicate(ok) == ok


def test_cli_subset_and_verify(parent, tmp_path):
    out = tmp_path / "cli"
    runner = CliRunner()
    r = runner.invoke(main, ["subset", str(parent), "--where", "license_category = 'commercial'",
                             "--out", str(out)])
    assert r.exit_code == 0, r.output
    keys = duckdb_keys(parent, "license_category = 'commercial'")
    assert f"samples {len(keys)}" in r.output and "report reconciles: yes" in r.output
    r = runner.invoke(main, ["verify", str(out)])
    assert r.exit_code == 0 and "OK" in r.output
    r = runner.invoke(main, ["subset", str(parent), "--out", str(tmp_path / "n")])
    assert r.exit_code != 0
    keys_file = tmp_path / "k.txt"
    keys_file.write_text(keys[0])
    r = runner.invoke(main, ["subset", str(parent), "--keys", str(keys_file), "--out",
                             str(tmp_path / "k")])
    assert r.exit_code == 0, r.output
    assert list(samples(tmp_path / "k")) == [keys[0]]
    assert json.loads((tmp_path / "k" / "manifest.json").read_text())["derived_from"][
        "keys_file"] == str(keys_file)
