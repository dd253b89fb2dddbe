"""Download PMC OA packages from an HTTP(S) mirror into a local cache, politely and verifiably.

* **Polite**: every request (retries included) first takes a slot from one thread-safe rate
  limiter (NCBI asks for at most 3 requests/s per client), and failures back off exponentially
  with jitter, honouring ``Retry-After`` (:mod:`biomedica_kit.base.http`).
* **Verifiable**: a download is streamed to ``<file>.part``; its length is checked against
  ``Content-Length`` / ``Content-Range``, an archive is read through to the end (gzip CRC, tar
  headers, zip CRCs), and only then is it renamed into place. A file under its final name is
  therefore always complete; a crash leaves at most a ``.part``.
* **Resumable**: a ``.part`` left by a dropped connection or a killed run is continued with an
  HTTP ``Range`` request guarded by ``If-Range`` (the server answers 200 with the whole file
  when it cannot resume or the file changed, and the download restarts from zero).
* **Fresh**: a small ledger (``.fetch-ledger.jsonl`` in the cache) records what was fetched for
  which file-list ``Last Updated``; a package whose Last Updated changed is fetched again, one
  whose Last Updated is unchanged is served from the cache without a request.

The cache is itself a partial mirror in NCBI's layout (``oa_file_list.csv``,
``oa_package/xx/yy/*.tar.gz``), so it can be used as a local ``--source`` too.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import tarfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TypeVar

import requests
import urllib3

from biomedica_kit.base.atomic import atomic_write_bytes
from biomedica_kit.base.errors import ReasonError
from biomedica_kit.base.http import (
    RETRY_STATUS,
    Backoff,
    RateLimiter,
    ThreadSessions,
    call_with_retries,
    retry_after,
)
from biomedica_kit.base.pool import ordered_window
from biomedica_kit.ingest.sources import FILE_LIST, PackageRef

__all__ = ["LEDGER", "PART", "FetchError", "FetchPolicy", "FetchStats", "Fetcher",
           "archive_problem"]

T = TypeVar("T")
LEDGER = ".fetch-ledger.jsonl"
PART = ".part"


class FetchError(ReasonError):
    """A download attempt failed; ``retryable`` says whether another attempt may succeed."""

    def __init__(self, reason: str, detail: str, *, retryable: bool,
                 retry_after: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class FetchPolicy:
    """How packages are downloaded."""

    rate: float = 3.0  # requests per second, all threads together (NCBI's limit); 0: none
    retries: int = 5  # further attempts after the first
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    max_backoff: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # longest silence while reading a body
    threads: int = 4  # concurrent downloads (the rate limit still applies to all)
    chunk: int = 1 << 20
    user_agent: str = "biomedica-kit/0.1 (PMC OA bulk download)"

    def __post_init__(self) -> None:
        for name, low in (("rate", 0), ("retries", 0), ("backoff", 0), ("threads", 1),
                          ("chunk", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"fetch {name} must be at least {low}, got "
                                 f"{getattr(self, name)}")
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"fetch {name} must be more than 0 seconds, got "
                                 f"{getattr(self, name)}")
        if self.max_backoff < self.backoff:
            raise ValueError(f"fetch max_backoff {self.max_backoff} < backoff {self.backoff}")


@dataclass
class FetchStats:
    """Counters of one fetcher (thread-safe updates through :meth:`Fetcher._count`)."""

    requests: int = 0
    downloaded: int = 0  # packages downloaded (complete)
    cached: int = 0  # packages served from the cache without a request
    resumed: int = 0  # downloads continued with a Range request
    retries: int = 0
    failed: int = 0
    bytes: int = 0


class Fetcher:
    """Fetches the file list and packages of one HTTP(S) mirror into ``cache``."""

    def __init__(self, base_url: str, cache: str | os.PathLike,
                 policy: FetchPolicy | None = None) -> None:
        self.base = base_url if base_url.endswith("/") else base_url + "/"
        self.cache = Path(cache)
        self.policy = policy or FetchPolicy()
        self.limiter = RateLimiter(self.policy.rate if self.policy.rate > 0 else math.inf)
        self.stats = FetchStats()
        self._lock = threading.Lock()
        self._sessions = ThreadSessions(self.policy.user_agent)
        self.ledger = self._load_ledger()

    # -------------------------------------------------------------------------- public

    def fetch_file_list(self, url: str | None = None) -> Path:
        """Download ``oa_file_list.csv`` (or ``url``) into the cache; return its path.

        A conditional request (``If-None-Match`` / ``If-Modified-Since``) avoids downloading
        the ~0.5 GB list again when it has not changed since the last run.
        """
        url = url or self.base + FILE_LIST
        dest = self.cache / FILE_LIST
        meta_path = dest.with_name(dest.name + ".json")
        headers = {}
        if dest.is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("url") == url and meta.get("etag"):
                headers["If-None-Match"] = meta["etag"]
            if meta.get("url") == url and meta.get("last_modified"):
                headers["If-Modified-Since"] = meta["last_modified"]
        result = self._with_retries(lambda: self._download(url, dest, headers=headers))
        if isinstance(result, FetchError):
            raise FileNotFoundError(f"file list {url}: {result}")
        if result is not None:  # None: 304, the cached copy is current
            atomic_write_bytes(meta_path, json.dumps({"url": url, **result}).encode())
        return dest

    def fetch(self, ref: PackageRef) -> PackageRef:
        """The package, fetched or from the cache: ``ref`` with ``location`` pointing at the
        local copy and ``sha256``/``size`` set, or with ``failure`` set. Never raises for
        network or server errors (they are the package's failure, and the run goes on).
        """
        url = ref.location
        try:
            dest = self._cache_path(ref.file or url[len(self.base):])
        except FetchError as exc:
            return replace(ref, failure=f"{exc.reason}: {exc.detail}")
        entry = self.ledger.get(ref.file or url)
        if (entry and entry.get("last_updated") == ref.last_updated and dest.is_file()
                and dest.stat().st_size == entry["bytes"]):
            self._count(cached=1)
            return replace(ref, location=str(dest), sha256=entry["sha256"], size=entry["bytes"])
        part = dest.with_name(dest.name + PART)
        part_meta = part.with_name(part.name + ".json")
        # A partial download is only continued for the same upstream version of the file.
        if part.exists() and _read_json(part_meta).get("last_updated") != ref.last_updated:
            part.unlink(missing_ok=True)
            part_meta.unlink(missing_ok=True)
        result = self._with_retries(
            lambda: self._download(url, dest, last_updated=ref.last_updated, check=True))
        if isinstance(result, FetchError):
            self._count(failed=1)
            return replace(ref, failure=f"{result.reason}: {result.detail}"[:500])
        assert result is not None  # None only answers a conditional request
        self._record(ref.file or url, ref.last_updated, result["sha256"], result["bytes"])
        self._count(downloaded=1)
        return replace(ref, location=str(dest), sha256=result["sha256"], size=result["bytes"])

    def prefetch(self, refs: Iterable[PackageRef], threads: int | None = None
                 ) -> Iterator[PackageRef]:
        """Fetch packages on a few threads, yielding them in input order.

        At most ``4 * threads`` downloads are queued ahead of the consumer, so a slow consumer
        holds back the downloads instead of filling the disk.
        """
        threads = max(1, threads or self.policy.threads)
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch") as pool:
            yield from ordered_window(pool, self.fetch, refs, 4 * threads)

    # ------------------------------------------------------------------------ internals

    def _cache_path(self, rel: str) -> Path:
        pp = PurePosixPath(rel.replace("\\", "/"))
        # The file list is input from the network: a File of "/etc/x" or "../x" must not
        # write outside the cache.
        if pp.is_absolute() or ".." in pp.parts or not pp.parts:
            raise FetchError("unsafe_path", f"file list path {rel!r}", retryable=False)
        return self.cache.joinpath(*pp.parts)

    def _with_retries(self, attempt: Callable[[], T]) -> T | FetchError:
        """Run ``attempt`` until it succeeds, fails for good, or retries run out.

        Returns the attempt's value, or the last :class:`FetchError`.
        """
        p = self.policy
        try:
            return call_with_retries(
                attempt, Backoff(p.retries, p.backoff, p.max_backoff),
                retryable=lambda e: isinstance(e, FetchError) and e.retryable,
                wait_hint=lambda e: getattr(e, "retry_after", None),
                on_retry=lambda _n, _e: self._count(retries=1))
        except FetchError as exc:
            return exc

    def _download(self, url: str, dest: Path, *, headers: dict | None = None,
                  last_updated: str | None = None, check: bool = False) -> dict | None:
        """One attempt: stream ``url`` into ``dest.part``, verify, rename to ``dest``.

        Returns ``{"sha256", "bytes", "etag", "last_modified"}``, or None for a 304.
        """
        part = dest.with_name(dest.name + PART)
        part_meta = part.with_name(part.name + ".json")
        headers = dict(headers or {})
        offset = part.stat().st_size if part.exists() else 0
        validator = _read_json(part_meta).get("validator") if offset else None
        if offset and validator:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = validator
        else:
            offset = 0
        p = self.policy
        self.limiter.acquire()
        self._count(requests=1)
        try:
            r = self._sessions.get().get(url, headers=headers, stream=True,
                                    timeout=(p.connect_timeout, p.read_timeout))
        except requests.RequestException as exc:
            raise FetchError("http_error", f"{type(exc).__name__}: {exc}"[:300],
                             retryable=True) from None
        with r:
            if r.status_code == 304:
                return None
            if r.status_code in (404, 410):
                raise FetchError(f"http_{r.status_code}", url, retryable=False)
            if r.status_code == 416:  # our Range is past the end: the file shrank upstream
                part.unlink(missing_ok=True)
                raise FetchError("http_416", url, retryable=True)
            if r.status_code not in (200, 206):
                raise FetchError(f"http_{r.status_code}", url,
                                 retryable=r.status_code in RETRY_STATUS,
                                 retry_after=retry_after(r.headers.get("Retry-After")))
            h = hashlib.sha256()
            if r.status_code == 206:
                start, total = _content_range(r.headers.get("Content-Range"))
                if start != offset:
                    part.unlink(missing_ok=True)
                    raise FetchError("bad_range", f"asked {offset}, got {start}", retryable=True)
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(p.chunk), b""):
                        h.update(block)
                mode = "ab"
                self._count(resumed=1)
            else:
                offset = 0
                cl = r.headers.get("Content-Length")
                total = int(cl) if cl and cl.isdigit() else None
                mode = "wb"
            etag = r.headers.get("ETag")
            last_modified = r.headers.get("Last-Modified")
            # Only a strong validator may guard a byte-range resume (RFC 9110, If-Range).
            new_validator = etag if etag and not etag.startswith("W/") else last_modified
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(part_meta, json.dumps(
                {"url": url, "last_updated": last_updated, "validator": new_validator}).encode())
            received = offset
            try:
                with open(part, mode) as f:
                    # read1 hands over whatever has arrived, so bytes received before a dropped
                    # connection reach the .part; raw bytes, as stored upstream (a server that
                    # adds Content-Encoding: gzip to a .tar.gz must not have it decoded).
                    while block := r.raw.read1(p.chunk, decode_content=False):
                        f.write(block)
                        h.update(block)
                        received += len(block)
                    f.flush()
                    os.fsync(f.fileno())
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                self._count(bytes=received - offset)
                # Keep the .part: the next attempt continues it with a Range request.
                raise FetchError("connection_broken", f"{type(exc).__name__} after {received} "
                                 f"bytes"[:300], retryable=True) from None
            self._count(bytes=received - offset)
        if total is not None and received != total:
            raise FetchError("short_body", f"{received} of {total} bytes", retryable=True)
        if check:
            problem = archive_problem(part, dest.name)
            if problem:
                part.unlink(missing_ok=True)
                part_meta.unlink(missing_ok=True)
                raise FetchError("corrupt_download", problem, retryable=True)
        os.replace(part, dest)
        part_meta.unlink(missing_ok=True)
        return {"sha256": h.hexdigest(), "bytes": received, "etag": etag,
                "last_modified": last_modified}

    def _load_ledger(self) -> dict[str, dict]:
        entries: dict[str, dict] = {}
        path = self.cache / LEDGER
        if not path.is_file():
            return entries
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a line torn by a crash: that download is simply redone
                entries[e["file"]] = e
        return entries

    def _record(self, file: str, last_updated: str | None, sha256: str, size: int) -> None:
        entry = {"file": file, "last_updated": last_updated, "sha256": sha256, "bytes": size,
                 "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        line = json.dumps(entry) + "\n"
        with self._lock:
            self.ledger[file] = entry
            self.cache.mkdir(parents=True, exist_ok=True)
            with open(self.cache / LEDGER, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)


def archive_problem(path: str | os.PathLike, name: str) -> str | None:
    """Why a downloaded archive is unusable (truncated, bad CRC, not an archive), or None.

    A ``.tar.gz`` is read through once: the tar headers as a stream, then the gzip stream to
    its end, where gzip checks its CRC and length trailer.
    """
    low = name.lower()
    try:
        if low.endswith((".tar.gz", ".tgz")):
            with gzip.open(path, "rb") as gz:
                with tarfile.open(fileobj=gz, mode="r|") as tar:
                    for _ in tar:
                        pass
                while gz.read(1 << 20):
                    pass
        elif low.endswith(".tar"):
            with tarfile.open(path, mode="r:") as tar:
                for _ in tar:
                    pass
        elif low.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
                if bad:
                    return f"zip member {bad!r} fails its CRC"
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error) as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def _content_range(value: str | None) -> tuple[int, int | None]:
    # "bytes 100-199/200" -> (100, 200); "bytes 100-199/*" -> (100, None)
    try:
        unit, _, rest = (value or "").partition(" ")
        span, _, total = rest.partition("/")
        if unit != "bytes":
            raise ValueError
        return int(span.split("-")[0]), (int(total) if total.isdigit() else None)
    except ValueError:
        raise FetchError("bad_range", f"Content-Range {value!r}", retryable=True) from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
