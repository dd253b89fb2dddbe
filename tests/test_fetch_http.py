"""Builds from a real HTTP server on loopback serving an NCBI-layout mirror of real packages.

Faults are injected by the server (500, dropped connection, slow answers within and beyond the
client's timeout, corrupt bodies, 404); the HTTP build must still give exactly the samples of a
build from the same mirror as a local folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from mirror_server import MISSING, PACKAGES, MirrorServer, package_path

from biomedica_kit.base.http import RateLimiter
from biomedica_kit.cli.main import main
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.dataset.verify import verify
from biomedica_kit.etl.build import BuildConfig, build
from biomedica_kit.ingest.fetch import Fetcher, FetchPolicy
from biomedica_kit.ingest.sources import LAST_UPDATED, Selection, read_file_list, write_file_list

CFG = BuildConfig(shard_max_samples=4)
FAST = FetchPolicy(rate=50, retries=3, backoff=0.02, read_timeout=1.0, threads=3)


@pytest.fixture(scope="module")
def folder_build(mirror, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("folder") / "ds"
    build(mirror, out, workers=1, progress=False, config=CFG)
    return out


def samples_of(ds: Path) -> list[tuple[str, str, bytes]]:
    """(shard path, key, json bytes) of every sample, in manifest order."""
    out = []
    for s in read_manifest(ds)["shards"]:
        for key, g in iter_samples(ds / s["path"]):
            out.append((s["path"], key, g["json"]))
    return out


def shard_digests(ds: Path) -> list[tuple[str, str]]:
    return [(s["path"], s["sha256"]) for s in read_manifest(ds)["shards"]]


def test_http_build_with_faults_equals_folder_build(mirror, folder_build, tmp_path):
    a, b, c, d = (package_path(n) for n, *_ in PACKAGES[:4])
    with MirrorServer(mirror) as srv:
        srv.fault(a, "500", "500")  # two server errors, then fine
        srv.fault(b, "drop")  # connection dropped mid-body: resumed with a Range request
        srv.fault(c, "slow:0.3")  # slow but within the 1 s read timeout
        srv.fault(d, "slow:1.6")  # beyond the timeout: the client gives up and retries
        srv.fault(package_path(PACKAGES[4][0]), "corrupt")  # right length, wrong bytes
        out = tmp_path / "http"
        s = build(srv.url, out, workers=2, progress=False, config=CFG, fetch_policy=FAST)
        log = srv.requests()
    assert s.reconciles and verify(out).ok
    # Byte-identical shards: same paths, same sha256, hence same samples in the same order.
    assert shard_digests(out) == shard_digests(folder_build)
    assert samples_of(out) == samples_of(folder_build)
    assert [r.status for r in log if r.path == a] == [500, 500, 200]
    assert [(r.status, r.range is not None) for r in log if r.path == b] == [(200, False),
                                                                            (206, True)]
    assert len([r for r in log if r.path == d]) == 2
    assert len([r for r in log if r.path == package_path(PACKAGES[4][0])]) == 2
    assert s.fetch["retries"] == 5 and s.fetch["resumed"] == 1
    # The missing package is a failed package with its reason; the run went on.
    arts = pq.read_table(out / "report/articles.parquet").to_pylist()
    missing = [r for r in arts if r["pmcid"] == MISSING[0]]
    assert [(r["status"], r["reason"]) for r in missing] == [("failed", "http_404")]
    # Nothing partial is left in the cache; every package is stored under its File path.
    cache = out / "cache" / "packages"
    assert not list(cache.rglob("*.part"))
    for name, *_ in PACKAGES:
        assert (cache / package_path(name)).read_bytes() == (mirror / package_path(name)
                                                             ).read_bytes()


def test_cli_build_from_http(mirror, tmp_path):
    out = tmp_path / "cli"
    with MirrorServer(mirror) as srv:
        res = CliRunner().invoke(main, [
            "build", "--source", srv.url, "--out", str(out), "--quiet", "--workers", "1",
            "--license", "commercial,noncommercial", "--since", "2016", "--limit", "4",
            "--rate", "20"])
        got = sorted(r.path for r in srv.package_requests())
    assert res.exit_code == 0, res.output
    # First four rows that are (non)commercial and updated in 2016 or later, in list order.
    want = [n for n, _, lic, upd in PACKAGES if lic != "NO-CC CODE" and upd >= "2016"][:4]
    assert got == sorted(package_path(n) for n in want)
    assert "4 packages processed" in res.output
    assert json.loads((out / "report/build.json").read_text())["fetch"]["downloaded"] == 4


@pytest.mark.parametrize("selection, expected", [
    (Selection(licenses=frozenset({"noncommercial"})),
     {"PMC7417471", "PMC3574550", "PMC12354728"}),
    (Selection(since="2019-02-25", until="2020-08-14"), {"PMC6385181", "PMC7417471"}),
    (Selection(years=(2012, 2013)), {"PMC3460867", "PMC3574550"}),
    (Selection(pmcids=frozenset({"PMC2599765", "PMC12419688"})), {"PMC2599765", "PMC12419688"}),
    (Selection(licenses=frozenset({"other"}), limit=1), {"elife-32671"}),
])
def test_selection_fetches_exactly_the_selected(mirror, tmp_path, selection, expected):
    with MirrorServer(mirror) as srv:
        s = build(srv.url, tmp_path / "ds", workers=1, progress=False, selection=selection,
                  fetch_policy=FAST)
        got = {r.path for r in srv.package_requests()}
    assert got == {package_path(n) for n in expected}
    assert s.packages == len(expected)


def test_rate_limit_is_honoured(mirror, tmp_path):
    rate = 5.0
    with MirrorServer(mirror) as srv:
        build(srv.url, tmp_path / "ds", workers=1, progress=False,
              fetch_policy=FetchPolicy(rate=rate, threads=4, retries=0))
        times = sorted(r.t for r in srv.requests())
    assert len(times) == len(PACKAGES) + 2  # every package, the missing one, the file list
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Evenly spaced slots of 1/rate s; arrival jitter on loopback is far below 50 ms.
    assert min(gaps) >= 1 / rate - 0.05, gaps
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u - t < 1.0) <= rate + 1


def test_rate_limiter_is_thread_safe():
    import threading
    import time

    lim = RateLimiter(40)
    stamps: list[float] = []

    def take():
        for _ in range(5):
            lim.acquire()
            stamps.append(time.monotonic())

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    assert len(stamps) == 20 and stamps[-1] - stamps[0] >= 19 / 40 - 0.02


def test_changed_package_is_fetched_again(mirror, tmp_path, corpus):
    src = tmp_path / "mirror"
    import shutil

    shutil.copytree(mirror, src)
    out = tmp_path / "ds"
    with MirrorServer(src) as srv:
        first = build(srv.url, out, workers=1, progress=False, config=CFG, fetch_policy=FAST)
        n_first = len(srv.package_requests())
        # Unchanged list: nothing is fetched but the package that failed (404), tried again.
        again = build(srv.url, out, workers=1, progress=False, config=CFG, fetch_policy=FAST)
        assert [r.path for r in srv.package_requests()[n_first:]] == [package_path(MISSING[0])]
        assert (again.new_packages, again.dataset_version) == (1, first.dataset_version)
        n_first += 1
        # Upstream changes two packages: one only gets a new Last Updated, the other new bytes
        # (its folder re-packed without the second image).
        rows = read_file_list(src / "oa_file_list.csv")
        touched, changed = PACKAGES[0][0], PACKAGES[2][0]
        for r in rows:
            if r["File"] in (package_path(touched), package_path(changed)):
                r[LAST_UPDATED] = "2026-01-01 00:00:00"
        write_file_list(rows, src / "oa_file_list.csv")
        from mirror_server import tar_folder

        pkg = tmp_path / changed
        shutil.copytree(corpus / changed, pkg)
        (pkg / "elife-19405-inf1.tif").unlink()
        (src / package_path(changed)).write_bytes(tar_folder(pkg, changed))
        third = build(srv.url, out, workers=1, progress=False, config=CFG, fetch_policy=FAST)
        new_requests = [r.path for r in srv.package_requests()[n_first:]]
    assert sorted(new_requests) == sorted([package_path(touched), package_path(changed),
                                           package_path(MISSING[0])])
    assert third.new_packages == 3 and third.parent == first.dataset_version
    res = verify(out)
    assert res.ok, res.errors
    pkgs = {r["id"]: r for r in pq.read_table(out / "report/packages.parquet").to_pylist()}
    assert pkgs[package_path(touched)]["last_updated"] == "2026-01-01 00:00:00"
    # Every sample exactly once; the rebuilt package's samples carry the new Last Updated.
    keys = [k for _, k, _ in samples_of(out)]
    assert sorted(keys) == sorted(k for _, k, _ in samples_of(out)) and len(set(keys)) == len(
        keys) == first.samples
    metas = {k: json.loads(j) for _, k, j in samples_of(out)}
    assert {m["last_updated"] for m in metas.values() if m["package"] == changed} == {
        "2026-01-01 00:00:00"}
    # The ledger of the download cache knows the new upstream version.
    ledger = [json.loads(x) for x in (out / "cache/packages/.fetch-ledger.jsonl").open()]
    assert [e["last_updated"] for e in ledger if e["file"] == package_path(changed)] == [
        "2016-11-02 08:00:00", "2026-01-01 00:00:00"]


def test_failed_download_is_retried_by_the_next_run(mirror, tmp_path):
    out = tmp_path / "ds"
    target = package_path(PACKAGES[1][0])
    no_retry = FetchPolicy(rate=50, retries=0, backoff=0.01, read_timeout=1.0)
    with MirrorServer(mirror) as srv:
        srv.fault(target, "500")
        s1 = build(srv.url, out, workers=1, progress=False, fetch_policy=no_retry)
        s2 = build(srv.url, out, workers=1, progress=False, fetch_policy=no_retry)
        got = [r.path for r in srv.package_requests()]
    assert s1.articles.get("failed") == 2  # the 500 and the missing package
    assert got.count(target) == 2 and s2.new_packages == 2  # both retried, one now succeeds
    assert s2.articles.get("failed") == 1 and verify(out).ok


def test_partial_download_never_looks_complete(mirror, tmp_path):
    from biomedica_kit.ingest.sources import PackageRef

    target = package_path(PACKAGES[0][0])
    with MirrorServer(mirror) as srv:
        srv.fault(target, "drop")
        f = Fetcher(srv.url, tmp_path, FetchPolicy(rate=0, retries=0))
        ref = PackageRef("PMC12419688", srv.url + target, file=target, last_updated="x")
        failed = f.fetch(ref)
        assert failed.failure.startswith("connection_broken") and failed.sha256 is None
        assert not (tmp_path / target).exists()  # only the .part, never the final name
        part = tmp_path / (target + ".part")
        have = part.stat().st_size
        assert 0 < have < (mirror / target).stat().st_size
        ok = f.fetch(ref)  # continues the .part with a Range request
        log = srv.requests(target)
    assert [(r.status, r.range) for r in log] == [(200, None), (206, f"bytes={have}-")]
    assert ok.failure is None and Path(ok.location).read_bytes() == (mirror / target).read_bytes()
    assert f.stats.resumed == 1 and not part.exists()
