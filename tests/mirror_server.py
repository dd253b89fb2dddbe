"""A PMC OA mirror in NCBI's layout, built from the real corpus, and a loopback HTTP server for it.

:func:`build_mirror` writes ``oa_package/xx/yy/<name>.tar.gz`` (the corpus's tarballs as they
are, plus some of its article folders tarred up deterministically) and an ``oa_file_list.csv``
whose rows are read from each article's XML (PMCID, PMID, a citation in NCBI's format).

:class:`MirrorServer` serves a folder on 127.0.0.1 (``ThreadingHTTPServer``, port 0) with
``Content-Length``, ``ETag``/``Last-Modified`` and byte ranges, logs every request with its
arrival time, and injects faults per path: ``500``, ``404``, ``drop`` (half the body, then the
connection is closed), ``corrupt`` (a body of the right length but wrong bytes) and
``slow:<seconds>`` (a delay before answering).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import tarfile
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from lxml import etree

from biomedica_kit.etl.jats import parse_jats
from biomedica_kit.ingest.sources import LAST_UPDATED, write_file_list

#: (package, how it is packaged, file-list License, Last Updated)
PACKAGES = [
    ("PMC12419688", "tarball", "CC BY", "2025-09-12 10:01:02"),
    ("PMC7417471", "tarball", "CC BY-NC", "2020-08-14 00:30:11"),
    ("elife-19405", "tarball", "CC BY", "2016-11-02 08:00:00"),
    ("elife-32671", "tarball", "NO-CC CODE", "2018-03-05 12:00:00"),
    ("PMC3460867", "folder", "CC BY", "2012-10-01 09:00:00"),
    ("PMC3574550", "folder", "CC BY-NC", "2013-02-20 09:00:00"),
    ("PMC6385181", "folder", "CC BY", "2019-02-25 09:00:00"),
    ("PMC12354728", "folder", "CC BY-NC-ND", "2025-08-20 09:00:00"),
    ("PMC2599765", "folder", "CC0", "2008-12-01 09:00:00"),
]
#: A row whose package the mirror does not hold (the server answers 404).
MISSING = ("PMC99999999", "CC BY", "2024-01-01 00:00:00")


def package_path(name: str) -> str:
    """NCBI-style File path: ``oa_package/<2 hex>/<2 hex>/<name>.tar.gz``."""
    h = hashlib.md5(name.encode()).hexdigest()
    return f"oa_package/{h[:2]}/{h[2:4]}/{name}.tar.gz"


def tar_folder(folder: Path, name: str) -> bytes:
    """A deterministic ``.tar.gz`` of a folder under ``<name>/`` (as PMC packages are)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for f in sorted(folder.iterdir()):
            info = tarfile.TarInfo(f"{name}/{f.name}")
            data = f.read_bytes()
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def citation(xml: bytes) -> str:
    """A citation in the file list's format: ``<journal>. <year> <Mon> <day>; <vol>(<iss>):<p>``.

    Built from the article's own XML (journal abbreviation, first pub-date, volume, issue,
    first page or elocation-id).
    """
    root = etree.fromstring(xml, etree.XMLParser(resolve_entities=False, no_network=True))
    art = root if etree.QName(root).localname == "article" else root.find(".//article")

    def first(*paths):
        for p in paths:
            el = art.find(p)
            if el is not None and (el.text or "").strip():
                return el.text.strip()
        return ""

    journal = first(".//journal-id[@journal-id-type='nlm-ta']", ".//journal-title")
    year = first(".//article-meta/pub-date/year")
    month = first(".//article-meta/pub-date/month")
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    mon = months[int(month) - 1] if month.isdigit() and 1 <= int(month) <= 12 else ""
    day = first(".//article-meta/pub-date/day")
    vol, iss = first(".//article-meta/volume"), first(".//article-meta/issue")
    page = first(".//article-meta/fpage", ".//article-meta/elocation-id")
    date = " ".join(x for x in (year, mon, day.lstrip("0")) if x)
    return f"{journal}. {date}; {vol}" + (f"({iss})" if iss else "") + f":{page}"


def build_mirror(corpus: Path, dest: Path) -> list[dict[str, str]]:
    """Write an NCBI-layout mirror of real corpus packages into ``dest``; return its rows."""
    rows = []
    for name, kind, lic, updated in PACKAGES:
        data = ((corpus / f"{name}.tar.gz").read_bytes() if kind == "tarball"
                else tar_folder(corpus / name, name))
        rel = package_path(name)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
        folder = corpus / name
        xml = next(p for p in sorted(folder.iterdir()) if p.suffix in (".xml", ".nxml"))
        art = parse_jats(xml.read_bytes())[0]
        rows.append({"File": rel, "Article Citation": citation(xml.read_bytes()),
                     "Accession ID": art.pmcid or "", LAST_UPDATED: updated,
                     "PMID": art.pmid or "", "License": lic})
    name, lic, updated = MISSING
    rows.append({"File": package_path(name), "Article Citation": "Missing J. 2024 Jan 1; 1:1",
                 "Accession ID": name, LAST_UPDATED: updated, "PMID": "", "License": lic})
    write_file_list(rows, dest / "oa_file_list.csv")
    return rows


@dataclass
class Request:
    """One request as the server saw it."""

    path: str
    t: float  # time.monotonic() at arrival
    range: str | None
    status: int = 0


class MirrorServer:
    """Serve ``root`` over HTTP on loopback, with per-path fault injection and a request log."""

    def __init__(self, root: Path, *, ranges: bool = True) -> None:
        self.root = Path(root)
        self.ranges = ranges
        self.faults: dict[str, list[str]] = {}
        self.log: list[Request] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def handle(self) -> None:
                # A client may give up first (its timeout: what the slow fault is for) or drop
                # a kept-alive connection; neither is an error of the server.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    super().handle()

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the mirror (with a trailing slash)."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def fault(self, path: str, *kinds: str) -> None:
        """Queue faults for the next requests of ``path`` (one per request)."""
        with self.lock:
            self.faults.setdefault(path, []).extend(kinds)

    def requests(self, path: str | None = None) -> list[Request]:
        """Requests seen so far (of one path, or all)."""
        with self.lock:
            return [r for r in self.log if path is None or r.path == path]

    def package_requests(self) -> list[Request]:
        """Requests for packages (not the file list)."""
        return [r for r in self.requests() if r.path.startswith("oa_package/")]

    def __enter__(self) -> MirrorServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = unquote(urlparse(h.path).path).lstrip("/")
        rng = h.headers.get("Range")
        req = Request(path, time.monotonic(), rng)
        with self.lock:
            self.log.append(req)
            queue = self.faults.get(path)
            fault = queue.pop(0) if queue else None
        if fault and fault.startswith("slow:"):
            time.sleep(float(fault.split(":", 1)[1]))
        f = self.root / path
        if fault in ("404", "500") or not f.is_file() or ".." in path.split("/"):
            req.status = 500 if fault == "500" else 404
            body = b"server error" if fault == "500" else b"not found"
            h.send_response(req.status)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        data = f.read_bytes()
        etag = '"' + hashlib.sha1(data).hexdigest() + '"'
        start = 0
        if (self.ranges and rng and rng.startswith("bytes=") and rng.endswith("-")
                and h.headers.get("If-Range") in (None, etag)):
            start = int(rng[6:-1])
        if start >= len(data) > 0:
            req.status = 416
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = data[start:]
        if fault == "corrupt":
            body = bytes(len(body))
        req.status = 206 if start else 200
        h.send_response(req.status)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("ETag", etag)
        h.send_header("Last-Modified", formatdate(f.stat().st_mtime, usegmt=True))
        if self.ranges:
            h.send_header("Accept-Ranges", "bytes")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if fault == "drop":
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # the connection dies mid-body
            return
        h.wfile.write(body)
