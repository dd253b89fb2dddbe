"""Push a cluster run to Label Studio: one review task per cluster, plus spot checks.

``push(dataset, run, client)`` makes (or finds) the run's project, titled ``<dataset folder>:
<run> [<hash of the dataset's path>]``, with the config of :mod:`curation.config`, and records
it in ``DATASET/review/<run>/project.json``. Media go by reference: the montage, exemplar
thumbnails and spot-check images are files under ``DATASET/review/<run>/media/`` (written
once), served by Label Studio's local-files serving through one local-files storage per project
whose path is that folder (``/data/local-files/?d=<path under the document root>``; the
server's document root must hold the dataset: ``--files-root`` of ``biomedica labelstudio
start``).

**Cluster tasks** (``ref`` ``cluster/<id>``) show the montage, the exemplars' thumbnails and
captions, the size, the licence mix, the top caption terms and the proposal with its score
and alternatives; the task data holds the cluster id, size, licence mix and every shown
exemplar's key, pmcid and licence. Members are not listed (a cluster may hold millions);
pull resolves them from the run's assignments. **Spot-check tasks** (``ref``
``sample/<key>``) show one sample with its caption and hold its key, cluster, pmcid and
licence. Both carry the cluster's proposal as a prediction (score, ``model_version``) that
pre-fills the Taxonomy and panel type; the project's ``model_version`` is set to it so
Label Studio shows it as the pre-annotation.

**Spot-check rule** (:func:`spot_check_keys`): the samples most likely misfiled, where the
proposal is least sure. Members rank within their cluster by the margin between the
distance to their centroid and to the next one (smallest first: boundary samples); samples
are taken by that rank first, then from clusters with the lowest proposal score (lowest
confidence) first, then by cluster id and key: the first ``n``. So 2 x 1,000 spot checks over
1,000 clusters take every cluster's two most doubtful members.

**Idempotent**: tasks are matched by ``ref`` (never by import order: an import answers counts,
not ids). A re-push imports only missing refs (in batches well under Label Studio's 250K tasks
/ 200 MB per request), PATCHes tasks whose data changed and predictions whose proposal
changed, and leaves everything else, annotations included, as it was.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from biomedica_kit.base.atomic import atomic_path, atomic_write_bytes
from biomedica_kit.cluster.run import run_dir
from biomedica_kit.labels.taxonomy import Taxonomy, load_taxonomy
from biomedica_kit.tables.export import META_DIR
from biomedica_kit.tables.samples import ROW_COLUMNS, read_samples
from curation.client import LabelStudioClient
from curation.config import LabelIds, label_ids, labeling_config, prediction_result

if TYPE_CHECKING:
    import polars as pl

__all__ = ["REVIEW_DIR", "PushSummary", "cluster_tasks", "ensure_project", "push",
           "read_project", "review_dir", "spot_check_keys", "write_media"]

REVIEW_DIR = "review"
THUMB, SAMPLE = 160, 640  # longest side of exemplar thumbnails and spot-check images (px)
EXEMPLARS_SHOWN = 8
BATCH_TASKS, BATCH_BYTES = 1000, 50 << 20


@dataclass
class PushSummary:
    """What :func:`push` did."""

    project: int
    url: str
    created: int = 0
    data_updated: int = 0
    predictions_updated: int = 0
    unchanged: int = 0
    stale: list[str] = field(default_factory=list)  # refs on the server no longer pushed
    media_written: int = 0
    seconds: float = 0.0

    def format_lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        return [f"project   {self.url}/projects/{self.project}",
                f"tasks     {self.created} created, {self.data_updated} data updated, "
                f"{self.predictions_updated} proposals updated, {self.unchanged} unchanged"
                + (f", {len(self.stale)} no longer pushed (kept)" if self.stale else ""),
                f"media     {self.media_written} files written ({self.seconds:.1f} s)"]


def review_dir(dataset: str | os.PathLike[str], run: str) -> Path:
    """``DATASET/review/<run>/``: the project record, media, sync state and pulls."""
    return Path(dataset) / REVIEW_DIR / run


def read_project(dataset: str | os.PathLike[str], run: str) -> dict[str, Any] | None:
    """The recorded project of a run (``project.json``), or None before the first push."""
    p = review_dir(dataset, run) / "project.json"
    return json.loads(p.read_text()) if p.is_file() else None


def spot_check_keys(dataset: str | os.PathLike[str], run: str, n: int) -> pl.DataFrame:
    """The ``n`` spot-check samples of a run (module doc: the rule): key, cluster, margin."""
    import polars as pl

    out = run_dir(dataset, run)
    if n <= 0:
        return pl.DataFrame(schema={"key": pl.String, "cluster": pl.Int32,
                                    "margin": pl.Float32})
    scores = pl.read_parquet(out / "proposals.parquet", columns=["cluster", "score"])
    a = pl.read_parquet(out / "assignments.parquet", columns=["key", "cluster", "margin"])
    a = a.with_columns(pl.col("margin").fill_nan(None))
    ranked = a.sort(["cluster", "margin", "key"], nulls_last=True).with_columns(
        pl.int_range(pl.len()).over("cluster").alias("_rank"))
    return (ranked.join(scores, on="cluster", how="left")
            .sort(["_rank", "score", "cluster", "key"], nulls_last=True).head(n)
            .select("key", "cluster", "margin"))


def _media_url(path: Path, files_root: Path) -> str:
    try:
        rel = path.resolve().relative_to(files_root.resolve())
    except ValueError:
        raise ValueError(f"{path} is not under the server's files root {files_root}; start "
                         f"Label Studio with --files-root covering the dataset") from None
    return "/data/local-files/?d=" + quote(rel.as_posix())


def write_media(dataset: Path, run: str, thumbs: list[dict[str, Any]],
                samples: list[dict[str, Any]]) -> int:
    """Write missing thumbnails (``thumb/<key>.jpg``) and spot-check images
    (``sample/<key>.jpg``) of figures rows, and the montages; returns files written."""
    from PIL import Image

    media = review_dir(dataset, run) / "media"
    written = 0
    for c_path in sorted((run_dir(dataset, run) / "montages").glob("*.jpg")):
        dest = media / "montage" / c_path.name
        if not dest.is_file():
            atomic_write_bytes(dest, c_path.read_bytes())
            written += 1
    for rows, folder, side in ((thumbs, "thumb", THUMB), (samples, "sample", SAMPLE)):
        todo = [r for r in rows if not (media / folder / f"{quote(r['key'], '')}.jpg").is_file()]
        for row, parts in read_samples(str(dataset), todo):
            data = next(b for e, b in parts if e == row["image_ext"])
            with Image.open(io.BytesIO(data)) as src:
                src.draft("RGB", (side, side))
                im = src.convert("RGB")
            im.thumbnail((side, side))
            with atomic_path(media / folder / f"{quote(row['key'], '')}.jpg") as tmp:
                im.save(tmp, "JPEG", quality=85)
            written += 1
    return written


def _figures(dataset: Path, keys: set[str]) -> dict[str, dict[str, Any]]:
    import polars as pl

    cols = [*ROW_COLUMNS, "caption", "pmcid", "article_license", "license_category"]
    f = pl.read_parquet(dataset / META_DIR / "figures.parquet")
    f = f.select([c for c in cols if c in f.columns]).filter(pl.col("key").is_in(sorted(keys)))
    return {r["key"]: r for r in f.iter_rows(named=True)}


def _about(row: dict[str, Any]) -> dict[str, Any]:
    return {"key": row["key"], "pmcid": row.get("pmcid"),
            "license": row.get("article_license") or row.get("license_category")}


def _details(prop: dict[str, Any], stats: dict[str, Any] | None, shown: list[dict[str, Any]],
             urls: dict[str, str]) -> str:
    e = html.escape
    alts = json.loads(prop.get("alternatives") or "[]")
    parts = [f"<p><b>Proposal</b>: {e(prop['primary_label'])} / {e(prop['secondary_label'])} "
             f"({e(str(prop['panel_type']))}), score {prop['score']:.2f}"
             + (" &middot; alternatives: " + "; ".join(
                 f"{e(a['secondary_label'])} {a['score']:.2f}" for a in alts[1:]) if alts else "")
             + "</p>"]
    if stats:
        parts.append(f"<p><b>{stats['size']} samples</b> &middot; licences: "
                     f"{e(stats.get('licenses') or '')} &middot; terms: "
                     f"{e(', '.join(stats.get('top_terms') or []))}</p>")
    for row in shown:
        cap = (row.get("caption") or "")[:300]
        parts.append(f"<div style='display:flex;gap:8px;margin:4px 0'><img src='{urls[row['key']]}'"
                     f" style='max-width:{THUMB}px;max-height:{THUMB}px' alt='{e(row['key'])}'/>"
                     f"<small><b>{e(row['key'])}</b> ({e(str(_about(row)['license']))}): "
                     f"{e(cap)}</small></div>")
    return "\n".join(parts)


def cluster_tasks(dataset: str | os.PathLike[str], run: str, files_root: Path, *,
                  spot_checks: int = 0, tax: Taxonomy | None = None
                  ) -> tuple[list[dict[str, Any]], int]:
    """The tasks to push (``{"data", "predictions"}``, ``data.ref`` their identity) and the
    number of media files written for them."""
    import polars as pl

    root = Path(dataset)
    out = run_dir(root, run)
    tax = tax or load_taxonomy()
    ids = label_ids(tax)
    props = {r["cluster"]: r for r in pl.read_parquet(out / "proposals.parquet")
             .iter_rows(named=True)}
    stats = {r["cluster"]: r for r in pl.read_parquet(out / "clusters.parquet")
             .iter_rows(named=True)} if (out / "clusters.parquet").is_file() else {}
    ex = pl.read_parquet(out / "exemplars.parquet").filter(pl.col("kind") == "centroid")
    shown: dict[int, list[str]] = {}
    for r in ex.sort(["cluster", "rank"]).iter_rows(named=True):
        if len(shown.setdefault(r["cluster"], [])) < EXEMPLARS_SHOWN:
            shown[r["cluster"]].append(r["key"])
    spots = spot_check_keys(root, run, spot_checks)
    rows = _figures(root, {k for ks in shown.values() for k in ks} | set(spots["key"]))
    written = write_media(root, run, [rows[k] for ks in shown.values() for k in ks],
                          [rows[k] for k in spots["key"]])
    media = review_dir(root, run) / "media"
    thumb_urls = {k: _media_url(media / "thumb" / f"{quote(k, '')}.jpg", files_root)
                  for ks in shown.values() for k in ks}
    tasks = []
    for c, p in sorted(props.items()):
        st = stats.get(c)
        members = [rows[k] for k in shown.get(c, [])]
        montage = media / "montage" / f"{c}.jpg"
        data = {"ref": f"cluster/{c}", "kind": "cluster", "run": run, "cluster": c,
                "title": f"Cluster {c}" + (f" ({st['size']} samples)" if st else ""),
                "image": _media_url(montage, files_root) if montage.is_file() else "",
                "details": _details(p, st, members, thumb_urls),
                "size": st["size"] if st else None,
                "licenses": json.loads(st["licenses"]) if st and st.get("licenses") else {},
                "samples": [_about(r) for r in members]}
        tasks.append({"data": data, "predictions": [_prediction(ids, p)]})
    for s in spots.iter_rows(named=True):
        row, p = rows[s["key"]], props[s["cluster"]]
        url = _media_url(media / "sample" / f"{quote(s['key'], '')}.jpg", files_root)
        data = {"ref": f"sample/{s['key']}", "kind": "sample", "run": run,
                "cluster": s["cluster"], **_about(row),
                "title": f"Spot check {s['key']} (cluster {s['cluster']})", "image": url,
                "details": _details(p, None, [], {}) + "<p>" + html.escape(
                    row.get("caption") or "") + "</p>"}
        tasks.append({"data": data, "predictions": [_prediction(ids, p)]})
    return tasks, written


def _prediction(ids: LabelIds, p: dict[str, Any]) -> dict[str, Any]:
    return {"result": prediction_result(ids, p["primary_label"], p["secondary_label"],
                                        p["panel_type"]),
            "score": round(float(p["score"]), 4), "model_version": p["model_version"]}


def ensure_project(client: LabelStudioClient, dataset: Path, run: str, tax: Taxonomy,
                   files_root: Path) -> dict[str, Any]:
    """The run's project (made, or found by the record or its title), its config current and
    a local-files storage for its media; recorded in ``project.json``."""
    where = hashlib.sha1(str(dataset.resolve()).encode()).hexdigest()[:6]
    title = f"{dataset.resolve().name}: {run}"[:41] + f" [{where}]"  # titles hold 50
    config = labeling_config(tax)
    rec = read_project(dataset, run)
    project = None
    if rec and rec.get("url") == client.url:
        got = [p for p in _projects(client) if p["id"] == rec["project"]]
        project = got[0] if got else None
    if project is None:
        project = next((p for p in _projects(client) if p["title"] == title), None)
    if project is None:
        project = client.post("/api/projects/", {"title": title, "label_config": config,
                                                 "description": f"biomedica review of {run}"})
    elif project.get("label_config") != config:
        client.patch(f"/api/projects/{project['id']}", {"label_config": config})
    pid = int(project["id"])
    media = review_dir(dataset, run) / "media"
    media.mkdir(parents=True, exist_ok=True)
    storages = client.get("/api/storages/localfiles/", project=pid)
    if not any(Path(s["path"]) == media.resolve() for s in storages):
        _media_url(media, files_root)  # refuses a media folder outside the document root
        client.post("/api/storages/localfiles/", {"project": pid, "path": str(media.resolve()),
                                                  "use_blob_urls": True, "title": "media"})
    rec = {"url": client.url, "project": pid, "title": title, "run": run,
           "files_root": str(files_root), "taxonomy": tax.version}
    atomic_write_bytes(review_dir(dataset, run) / "project.json",
                       json.dumps(rec, indent=2).encode())
    return rec


def _projects(client: LabelStudioClient) -> list[dict[str, Any]]:
    out, page = [], 1
    while True:
        got = client.get("/api/projects/", page=page, page_size=100)
        out += got["results"]
        if not got.get("next"):
            return out
        page += 1


def _batches(tasks: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = [[]]
    size = 0
    for t in tasks:
        n = len(json.dumps(t))
        if out[-1] and (len(out[-1]) >= BATCH_TASKS or size + n > BATCH_BYTES):
            out.append([])
            size = 0
        out[-1].append(t)
        size += n
    return [b for b in out if b]


def push(dataset: str | os.PathLike[str], run: str, client: LabelStudioClient, *,
         spot_checks: int = 0, files_root: str | os.PathLike[str] | None = None,
         taxonomy: str | os.PathLike[str] | None = None) -> PushSummary:
    """Push a run's review tasks (module doc). ``files_root``: the server's document root
    (default: the one :mod:`curation.server` recorded for a local server, else ``/``)."""
    import time

    t0 = time.monotonic()
    root = Path(dataset)
    if files_root is None:
        from curation import server

        st = server.status()
        files_root = st.info.files_root if st.info and st.info.url == client.url else "/"
    froot = Path(files_root)
    tax = load_taxonomy(taxonomy)
    rec = ensure_project(client, root, run, tax, froot)
    pid = rec["project"]
    tasks, written = cluster_tasks(root, run, froot, spot_checks=spot_checks, tax=tax)
    existing = {t["data"].get("ref"): t for t in client.tasks(pid)}
    summary = PushSummary(project=pid, url=client.url, media_written=written)
    new = []
    for t in tasks:
        old = existing.pop(t["data"]["ref"], None)
        if old is None:
            new.append(t)
            continue
        changed = False
        if old["data"] != t["data"]:
            client.patch(f"/api/tasks/{old['id']}", {"data": t["data"]})
            summary.data_updated += 1
            changed = True
        want = t["predictions"][0]
        have = old.get("predictions") or []
        if not any(_same_prediction(h, want) for h in have):
            if have:
                client.patch(f"/api/predictions/{have[0]['id']}", want)
            else:
                client.post("/api/predictions/", {**want, "task": old["id"]})
            summary.predictions_updated += 1
            changed = True
        summary.unchanged += not changed
    for batch in _batches(new):
        got = client.post(f"/api/projects/{pid}/import?commit_to_project=true", batch)
        summary.created += int(got.get("task_count", len(batch)))
    summary.stale = sorted(r for r in existing if r)
    versions = {t["predictions"][0]["model_version"] for t in tasks}
    if len(versions) == 1:
        client.patch(f"/api/projects/{pid}", {"model_version": versions.pop(),
                                              "show_collab_predictions": True})
    summary.seconds = round(time.monotonic() - t0, 2)
    atomic_write_bytes(review_dir(root, run) / "push.json",
                       json.dumps(asdict(summary), indent=2).encode())
    return summary


def _same_prediction(have: dict[str, Any], want: dict[str, Any]) -> bool:
    return (have.get("result") == want["result"] and have.get("model_version")
            == want["model_version"] and round(float(have.get("score") or 0), 4)
            == want["score"])
