"""The explorer, its filters and the subset builder: one state for widgets and code, literal
caption search, "include unknown", chart clicks, card decisions, background exports, and the
edges (a dataset without samples, one without years or licences, a 5M-row table).

Expected counts come from the shards' json (``samples``), not from the metadata layer the
widgets query."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from analysis_datasets import bare_copy, big_copy, empty_copy
from plotly.callbacks import Points

from biomedica_kit.analysis import charts, explore, filters
from biomedica_kit.analysis.builder import SubsetBuilder
from biomedica_kit.analysis.filters import UNKNOWN, Filters
from biomedica_kit.analysis.jobs import resolve_out
from biomedica_kit.analysis.report import WIDGET_MIME, execute_notebook, resolve_notebook
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.tables.connect import connect


def samples(dataset: Path) -> list[dict]:
    return [json.loads(g["json"]) for s in read_manifest(dataset)["shards"]
            for _k, g in iter_samples(dataset / s["path"])]


@pytest.fixture(scope="module")
def truth(analysis_dataset) -> list[dict]:
    return samples(analysis_dataset)


@pytest.fixture(scope="module")
def edges(analysis_dataset, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("edges")
    return {"empty": empty_copy(analysis_dataset, root), "bare": bare_copy(analysis_dataset, root)}


@pytest.fixture(scope="module")
def big(analysis_dataset, tmp_path_factory) -> Path:
    return big_copy(analysis_dataset, tmp_path_factory.mktemp("big"))


def keys_where(truth: list[dict], pred) -> set[str]:
    return {r["key"] for r in truth if pred(r)}


def matched(con, f: Filters) -> set[str]:
    return {r[0] for r in con.execute(f"SELECT key FROM figures WHERE ({f.where(con)})").fetchall()}


# ------------------------------------------------------------------------------- filters


def test_filters_match_what_the_samples_say(analysis_dataset, truth):
    con = explore.open_dataset(analysis_dataset)
    # Caption text is literal: '_' and '%' are characters, not wildcards.
    for text in ("_", "%", "(A)", "o'"):
        want = keys_where(truth, lambda r, t=text: t.lower() in (r["caption"] or "").lower())
        assert matched(con, Filters(text=text)) == want, text
    assert matched(con, Filters(text="_")) != {r["key"] for r in truth}
    tables = keys_where(truth, lambda r: r["figure_kind"] == "table")
    assert tables and matched(con, Filters(kinds=("table",))) == tables
    types = {r["article_type"] for r in truth}
    assert None in types  # one article declares none: UNKNOWN selects it
    assert matched(con, Filters(article_types=(UNKNOWN,))) == keys_where(
        truth, lambda r: r["article_type"] is None)
    kw = sorted({k for r in truth for k in r.get("keywords") or []})[0]
    assert matched(con, Filters(keywords=(kw,))) == keys_where(
        truth, lambda r: kw in (r.get("keywords") or []))
    side = lambda r: min(r["image_width"], r["image_height"])  # noqa: E731
    lo = sorted(side(r) for r in truth)[len(truth) // 2]
    assert matched(con, Filters(sizes=(lo, 100_000))) == keys_where(truth, lambda r: side(r) >= lo)
    # Ranges leave out unknown values unless asked, and say how many.
    years = Filters(years=(2016, 2024))
    no_year = keys_where(truth, lambda r: r["year"] is None)
    assert len(no_year) == 5
    assert matched(con, years) == keys_where(truth, lambda r: r["year"] and r["year"] <= 2024)
    assert filters.count_unknown(con, years) == {"years": 5}
    with_unknown = Filters(years=(2016, 2024), years_unknown=True)
    assert matched(con, with_unknown) == matched(con, years) | no_year
    # Sorts: random is a seeded, reproducible shuffle; largest puts the most pixels first.
    order = [r["key"] for r in filters.search(con, Filters(sort="random", seed=3), limit=50)]
    again = [r["key"] for r in filters.search(con, Filters(sort="random", seed=3), limit=50)]
    other = [r["key"] for r in filters.search(con, Filters(sort="random", seed=4), limit=50)]
    assert order == again and sorted(order) == sorted(other) and order != other
    largest = filters.search(con, Filters(sort="largest"), limit=1)[0]
    assert largest["key"] == max(truth, key=lambda r: r["image_width"] * r["image_height"])["key"]
    # A filter round-trips through JSON (saved views) and refuses unknown fields.
    f = Filters(licences=["other"], years=(2025, 2016), text="cell", sort="random", seed=9)
    assert Filters.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    with pytest.raises(ValueError, match="unknown filter field"):
        Filters.from_dict({"colour": "red"})


def test_set_filters_and_the_widgets_are_one_state(analysis_dataset, truth):
    ex = explore.Explorer(analysis_dataset, page_size=4)
    ex.set_filters(text="photostimulation")
    assert ex.panel.text.value == "photostimulation"  # the caption box shows it
    ex.panel.licences.value = ("other",)  # a widget change keeps the filter set from code
    assert ex.filters.text == "photostimulation" and ex.filters.licences == ("other",)
    want = keys_where(truth, lambda r: r["license_category"] == "other"
                      and "photostimulation" in r["caption"].lower())
    assert ex.matches == len(want) > 0
    ex.set_filters(licences=(), text=None, journal="eLife")
    assert ex.panel.journal.value == "eLife" and ex.matches == len(
        keys_where(truth, lambda r: r["journal"] == "eLife"))
    ex.panel.journal.value = "eLi"  # typing: suggestions, no filter until a journal is picked
    assert ex.panel.journal.options == ("eLife",) and ex.filters.journal is None
    assert "pick one of the suggestions" in ex.panel.message.value
    # The year slider keeps samples without a year while "include unknown" is ticked.
    ex.panel.set(Filters())
    ex.panel.years.slider.value = (2020, 2025)
    assert ex.filters.years == (2020, 2025) and ex.filters.years_unknown is True
    assert ex.matches == len(keys_where(truth, lambda r: r["year"] is None or r["year"] >= 2020))
    ex.panel.years.unknown.value = False
    assert ex.matches == len(keys_where(truth, lambda r: r["year"] and r["year"] >= 2020))
    assert "5 samples without a year are left out" in ex._note.value
    assert ex.panel.years.readout.value == "2020 – 2025"  # the whole range, not "2016 - 202"


def test_chart_clicks_filter_the_gallery(analysis_dataset, truth):
    ex = explore.Explorer(analysis_dataset)
    kinds = ex.chart("figure_kind")
    bar = kinds.figure.data[0]
    counts = dict(zip(bar.x, bar.y, strict=True))
    assert counts == {k: len(keys_where(truth, lambda r, k=k: r["figure_kind"] == k))
                      for k in {r["figure_kind"] for r in truth}}
    i = list(bar.x).index("table")
    bar._dispatch_on_click(Points(point_inds=[i], xs=["table"], ys=[counts["table"]],
                                  trace_index=0), None)
    assert ex.filters.kinds == ("table",) and ex.matches == counts["table"]
    assert ex.panel.kinds.value == ("table",)
    # A chart counts under the other filters: the year chart made now counts tables only.
    years = ex.chart("year")
    ybar = years.figure.data[0]
    assert sum(ybar.y) == counts["table"]
    picked = [x for x in ybar.x if x != UNKNOWN]
    ybar._dispatch_on_selection(Points(point_inds=[0], xs=picked[:1], ys=[1], trace_index=0),
                                None)
    assert ex.filters.years == (int(picked[0]), int(picked[0]))
    # Static renderers get the counts as a table.
    bundle = kinds._repr_mimebundle_()
    assert WIDGET_MIME in bundle and ">table<" in bundle["text/html"]


def test_cards_accept_reject_and_the_detail_pane(analysis_dataset, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(analysis_dataset, ds)
    ex = explore.Explorer(ds, page_size=3)
    card = ex._cards.children[0]
    accept, reject, details = card.children[1].children
    accept.click()
    assert ex.store.decisions() == {card.key: "accept"}
    card = ex._cards.children[0]  # redrawn with the decision shown
    assert card.children[1].children[0].button_style == "success"
    assert "bk-dec-accept" in card.children[0].value
    card.children[1].children[1].click()  # reject replaces accept
    assert ex.store.decisions() == {card.key: "reject"}
    ex._cards.children[0].children[1].children[1].click()  # reject again: undecided
    assert ex.store.decisions() == {}
    ex._cards.children[0].children[1].children[2].click()
    pane = ex._detail
    assert pane.layout.display is None and "data:image/jpeg;base64," in pane.children[0].value
    note, (_tags, new_tag), (save, _close) = pane.children[1], pane.children[2].children, \
        pane.children[3].children
    note.value, new_tag.value = "axis labels cut off", "needs-crop"
    save.click()
    key = ex._cards.children[0].key
    assert ex.store.notes() == {key: "axis labels cut off"}
    assert ex.store.tags_of() == {key: ["needs-crop"]}
    assert "needs-crop" in ex.panel.tags.allowed_tags and pane.layout.display == "none"
    # Bulk: tag everything the filter matches, then filter by the tag.
    ex.set_filters(kinds=("table",))
    ex._bulk.tag.value = "table-review"
    ex._bulk.add.click()
    assert "tagged" in ex._bulk.message.value
    ex.set_filters(kinds=(), tags=("table-review",))
    assert ex.matches == len([r for r in samples(ds) if r["figure_kind"] == "table"])


# ------------------------------------------------------------------------- subset builder


def test_builder_paths_background_export_and_cancel(analysis_dataset, tmp_path):
    import shutil

    parent = tmp_path / "data"
    parent.mkdir()
    ds = parent / "ds"
    shutil.copytree(analysis_dataset, ds)
    b = SubsetBuilder(ds, filters=Filters(licences=("other",)))
    assert b.target("recent") == (parent / "recent").resolve()  # beside the dataset
    assert str((parent / "recent").resolve()) in b._resolved.value or b._out.value == ""
    (parent / "taken").mkdir()
    (parent / "taken" / "x").write_text("keep me")
    assert b.start_export("taken") is None and "not empty" in b._message.value
    with pytest.raises(FileExistsError):
        resolve_out(ds, parent / "taken")
    updates = []
    job = b.start_export("other-only")
    job.on_update = lambda s: (updates.append(s.fraction), b._on_job(s))
    state = job.wait(120)
    assert state.status == "done" and state.fraction == 1.0 and state.summary.samples == 5
    assert b._progress.bar_style == "success" and str(parent / "other-only") in b._message.value
    assert {r["license_category"] for r in samples(parent / "other-only")} == {"other"}
    assert updates and all(0 <= f <= 1 for f in updates)
    job = b.start_export("cancelled")
    job.cancel()
    state = job.wait(60)
    assert state.status == "cancelled" and not (parent / "cancelled").exists()
    assert (parent / "taken" / "x").read_text() == "keep me"


# ----------------------------------------------------------------------------- the edges


def run(name: str, dest: Path, **params):
    import nbformat

    out = dest / f"{name}-{Path(params['dataset']).name}.ipynb"
    execute_notebook(resolve_notebook(name), out, params, timeout=300)
    return nbformat.read(out, as_version=4)


def plain(nb) -> str:
    return "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_notebooks_on_an_empty_dataset_and_one_without_years_or_licences(edges, tmp_path):
    for name in ("01_overview", "02_topics", "03_explore", "04_subset"):
        text = plain(run(name, tmp_path, dataset=str(edges["empty"])))
        assert "Traceback" not in text and "Error" not in text, (name, text[-2000:])
        if name == "01_overview":
            assert text.count("This dataset has no samples yet: nothing to chart.") >= 4
        if name in ("03_explore", "04_subset"):
            assert "This dataset has no samples yet: nothing to explore." in text
    text = plain(run("01_overview", tmp_path, dataset=str(edges["bare"])))
    assert "No sample in this dataset has a publication year (13 samples without one)" in text
    assert "(unknown)" in text  # the licence table's row for samples without a category
    text = plain(run("03_explore", tmp_path, dataset=str(edges["bare"]), years=[2016, 2020],
                     licences=["commercial"]))
    assert "13 matching samples" in text  # filters the dataset cannot answer are dropped


def test_widgets_on_an_empty_and_a_bare_dataset(edges):
    ex = explore.Explorer(edges["empty"])
    assert ex.facets.total == 0 and "nothing to explore" in ex.html()
    assert "nothing to explore" in SubsetBuilder(edges["empty"]).preview_html()
    bare = explore.Explorer(edges["bare"])
    assert bare.panel.years.slider.disabled and bare.panel.journal.disabled
    assert bare.panel.licences.options == (UNKNOWN,)
    assert bare.matches == 13
    bare.panel.licences.value = (UNKNOWN,)
    assert bare.where == "license_category IS NULL" and bare.matches == 13


def test_widgets_and_charts_on_a_5m_row_table(big):
    t0 = time.perf_counter()
    ex = explore.Explorer(big)
    opened = time.perf_counter() - t0
    assert ex.facets.total == 5_000_000 and ex.facets.n_journals == 15_000
    # Type-ahead instead of a list of every journal.
    assert len(ex.panel.journal.options) <= 30 and "15,000 journals" in \
        ex.panel.journal.placeholder
    ex.panel.journal.value = "elife 123"
    assert ex.panel.journal.options[0] == "eLife 123" and ex.filters.journal is None
    ex.panel.journal.value = "eLife 123"
    assert ex.filters.journal == "eLife 123" and 0 < ex.matches < 5_000_000
    assert len(ex._cards.children) == 12
    assert ex._cards.children[0].children[0].value.count("data:image/jpeg") == 1
    con = connect(big)
    for fn in (charts.licence_categories, charts.per_year, charts.top_journals,
               charts.article_types, charts.figures_per_article, charts.image_sizes):
        fig = fn(con)
        assert not isinstance(fig, charts.Missing), fn.__name__
    scatter = charts.image_sizes(con)
    assert sum(len(t.x) for t in scatter.data) == charts.SCATTER_MAX  # a sample, not 5M points
    assert "5,000,000" in charts.dataset_summary(con, big)._repr_html_()
    assert opened < 120, f"explorer took {opened:.0f} s on 5M rows"
