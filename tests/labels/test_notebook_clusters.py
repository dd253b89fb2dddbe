"""``05_clusters`` executed headless in a real kernel on the clustered real pairs: the map,
the proposals table, and decisions recorded into the label table."""

from __future__ import annotations

import nbformat
import polars as pl
import pytest
from curate_datasets import K, clustered_dataset, copy_of

from biomedica_kit.analysis.clusters import ClusterGallery, map_figure
from biomedica_kit.analysis.report import PLOTLY_MIME, execute_notebook, resolve_notebook
from biomedica_kit.labels.table import label_versions, read_labels


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    return clustered_dataset(tmp_path_factory)


def test_notebook_shows_the_map_and_records_decisions(clustered, tmp_path):
    src, run = clustered
    ds = copy_of(src, tmp_path)
    out = tmp_path / "05.ipynb"
    execute_notebook(resolve_notebook("05_clusters"), out, {
        "dataset": str(ds), "run": run, "color": "label", "curator": "nb-test",
        "decisions": [[0, "accept"], [1, "change", "Clinical Imaging", "ultrasound"],
                      [2, "reject"]]}, timeout=300)
    nb = nbformat.read(out, as_version=4)
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    figs = [o.data[PLOTLY_MIME] for o in outs if PLOTLY_MIME in o.get("data", {})]
    fig = next(f for f in figs if f["layout"]["meta"]["chart"] == "cluster_map")
    assert sum(len(t["x"]) for t in fig["data"]) == 185
    assert {t["name"] for t in fig["data"]} <= {
        f"{r['primary_label']} / {r['secondary_label']}" for r in
        read_labels(src).iter_rows(named=True)} | {"(no label)"}
    text = "\n".join(o.get("text", "") for o in outs if o.output_type == "stream")
    assert "cluster 1: change -> label version 000003" in text  # one version a decision
    labels = read_labels(ds)
    assert label_versions(ds)[-1] == "000004"
    c1 = labels.filter(pl.col("cluster") == 1)
    assert set(c1["secondary_label"]) == {"ultrasound"} and set(c1["decided_by"]) == {"nb-test"}
    assert labels.filter(pl.col("cluster") == 2)["primary_label"].null_count() == len(
        labels.filter(pl.col("cluster") == 2))


def test_gallery_shows_proposal_and_evidence(clustered, tmp_path):
    src, run = clustered
    ds = copy_of(src, tmp_path)
    g = ClusterGallery(ds, run)
    assert sorted(g.picker.options) == list(range(K))
    g.show(3)
    assert "Proposal:" in g.info.value and "keywords:" in g.info.value
    assert g.montage.value[:2] == b"\xff\xd8"  # the montage JPEG
    g.primary.value = "Microscopy"
    assert "light microscopy" in g.secondary.options
    for color in ("cluster", "license"):
        names = {t.name for t in map_figure(ds, run, color).data}
        assert names == ({str(c) for c in range(K)} if color == "cluster"
                         else {"commercial", "noncommercial", "other"})
