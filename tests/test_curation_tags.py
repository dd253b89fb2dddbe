"""Curation decisions beside the shards: tags, accept/reject, notes, provenance, concurrent
writers, filters on them, and applying them as a new dataset version."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from biomedica_kit.analysis import curation
from biomedica_kit.analysis.explore import open_dataset
from biomedica_kit.analysis.filters import Filters
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify_change


@pytest.fixture
def ds(analysis_dataset, tmp_path) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(analysis_dataset, out)
    return out


def all_keys(dataset: Path) -> list[str]:
    con = open_dataset(dataset)
    return [r[0] for r in con.execute("SELECT key FROM figures ORDER BY key").fetchall()]


def shard_bytes(dataset: Path) -> dict[str, bytes]:
    return {p.relative_to(dataset).as_posix(): p.read_bytes()
            for p in (dataset / "shards").rglob("*.tar")}


def test_tags_decisions_and_notes_with_provenance(ds):
    before = shard_bytes(ds)
    keys = all_keys(ds)
    store = curation.TagStore(ds, author="curator-a")
    assert store.tag(keys[:3], "blurry", origin="card") == 3
    assert store.tag(keys[:5], "blurry") == 2  # the three already tagged keep their row
    assert store.decide(keys[:2], "accept") == 2
    assert store.decide(keys[1:3], "reject") == 2  # replaces keys[1]'s accept
    assert store.note(keys[0], "  crop the legend  ") == 1
    assert store.note(keys[0], "crop the legend, then accept") == 1  # one note per sample
    assert store.decisions() == {keys[0]: "accept", keys[1]: "reject", keys[2]: "reject"}
    assert store.notes() == {keys[0]: "crop the legend, then accept"}
    assert store.tags_of(keys[:1]) == {keys[0]: ["blurry"]}
    assert store.summary() == {"accepted": 1, "rejected": 2, "notes": 1, "tags": {"blurry": 5}}
    assert store.untag(keys[:1], "blurry") == 1 and store.decide(keys[2:3], None) == 1
    with pytest.raises(ValueError):
        store.decide(keys[:1], "maybe")
    with pytest.raises(ValueError):
        store.tag(keys[:1], "   ")
    t = pq.read_table(ds / curation.TAGS_FILE).to_pylist()
    version = read_manifest(ds)["dataset_version"]
    assert all(r["author"] == "curator-a" and r["dataset_version"] == version for r in t)
    assert {r["origin"] for r in t if r["kind"] == "tag"} == {"card", "code"}
    assert all(r["created_at"] is not None for r in t)
    log = [json.loads(line) for line in (ds / curation.LOG_FILE).read_text().splitlines()]
    assert [e["op"] for e in log][-2:] == ["remove", "remove"]  # removals stay on record
    assert sum(e["samples"] for e in log if e["op"] == "set" and e["kind"] == "tag") == 5
    # Never in the shards, and no temporary file left beside the table.
    assert shard_bytes(ds) == before
    assert sorted(p.name for p in (ds / "tags").iterdir()) == [".lock", "log.jsonl",
                                                              "tags.parquet"]


def test_filters_on_tags_and_decisions(ds):
    keys = all_keys(ds)
    store = curation.TagStore(ds)
    con = open_dataset(ds)
    n = store.tag_where(con, Filters(kinds=("table",)).where(con), "table-review")
    tables = {r[0] for r in con.execute(
        "SELECT key FROM figures WHERE figure_kind = 'table'").fetchall()}
    assert n == len(tables) > 0
    store.decide(keys[:4], "reject")
    curation.attach(con, ds)  # the view reads the table as it is now
    match = lambda f: {r[0] for r in con.execute(  # noqa: E731
        f"SELECT key FROM figures WHERE ({f.where(con)})").fetchall()}
    assert match(Filters(tags=("table-review",))) == tables
    assert match(Filters(decision="rejected")) == set(keys[:4])
    assert match(Filters(decision="undecided")) == set(keys[4:])
    assert match(Filters(decision="accepted")) == set()
    origin = {r["origin"] for r in store.table().to_pylist() if r["value"] == "table-review"}
    assert origin == {"bulk: figure_kind IN ('table')"}


_WRITER = """
import sys
from biomedica_kit.analysis.curation import TagStore
ds, who, keys = sys.argv[1], sys.argv[2], sys.argv[3:]
store = TagStore(ds, author=who)
for k in keys:
    store.tag([k], who)
"""


def test_two_writers_at_once_lose_nothing(ds):
    keys = all_keys(ds)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(ds), who, *keys])
             for who in ("kernel-a", "kernel-b")]
    assert [p.wait(120) for p in procs] == [0, 0]
    tags = curation.TagStore(ds).tags_of()
    assert tags == {k: ["kernel-a", "kernel-b"] for k in keys}


def test_apply_writes_the_decisions_as_a_new_version(ds):
    keys = all_keys(ds)
    parent = read_manifest(ds)["dataset_version"]
    store = curation.TagStore(ds)
    store.decide(keys[:2], "reject")
    store.tag(keys[1:3], "duplicate-looking")
    store.note(keys[2], "compare with fig 2")
    summary = curation.apply(ds)
    assert summary is not None and summary.parent == parent and summary.samples_changed == 3
    m = read_manifest(ds)
    assert m["dataset_version"] != parent and m["change"]["kind"] == "curation"
    got = {}
    for s in m["shards"]:
        for _k, g in iter_samples(ds / s["path"]):
            rec = json.loads(g["json"])
            got[rec["key"]] = {f: rec.get(f) for f in curation.APPLIED_FIELDS}
    assert got[keys[0]] == {"curation_decision": "reject", "curation_tags": [],
                            "curation_note": None}
    assert got[keys[1]] == {"curation_decision": "reject",
                            "curation_tags": ["duplicate-looking"], "curation_note": None}
    assert got[keys[2]]["curation_note"] == "compare with fig 2"
    assert all(v == dict.fromkeys(curation.APPLIED_FIELDS) for k, v in got.items()
               if k not in keys[:3])
    check = verify_change(ds)
    assert check.ok, check.errors
    # The applied fields are ordinary columns now: a subset can drop the rejected samples.
    con = open_dataset(ds)
    assert con.execute("SELECT count(*) FROM figures WHERE curation_decision IS DISTINCT "
                       "FROM 'reject'").fetchone()[0] == len(keys) - 2
