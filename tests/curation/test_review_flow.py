"""The whole review loop against the real Label Studio: push -> two experts annotate through
the HTTP API the UI uses (each with their own token, one a personal access token, one a
legacy token) -> pull -> apply-labels -> verify, plus idempotent re-push, bad annotations, and
a server killed mid-pull."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from biomedica_kit.base.http import Backoff
from biomedica_kit.cluster.run import run_dir
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify, verify_change
from biomedica_kit.labels.agreement import fleiss_kappa
from biomedica_kit.labels.apply import LABEL_FIELDS, apply_labels
from biomedica_kit.labels.table import label_versions, read_labels
from biomedica_kit.labels.taxonomy import load_taxonomy
from biomedica_kit.tables.subset import subset
from curation import server
from curation.client import LabelStudioClient
from curation.config import label_ids
from curation.pull import pull, sync, tasks_snapshot
from curation.push import push, read_project, review_dir, spot_check_keys

SPOTS = 6


def annotate(client: LabelStudioClient, task: int, primary: str | None = None,
             secondary: str | None = None, *, panel: str | None = None,
             flags: list[str] | None = None, raw: object = None) -> dict:
    """POST /api/tasks/{id}/annotations/ as the UI does."""
    if raw is not None:
        result = raw
    else:
        ids = label_ids(load_taxonomy())
        result = []
        if secondary is not None:
            result.append({"from_name": "label", "to_name": "image", "type": "taxonomy",
                           "value": {"taxonomy": [ids.path(str(primary), secondary)]}})
        if panel:
            result.append({"from_name": "panel_type", "to_name": "image", "type": "choices",
                           "value": {"choices": [panel]}})
        if flags:
            result.append({"from_name": "flags", "to_name": "image", "type": "choices",
                           "value": {"choices": flags}})
    return client.post(f"/api/tasks/{task}/annotations/", {"result": result, "lead_time": 4.0})


@pytest.fixture(scope="module")
def pushed(studio, review_copy):
    ds, run = review_copy
    summary = push(ds, run, studio.admin, spot_checks=SPOTS, files_root=studio.files_root)
    project = summary.project
    tasks = {t["data"]["ref"]: t for t in studio.admin.tasks(project)}
    return ds, run, project, tasks


@pytest.fixture(scope="module")
def experts(studio):
    ann = studio.expert("ann@review.test", personal_token=True)
    bob = studio.expert("bob@review.test", personal_token=False)
    return ann, bob


def proposals(ds: Path, run: str) -> dict[int, dict]:
    return {r["cluster"]: r for r in pq.read_table(
        run_dir(ds, run) / "proposals.parquet").to_pylist()}


def members(ds: Path, run: str, cluster: int) -> list[str]:
    a = pl.read_parquet(run_dir(ds, run) / "assignments.parquet")
    return sorted(a.filter(pl.col("cluster") == cluster)["key"].to_list())


def test_push_makes_one_task_per_cluster_and_the_spot_checks(pushed, studio):
    ds, run, project, tasks = pushed
    props = proposals(ds, run)
    spots = spot_check_keys(ds, run, SPOTS)["key"].to_list()
    assert sorted(tasks) == sorted([f"cluster/{c}" for c in props] +
                                   [f"sample/{k}" for k in spots])
    ids = label_ids(load_taxonomy())
    for c, p in props.items():
        t = tasks[f"cluster/{c}"]
        (pred,) = t["predictions"]
        assert pred["model_version"] == p["model_version"]
        assert pred["score"] == pytest.approx(p["score"], abs=1e-4)
        (path,) = pred["result"][0]["value"]["taxonomy"]
        assert ids.resolve(path) == (p["primary_label"], p["secondary_label"])
        assert t["data"]["cluster"] == c and t["data"]["samples"]
        assert all(s["key"] and "pmcid" in s and "license" in s for s in t["data"]["samples"])
    # Media by reference: the montage is served by Label Studio itself.
    t0 = tasks["cluster/0"]
    r = studio.admin.session.get(studio.info.url + t0["data"]["image"],
                                 headers={"Authorization": studio.admin._auth()})
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert r.content == (run_dir(ds, run) / "montages" / "0.jpg").read_bytes()
    spot = tasks[f"sample/{spots[0]}"]["data"]
    assert spot["key"] == spots[0] and spot["cluster"] is not None and "license" in spot
    assert studio.admin.get(f"/api/projects/{project}")["model_version"] == \
        props[0]["model_version"]


def test_push_again_adds_nothing_and_updates_a_changed_proposal(pushed, studio):
    ds, run, project, tasks = pushed
    again = push(ds, run, studio.admin, spot_checks=SPOTS, files_root=studio.files_root)
    assert (again.created, again.data_updated, again.predictions_updated) == (0, 0, 0)
    assert again.unchanged == len(tasks)
    path = run_dir(ds, run) / "proposals.parquet"
    original = pq.read_table(path)
    rows = original.to_pylist()
    rows[0]["score"] = 0.9876
    pq.write_table(pa.Table.from_pylist(rows, schema=original.schema), path)
    try:
        changed = push(ds, run, studio.admin, spot_checks=SPOTS, files_root=studio.files_root)
        assert changed.created == 0 and changed.predictions_updated >= 1
        t = next(t for t in studio.admin.tasks(project)
                 if t["data"]["ref"] == f"cluster/{rows[0]['cluster']}")
        assert [p["score"] for p in t["predictions"]] == [pytest.approx(0.9876)]
        assert len(list(studio.admin.tasks(project))) == len(tasks)
    finally:
        pq.write_table(original, path)
        push(ds, run, studio.admin, spot_checks=SPOTS, files_root=studio.files_root)


def test_two_experts_review_and_pull_resolves_every_sample(pushed, experts, studio):
    ds, run, project, tasks = pushed
    ann, bob = experts
    assert ann.token_kind == "personal access token" and bob.token_kind == "legacy token"
    assert ann.whoami()["email"] == "ann@review.test"
    props = proposals(ds, run)
    p0 = props[0]
    spot = spot_check_keys(ds, run, SPOTS).row(0, named=True)
    # cluster 0: both accept the proposal; cluster 1: both change it; cluster 2: they split.
    for who in (ann, bob):
        annotate(who, tasks["cluster/0"]["id"], p0["primary_label"], p0["secondary_label"],
                 panel="multiple")
        annotate(who, tasks["cluster/1"]["id"], "Microscopy", "electron microscopy",
                 panel="single")
    annotate(ann, tasks["cluster/2"]["id"], "Clinical Imaging", "x-ray radiography")
    annotate(bob, tasks["cluster/2"]["id"], "Plots and Charts", "bar plot")
    # A spot check overrides its sample's cluster label.
    annotate(ann, tasks[f"sample/{spot['key']}"]["id"], "Maps", "map")

    s = pull(ds, run, studio.admin)
    assert (s.targets, s.votes, len(s.bad)) == (3, 7, 0)
    assert [(c["target"], c["outcome"]) for c in s.conflicts] == [("2", "tie: not applied")]
    expected = fleiss_kappa([{"a": 2}, {"b": 2}, {"c": 1, "d": 1}])
    assert s.agreement["fleiss_kappa"] == pytest.approx(expected.overall)
    assert s.agreement["targets"] == 3

    labels = read_labels(ds, s.label_version)
    assert Path(ds, "labels", f"{s.label_version}.parquet").is_file()
    for col in ("key", "primary_label", "secondary_label", "panel_type", "label_source",
                "annotators", "agreement", "reviewed_at"):
        assert col in labels.columns
    by_key = {r["key"]: r for r in labels.iter_rows(named=True)}
    for k in members(ds, run, 0):
        r = by_key[k]
        if k == spot["key"]:
            continue
        assert (r["label_source"], r["secondary_label"], r["panel_type"]) == \
            ("expert", p0["secondary_label"], "multiple")
        assert sorted(r["annotators"]) == ["ann@review.test", "bob@review.test"]
        assert r["agreement"] == 1.0 and r["reviewed_at"]
    assert all(by_key[k]["secondary_label"] == "electron microscopy"
               for k in members(ds, run, 1) if k != spot["key"])
    assert all(by_key[k]["label_source"] == "proposal" for k in members(ds, run, 2)
               if k != spot["key"])
    r = by_key[spot["key"]]
    assert (r["label_source"], r["primary_label"], r["secondary_label"]) == \
        ("override", "Maps", "map")
    assert r["annotators"] == ["ann@review.test"] and r["agreement"] is None

    # Nothing new: no new version. Bob changes his mind: the tie resolves.
    assert pull(ds, run, studio.admin).label_version == s.label_version
    mine = [a for a in studio.admin.get(f"/api/tasks/{tasks['cluster/2']['id']}/annotations/")
            if a["completed_by"] == bob.whoami()["id"]]
    bob.patch(f"/api/annotations/{mine[0]['id']}", {"result": [
        {"from_name": "label", "to_name": "image", "type": "taxonomy",
         "value": {"taxonomy": [label_ids(load_taxonomy()).path("Clinical Imaging",
                                                                "x-ray radiography")]}}]})
    s2 = pull(ds, run, studio.admin)
    assert s2.label_version > s.label_version and not s2.conflicts
    again = {r["key"]: r for r in read_labels(ds, s2.label_version).iter_rows(named=True)}
    assert {again[k]["secondary_label"] for k in members(ds, run, 2) if k != spot["key"]} \
        == {"x-ray radiography"}


def test_bad_annotations_are_reported_and_not_applied(pushed, experts, studio):
    ds, run, project, tasks = pushed
    ann, _ = experts
    before = {r["key"]: r for r in read_labels(ds).iter_rows(named=True)}
    annotate(ann, tasks["cluster/3"]["id"], raw=[
        {"from_name": "label", "to_name": "image", "type": "taxonomy",
         "value": {"taxonomy": [["plots-and-charts", "plots-and-charts.no-such-plot"]]}}])
    annotate(ann, tasks["cluster/4"]["id"], raw=[
        {"from_name": "label", "to_name": "image", "type": "taxonomy", "value": {}}])
    annotate(ann, tasks["cluster/5"]["id"], raw=[
        {"from_name": "label", "to_name": "image", "type": "taxonomy",
         "value": {"taxonomy": [["microscopy"]]}}])
    doomed = tasks["cluster/6"]["id"]
    annotate(ann, doomed, "Microscopy", "electron microscopy")
    studio.admin.post(f"/api/projects/{project}/import",
                      [{"data": {"image": "", "title": "not ours", "details": ""}}])
    stray = max(t["id"] for t in studio.admin.tasks(project))
    annotate(ann, stray, "Microscopy", "electron microscopy")
    s = pull(ds, run, studio.admin)  # sees the annotation of the doomed task
    studio.admin.delete(f"/api/tasks/{doomed}")
    s = pull(ds, run, studio.admin)
    reasons = {b.task: b.reason for b in s.bad}
    assert "unknown label id" in reasons[tasks["cluster/3"]["id"]]
    assert "expected one taxonomy path" in reasons[tasks["cluster/4"]["id"]]
    assert "primary label only" in reasons[tasks["cluster/5"]["id"]]
    assert "no ref" in reasons[stray]
    assert reasons[doomed] == "task deleted in Label Studio" and doomed in s.deleted_tasks
    after = {r["key"]: r for r in read_labels(ds).iter_rows(named=True)}
    for c in (3, 4, 5, 6):
        for k in members(ds, run, c):
            assert after[k]["secondary_label"] == before[k]["secondary_label"]
            assert after[k]["label_source"] == before[k]["label_source"]
    report = json.loads((review_dir(ds, run) / "pull-report.json").read_text())
    assert len(report["bad"]) == len(s.bad)
    studio.admin.delete(f"/api/tasks/{stray}")
    push(ds, run, studio.admin, spot_checks=SPOTS, files_root=studio.files_root)  # doomed back


def test_server_killed_mid_pull_resumes_with_nothing_duplicated_or_lost(pushed, experts,
                                                                       studio, tmp_path):
    ds, run, project, tasks = pushed
    ann, bob = experts
    for c in (7, 8):
        annotate(bob, tasks[f"cluster/{c}"]["id"], "Tables", "table")
    folder = review_dir(ds, run)
    quick = LabelStudioClient(studio.info.url, server.admin_credentials(studio.home).token,
                              backoff=Backoff(retries=1, base=0.1, cap=0.2))

    def crash(page: int) -> None:
        if page == 2:
            assert server.kill(studio.home)

    (folder / "sync.json").unlink()  # a full pass, from the first task
    with pytest.raises(Exception):  # noqa: B017 - the connection error of a dead server
        pull(ds, run, quick, page_size=3, on_page=crash)
    state = json.loads((folder / "sync.json").read_text())
    assert state["pass"] is not None and state["pass"]["last_id"] > 0
    studio.restart()
    s = pull(ds, run, studio.admin, page_size=3)
    assert not s.conflicts and s.pages >= 1
    resumed = tasks_snapshot(folder)
    # A clean full sync into another folder sees exactly the same tasks and annotations.
    clean = tmp_path / "clean"
    clean.mkdir()
    sync(studio.admin, project, clean, page_size=50)
    fresh = tasks_snapshot(clean)
    assert sorted(resumed) == sorted(fresh)
    assert {t: sorted(a["id"] for a in v["annotations"]) for t, v in resumed.items()} == \
        {t: sorted(a["id"] for a in v["annotations"]) for t, v in fresh.items()}
    lines = (folder / "tasks.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(x)["id"] for x in lines})
    labels = {r["key"]: r for r in read_labels(ds, s.label_version).iter_rows(named=True)}
    assert {labels[k]["secondary_label"] for k in members(ds, run, 7)} == {"table"}


def test_apply_labels_makes_a_verified_version_that_exports_and_subsets(pushed, studio,
                                                                        tmp_path):
    from biomedica_kit.cli.labels import apply_labels as apply_command

    ds, run, project, tasks = pushed
    version = label_versions(ds)[-1]
    parent = read_manifest(ds)["dataset_version"]
    dry = CliRunner().invoke(apply_command, [str(ds), "--labels", version, "--dry-run"])
    assert dry.exit_code == 0 and "(dry run)" in dry.output
    assert read_manifest(ds)["dataset_version"] == parent
    s = apply_labels(ds, version)
    manifest = read_manifest(ds)
    assert manifest["dataset_version"] == s.dataset_version != parent
    assert manifest["parent"] == parent and manifest["change"]["kind"] == "apply-labels"
    assert sorted(manifest["change"]["fields"]) == sorted(LABEL_FIELDS)
    assert verify(ds).ok
    assert verify_change(ds).errors == []
    labels = {r["key"]: r for r in read_labels(ds, version).iter_rows(named=True)}
    figures = pl.read_parquet(Path(ds) / "metadata" / "figures.parquet")
    for r in figures.iter_rows(named=True):
        lab = labels[r["key"]]
        assert r["label_source"] == lab["label_source"]
        assert r["image_secondary_label"] == ([lab["secondary_label"]]
                                              if lab["secondary_label"] else [])
        assert r["label_version"] == version
    out = tmp_path / "reviewed"
    subset(ds, "label_source = 'expert'", out)
    got = {}
    for entry in read_manifest(out)["shards"]:
        for key, group in iter_samples(out / entry["path"]):
            got[key] = json.loads(group["json"])
    assert got and all(m["label_source"] == "expert" and m["annotators"] for m in got.values())
    assert read_project(ds, run)["project"] == project


def test_review_notebook_runs_headless_on_the_reviewed_dataset(pushed, tmp_path):
    import nbformat

    from biomedica_kit.analysis.report import execute_notebook, resolve_notebook

    ds, run, project, tasks = pushed
    out = tmp_path / "06_review.ipynb"
    execute_notebook(resolve_notebook("06_review"), out, {"dataset": str(ds), "run": run},
                     timeout=300)
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/html", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"run {run}: project" in text and "samples changed" in text
    assert "Fleiss' kappa" in text and "Krippendorff's alpha" in text
    assert f"/projects/{project}/data?task={tasks['cluster/0']['id']}" in text
    assert any("application/vnd.plotly.v1+json" in o.get("data", {})
               for c in nb.cells if c.cell_type == "code" for o in c.outputs)
