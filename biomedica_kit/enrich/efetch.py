"""The NCBI E-utilities client: efetch PubMed records into the cache, accounting for each PMID.

:func:`fetch_pubmed` POSTs PMIDs to ``efetch.fcgi`` in batches (at most 200 ids), under the
process-wide rate limit of :mod:`biomedica_kit.base.http` (3 requests/s, 10 with an API key),
with retries (429 with Retry-After, 5xx, timeouts, truncated or unparseable bodies) and keeps
every record in :class:`~biomedica_kit.ingest.entrez_cache.EntrezCache`. Every requested PMID
ends ``ok``, ``not_found`` or ``failed`` with a reason. ``docs/entrez.md`` has the details.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lxml import etree

from biomedica_kit.base.http import (
    Backoff,
    RateLimiter,
    call_with_retries,
    retry_after,
    shared_limiter,
)
from biomedica_kit.base.xml import thread_parser
from biomedica_kit.etl.pubmed import RECORD_TAGS, element_texts, record_pmid
from biomedica_kit.ingest.entrez_cache import (
    STATUSES,
    EntrezCache,
    Status,
    normalise_pmids,
)

if TYPE_CHECKING:
    import requests

__all__ = ["DEFAULT_RATE", "DEFAULT_RATE_WITH_KEY", "EUTILS_BASE_URL", "MAX_BATCH_SIZE",
           "FetchSummary", "PmidOutcome", "fetch_pubmed"]

_log = logging.getLogger(__name__)

EUTILS_BASE_URL = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"


#: NCBI asks for at most 200 UIDs per efetch request.
MAX_BATCH_SIZE = 200


#: NCBI's published limits: 3 requests/s per IP without an API key, 10/s with one.
DEFAULT_RATE = 3.0


DEFAULT_RATE_WITH_KEY = 10.0


@dataclass(frozen=True)
class PmidOutcome:
    """What happened to one requested PMID."""

    status: Status
    reason: str | None = None
    #: True when the answer came from the cache, with no request for this PMID in this run.
    from_cache: bool = False


@dataclass
class FetchSummary:
    """The result of :func:`fetch_pubmed`: one outcome per requested PMID.

    ``outcomes`` holds the valid PMIDs (canonical form, de-duplicated) in input order, then
    each input that is not a PMID, keyed by its text, as ``failed``.
    """

    outcomes: dict[str, PmidOutcome]
    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0  # requests that repeated an earlier attempt
    batches: int = 0  # batches sent (each one efetch call, however many attempts)
    elapsed_s: float = 0.0

    def counts(self) -> dict[str, int]:
        """Number of PMIDs per status (every status present, possibly 0)."""
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for outcome in self.outcomes.values():
            counts[outcome.status] += 1
        return counts

    def pmids(self, status: Status) -> list[str]:
        """PMIDs with ``status``, in input order."""
        return [p for p, o in self.outcomes.items() if o.status == status]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready digest (counts, request stats, reasons of the PMIDs that are not ok)."""
        return {
            "counts": self.counts(),
            "requests": self.requests,
            "retries": self.retries,
            "batches": self.batches,
            "elapsed_s": round(self.elapsed_s, 3),
            "from_cache": sum(o.from_cache for o in self.outcomes.values()),
            "reasons": {p: o.reason for p, o in self.outcomes.items() if o.status != "ok"},
        }


class _RetryableResponse(Exception):
    """A response worth asking again for (throttled, server error, broken body)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


class _RefusedResponse(Exception):
    """A definitive answer that asking again would not change (4xx other than 429)."""


def _read_efetch_body(body: bytes) -> tuple[dict[str, bytes], str | None]:
    """Split an efetch body into {pmid: record XML} and NCBI's <ERROR> text, if any.

    Raises _RetryableResponse when the body is not XML (truncated, empty, an HTML error page):
    those say nothing about whether the PMIDs exist.
    """
    try:
        root = etree.fromstring(body, thread_parser())
    except etree.XMLSyntaxError as exc:
        raise _RetryableResponse(f"unparseable response body ({len(body)} bytes): {exc}") from exc
    errors = element_texts([root] if root.tag == "ERROR" else root.iterfind("ERROR"))
    if root.tag != "PubmedArticleSet" and not errors:
        raise _RetryableResponse(f"unexpected response document <{root.tag}>")
    records: dict[str, bytes] = {}
    for child in root:
        if child.tag in RECORD_TAGS:
            pmid = record_pmid(child)
            if pmid:
                records[pmid] = etree.tostring(
                    child, encoding="UTF-8", xml_declaration=True, with_tail=False
                )
    return records, "; ".join(errors) or None


def _refresh_statuses(refresh: bool | Collection[str]) -> frozenset[str]:
    if refresh is True:
        return frozenset({"not_found"})
    if refresh is False:
        return frozenset()
    statuses = frozenset(refresh)
    if not statuses <= {"ok", "not_found"}:
        raise ValueError(f"refresh accepts 'ok' and 'not_found', got {sorted(statuses)}")
    return statuses


@dataclass
class _BatchResult:
    outcomes: dict[str, PmidOutcome]
    requests: int = 0
    retries: int = 0


@dataclass
class _BatchFetcher:
    """Sends one batch of PMIDs (with retries) and files every answer in the cache."""

    url: str
    params: dict[str, str]
    cache: EntrezCache
    limiter: RateLimiter
    backoff: Backoff
    timeout: float | tuple[float, float]
    session_for_thread: Callable[[], requests.Session]
    refreshing_ok: set[str] = field(default_factory=set)

    def _post(self, ids: list[str]) -> tuple[dict[str, bytes], str | None]:
        """One efetch attempt. Returns the records and NCBI's error text; raises
        _RetryableResponse for transient trouble and _RefusedResponse for a refusal."""
        import requests

        self.limiter.acquire()
        try:
            response = self.session_for_thread().post(
                self.url, data={**self.params, "id": ",".join(ids)}, timeout=self.timeout
            )
        except requests.Timeout as exc:
            raise _RetryableResponse(f"timed out after {self.timeout}s ({exc})") from exc
        except requests.RequestException as exc:
            # Connection refused/reset, and a body cut short of its Content-Length
            # (ChunkedEncodingError) all land here.
            raise _RetryableResponse(f"{type(exc).__name__}: {exc}") from exc
        code = response.status_code
        if code == 429 or code >= 500:
            wait = retry_after(response.headers.get("Retry-After"))
            if code == 429 and wait is not None:
                self.limiter.defer(wait)
            raise _RetryableResponse(f"HTTP {code}: {_snippet(response.content)}", wait)
        if code != 200:
            raise _RefusedResponse(f"HTTP {code}: {_snippet(response.content)}")
        return _read_efetch_body(response.content)

    def fetch(self, ids: list[str]) -> _BatchResult:
        """Fetch one batch: every id ends ``ok``, ``not_found`` or ``failed``."""
        result = _BatchResult({})

        def attempt() -> tuple[dict[str, bytes], str | None]:
            result.requests += 1
            return self._post(ids)

        def on_retry(n: int, exc: Exception) -> None:
            result.retries += 1
            _log.info("efetch attempt %d/%d for %d ids failed: %s", n, self.backoff.retries + 1,
                      len(ids), exc)

        try:
            records, error = call_with_retries(
                attempt, self.backoff, retryable=lambda e: isinstance(e, _RetryableResponse),
                wait_hint=lambda e: getattr(e, "wait", None), on_retry=on_retry)
        except _RetryableResponse as exc:
            self._fail(ids, f"{exc} (gave up after {self.backoff.retries + 1} attempts)",
                       result)
            return result
        except _RefusedResponse as exc:
            self._fail(ids, str(exc), result)
            return result
        for pmid in ids:
            if pmid in records:
                self.cache.put_record(pmid, records[pmid])
                result.outcomes[pmid] = PmidOutcome("ok")
            else:
                why = f"NCBI error: {error}" if error else "no record returned by efetch"
                self.cache.put_status(pmid, "not_found", why)
                result.outcomes[pmid] = PmidOutcome("not_found", why)
        return result

    def _fail(self, ids: list[str], reason: str, result: _BatchResult) -> None:
        for pmid in ids:
            if pmid in self.refreshing_ok:
                # A failed refresh must not throw away a good record.
                result.outcomes[pmid] = PmidOutcome(
                    "ok", f"refresh failed, cached record kept: {reason}", from_cache=True
                )
            else:
                self.cache.put_status(pmid, "failed", reason)
                result.outcomes[pmid] = PmidOutcome("failed", reason)


def _snippet(body: bytes, limit: int = 200) -> str:
    text = " ".join(body[: limit * 2].decode("utf-8", "replace").split())
    return text[:limit] or "(empty body)"


def fetch_pubmed(
    pmids: Iterable[str | int],
    cache_dir: str | os.PathLike[str],
    *,
    base_url: str = EUTILS_BASE_URL,
    tool: str = "biomedica-kit",
    email: str | None = None,
    api_key: str | None = None,
    batch_size: int = MAX_BATCH_SIZE,
    rate: float | RateLimiter | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    timeout: float | tuple[float, float] = 30.0,
    session: requests.Session | None = None,
    progress: bool = False,
    refresh: bool | Collection[str] = False,
    max_negative_age_days: float | None = None,
    workers: int = 1,
) -> FetchSummary:
    """Fetch PubMed records for ``pmids`` into ``cache_dir`` and account for every PMID.

    PMIDs already answered in the cache are not requested again: ``ok`` records are reused,
    ``not_found`` ones are kept unless ``refresh`` asks for them (``True`` means
    ``{"not_found"}``; ``{"ok", "not_found"}`` re-fetches everything, e.g. to pick up MeSH
    indexing of records that were In-Process), and ``failed`` ones are always retried. A
    ``not_found`` answer older than ``max_negative_age_days`` is asked again (a server that
    answered empty sets for a while must not poison the cache for good).

    The rest are POSTed to ``efetch.fcgi`` (db=pubmed, retmode=xml) in batches of at most
    ``batch_size`` (<= 200) ids. ``rate`` is requests per second (default 3, or 10 with an API
    key), shared by every call to the same host with the same key in this process; pass a
    :class:`RateLimiter` to share one explicitly. 429 (honouring Retry-After), 5xx, connection
    errors, timeouts and truncated or unparseable bodies are retried ``retries`` times with
    exponential backoff (``backoff * 2**n`` seconds, jittered, capped at ``max_backoff``); other
    HTTP errors fail the batch at once. ``timeout`` is requests' connect/read timeout.

    ``api_key`` defaults to ``$NCBI_API_KEY``. ``workers`` > 1 sends batches from that many
    threads (still under the one rate limit). ``session`` is used from all threads when given.
    """
    import requests

    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be within 1..{MAX_BATCH_SIZE}, got {batch_size}")
    if retries < 0 or workers < 1:
        raise ValueError("retries must be >= 0 and workers >= 1")
    refresh_set = _refresh_statuses(refresh)
    if api_key is None:
        api_key = os.environ.get("NCBI_API_KEY") or None
    if isinstance(rate, RateLimiter):
        limiter = rate
    else:
        default = DEFAULT_RATE_WITH_KEY if api_key else DEFAULT_RATE
        limiter = shared_limiter(base_url, default if rate is None else rate, account=api_key)

    started = time.monotonic()
    cache = EntrezCache(cache_dir)
    wanted, invalid = normalise_pmids(pmids)
    outcomes: dict[str, PmidOutcome] = {}
    to_fetch: list[str] = []
    refreshing_ok: set[str] = set()
    for pmid in wanted:
        status, reason = cache.lookup(pmid)
        stale = (status == "not_found" and max_negative_age_days is not None
                 and (cache.answer_age_days(pmid) or 0.0) > max_negative_age_days)
        if status is None or status == "failed" or status in refresh_set or stale:
            to_fetch.append(pmid)
            if status == "ok":
                refreshing_ok.add(pmid)
        else:
            outcomes[pmid] = PmidOutcome(status, reason, from_cache=True)

    params = {"db": "pubmed", "retmode": "xml", "tool": tool}
    if email:
        params["email"] = email
    if api_key:
        params["api_key"] = api_key

    local = threading.local()
    own_sessions: list[requests.Session] = []
    sessions_lock = threading.Lock()

    def session_for_thread() -> requests.Session:
        if session is not None:
            return session
        if getattr(local, "session", None) is None:
            local.session = requests.Session()
            with sessions_lock:
                own_sessions.append(local.session)
        return local.session

    fetcher = _BatchFetcher(
        url=base_url.rstrip("/") + "/efetch.fcgi",
        params=params,
        cache=cache,
        limiter=limiter,
        backoff=Backoff(retries, backoff, max_backoff),
        timeout=timeout,
        session_for_thread=session_for_thread,
        refreshing_ok=refreshing_ok,
    )
    batches = [to_fetch[i : i + batch_size] for i in range(0, len(to_fetch), batch_size)]
    summary = FetchSummary(outcomes={}, batches=len(batches))
    bar = None
    if progress and to_fetch:
        from tqdm import tqdm

        bar = tqdm(total=len(to_fetch), unit="pmid", desc="efetch")

    def collect(result: _BatchResult) -> None:
        outcomes.update(result.outcomes)
        summary.requests += result.requests
        summary.retries += result.retries
        if bar is not None:
            bar.update(len(result.outcomes))

    try:
        if workers == 1:
            for batch in batches:
                collect(fetcher.fetch(batch))
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="efetch") as pool:
                try:
                    for future in as_completed([pool.submit(fetcher.fetch, b) for b in batches]):
                        collect(future.result())
                except BaseException:
                    # A write error or Ctrl-C: stop queued batches instead of sending them all.
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        if bar is not None:
            bar.close()
        for own in own_sessions:
            own.close()

    summary.outcomes = {p: outcomes[p] for p in wanted} | {
        p: PmidOutcome("failed", why) for p, why in invalid.items()}
    summary.elapsed_s = time.monotonic() - started
    counts = summary.counts()
    _log.info(
        "efetch: %d ok, %d not_found, %d failed (%d requests, %.1fs)",
        counts["ok"],
        counts["not_found"],
        counts["failed"],
        summary.requests,
        summary.elapsed_s,
    )
    return summary

