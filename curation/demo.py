"""A scripted review for the demo: two experts review every cluster task through the HTTP API
the UI uses, each signed up with their own token.

``ann`` accepts every proposal; ``bob`` accepts too, except on the cluster whose proposal is
least sure, where he picks the proposal's first alternative: the demo then shows a conflict (a
tie between two experts is listed and not applied) beside unanimous reviews. Run as
``python -m curation.demo DATASET RUN`` against the local server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from biomedica_kit.labels.proposals import proposal_rows
from biomedica_kit.labels.taxonomy import load_taxonomy
from curation import server
from curation.client import LabelStudioClient
from curation.config import label_ids, prediction_result
from curation.push import read_project

__all__ = ["EXPERTS", "scripted_review"]

#: The demo's experts and whether each uses a personal access token (else a legacy token).
EXPERTS = (("ann@demo.biomedica", True), ("bob@demo.biomedica", False))


def scripted_review(dataset: str | Path, run: str, *, home: str | Path | None = None
                    ) -> dict[str, Any]:
    """Sign up the two experts and annotate every unreviewed cluster task of ``run``."""
    st = server.status(home)
    if st.info is None or not st.healthy:
        raise server.LabelStudioError("no local Label Studio running")
    rec = read_project(dataset, run)
    if rec is None:
        raise FileNotFoundError(f"{run}: not pushed")
    admin_token = server.admin_credentials(home).token
    admin = LabelStudioClient(st.info.url, admin_token)
    known = {u["email"] for u in admin.get("/api/users/")} & {e for e, _ in EXPERTS}
    if known:  # their tokens are not kept: annotating as them is not possible
        raise server.LabelStudioError(
            f"the demo experts {sorted(known)} already exist in this server's home; run the "
            f"scripted review against a fresh home (scripts/demo_review.sh starts one)")
    experts = {email: LabelStudioClient(st.info.url, server.add_user(
        st.info.url, admin_token, email, "demo-review-pass", personal_token=pat))
        for email, pat in EXPERTS}
    alternatives = {r["cluster"]: r["alternatives"] for r in proposal_rows(dataset, run)}
    ids = label_ids(load_taxonomy())
    tasks = [t for t in admin.tasks(rec["project"]) if t["data"].get("kind") == "cluster"
             and not t.get("annotations")]
    least = min(tasks, key=lambda t: t["predictions"][0]["score"], default=None)
    done = 0
    for t in tasks:
        result = t["predictions"][0]["result"]
        proposed = ids.resolve(result[0]["value"]["taxonomy"][0])
        for email, client in experts.items():
            mine = result
            if email.startswith("bob") and t is least:
                other = [a for a in alternatives.get(t["data"]["cluster"], [])
                         if (a["primary_label"], a["secondary_label"]) != proposed]
                if other:
                    mine = prediction_result(ids, other[0]["primary_label"],
                                             other[0]["secondary_label"], None)
            client.post(f"/api/tasks/{t['id']}/annotations/", {"result": mine,
                                                                 "lead_time": 5.0})
            done += 1
    return {"experts": sorted(experts), "annotations": done,
            "conflict_task": least["id"] if least else None}


if __name__ == "__main__":
    print(json.dumps(scripted_review(sys.argv[1], sys.argv[2])))
