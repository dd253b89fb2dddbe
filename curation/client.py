"""A small Label Studio REST client on ``requests``, with both kinds of API token.

``label-studio-sdk`` 2.1.2 pins ``numpy<2.3`` and brings black, isort, opencv, nltk and
pandas, so it does not go into the project's environment (it would downgrade numpy there);
the calls the bridge needs are few and are made here over HTTP, as the SDK's ``LabelStudio``
client makes them:

- a token that is a JWT (a personal access token, i.e. a refresh token) is exchanged at
  ``POST /api/token/refresh/`` for an access token sent as ``Authorization: Bearer``
  (refreshed again when it expires); any other token is a legacy key sent as
  ``Authorization: Token``;
- connection errors and overload statuses are retried with
  :func:`biomedica_kit.base.http.call_with_retries` (``Retry-After`` honoured). A POST is
  retried only when it cannot have reached the server (the connection was refused), since
  Label Studio's POSTs are not idempotent.

The URL and token default to ``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY`` (the SDK's
variables), then to the local server's ``server.json`` and ``secret.json``
(:mod:`curation.server`).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from biomedica_kit.base.http import RETRY_STATUS, Backoff, call_with_retries, retry_after

__all__ = ["ApiError", "LabelStudioClient", "connect", "is_jwt"]


class ApiError(RuntimeError):
    """Label Studio answered with an error status (``status`` and the body's start)."""

    def __init__(self, method: str, path: str, status: int, body: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status
        self.headers = dict(headers or {})


def is_jwt(token: str) -> bool:
    """Whether ``token`` is a JWT (header.payload.signature with a JSON header)."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        head = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except ValueError:
        return False
    return isinstance(head, dict) and "alg" in head


def _unsent(exc: Exception) -> bool:
    """A connection error raised before the request reached the server."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    return isinstance(exc, requests.ConnectionError) and "NewConnectionError" in repr(exc)


class LabelStudioClient:
    """Authenticated JSON calls to one Label Studio server (see module doc)."""

    def __init__(self, url: str, token: str, *, backoff: Backoff | None = None,
                 timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.backoff = backoff or Backoff(retries=4, base=0.5, cap=10.0)
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "biomedica-kit-review"
        self._access: str | None = None

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.url!r})"

    @property
    def token_kind(self) -> str:
        """``personal access token`` (JWT, sent as Bearer) or ``legacy token``."""
        return "personal access token" if is_jwt(self._token) else "legacy token"

    def _auth(self, refresh: bool = False) -> str:
        if not is_jwt(self._token):
            return f"Token {self._token}"
        if self._access is None or refresh:
            r = self.session.post(f"{self.url}/api/token/refresh/",
                                  json={"refresh": self._token}, timeout=self.timeout)
            if r.status_code != 200:
                raise ApiError("POST", "/api/token/refresh/", r.status_code, r.text, r.headers)
            self._access = str(r.json()["access"])
        return f"Bearer {self._access}"

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json_body: Any = None) -> Any:
        """One call; the decoded JSON answer (None for an empty body)."""
        method = method.upper()

        def attempt() -> Any:
            r = self._send(method, path, params, json_body, refresh=False)
            if r.status_code == 401 and is_jwt(self._token):  # the access token expired
                r = self._send(method, path, params, json_body, refresh=True)
            if r.status_code >= 400:
                raise ApiError(method, path, r.status_code, r.text, r.headers)
            return r.json() if r.content else None

        def retryable(exc: Exception) -> bool:
            if isinstance(exc, ApiError):
                return exc.status in RETRY_STATUS and (method != "POST"
                                                       or exc.status in (429, 503))
            if isinstance(exc, requests.ConnectionError | requests.Timeout):
                return method != "POST" or _unsent(exc)
            return False

        def hint(exc: Exception) -> float | None:
            return retry_after(exc.headers.get("Retry-After")) if isinstance(
                exc, ApiError) else None

        return call_with_retries(attempt, self.backoff, retryable=retryable, wait_hint=hint)

    def _send(self, method: str, path: str, params: Mapping[str, Any] | None, body: Any,
              refresh: bool) -> requests.Response:
        return self.session.request(method, f"{self.url}{path}", params=params, json=body,
                                    headers={"Authorization": self._auth(refresh)},
                                    timeout=self.timeout)

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params``."""
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        """POST a JSON body."""
        return self.request("POST", path, json_body=body)

    def patch(self, path: str, body: Any) -> Any:
        """PATCH a JSON body."""
        return self.request("PATCH", path, json_body=body)

    def delete(self, path: str) -> Any:
        """DELETE ``path``."""
        return self.request("DELETE", path)

    def whoami(self) -> dict[str, Any]:
        """The token's user."""
        return dict(self.get("/api/current-user/whoami"))

    def tasks(self, project: int, *, query: Mapping[str, Any] | None = None,
              page_size: int = 500, fields: str = "all") -> Iterator[dict[str, Any]]:
        """Every task of ``project`` matching a Data Manager ``query`` (filters, ordering),
        page by page (``GET /api/tasks/``)."""
        page = 1
        while True:
            params: dict[str, Any] = {"project": project, "page": page,
                                      "page_size": page_size, "fields": fields}
            if query is not None:
                params["query"] = json.dumps(query)
            try:
                got = self.get("/api/tasks/", **params)
            except ApiError as exc:
                if exc.status == 404:  # past the last page
                    return
                raise
            tasks = got["tasks"] if isinstance(got, dict) else got
            yield from tasks
            if len(tasks) < page_size:
                return
            page += 1


def connect(url: str | None = None, token: str | None = None, *,
            home: str | os.PathLike[str] | None = None,
            backoff: Backoff | None = None) -> LabelStudioClient:
    """A client for ``url`` with ``token``; defaults: ``LABEL_STUDIO_URL`` and
    ``LABEL_STUDIO_API_KEY``, then the local server of ``home`` and its admin token."""
    from curation import server

    url = url or os.environ.get("LABEL_STUDIO_URL")
    token = token or os.environ.get("LABEL_STUDIO_API_KEY")
    home_p = Path(home) if home is not None else server.default_home()
    if url is None:
        st = server.status(home_p)
        if st.info is None or not st.running:
            raise server.LabelStudioError(f"no Label Studio URL given and none running for "
                                          f"{home_p}: `biomedica labelstudio start` or --url")
        url = st.info.url
    if token is None:
        token = server.admin_credentials(home_p).token
    return LabelStudioClient(url, token, backoff=backoff)
