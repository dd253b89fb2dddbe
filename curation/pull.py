"""Pull reviews from Label Studio, incrementally, into a new version of the label table.

The open-source edition's export snapshots have no "updated since" filter and time out on
big projects (label-studio #5811, #5262, #8353), so pull pages through the task list itself
(``GET /api/tasks/`` with a Data Manager query) and keeps a **sync cursor** in
``DATASET/review/<run>/sync.json``:

- a *pass* asks for tasks with ``updated_at >= cursor - 60 s`` (adding an annotation, or
  changing or deleting one, updates its task) and ``id > last id``, ordered by id, one page
  at a time: keyset paging, so tasks updated, added or deleted during the pass shift nothing;
- each page is written (atomically) as a snapshot file under ``snapshots/`` before the
  pass's ``last id`` moves past it, so a pull killed at any point (the client, or the server
  going away mid-pass) resumes at the page it was on; a page fetched twice is harmless:
  snapshots are keyed by task id and ``updated_at``, the newest wins;
- when a pass completes, the cursor becomes the server's time at the pass's start (from its
  ``Date`` header; the 60 s overlap covers writes that committed late), and the snapshots are
  compacted into ``tasks.jsonl``, the newest snapshot of every task;
- tasks that disappeared from the server (the project's task count says so, then one listing
  of ids shows which) are dropped and reported.

Every task's annotations then become votes (:class:`biomedica_kit.labels.review.Vote`): the
latest annotation of each expert per task, read by :func:`curation.config.read_result`.
**Bad annotations are reported, never applied**: an unknown label id, a malformed result, a
primary label without a secondary one, no label nor flag, a task that is not one of ours
(no ``ref``), a cluster or sample the run lacks, a deleted task. Skipped (cancelled)
annotations do not vote. :func:`biomedica_kit.labels.review.record_review` resolves the votes
(majority, agreement, conflicts) into a label version; ``pull-report.json`` keeps the report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from biomedica_kit.base.atomic import atomic_write_bytes
from biomedica_kit.cluster.run import run_dir
from biomedica_kit.labels.review import Vote, record_review, resolve
from biomedica_kit.labels.taxonomy import load_taxonomy
from curation.client import LabelStudioClient
from curation.config import label_ids, read_result
from curation.push import read_project, review_dir

__all__ = ["OVERLAP_SECONDS", "BadAnnotation", "PullSummary", "pull", "sync", "task_votes",
           "tasks_snapshot"]

OVERLAP_SECONDS = 60
PAGE_SIZE = 200


@dataclass(frozen=True)
class BadAnnotation:
    """An annotation (or task) that was not applied, and why."""

    task: int | None
    annotation: int | None
    annotator: str | None
    reason: str


@dataclass
class PullSummary:
    """What :func:`pull` did."""

    project: int
    label_version: str
    pages: int
    tasks_fetched: int
    tasks_known: int
    annotations: int
    votes: int
    skipped: int
    targets: int
    samples: int
    conflicts: list[dict[str, Any]]
    agreement: dict[str, Any]
    bad: list[BadAnnotation] = field(default_factory=list)
    deleted_tasks: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def format_lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        a = self.agreement
        fk, ka = a.get("fleiss_kappa"), a.get("krippendorff_alpha")
        lines = [f"sync      {self.pages} pages, {self.tasks_fetched} tasks fetched, "
                 f"{self.tasks_known} known ({self.seconds:.1f} s)",
                 f"reviews   {self.annotations} annotations -> {self.votes} votes "
                 f"({self.skipped} skipped) on {self.targets} targets -> {self.samples} samples",
                 f"agreement {a.get('targets', 0)} targets with 2+ experts: Fleiss' kappa "
                 f"{'n/a' if fk is None else f'{fk:.3f}'}, Krippendorff's alpha "
                 f"{'n/a' if ka is None else f'{ka:.3f}'}",
                 f"labels    version {self.label_version}; {len(self.conflicts)} conflicts, "
                 f"{len(self.bad)} bad annotations not applied"]
        lines += [f"  conflict {c['kind']} {c['target']}: {c['outcome']} {c['votes']}"
                  for c in self.conflicts[:20]]
        lines += [f"  bad task {b.task} annotation {b.annotation} ({b.annotator}): {b.reason}"
                  for b in self.bad[:20]]
        return lines


def _state(folder: Path) -> dict[str, Any]:
    p = folder / "sync.json"
    return json.loads(p.read_text()) if p.is_file() else {"cursor": None, "pass": None,
                                                           "passes": 0}


def _save_state(folder: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(folder / "sync.json", json.dumps(state, indent=2).encode())


def _server_time(client: LabelStudioClient) -> str:
    r = client.session.get(f"{client.url}/health", timeout=client.timeout)
    date = r.headers.get("Date")
    now = parsedate_to_datetime(date) if date else datetime.now(UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _query(since: str | None, last_id: int) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"filter": "filter:tasks:id", "operator": "greater",
                                    "type": "Number", "value": last_id}]
    if since is not None:
        t = datetime.fromisoformat(since.replace("Z", "+00:00")) - timedelta(
            seconds=OVERLAP_SECONDS)
        items.append({"filter": "filter:tasks:updated_at", "operator": "greater_or_equal",
                      "type": "Datetime", "value": t.strftime("%Y-%m-%dT%H:%M:%S.000Z")})
    return {"filters": {"conjunction": "and", "items": items}, "ordering": ["tasks:id"]}


def _snapshot(t: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "updated_at", "completed_by", "result", "was_cancelled", "created_at",
            "lead_time", "created_username")
    return {"id": t["id"], "updated_at": t["updated_at"], "ref": t["data"].get("ref"),
            "annotations": [{k: a.get(k) for k in keep} for a in t.get("annotations") or []]}


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def tasks_snapshot(folder: Path) -> dict[int, dict[str, Any]]:
    """The newest snapshot of every task pulled so far (compacted file + pass pages)."""
    tasks: dict[int, dict[str, Any]] = {}
    files = [folder / "tasks.jsonl"] if (folder / "tasks.jsonl").is_file() else []
    files += sorted((folder / "snapshots").glob("*.jsonl"))
    for f in files:
        for t in _read_jsonl(f):
            old = tasks.get(t["id"])
            if old is None or t["updated_at"] >= old["updated_at"]:
                tasks[t["id"]] = t
    return tasks


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                     for r in rows).encode())


def sync(client: LabelStudioClient, project: int, folder: Path, *, page_size: int = PAGE_SIZE,
         on_page: Callable[[int], None] | None = None) -> tuple[int, int, list[int]]:
    """Bring the local snapshot of ``project`` up to date (module doc). Returns pages and
    tasks fetched, and the ids of tasks deleted on the server since the last sync."""
    state = _state(folder)
    if state.get("project") not in (None, project):  # a new project: start over
        state = {"cursor": None, "pass": None, "passes": 0}
        (folder / "tasks.jsonl").unlink(missing_ok=True)
    state["project"] = project
    if state["pass"] is None:
        state["pass"] = {"started": _server_time(client), "since": state["cursor"],
                         "last_id": 0, "page": 0}
        _save_state(folder, state)
    p = state["pass"]
    pages = fetched = 0
    while True:
        got = client.get("/api/tasks/", project=project, page=1, page_size=page_size,
                         fields="all", resolve_uri="false",  # 20% faster; URLs not needed
                         query=json.dumps(_query(p["since"], p["last_id"])))
        tasks = got["tasks"] if isinstance(got, dict) else got
        if not tasks:
            break
        p["page"] += 1
        _write_jsonl(folder / "snapshots" / f"{state['passes']:06d}-{p['page']:06d}.jsonl",
                     [_snapshot(t) for t in tasks])
        p["last_id"] = max(t["id"] for t in tasks)
        _save_state(folder, state)
        pages += 1
        fetched += len(tasks)
        if on_page is not None:
            on_page(pages)
    known = tasks_snapshot(folder)
    deleted = _deleted(client, project, known)
    for tid in deleted:
        known.pop(tid)
    _write_jsonl(folder / "tasks.jsonl", [known[k] for k in sorted(known)])
    for f in (folder / "snapshots").glob("*.jsonl"):
        f.unlink()
    state.update(cursor=p["started"], passes=state["passes"] + 1)
    state["pass"] = None
    state["deleted"] = sorted(set(state.get("deleted", [])) | set(deleted))
    _save_state(folder, state)
    return pages, fetched, deleted


def _deleted(client: LabelStudioClient, project: int, known: dict[int, Any]) -> list[int]:
    count = int(client.get(f"/api/projects/{project}").get("task_number") or 0)
    if count >= len(known):
        return []
    ids = {t["id"] for t in client.tasks(project, page_size=1000, fields="task_only")}
    return sorted(set(known) - ids)


def _users(client: LabelStudioClient) -> dict[int, str]:
    try:
        return {int(u["id"]): u.get("email") or u.get("username") or f"user {u['id']}"
                for u in client.get("/api/users/")}
    except (KeyError, TypeError, ValueError):
        return {}


def task_votes(tasks: dict[int, dict[str, Any]], users: dict[int, str], clusters: set[int],
               samples: set[str], *, taxonomy: str | os.PathLike[str] | None = None
               ) -> tuple[list[Vote], list[BadAnnotation], int, int]:
    """Votes from task snapshots; with bad annotations, annotations seen, skipped ones."""
    ids = label_ids(load_taxonomy(taxonomy))
    votes: list[Vote] = []
    bad: list[BadAnnotation] = []
    seen = skipped = 0
    for tid, t in sorted(tasks.items()):
        anns = t["annotations"]
        seen += len(anns)
        kind, _, target = str(t.get("ref") or "").partition("/")
        why = None
        if kind == "cluster":
            why = None if target.isdigit() and int(target) in clusters else \
                f"cluster {target!r} is not a cluster of the run"
        elif kind == "sample":
            why = None if target in samples else f"sample {target!r} is not in the run"
        else:
            why = "not a biomedica review task (no ref in its data)"
        for a in anns:
            who = users.get(a.get("completed_by") or -1) or str(a.get("created_username")
                                                                or "").strip() or None
            if a.get("was_cancelled"):
                skipped += 1
                continue
            if why is not None:
                bad.append(BadAnnotation(tid, a["id"], who, why))
                continue
            r = read_result(a.get("result"), ids)
            if not r.problems and r.empty:
                r.problems.append("no label and no flag given")
            if r.problems:
                bad.append(BadAnnotation(tid, a["id"], who, "; ".join(r.problems)))
                continue
            votes.append(Vote(kind=kind, target=target, annotator=who or "unknown",
                              primary=r.primary, secondary=r.secondary,
                              panel_type=r.panel_type, panel_subtype=r.panel_subtype,
                              flags=tuple(r.flags), at=a.get("updated_at") or "",
                              ref=f"task {tid} annotation {a['id']}"))
    return votes, bad, seen, skipped


def pull(dataset: str | os.PathLike[str], run: str, client: LabelStudioClient, *,
         page_size: int = PAGE_SIZE, taxonomy: str | os.PathLike[str] | None = None,
         on_page: Callable[[int], None] | None = None) -> PullSummary:
    """Sync the run's project and write its reviews as a label version (module doc)."""
    import polars as pl

    t0 = time.monotonic()
    root = Path(dataset)
    rec = read_project(root, run)
    if rec is None:
        raise FileNotFoundError(f"{run}: never pushed (no {review_dir(root, run)}/project.json)")
    folder = review_dir(root, run)
    pages, fetched, deleted = sync(client, rec["project"], folder, page_size=page_size,
                                   on_page=on_page)
    tasks = tasks_snapshot(folder)
    assigned = pl.read_parquet(run_dir(root, run) / "assignments.parquet",
                               columns=["key", "cluster"])
    votes, bad, seen, skipped = task_votes(
        tasks, _users(client), set(assigned["cluster"].unique().to_list()),
        set(assigned["key"].to_list()), taxonomy=taxonomy)
    state = _state(folder)
    bad += [BadAnnotation(t, None, None, "task deleted in Label Studio")
            for t in state.get("deleted", [])]
    resolution = resolve(votes)
    origin = f"labelstudio {client.url} project {rec['project']}"
    version = record_review(root, run, resolution, origin=origin,
                            change={"bad_annotations": len(bad)})
    summary = PullSummary(
        project=rec["project"], label_version=version, pages=pages, tasks_fetched=fetched,
        tasks_known=len(tasks), annotations=seen, votes=len(votes), skipped=skipped,
        targets=len(resolution.resolved),
        samples=_samples(resolution.resolved, assigned),
        conflicts=[asdict(c) for c in resolution.conflicts],
        agreement=asdict(resolution.agreement), bad=bad, deleted_tasks=deleted,
        seconds=round(time.monotonic() - t0, 2))
    atomic_write_bytes(folder / "pull-report.json",
                       json.dumps(asdict(summary), indent=2, default=str).encode())
    return summary


def _samples(resolved: list[Any], assigned: Any) -> int:
    import polars as pl

    clusters = [int(r.target) for r in resolved if r.kind == "cluster"]
    keys = {r.target for r in resolved if r.kind == "sample"}
    members = set(assigned.filter(pl.col("cluster").is_in(clusters))["key"].to_list())
    return len(members | keys)
