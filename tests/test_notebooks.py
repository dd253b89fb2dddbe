"""Every notebook, executed headless by papermill in a real ipykernel, against a real dataset.

Expected values are computed independently of the metadata layer the notebooks use: straight
from the shards' json members (``shards.iter_samples``), so a notebook that shows the wrong
numbers fails here.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import nbformat
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curate_datasets import K, clustered_dataset
from PIL import Image

from biomedica_kit.analysis import explore
from biomedica_kit.analysis.charts import NOTE_MIME
from biomedica_kit.analysis.notebook_meta import default_notebooks, read_meta
from biomedica_kit.analysis.report import (
    PLOTLY_MIME,
    WIDGET_MIME,
    execute_notebook,
    notebooks_dir,
    resolve_notebook,
)
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.labels.table import label_versions
from biomedica_kit.tables.connect import connect
from biomedica_kit.tables.subset import validate_predicate

NOTEBOOKS = ("01_overview", "02_topics", "03_explore", "04_subset", "05_clusters")


def run(name: str, dest: Path, **params) -> nbformat.NotebookNode:
    """Execute notebooks/<name>.ipynb with ``params`` and return the executed notebook."""
    out = dest / f"{name}.ipynb"
    execute_notebook(resolve_notebook(name), out, params, timeout=300)
    return nbformat.read(out, as_version=4)


def outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def texts(nb) -> str:
    """Everything the notebook printed or displayed as plain text."""
    parts = []
    for o in outputs(nb):
        if o.output_type == "stream":
            parts.append(o.text)
        elif "data" in o:
            parts.append(o.data.get("text/plain", ""))
    return "\n".join(parts)


def charts(nb) -> dict[str, dict]:
    """Plotly figures displayed, by their ``layout.meta.chart`` name."""
    return {o.data[PLOTLY_MIME]["layout"]["meta"]["chart"]: o.data[PLOTLY_MIME]
            for o in outputs(nb) if PLOTLY_MIME in o.get("data", {})}


def notes(nb) -> list[str]:
    return [o.data[NOTE_MIME]["message"] for o in outputs(nb) if NOTE_MIME in o.get("data", {})]


def samples(dataset: Path) -> list[dict]:
    """Every sample's json, read from the shards (the ground truth)."""
    recs = []
    for s in read_manifest(dataset)["shards"]:
        for _key, group in iter_samples(dataset / s["path"]):
            recs.append(json.loads(group["json"]))
    return recs


def bar(fig: dict, name: str) -> dict:
    """``{category: value}`` of the bar trace ``name`` (vertical or horizontal)."""
    tr = next(t for t in fig["data"] if t.get("name") == name)
    cats, vals = (tr["y"], tr["x"]) if tr.get("orientation") == "h" else (tr["x"], tr["y"])
    return dict(zip(cats, vals, strict=True))


@pytest.fixture(scope="module")
def truth(analysis_dataset) -> list[dict]:
    return samples(analysis_dataset)


def test_every_notebook_is_thin_and_parameterised():
    for name in NOTEBOOKS:
        nb = nbformat.read(resolve_notebook(name), as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, name
        # The dataset comes from $BIOMEDICA_DATASET (`make lab`), else the demo build.
        assert 'dataset = os.environ.get("BIOMEDICA_DATASET", "../build/demo")' in \
            tagged[0].source, name
        code = [c.source for c in nb.cells if c.cell_type == "code" and c is not tagged[0]]
        # Thin: no function or class definitions, no SQL, no plotting code in the notebook.
        for src in code:
            assert "def " not in src and "class " not in src and "SELECT" not in src, name
            assert "plotly" not in src and "go." not in src, name
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
            f"{name} is committed with outputs"


def test_every_notebook_declares_what_it_needs():
    """metadata.biomedica (docs/notebooks.md): what `biomedica report` runs by default, and the
    data a notebook needs before it can run."""
    decl = {p.stem: read_meta(p) for p in sorted(notebooks_dir().glob("*.ipynb"))}
    assert {"01_overview", "02_topics", "03_explore", "04_subset", "05_clusters",
            "06_review"} <= set(decl)
    for name in ("01_overview", "02_topics"):
        assert decl[name].report and decl[name].requires == (), name
    assert decl["05_clusters"].report
    assert decl["05_clusters"].requires == ("clusters/*/config.json",)
    for name in ("03_explore", "04_subset", "06_review"):  # interactive or curation tools
        assert not decl[name].report, name
    defaults = [p.stem for p in default_notebooks(notebooks_dir())]
    assert defaults == sorted(n for n, m in decl.items() if m.report)
    assert defaults[:2] == ["01_overview", "02_topics"] and "05_clusters" in defaults


def test_overview_shows_the_dataset(analysis_dataset, truth, tmp_path):
    nb = run("01_overview", tmp_path, dataset=str(analysis_dataset))
    figs = charts(nb)
    assert set(figs) == {"licence_categories", "per_year", "top_journals", "article_types",
                         "figures_per_article", "image_sizes"}

    lic = Counter(r["license_category"] for r in truth)
    assert lic == {"commercial": 8, "other": 5}  # the fixture's make-up
    shown = bar(figs["licence_categories"], "samples")
    assert shown == {"commercial": 8, "noncommercial": 0, "other": 5}
    arts = {c: len({r["article_id"] for r in truth if r["license_category"] == c})
            for c in ("commercial", "noncommercial", "other")}
    assert bar(figs["licence_categories"], "articles") == arts
    # The licence table printed above the chart says the same.
    table = next(o.data["text/plain"] for o in outputs(nb)
                 if "license_category" in o.get("data", {}).get("text/plain", ""))
    for cat, n in shown.items():
        assert any(cat in line and f" {n} " in line for line in table.splitlines()), (cat, table)

    years = Counter(r["year"] for r in truth if r["year"] is not None)
    assert bar(figs["per_year"], "samples") == dict(years)
    assert "no publication year: 5 samples" in figs["per_year"]["layout"]["title"]["text"]
    journals = Counter(r["journal"] or "(no journal)" for r in truth)
    assert bar(figs["top_journals"], "samples") == dict(journals)
    per_article = Counter(Counter(r["article_id"] for r in truth).values())
    fpa = figs["figures_per_article"]["data"][0]
    # One category per count (a numeric axis would draw bars that read as bins).
    assert figs["figures_per_article"]["layout"]["xaxis"]["type"] == "category"
    assert dict(zip(fpa["x"], fpa["y"], strict=True)) == {str(k): v for k, v in
                                                          per_article.items()}
    sizes = figs["image_sizes"]["data"]
    assert sorted(k for t in sizes for k in t["text"]) == sorted(r["key"] for r in truth)

    text = texts(nb)
    assert "samples (figure images in the shards)" in text and f"{len(truth)}" in text
    assert read_manifest(analysis_dataset)["dataset_version"] in text
    # Tables are formatted HTML: numbers as numbers, shares as percentages, no quoted text.
    lic_html = next(o.data["text/html"] for o in outputs(nb)
                    if "license_category" in o.get("data", {}).get("text/html", ""))
    assert '"commercial"' not in lic_html and ">commercial<" in lic_html
    assert f">{8 / 13:.1%}<" in lic_html  # 61.5%, not 0.6154
    summary = next(o.data["text/html"] for o in outputs(nb)
                   if "figure elements in the articles" in o.get("data", {}).get("text/html", ""))
    manifest = read_manifest(analysis_dataset)["counts"]
    assert f">{manifest['images']:,}<" in summary and "= samples + skipped" in summary


def test_topics_says_labels_and_mesh_are_missing(analysis_dataset, truth, tmp_path):
    nb = run("02_topics", tmp_path, dataset=str(analysis_dataset), top_n=50)
    figs = charts(nb)
    # Nothing is invented: no label or MeSH chart, and a plain sentence says why.
    assert set(figs) == {"subjects", "subject_codes", "keywords"}
    said = notes(nb)
    assert any("no taxonomy labels yet" in n for n in said)
    assert any("no MeSH terms yet" in n for n in said)
    assert "no taxonomy labels yet" in texts(nb) and "no MeSH terms yet" in texts(nb)
    subjects = Counter(s for r in truth for s in set(r.get("subjects") or []))
    codes = {s for s in subjects if s.startswith("AcademicSubjects/")}
    assert codes  # the sample's OUP article lists classification codes
    # Names and publisher codes are charted apart, each with its true counts.
    assert bar(figs["subjects"], "samples") == {s: n for s, n in subjects.items()
                                                if s not in codes}
    assert bar(figs["subject_codes"], "samples") == {s: n for s, n in subjects.items()
                                                     if s in codes}
    status = next(o.data["text/plain"] for o in outputs(nb)
                  if "distinct values" in o.get("data", {}).get("text/plain", ""))
    assert "null" not in status and "not yet" in status
    kw = Counter(k for r in truth for k in set(r.get("keywords") or []))
    assert bar(figs["keywords"], "samples") == dict(kw)


def _labelled_copy(dataset: Path, dest: Path, truth: list[dict]) -> tuple[Path, dict, dict]:
    """A copy of ``dataset`` with labels and Entrez MeSH terms, as later stages will add them.

    The values are test fixtures (not classifier or PubMed output); only the mechanism is
    under test: the unchanged notebook must find and chart them.
    """
    ds = dest / "labelled"
    shutil.copytree(dataset, ds)
    primary = {}
    for r in truth:
        primary[r["key"]] = ("Tables" if r["figure_kind"] == "table" else
                             "Microscopy" if r["license_category"] == "other" else
                             "Illustrative Diagrams")
    (ds / "labels").mkdir()
    pq.write_table(pa.table({
        "key": list(primary),
        "primary_label": list(primary.values()),
        "secondary_labels": [[v.lower(), "test"] for v in primary.values()],
    }), ds / "labels" / "latest.parquet")
    pmids = sorted({r["pmid"] for r in truth if r.get("pmid")})
    assert pmids, "the fixture needs a sample with a PMID"
    mesh = {p: ["test-mesh-a", f"test-mesh-{p}"] for p in pmids}
    pq.write_table(pa.table({"pmid": list(mesh), "status": ["ok"] * len(mesh),
                             "mesh_terms": list(mesh.values())}),
                   ds / "metadata" / "entrez.parquet")
    return ds, primary, mesh


def test_topics_picks_up_labels_once_they_exist(analysis_dataset, truth, tmp_path):
    ds, primary, mesh = _labelled_copy(analysis_dataset, tmp_path, truth)
    nb = run("02_topics", tmp_path, dataset=str(ds))
    figs = charts(nb)
    assert {"primary_labels", "secondary_labels", "label_x_licence", "label_x_year",
            "mesh_terms", "mesh_x_license_category", "mesh_x_year", "mesh_x_primary_label",
            "subjects", "subject_codes", "keywords"} <= set(figs)
    # Only the tree roll-up waits for its input (NLM's descriptor file, not given here).
    assert [n for n in notes(nb) if "descriptor file" not in n] == []
    assert "no taxonomy labels yet" not in texts(nb) and "no MeSH terms yet" not in texts(nb)
    assert bar(figs["primary_labels"], "samples") == dict(Counter(primary.values()))
    heat = figs["label_x_licence"]["data"][0]
    lic = {r["key"]: r["license_category"] for r in truth}
    for i, label in enumerate(heat["y"]):
        for j, cat in enumerate(heat["x"]):
            want = sum(1 for k, v in primary.items() if v == label and lic[k] == cat)
            assert heat["z"][i][j] == want, (label, cat)
    with_pmid = Counter(r["pmid"] for r in truth if r.get("pmid"))
    want_mesh = Counter()
    for pmid, terms in mesh.items():
        for t in terms:
            want_mesh[t] += with_pmid[pmid]
    assert bar(figs["mesh_terms"], "samples") == dict(want_mesh)
    by_label = figs["mesh_x_primary_label"]["data"][0]
    label_of_pmid = Counter()
    for r in truth:
        if r.get("pmid"):
            label_of_pmid[(r["pmid"], primary[r["key"]])] += 1
    for i, term in enumerate(by_label["y"]):
        for j, label in enumerate(by_label["x"]):
            want = sum(n for (p, lab), n in label_of_pmid.items()
                       if lab == label and term in mesh[p])
            assert by_label["z"][i][j] == want, (term, label)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> tuple[Path, str]:
    """The real figure-caption pairs, embedded, clustered (k=K), proposed and labelled."""
    return clustered_dataset(tmp_path_factory)


def test_clusters_notebook_shows_the_newest_run(clustered, tmp_path):
    ds, run_name = clustered
    versions = label_versions(ds)
    nb = run("05_clusters", tmp_path, dataset=str(ds))  # run=None: the newest finished run
    assert f"run {run_name}" in texts(nb)
    out = ds / "clusters" / run_name
    sizes = Counter(pq.read_table(out / "assignments.parquet").column("cluster").to_pylist())
    assert len(sizes) == K and sum(sizes.values()) == 185
    # The map, coloured by cluster: one trace per cluster with exactly its members, each
    # point where the run's map put it.
    fig = charts(nb)["cluster_map"]
    assert {t["name"]: len(t["x"]) for t in fig["data"]} == {str(c): n for c, n in sizes.items()}
    xy = {r["key"]: (r["x"], r["y"]) for r in pq.read_table(out / "map.parquet").to_pylist()}
    for t in fig["data"]:
        for x, y, (key, cluster, *_rest) in zip(t["x"], t["y"], t["customdata"], strict=True):
            assert cluster == int(t["name"])
            assert (x, y) == pytest.approx(xy[key], abs=1e-5), key
    assert fig["layout"]["title"]["text"].startswith("185 samples, map by pca")
    # The proposals table: one row per cluster, with the run's proposal and size.
    table = next(o.data["text/html"] for o in outputs(nb)
                 if "score_caption" in o.get("data", {}).get("text/html", ""))
    props = pq.read_table(out / "proposals.parquet").to_pylist()
    assert len(props) == K and table.count("<tr") == K + 1
    for p in props:
        assert f">{p['primary_label']}<" in table, p["cluster"]
    # The gallery starts on a cluster; with no decisions nothing is written.
    assert any("ClusterGallery" in o.get("data", {}).get("text/plain", "") or
               WIDGET_MIME in o.get("data", {}) for o in outputs(nb))
    assert label_versions(ds) == versions


def test_explore_gallery_reads_images_by_offset(analysis_dataset, truth, tmp_path):
    nb = run("03_explore", tmp_path, dataset=str(analysis_dataset), licences=["other"],
             text="photostimulation")
    want = sorted(r["key"] for r in truth if r["license_category"] == "other"
                  and "photostimulation" in r["caption"].lower())
    assert want  # the corpus article has such captions
    gallery = next(o for o in outputs(nb) if "bk-gallery" in o.get("data", {}).get("text/html", ""))
    # A live frontend gets the ipywidgets view; static renderers the snapshot.
    assert WIDGET_MIME in gallery.data
    assert f"{len(want)} matching samples" in gallery.data["text/plain"]
    html = gallery.data["text/html"]
    assert sorted(x.split('"')[0] for x in html.split('data-key="')[1:]) == want
    assert html.count("data:image/jpeg;base64,") == len(want)
    # The thumbnails are the real images: same aspect ratio as the stored sample.
    first = html.split("data:image/jpeg;base64,")[1].split('"')[0]
    thumb = Image.open(io.BytesIO(base64.b64decode(first)))
    rec = next(r for r in truth if r["key"] == want[0])
    assert abs(thumb.width / thumb.height - rec["image_width"] / rec["image_height"]) < 0.02
    assert "inline references" in html
    assert html.count('<details class="bk-zoom">') == len(want)  # click to zoom
    table = texts(nb)
    assert all(k in table for k in want)
    assert "license_category IN ('other') AND contains(lower(caption), 'photostimulation')" \
        in table


def test_subset_notebook_exports_headless(analysis_dataset, truth, tmp_path):
    out = tmp_path / "commercial-2024"
    where = "license_category = 'commercial' AND year = 2024"
    nb = run("04_subset", tmp_path, dataset=str(analysis_dataset), subset_where=where,
             subset_out=str(out))
    want = sorted(r["key"] for r in truth
                  if r["license_category"] == "commercial" and r["year"] == 2024)
    got = sorted(r["key"] for r in samples(out))
    assert got == want
    assert read_manifest(out)["derived_from"]["predicate"] == where
    text = texts(nb)
    assert f"wrote {len(want)} samples" in text and f"shards to {out.resolve()} " in text
    assert f"OK: 1 shards, {len(want)} samples, 0 errors" in text


def test_subset_notebook_without_predicate_only_previews(analysis_dataset, tmp_path):
    nb = run("04_subset", tmp_path, dataset=str(analysis_dataset))
    text = texts(nb)
    assert "No subset_where parameter" in text
    assert "SubsetBuilder: 13 samples selected by TRUE" in text
    assert not list(tmp_path.glob("*/manifest.json"))


# ------------------------------------------------------------------- library, no kernel


def test_filters_make_one_safe_predicate(analysis_dataset):
    con = connect(analysis_dataset)
    f = explore.Filters(licences=("commercial", "other"), years=(2024, 2016),
                        journal="medRxiv", text="O'Brien; DROP TABLE x --")
    where = f.where(con)
    assert where == ("license_category IN ('commercial', 'other') AND year BETWEEN 2016 AND "
                     "2024 AND journal = 'medRxiv' AND contains(lower(caption), "
                     "'o''brien; drop table x --')")
    assert validate_predicate(where) == where  # the subset API accepts it as is
    assert explore.count(con, f) == 0
    assert explore.Filters().where(con) == "TRUE"
    assert explore.count(con, explore.Filters()) == 13
    f2 = explore.Filters(text="FLOW chart")  # case-insensitive
    assert [r["key"] for r in explore.search(con, f2)] == [
        "doi_10_1101_2024_01_24_24301711_fig1"]
    with pytest.raises(ValueError, match="no taxonomy labels"):
        explore.Filters(label="Microscopy").where(con)


def test_explorer_widget_reacts_to_filters(analysis_dataset):
    ex = explore.Explorer(analysis_dataset, page_size=5)
    assert ex.matches == 13 and len(ex.rows()) == 5
    assert ex._next.disabled is False and ex._prev.disabled is True
    ex._next.click()
    assert ex.page == 1 and len(ex.rows()) == 5
    ex.panel.licences.value = ("other",)  # as a user would, through the widget
    assert ex.page == 0 and ex.matches == 5
    assert ex.where == "license_category IN ('other')"
    assert "license_category IN (&#x27;other&#x27;)" in ex._where.value
    assert len(ex._cards.children) == 5
    ex.panel.text.value = "no caption says this"
    assert ex.matches == 0 and "No sample matches" in ex._cards.children[0].value
