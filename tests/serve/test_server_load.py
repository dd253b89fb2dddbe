"""A bounded load test of the real server on loopback: a fixed number of mixed search requests
(keyword, vector, hybrid, filtered) from a few concurrent keep-alive clients. It asserts zero
errors and reports p50/p99 latency (printed and kept in build/test-artifacts/load.json);
timings are reported, never asserted."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import requests
from browser import ARTIFACTS
from search_server import search_dataset, search_server

REQUESTS = 240
CLIENTS = 4
TIME_LIMIT_S = 90.0


def test_mixed_search_load_has_no_errors(tmp_path_factory, capsys):
    url = search_server(tmp_path_factory)
    ds = search_dataset(tmp_path_factory)
    captions = pq.read_table(ds / "metadata" / "figures.parquet",
                             columns=["caption"]).column("caption").to_pylist()
    words = [" ".join((c or "cell").split()[:6]) for c in captions]
    kinds = [{"mode": "keyword"}, {"mode": "vector"}, {"mode": "hybrid"},
             {"mode": "hybrid", "license": "other", "year": "2010-2019"}]
    plan = [(words[i % len(words)], kinds[i % len(kinds)]) for i in range(REQUESTS)]
    local = threading.local()
    stop_at = time.monotonic() + TIME_LIMIT_S

    def one(item: tuple[str, dict]) -> tuple[str, float, int, int]:
        if time.monotonic() > stop_at:
            return item[1]["mode"], 0.0, -1, 0
        session = getattr(local, "s", None) or requests.Session()
        local.s = session
        t0 = time.perf_counter()
        r = session.get(f"{url}/search", params={"q": item[0], "k": 10, **item[1]},
                        timeout=60)
        dt = time.perf_counter() - t0
        n = len(r.json()["results"]) if r.ok else 0
        return ("filtered" if "license" in item[1] else item[1]["mode"]), dt, r.status_code, n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        done = list(pool.map(one, plan))
    wall = time.perf_counter() - t0
    sent = [d for d in done if d[2] != -1]
    errors = [d for d in sent if d[2] != 200]
    assert len(sent) >= REQUESTS // 2, f"only {len(sent)} requests within {TIME_LIMIT_S} s"
    assert not errors, errors[:5]
    assert all(n > 0 for _, _, _, n in sent)
    report = {"requests": len(sent), "clients": CLIENTS, "errors": len(errors),
              "wall_s": round(wall, 2), "requests_per_s": round(len(sent) / wall, 1)}
    for name in ("keyword", "vector", "hybrid", "filtered", "all"):
        lat = np.array([d[1] for d in sent if name in ("all", d[0])]) * 1e3
        report[name] = {"n": int(len(lat)), "p50_ms": round(float(np.percentile(lat, 50)), 2),
                        "p99_ms": round(float(np.percentile(lat, 99)), 2)}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(report, indent=2))
    with capsys.disabled():
        print(f"\nload on loopback: {json.dumps(report)}")
