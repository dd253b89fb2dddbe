"""Saved views (DATASET/views/<name>.json): save, reopen in the widgets, list, delete, and turn
into exactly the subset the filters show."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from biomedica_kit.analysis import curation, views
from biomedica_kit.analysis.builder import SubsetBuilder
from biomedica_kit.analysis.explore import Explorer, open_dataset
from biomedica_kit.analysis.filters import Filters
from biomedica_kit.cli.lab import views_command
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.tables.subset import subset


@pytest.fixture
def ds(analysis_dataset, tmp_path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(analysis_dataset, out)
    return out


def subset_keys(dataset: Path) -> set[str]:
    return {json.loads(g["json"])["key"] for s in read_manifest(dataset)["shards"]
            for _k, g in iter_samples(dataset / s["path"])}


def test_save_load_list_delete(ds):
    con = open_dataset(ds)
    f = Filters(kinds=("figure",), years=(2016, 2025), years_unknown=True, text="cell",
                sort="random", seed=5)
    v = views.save_view(ds, "figures-with-cells", f, description="for the atlas", con=con)
    doc = json.loads((ds / "views" / "figures-with-cells.json").read_text())
    assert doc["filters"]["kinds"] == ["figure"] and doc["where"] == f.where(con)
    assert doc["dataset_version"] == read_manifest(ds)["dataset_version"] and doc["author"]
    assert views.load_view(ds, "figures-with-cells").filters == f == v.filters
    assert views.list_views(ds) == ["figures-with-cells"]
    with pytest.raises(FileExistsError):
        views.save_view(ds, "figures-with-cells", Filters(), overwrite=False)
    for bad in ("../escape", "", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="bad view name"):
            views.save_view(ds, bad, f)
    with pytest.raises(FileNotFoundError, match="figures-with-cells"):
        views.load_view(ds, "nope")
    assert views.delete_view(ds, "figures-with-cells") and views.list_views(ds) == []
    assert not list((ds / "views").glob(".tmp-*"))  # written atomically, nothing left over


def test_a_view_reopens_in_the_widgets_and_exports_exactly_its_matches(ds, tmp_path):
    ex = Explorer(ds)
    ex.set_filters(licences=("commercial",), kinds=("table",))
    shown = {r["key"] for r in ex.rows(limit=100, offset=0)}
    ex.save_view("commercial-tables")
    assert ex._views.pick.value == "commercial-tables"
    again = Explorer(ds, view="commercial-tables")
    assert again.filters == ex.filters and again.panel.kinds.value == ("table",)
    assert SubsetBuilder(ds, view="commercial-tables").where == ex.where
    sel = views.selection(ds, "commercial-tables")
    assert sel.where == ex.where and sel.keys is None
    subset(ds, sel.where, tmp_path / "out")
    assert subset_keys(tmp_path / "out") == shown
    res = CliRunner().invoke(views_command, [str(ds)])
    assert res.exit_code == 0 and res.output.startswith("commercial-tables\t")
    res = CliRunner().invoke(views_command, [str(ds), "--show", "commercial-tables"])
    assert res.exit_code == 0 and f"predicate now: {ex.where}" in res.output


def test_a_view_on_curation_tags_resolves_to_keys(ds, tmp_path):
    con = open_dataset(ds)
    keys = [r[0] for r in con.execute("SELECT key FROM figures ORDER BY key LIMIT 3").fetchall()]
    curation.TagStore(ds).tag(keys, "keep")
    views.save_view(ds, "kept", Filters(tags=("keep",)))
    sel = views.selection(ds, "kept")
    assert sel.where is None and sel.keys == keys
    subset(ds, None, tmp_path / "kept", keys=sel.keys)
    assert subset_keys(tmp_path / "kept") == set(keys)


def test_subset_from_a_saved_view_on_the_command_line(tmp_path):
    """`biomedica subset DATASET --view NAME` selects what the view's filters select."""
    from click.testing import CliRunner
    from corpus_paths import SAMPLE

    from biomedica_kit.analysis.filters import Filters
    from biomedica_kit.analysis.views import save_view
    from biomedica_kit.cli import main
    from biomedica_kit.dataset.verify import verify
    from biomedica_kit.etl.build import build
    from biomedica_kit.tables.connect import connect

    ds = tmp_path / "ds"
    build(SAMPLE, ds, workers=1, progress=False)
    save_view(ds, "plos", Filters(text="Cell"))
    con = connect(ds)
    want = {r[0] for r in con.execute(
        "SELECT key FROM figures WHERE contains(lower(caption), 'cell')").fetchall()}
    total = con.execute("SELECT count(*) FROM figures").fetchone()[0]
    assert 0 < len(want) < total  # the view selects some of the sample, not all of it
    res = CliRunner().invoke(main, ["subset", str(ds), "--view", "plos", "--out",
                                    str(tmp_path / "out")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    got = {r[0] for r in connect(tmp_path / "out").execute("SELECT key FROM figures").fetchall()}
    assert got == want
    assert verify(tmp_path / "out").ok
    bad = CliRunner().invoke(main, ["subset", str(ds), "--view", "plos", "--where", "true",
                                    "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "exactly one of" in bad.output
