"""A real HTTP server on 127.0.0.1 that answers E-utilities efetch POSTs from recorded records.

It serves the real NCBI responses in ``../shared/corpus/pubmed_efetch/``: at start-up every
``<PubmedArticleSet>`` file is split into one record per PMID, and each efetch request gets a
``<PubmedArticleSet>`` (with NCBI's XML declaration and DOCTYPE) holding the requested records it
has. PMIDs it does not have are left out, as efetch does; a request with none of them gets the
real empty answer (``metapub__metapub__37909814.xml``) or, with ``unknown="error"``, an
``<eFetchResult><ERROR>`` document.

Faults can be queued with :meth:`EutilsServer.inject`; each request consumes one queued fault
before normal service resumes:

- ``status``: answer with an HTTP status, optional headers (e.g. Retry-After) and body;
- ``truncate``: send a correct Content-Length, then half of the body, then close the connection;
- ``hang``: read the request and answer nothing for ``seconds`` (longer than a client timeout).

Every request is recorded (arrival time on ``time.monotonic``, path, form fields, ids, fault).
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from lxml import etree

CORPUS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "pubmed_efetch"
#: The corpus file that is a real efetch answer for a PMID without a record.
EMPTY_ANSWER_FILE = "metapub__metapub__37909814.xml"

_HEADER = (
    b'<?xml version="1.0" ?>\n<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, '
    b'1st January 2025//EN" "https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">\n'
)

FaultKind = Literal["status", "truncate", "hang"]


def load_corpus_records(corpus_dir: Path = CORPUS_DIR) -> dict[str, bytes]:
    """{pmid: record XML} for every PubmedArticle / PubmedBookArticle in the corpus files."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    records: dict[str, bytes] = {}
    for path in sorted(corpus_dir.glob("*.xml")):
        root = etree.parse(str(path), parser).getroot()
        if root.tag != "PubmedArticleSet":
            continue
        for rec in root:
            if rec.tag == "PubmedArticle":
                pmid = rec.findtext("MedlineCitation/PMID")
            elif rec.tag == "PubmedBookArticle":
                pmid = rec.findtext("BookDocument/PMID")
            else:
                continue
            records[pmid.strip()] = etree.tostring(rec, encoding="UTF-8", with_tail=False)
    return records


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it."""

    t: float  # arrival of the request's first byte (kernel timestamp), time.monotonic scale
    method: str
    path: str
    params: dict[str, str]
    ids: list[str]
    fault: str | None


@dataclass
class _Fault:
    kind: FaultKind
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0


class EutilsServer:
    """Context manager running the fake efetch endpoint in a background thread (port 0)."""

    def __init__(
        self, records: Mapping[str, bytes], *, unknown: Literal["empty", "error"] = "empty"
    ) -> None:
        self.records = dict(records)
        self.unknown = unknown
        empty = CORPUS_DIR / EMPTY_ANSWER_FILE
        self.empty_answer = (
            empty.read_bytes()
            if empty.is_file()
            else (_HEADER + b"<PubmedArticleSet>\n</PubmedArticleSet>")
        )
        self._faults: deque[_Fault] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------

    def __enter__(self) -> EutilsServer:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        if _SO_TIMESTAMPNS is not None:
            # Stamping must be on before a connection's first packet arrives; accepted sockets
            # inherit the option from the listening one.
            with contextlib.suppress(OSError):
                self._httpd.socket.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()  # wakes hanging handlers
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/entrez/eutils/"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def inject(
        self,
        kind: FaultKind,
        times: int = 1,
        *,
        status: int = 500,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        seconds: float = 30.0,
    ) -> None:
        """Queue ``times`` faults of one kind for the next requests."""
        fault = _Fault(kind, status, dict(headers or {}), body, seconds)
        with self._lock:
            self._faults.extend([fault] * times)

    # -- used by the handler ------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_fault(self) -> _Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def answer(self, ids: list[str]) -> bytes:
        """The body a healthy efetch would send for ``ids``."""
        found = [self.records[i] for i in ids if i in self.records]
        if found:
            return _HEADER + b"<PubmedArticleSet>\n" + b"\n".join(found) + b"\n</PubmedArticleSet>"
        if self.unknown == "error":
            return (
                b'<?xml version="1.0" encoding="UTF-8" ?>\n<eFetchResult>\n'
                b"\t<ERROR>Cannot retrieve records: no UIDs found</ERROR>\n</eFetchResult>\n"
            )
        return self.empty_answer


# Linux's SO_TIMESTAMPNS (not exported by every Python build): the kernel stamps each received
# packet, so the server can tell when a request arrived even if its thread is woken late.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35) if sys.platform == "linux" else None


class _Handler(BaseHTTPRequestHandler):
    owner: EutilsServer
    protocol_version = "HTTP/1.1"
    # Unbuffered reads: no bytes of a request may sit in a user-space buffer, or peeking at
    # the socket for the next request's arrival time would block.
    rbufsize = 0

    def setup(self) -> None:
        super().setup()
        self._kernel_stamps = False
        if _SO_TIMESTAMPNS is not None:
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self._kernel_stamps = True
            except OSError:
                pass

    def handle_one_request(self) -> None:
        self._arrived = self._arrival_time()
        super().handle_one_request()

    def _arrival_time(self) -> float:
        """When the next request's first byte reached this host, on time.monotonic's scale.

        On a busy machine the handler thread can be woken tens of milliseconds after the data
        came in; the kernel's receive timestamp is not delayed that way.
        """
        if self._kernel_stamps:
            try:
                data, ancillary, _, _ = self.connection.recvmsg(
                    1, socket.CMSG_SPACE(16), socket.MSG_PEEK
                )
            except OSError:
                data, ancillary = b"", []
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and data:
                    seconds, nanoseconds = struct.unpack("qq", payload[:16])
                    return time.monotonic() - (time.time() - (seconds + nanoseconds / 1e9))
        return time.monotonic()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        """Keep test output quiet."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib hook name
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802 - stdlib hook name
        self._serve("POST")

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        form = b""
        while len(form) < length:  # an unbuffered read may return less than asked
            chunk = self.rfile.read(length - len(form))
            if not chunk:
                break
            form += chunk
        params = dict(parse_qsl(url.query)) | dict(parse_qsl(form.decode()))
        ids = [i for i in params.get("id", "").split(",") if i]
        fault = self.owner._next_fault()
        self.owner._record(
            RecordedRequest(
                self._arrived, method, url.path, params, ids, fault.kind if fault else None
            )
        )

        if fault is not None and fault.kind == "hang":
            self.owner._stopping.wait(fault.seconds)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "status":
            self._send(fault.status, fault.body, fault.headers)
            return
        if not url.path.endswith("/efetch.fcgi"):
            self._send(404, b"not found")
            return
        if params.get("db") != "pubmed" or params.get("retmode") != "xml" or not ids:
            self._send(400, b"<eFetchResult><ERROR>bad request</ERROR></eFetchResult>")
            return
        body = self.owner.answer(ids)
        if fault is not None and fault.kind == "truncate":
            self.send_response(200)
            self.send_header("Content-Type", "text/xml; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.close_connection = True
            return
        self._send(200, body, {"Content-Type": "text/xml; charset=UTF-8", "X-RateLimit-Limit": "3"})

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        # NCBI answers gzip-compressed when asked to, as the recorded exchanges show.
        compress = "gzip" in (self.headers.get("Accept-Encoding") or "") and status == 200
        if compress:
            body = gzip.compress(body)
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if compress:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
