"""The E-utilities client (biomedica_kit.enrich.efetch) against a real HTTP server on 127.0.0.1
serving the real efetch corpus (tests/eutils_server.py), with injected faults."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest
from eutils_server import EutilsServer
from lxml import etree
from pubmed_corpus import (
    CORPUS_PMIDS,
    FAST,
    NO_RECORD_PMID,
    SPACING_TOLERANCE,
    gaps,
)

from biomedica_kit.base import atomic
from biomedica_kit.base.http import RateLimiter
from biomedica_kit.enrich import efetch as entrez
from biomedica_kit.enrich.efetch import fetch_pubmed
from biomedica_kit.etl.pubmed import load_cached, parse_pubmed_article
from biomedica_kit.ingest.entrez_cache import cache_status, iter_cached_pmids

pytestmark = pytest.mark.usefixtures("loopback_only")


# ---------------------------------------------------------------------------------------------
# Fetching through the loopback server
# ---------------------------------------------------------------------------------------------


def test_fetch_corpus_caches_every_record_and_a_rerun_sends_nothing(
    server: EutilsServer, tmp_path: Path, parsed: dict[str, dict]
):
    wanted = sorted(CORPUS_PMIDS) + [NO_RECORD_PMID]
    first = fetch_pubmed(
        wanted, tmp_path, base_url=server.base_url, email="dev@example.org", **FAST
    )
    assert len(server.requests) == 1 and first.batches == 1
    assert first.counts() == {"ok": 24, "not_found": 1, "failed": 0}
    assert list(first.outcomes) == wanted
    assert first.outcomes[NO_RECORD_PMID].reason == "no record returned by efetch"
    for pmid in CORPUS_PMIDS:
        cached = tmp_path / pmid[-3:].zfill(3) / f"{pmid}.xml"
        assert etree.parse(str(cached)).getroot().tag == "PubmedArticle"
        assert parse_pubmed_article(cached) == parsed[pmid]
    status = json.loads((tmp_path / "814" / f"{NO_RECORD_PMID}.status.json").read_text())
    assert status["status"] == "not_found"
    assert sorted(iter_cached_pmids(tmp_path)) == sorted(CORPUS_PMIDS)

    second = fetch_pubmed(wanted, tmp_path, base_url=server.base_url, **FAST)
    assert len(server.requests) == 1  # nothing new went out
    assert second.requests == 0 and second.counts() == first.counts()
    assert all(o.from_cache for o in second.outcomes.values())

    third = fetch_pubmed(wanted, tmp_path, base_url=server.base_url, refresh=True, **FAST)
    assert [r.ids for r in server.requests[1:]] == [[NO_RECORD_PMID]]
    assert third.outcomes[NO_RECORD_PMID].status == "not_found"
    assert not list(tmp_path.rglob("*.tmp"))


def test_posts_in_batches_of_at_most_batch_size(server: EutilsServer, tmp_path: Path):
    ids = ["23657305", "9997", "219391", "38147649", "29963580"]
    summary = fetch_pubmed(
        ids, tmp_path, base_url=server.base_url, batch_size=2, email="dev@example.org", **FAST
    )
    seen = server.requests
    assert len(seen) == 3 and summary.batches == 3 and summary.requests == 3
    assert [len(r.ids) for r in seen] == [2, 2, 1]
    assert [i for r in seen for i in r.ids] == ids
    for request in seen:
        assert request.method == "POST" and request.path == "/entrez/eutils/efetch.fcgi"
        assert request.params["db"] == "pubmed" and request.params["retmode"] == "xml"
        assert request.params["tool"] == "biomedica-kit"
        assert request.params["email"] == "dev@example.org"
        assert "api_key" not in request.params
    assert summary.counts()["ok"] == 5


def test_batch_size_above_ncbi_maximum_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="batch_size"):
        fetch_pubmed(["1"], tmp_path, batch_size=201)


def test_rate_limit_spaces_requests_within_and_across_calls(server: EutilsServer, tmp_path: Path):
    fetch_pubmed(
        ["23657305", "9997", "219391", "38147649"],
        tmp_path / "a",
        base_url=server.base_url,
        batch_size=1,
        rate=5.0,
        backoff=0.01,
    )
    fetch_pubmed(
        ["29963580", "12091962"],
        tmp_path / "b",
        base_url=server.base_url,
        batch_size=1,
        rate=5.0,
        backoff=0.01,
    )
    times = [r.t for r in server.requests]
    assert len(times) == 6
    assert min(gaps(times)) >= 0.2 - SPACING_TOLERANCE, gaps(times)


def test_rate_limit_holds_across_worker_threads(server: EutilsServer, tmp_path: Path):
    ids = sorted(CORPUS_PMIDS)[:8]
    summary = fetch_pubmed(
        ids, tmp_path, base_url=server.base_url, batch_size=1, rate=10.0, workers=4, backoff=0.01
    )
    times = sorted(r.t for r in server.requests)
    assert summary.counts()["ok"] == 8 and len(times) == 8
    assert min(gaps(times)) >= 0.1 - SPACING_TOLERANCE, gaps(times)


def test_default_rate_is_3_per_second_and_10_with_an_api_key(
    server: EutilsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    fetch_pubmed(
        ["23657305", "9997", "219391"],
        tmp_path / "a",
        base_url=server.base_url,
        batch_size=1,
        backoff=0.01,
    )
    without_key = [r.t for r in server.requests]
    assert min(gaps(without_key)) >= 1 / 3 - SPACING_TOLERANCE

    monkeypatch.setenv("NCBI_API_KEY", "test-key-123")
    fetch_pubmed(
        ["38147649", "29963580", "12091962"],
        tmp_path / "b",
        base_url=server.base_url,
        batch_size=1,
        backoff=0.01,
    )
    keyed = server.requests[3:]
    assert all(r.params["api_key"] == "test-key-123" for r in keyed)
    keyed_gaps = gaps([r.t for r in keyed])
    # At least 1/10 s apart, and clearly closer than the keyless 1/3 s.
    assert all(0.1 - SPACING_TOLERANCE <= g < 0.3 for g in keyed_gaps), keyed_gaps


def test_429_is_retried_after_retry_after(server: EutilsServer, tmp_path: Path):
    server.inject(
        "status",
        status=429,
        headers={"Retry-After": "1"},
        body=b'{"error":"API rate limit exceeded","count":"4"}',
    )
    summary = fetch_pubmed(["23657305"], tmp_path, base_url=server.base_url, **FAST)
    assert summary.outcomes["23657305"].status == "ok"
    assert (summary.requests, summary.retries) == (2, 1)
    assert gaps([r.t for r in server.requests])[0] >= 1.0 - SPACING_TOLERANCE


def test_429_holds_back_the_other_worker_threads_too(server: EutilsServer, tmp_path: Path):
    server.inject("status", status=429, headers={"Retry-After": "1"})
    ids = ["23657305", "9997", "219391"]
    summary = fetch_pubmed(
        ids, tmp_path, base_url=server.base_url, batch_size=1, workers=2, rate=5.0, backoff=0.01
    )
    assert summary.counts()["ok"] == 3
    first, *rest = server.requests
    assert first.fault == "status" and len(rest) == 3
    # The other thread was already waiting for its turn (0.2 s) when the 429 came back: it
    # waits the Retry-After out as well.
    assert min(r.t - first.t for r in rest) >= 1.0 - SPACING_TOLERANCE


def test_server_errors_are_retried_until_success(server: EutilsServer, tmp_path: Path):
    server.inject("status", times=3, status=500, body=b"Internal Server Error")
    summary = fetch_pubmed(["23657305", "9997"], tmp_path, base_url=server.base_url, **FAST)
    assert summary.counts()["ok"] == 2
    assert (summary.requests, summary.retries, len(server.requests)) == (4, 3, 4)


def test_truncated_body_is_retried(
    server: EutilsServer, tmp_path: Path, parsed: dict[str, dict], caplog: pytest.LogCaptureFixture
):
    server.inject("truncate")
    with caplog.at_level(logging.INFO, logger="biomedica_kit.enrich.efetch"):
        summary = fetch_pubmed(["32051057"], tmp_path, base_url=server.base_url, **FAST)
    assert [r.fault for r in server.requests] == ["truncate", None]
    assert summary.outcomes["32051057"].status == "ok"
    assert load_cached(["32051057"], tmp_path)["32051057"] == parsed["32051057"]
    assert "attempt 1/6" in caplog.text and (
        "IncompleteRead" in caplog.text or "unparseable" in caplog.text
    )


def test_html_page_with_status_200_is_retried(server: EutilsServer, tmp_path: Path):
    server.inject("status", status=200, body=b"<html><body>Service unavailable</body>")
    summary = fetch_pubmed(["9997"], tmp_path, base_url=server.base_url, **FAST)
    assert summary.outcomes["9997"].status == "ok" and len(server.requests) == 2


def test_timeouts_end_failed_and_a_rerun_recovers(server: EutilsServer, tmp_path: Path):
    server.inject("hang", times=3, seconds=10)
    ids = ["23657305", "9997"]
    summary = fetch_pubmed(
        ids, tmp_path, base_url=server.base_url, **{**FAST, "timeout": 0.25}, retries=2
    )
    assert len(server.requests) == 3 and summary.counts()["failed"] == 2
    for pmid in ids:
        reason = summary.outcomes[pmid].reason
        assert "timed out" in reason and "gave up after 3 attempts" in reason
    assert cache_status(ids, tmp_path) == {p: ("failed", summary.outcomes[p].reason) for p in ids}
    assert not list(tmp_path.rglob("*.xml"))

    again = fetch_pubmed(ids, tmp_path, base_url=server.base_url, **FAST)
    assert again.counts()["ok"] == 2 and len(server.requests) == 4
    assert not list(tmp_path.rglob("*.status.json"))  # the failure notes are gone


def test_persistent_5xx_ends_failed_with_reason(server: EutilsServer, tmp_path: Path):
    server.inject("status", times=10, status=503, body=b"Service Unavailable")
    summary = fetch_pubmed(["23657305"], tmp_path, base_url=server.base_url, retries=2, **FAST)
    outcome = summary.outcomes["23657305"]
    assert outcome.status == "failed" and len(server.requests) == 3
    assert outcome.reason == "HTTP 503: Service Unavailable (gave up after 3 attempts)"


def test_client_errors_are_not_retried(server: EutilsServer, tmp_path: Path):
    server.inject("status", status=400, body=b'{"error":"API key invalid"}')
    summary = fetch_pubmed(["23657305"], tmp_path, base_url=server.base_url, **FAST)
    assert len(server.requests) == 1
    assert summary.outcomes["23657305"] == entrez.PmidOutcome(
        "failed", 'HTTP 400: {"error":"API key invalid"}'
    )


def test_unknown_pmids_in_a_mixed_batch_are_not_found(server: EutilsServer, tmp_path: Path):
    summary = fetch_pubmed(
        ["23657305", "1", NO_RECORD_PMID], tmp_path, base_url=server.base_url, **FAST
    )
    assert {p: o.status for p, o in summary.outcomes.items()} == {
        "23657305": "ok",
        "1": "not_found",
        NO_RECORD_PMID: "not_found",
    }


def test_error_document_means_not_found_with_ncbi_message(
    corpus_records: dict[str, bytes], tmp_path: Path
):
    with EutilsServer(corpus_records, unknown="error") as srv:
        summary = fetch_pubmed(["1", "2"], tmp_path, base_url=srv.base_url, **FAST)
    for pmid in ("1", "2"):
        assert summary.outcomes[pmid] == entrez.PmidOutcome(
            "not_found", "NCBI error: Cannot retrieve records: no UIDs found"
        )


def test_invalid_and_duplicate_pmids_are_accounted_for(server: EutilsServer, tmp_path: Path):
    summary = fetch_pubmed(
        [" 23657305", 23657305, "023657305", "abc", "0", "12a"],
        tmp_path,
        base_url=server.base_url,
        **FAST,
    )
    assert [r.ids for r in server.requests] == [["23657305"]]
    assert {p: o.status for p, o in summary.outcomes.items()} == {
        "23657305": "ok",
        "abc": "failed",
        "0": "failed",
        "12a": "failed",
    }
    assert "invalid PMID" in summary.outcomes["abc"].reason


def test_a_failed_refresh_keeps_the_cached_record(server: EutilsServer, tmp_path: Path):
    fetch_pubmed(["9997"], tmp_path, base_url=server.base_url, **FAST)
    server.inject("status", times=5, status=502)
    summary = fetch_pubmed(
        ["9997"], tmp_path, base_url=server.base_url, refresh={"ok"}, retries=1, **FAST
    )
    outcome = summary.outcomes["9997"]
    assert outcome.status == "ok" and outcome.reason.startswith("refresh failed")
    assert len(server.requests) == 3
    assert cache_status(["9997"], tmp_path) == {"9997": ("ok", None)}


def test_an_interrupted_write_leaves_no_partial_file(
    server: EutilsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        fetch_pubmed(["23657305"], tmp_path, base_url=server.base_url, **FAST)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_progress_bar_reports_pmids(
    server: EutilsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    fetch_pubmed(["23657305", "9997"], tmp_path, base_url=server.base_url, progress=True, **FAST)
    assert "efetch: 100%" in capsys.readouterr().err


def test_default_endpoint_is_ncbi_and_the_guard_keeps_it_offline(
    tmp_path: Path, loopback_only: list[str]
):
    summary = fetch_pubmed(["23657305"], tmp_path, retries=0, rate=100.0)
    assert loopback_only == ["eutils.ncbi.nlm.nih.gov"]
    assert summary.outcomes["23657305"].status == "failed"
    assert "ConnectionError" in summary.outcomes["23657305"].reason


def test_rate_limiter_defer_holds_back_the_next_slot():
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(0.25)
    limiter.defer(5.0)
    assert limiter.acquire() == pytest.approx(5.0)
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_rate_limiter_is_safe_under_contention():
    limiter = RateLimiter(50.0)
    starts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            limiter.acquire()
            with lock:
                starts.append(entrez.time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(starts) == 20
    assert min(gaps(sorted(starts))) >= 0.02 - SPACING_TOLERANCE / 2




def test_importing_the_module_does_not_import_pyarrow_or_requests():
    import subprocess
    import sys

    code = (
        "import sys, biomedica_kit.enrich.efetch, biomedica_kit.etl.pubmed; "
        "print(sorted(m for m in ('pyarrow', 'requests') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ},
    )
    assert out.stdout.strip() == "[]"
