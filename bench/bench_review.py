"""Review bridge benchmark: push and pull against a real Label Studio, and write-back MB/s.

Usage::

    .venv/bin/python bench/bench_review.py [--clusters 2000] [--spot-checks 20000]
                                           [--workdir DIR] [--json OUT]

(a) **push**: a real Label Studio (started here from the project's template data dir) gets
    ``--clusters`` cluster tasks and ``--spot-checks`` spot-check tasks through the import
    path :func:`curation.push.push` uses (same batching, same task shape: the tasks
    :func:`curation.push.cluster_tasks` makes for the bundled sample, replicated under new
    refs, so they are SYNTHETIC copies of real tasks). tasks/s.
(b) **pull**: every one of those tasks carries one annotation (imported with it); a full
    :func:`curation.pull.sync` from an empty cursor, then votes and resolution. annotations/s.
(c) **write-back**: :func:`biomedica_kit.labels.apply.apply_labels` on the bundled sample
    built one sample per shard (97 shards), for label changes touching 1% and 100% of the
    shards, against a plain copy of the same shard bytes (``shutil.copyfile`` + fsync) in the
    same run. MB/s of shard bytes written; the 1% change's cost as a share of the full one.

Targets (issue 11): push and pull of 2,000 clusters under a minute each; a full rewrite at
least 50% of plain-copy throughput; a 1% change costing about 1% of a full rewrite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "data" / "sample" / "packages"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clustered(work: Path) -> tuple[Path, str]:
    """The bundled sample, embedded offline, clustered (k=8) with proposals."""
    from biomedica_kit.cluster.run import ClusterConfig, cluster
    from biomedica_kit.embed.run import embed
    from biomedica_kit.etl.build import build
    from biomedica_kit.labels.proposals import propose_run
    from biomedica_kit.labels.table import propagate
    from biomedica_kit.tables.export import export

    ds = work / "clustered"
    build(SAMPLE, ds, workers=1, progress=False)
    export(ds, workers=1)
    embed(ds, workers=0, progress=False)
    run = cluster(ds, ClusterConfig(k=8, map_method="pca")).run
    propose_run(ds, run)
    propagate(ds, run)
    return ds, run


def bench_push_pull(work: Path, n_clusters: int, n_spots: int) -> dict[str, float]:
    from biomedica_kit.labels.review import resolve
    from biomedica_kit.labels.taxonomy import load_taxonomy
    from curation import server
    from curation.client import LabelStudioClient
    from curation.config import label_ids
    from curation.pull import _users, sync, task_votes, tasks_snapshot
    from curation.push import _batches, cluster_tasks, ensure_project

    ds, run = _clustered(work)
    home = work / "ls"
    info = server.start(home, port=_port(), files_root=work, timeout=600)
    try:
        client = LabelStudioClient(info.url, server.admin_credentials(home).token)
        tax = load_taxonomy()
        rec = ensure_project(client, ds, run, tax, work)
        real, _ = cluster_tasks(ds, run, work, spot_checks=8, tax=tax)
        clusters = [t for t in real if t["data"]["kind"] == "cluster"]
        spots = [t for t in real if t["data"]["kind"] == "sample"]
        ids = label_ids(tax)
        path = ids.path("Microscopy", "electron microscopy")
        tasks = []
        for i in range(n_clusters):
            t = json.loads(json.dumps(clusters[i % len(clusters)]))
            t["data"]["ref"] = f"cluster/{i}"
            tasks.append(t)
        for i in range(n_spots):
            t = json.loads(json.dumps(spots[i % len(spots)]))
            t["data"]["ref"] = f"sample/synthetic-{i}"
            tasks.append(t)
        for t in tasks:  # one expert's annotation each, imported with the task
            t["annotations"] = [{"result": [{"from_name": "label", "to_name": "image",
                                             "type": "taxonomy",
                                             "value": {"taxonomy": [path]}}]}]
        t0 = time.perf_counter()
        for batch in _batches(tasks):
            client.post(f"/api/projects/{rec['project']}/import?commit_to_project=true", batch)
        push_s = time.perf_counter() - t0
        folder = work / "sync"
        folder.mkdir()
        t0 = time.perf_counter()
        sync(client, rec["project"], folder, page_size=200)
        snap = tasks_snapshot(folder)
        votes, bad, seen, _ = task_votes(snap, _users(client), set(range(n_clusters)),
                                         {f"synthetic-{i}" for i in range(n_spots)})
        resolve(votes)
        pull_s = time.perf_counter() - t0
        assert len(snap) == len(tasks) and seen == len(tasks), (len(snap), seen)
        return {"tasks": len(tasks), "push_s": round(push_s, 1),
                "push_tasks_per_s": round(len(tasks) / push_s, 1),
                "pull_s": round(pull_s, 1), "pull_annotations_per_s": round(seen / pull_s, 1),
                "votes": len(votes), "bad": len(bad)}
    finally:
        server.stop(home)


def _copy_all(ds: Path, dest: Path, paths: list[str]) -> float:
    t0 = time.perf_counter()
    for rel in paths:
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ds / rel, out)
        fd = os.open(out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - t0


def bench_write_back(work: Path) -> dict[str, float]:
    from biomedica_kit.dataset.manifest import read_manifest
    from biomedica_kit.dataset.shards import iter_samples
    from biomedica_kit.etl.build import build
    from biomedica_kit.etl.config import BuildConfig
    from biomedica_kit.labels.apply import apply_labels
    from biomedica_kit.labels.table import override
    from biomedica_kit.tables.export import export

    base = work / "sharded"
    build(SAMPLE, base, workers=1, progress=False, config=BuildConfig(shard_max_samples=1))
    export(base, workers=1)
    shards = read_manifest(base)["shards"]
    total = sum(e["bytes"] for e in shards)
    out: dict[str, float] = {"shards": len(shards), "mb": round(total / 1e6, 2)}
    copy_s = _copy_all(base, work / "plain", [e["path"] for e in shards])
    out["plain_copy_mb_s"] = round(total / 1e6 / copy_s, 1)
    for name, share in (("1pct", 0.01), ("100pct", 1.0)):
        ds = work / f"wb-{name}"
        shutil.copytree(base, ds)
        chosen = shards[: max(1, round(len(shards) * share))]
        keys = [k for e in chosen for k, _ in iter_samples(ds / e["path"])]
        version = override(ds, keys, primary_label="Maps", secondary_label="map")
        t0 = time.perf_counter()
        s = apply_labels(ds, version)
        secs = time.perf_counter() - t0
        written = sum(e["bytes"] for e in chosen)
        out[f"apply_{name}_s"] = round(secs, 2)
        out[f"apply_{name}_shards"] = s.shards_rewritten
        out[f"apply_{name}_mb_s"] = round(written / 1e6 / secs, 1)
    out["full_vs_copy"] = round(out["apply_100pct_mb_s"] / out["plain_copy_mb_s"], 2)
    out["1pct_cost_of_full"] = round(out["apply_1pct_s"] / out["apply_100pct_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--spot-checks", type=int, default=20000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-review-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        res = {"push_pull": bench_push_pull(work, args.clusters, args.spot_checks),
               "write_back": bench_write_back(work)}
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
