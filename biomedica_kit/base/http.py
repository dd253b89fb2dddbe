"""The one HTTP layer: a shared rate limiter, Retry-After in both forms, backoff, sessions.

Package downloads (:mod:`biomedica_kit.ingest.fetch`) and E-utilities requests
(:mod:`biomedica_kit.ingest.efetch`) both go through it, so a politeness rule (NCBI's 3 requests
per second per client, a server's Retry-After) is implemented, and tested, once.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import requests

__all__ = [
    "RETRY_STATUS", "Backoff", "RateLimiter", "ThreadSessions", "call_with_retries",
    "retry_after", "shared_limiter",
]

T = TypeVar("T")
#: Status codes worth retrying: the server or a proxy is overloaded or briefly broken.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: The longest Retry-After honoured (seconds); a longer one is treated as this.
MAX_RETRY_AFTER = 600.0


class RateLimiter:
    """Spaces request starts at least ``1/rate`` seconds apart, across threads.

    A caller may start only once ``1/rate`` has passed since the previous start, checked
    under a lock after every sleep: a thread that wakes late pushes the next start back
    instead of letting two requests go out together. Sleeping happens outside the lock.
    ``rate=math.inf`` means no limit.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")  # earliest time the next request may start
        self._interval = 0.0
        self.rate = rate

    @property
    def rate(self) -> float:
        """Requests per second."""
        return 1.0 / self._interval if self._interval else float("inf")

    @rate.setter
    def rate(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        with self._lock:
            self._interval = 1.0 / rate

    def acquire(self) -> float:
        """Block until a request may start; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                if now >= self._next:
                    self._next = now + self._interval
                    return waited
                wait = self._next - now
            self._sleep(wait)
            waited += wait

    def defer(self, seconds: float) -> None:
        """Hold every user of this limiter back for ``seconds`` (a server's Retry-After)."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)


_LIMITERS: dict[tuple[str, str | None], RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def shared_limiter(url: str, rate: float, *, account: str | None = None) -> RateLimiter:
    """The process-wide limiter for one host (and account, e.g. an API key): servers count
    per client, so separate calls and threads must draw from one budget."""
    key = (urlsplit(url).netloc.lower(), account)
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = RateLimiter(rate)
        elif limiter.rate != rate:
            limiter.rate = rate
        return limiter


def retry_after(value: str | None, *, cap: float = MAX_RETRY_AFTER) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - datetime.now(UTC)).total_seconds()), cap)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``retries`` further attempts after the first."""

    retries: int = 5
    base: float = 1.0  # seconds before the first retry; doubles each time
    cap: float = 60.0

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based); a server's ``hint``
        (Retry-After) is a floor, itself capped. Jitter keeps clients out of lockstep."""
        d = min(self.cap, self.base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        return max(d, min(hint, self.cap)) if hint is not None else d


def call_with_retries(
    attempt: Callable[[], T],
    backoff: Backoff,
    *,
    retryable: Callable[[Exception], bool],
    wait_hint: Callable[[Exception], float | None] = lambda _e: None,
    on_retry: Callable[[int, Exception], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``attempt`` until it returns, raises a non-retryable error, or retries run out
    (then the last error is raised). ``on_retry(n, error)`` is called before retry ``n``."""
    for n in range(backoff.retries + 1):
        try:
            return attempt()
        except Exception as exc:
            if not retryable(exc) or n == backoff.retries:
                raise
            if on_retry is not None:
                on_retry(n + 1, exc)
            sleep(backoff.delay(n + 1, wait_hint(exc)))
    raise AssertionError("unreachable")


class ThreadSessions:
    """One ``requests.Session`` per thread: connection reuse without sharing a Session."""

    def __init__(self, user_agent: str) -> None:
        self.user_agent = user_agent
        self._local = threading.local()

    def get(self) -> requests.Session:
        """This thread's session (created on first use)."""
        import requests

        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers["User-Agent"] = self.user_agent
        return s
