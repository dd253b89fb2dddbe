"""The ASGI app of ``biomedica serve``: search, samples, articles and shards over HTTP.

:func:`create_app` builds a FastAPI application over one dataset (read-only: no route
writes anything). Routes:

=================================  ==========================================================
``GET /``                          the search page (``static/``)
``GET /search``                    text search: ``q``, ``mode`` (keyword, vector, hybrid),
                                   ``k``, ``offset`` or ``page``, filters ``license``,
                                   ``license_code``, ``label``, ``year``, ``journal``, ``kind``
``POST /search/image``             multipart ``image`` (optional ``q``, ``k``, filters)
``GET /samples/{key}``             a sample's metadata (every figures column)
``GET /samples/{key}/image``       its image bytes, read by byte range from its shard
``GET /samples/{key}/thumbnail``   a small JPEG/PNG of it (``size`` px, cached)
``GET /samples/{key}/similar``     more like this (its image and caption vectors)
``GET /articles/{pmcid}``          an article (PMCID or article id): metadata, figures and
                                   their inline references
``GET /shards``, ``/shards/{p}``   the shard list; a shard's bytes with HTTP Range (206),
                                   so WebDataset / open_clip stream from the server
``GET /facets``                    filter values with counts (the page's filter menus)
``GET /health``                    versions, counts, staleness, available modes
``GET /openapi.json``              the OpenAPI schema
=================================  ==========================================================

Errors are JSON ``{"error": message, "status": code}`` (validation errors add ``detail``).
SQL only ever runs with parameters, shard paths only resolve to shards the manifest lists,
and request bodies, uploads and queries are bounded (:mod:`biomedica_kit.serve.validation`).
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.serve.records import Records
from biomedica_kit.serve.search import NotIndexed, Searcher, SearchResult
from biomedica_kit.serve.validation import (
    MAX_K,
    MAX_OFFSET,
    MAX_QUERY_CHARS,
    BodyLimit,
    InputError,
    open_upload,
    parse_filters,
)
from biomedica_kit.tables.samples import StaleMetadata, read_member

__all__ = ["ERRORS", "STATIC_DIR", "ErrorBody", "create_app"]

STATIC_DIR = Path(__file__).with_name("static")
_THUMBS = 512
_MEDIA = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif",
          "tif": "image/tiff", "tiff": "image/tiff", "webp": "image/webp", "bmp": "image/bmp"}

Q = Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS,
                         description="Query text (words; no query syntax).")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="Results per page.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Results to skip.")]
Page = Annotated[int | None, Query(ge=1, le=MAX_OFFSET // MAX_K + 1,
                                   description="Page number (1-based); overrides offset.")]
Values = Annotated[list[str] | None, Query(max_length=20)]
Year = Annotated[str | None, Query(max_length=9, pattern=r"^\s*(\d{4})?\s*-?\s*(\d{4})?\s*$",
                                   description="YYYY or YYYY-YYYY (either side open).")]


class ErrorBody(BaseModel):
    """Every error the server answers with."""

    error: str
    status: int
    detail: list[dict[str, Any]] | None = None


#: Error responses every route may give (documented in the OpenAPI schema).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "Malformed request"), (404, "Not found"),
        (409, "Not indexed, or the index is stale"), (411, "Length required"),
        (413, "Upload too large"), (416, "Range not satisfiable"),
        (422, "Invalid input"), (500, "Internal error"))}


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status)


def _offset(k: int, offset: int, page: int | None) -> int:
    """The first result of a page (``page`` wins over ``offset``; both stay within
    MAX_OFFSET by their bounds)."""
    return (page - 1) * k if page is not None else offset


def _result(searcher: Searcher, res: SearchResult, q: str | None) -> dict[str, Any]:
    return {"query": q, "mode": res.mode, "k": res.k, "offset": res.offset,
            "total": res.total, "took_ms": res.took_ms, "timings_ms": res.timings,
            "results": searcher.rows(res.hits)}


class _Thumbs:
    """A bounded LRU of thumbnails by (key, size)."""

    def __init__(self, size: int = _THUMBS) -> None:
        self.size = size
        self.items: OrderedDict[tuple[str, int], tuple[bytes, str]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> tuple[bytes, str] | None:
        with self.lock:
            got = self.items.get(key)
            if got is not None:
                self.items.move_to_end(key)
            return got

    def put(self, key: tuple[str, int], value: tuple[bytes, str]) -> None:
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)


def _thumbnail(data: bytes, size: int) -> tuple[bytes, str]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))
        im.thumbnail((size, size))
        out = io.BytesIO()
        if im.mode in ("RGBA", "LA", "P", "PA"):
            im.convert("RGBA").save(out, "PNG", optimize=False)
            return out.getvalue(), "image/png"
        im.convert("RGB").save(out, "JPEG", quality=85)
        return out.getvalue(), "image/jpeg"


def create_app(dataset: str | os.PathLike[str], *, embeddings: str | None = None,
               searcher: Searcher | None = None) -> FastAPI:
    """The app over ``dataset`` (module doc); ``searcher`` reuses an open one."""
    root = Path(dataset).resolve()
    s = searcher or Searcher(root, embeddings)
    thumbs = _Thumbs()
    records = Records(root)
    app = FastAPI(title="biomedica-kit search", version="1", docs_url=None, redoc_url=None,
                  responses=ERRORS,
                  description="Search and stream a BIOMEDICA-style figure/caption dataset "
                              "(read-only).")
    app.state.searcher = s
    app.add_middleware(BodyLimit)

    # ------------------------------------------------------------------ errors

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()]
        where = ", ".join(".".join(str(x) for x in d["loc"]) for d in detail)
        return _error(422, f"invalid request ({where})", detail=detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(NotIndexed)
    async def _not_indexed(_: Request, exc: NotIndexed) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(exc).__name__}); the server log has "
                           f"the details")

    @app.exception_handler(StaleMetadata)
    async def _stale(_: Request, exc: StaleMetadata) -> JSONResponse:
        return _error(409, f"{exc}; the index is stale: run `biomedica index`")

    # ------------------------------------------------------------------ search

    @app.get("/search", summary="Text search (keyword, vector or hybrid)")
    def search(q: Q, mode: Literal["keyword", "vector", "hybrid"] = "hybrid", k: K = 10,
               offset: Offset = 0, page: Page = None, license: Values = None,
               license_code: Values = None, label: Values = None, year: Year = None,
               journal: Values = None, kind: Values = None) -> dict[str, Any]:
        """Results carry ``key``, ``caption``, ``pmcid``, ``score`` (BM25, cosine or RRF),
        each source's score and rank, and image, thumbnail and article URLs."""
        filters = parse_filters(license=license, license_code=license_code, label=label,
                                journal=journal, kind=kind, year=year)
        try:
            res = s.search(q, mode=mode, k=k, offset=_offset(k, offset, page),
                           filters=filters)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        return _result(s, res, q)

    @app.post("/search/image", summary="Images like an uploaded one (optionally with text)")
    def search_image(image: Annotated[UploadFile, File(description="An image file.")],
                     q: Annotated[str | None, Form(max_length=MAX_QUERY_CHARS)] = None,
                     k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
                     offset: Annotated[int, Form(ge=0, le=MAX_OFFSET)] = 0,
                     license: Annotated[str | None, Form(max_length=400)] = None,
                     label: Annotated[str | None, Form(max_length=400)] = None,
                     year: Annotated[str | None, Form(max_length=9)] = None,
                     journal: Annotated[str | None, Form(max_length=400)] = None,
                     kind: Annotated[str | None, Form(max_length=400)] = None
                     ) -> dict[str, Any]:
        """Filters are comma-separated values; the image is checked (format, pixels)
        before it is decoded."""
        im = open_upload(image.file.read())
        filters = parse_filters(license=[license] if license else None,
                                label=[label] if label else None,
                                journal=[journal] if journal else None,
                                kind=[kind] if kind else None, year=year)
        try:
            res = s.search_image(im, q, k=k, offset=offset, filters=filters)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        return _result(s, res, q)

    # ------------------------------------------------------------------ samples

    def _row(key: str) -> dict[str, Any]:
        id_ = s.catalog.id_of(key)
        if id_ is None or not s.catalog.live[id_]:
            raise HTTPException(404, f"no sample {key!r}")
        return s.catalog.rows([id_])[0]

    @app.get("/samples/{key}", summary="A sample's metadata")
    def sample(key: str) -> dict[str, Any]:
        """Every figures column of the sample, plus its catalog fields and URLs."""
        _row(key)
        rec = records.sample(key)
        if rec is None:
            raise HTTPException(404, f"no sample {key!r}")
        return rec

    @app.get("/samples/{key}/image", summary="A sample's image bytes (byte range read)",
             response_class=Response, responses={200: {"content": {"image/*": {}}}})
    def sample_image(key: str) -> Response:
        """The image exactly as stored in the shard."""
        row = _row(key)
        data = read_member(s.dataset, row, "image")
        return Response(data, media_type=_MEDIA.get(str(row["image_ext"]).lower(),
                                                     "application/octet-stream"),
                        headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/samples/{key}/thumbnail", summary="A small version of a sample's image",
             response_class=Response, responses={200: {"content": {"image/*": {}}}})
    def sample_thumbnail(key: str, size: Annotated[int, Query(ge=32, le=512)] = 256
                         ) -> Response:
        """JPEG (PNG for images with transparency), at most ``size`` pixels a side."""
        cached = thumbs.get((key, size))
        if cached is None:
            row = _row(key)
            cached = _thumbnail(read_member(s.dataset, row, "image"), size)
            thumbs.put((key, size), cached)
        return Response(cached[0], media_type=cached[1],
                        headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/samples/{key}/similar", summary="More like this sample")
    def sample_similar(key: str, k: K = 10, offset: Offset = 0) -> dict[str, Any]:
        """Samples nearest to this one's image and caption vectors (itself left out)."""
        _row(key)
        return _result(s, s.similar(key, k=k, offset=offset), None)

    # ------------------------------------------------------------------ articles

    @app.get("/articles/{pmcid:path}", summary="An article: metadata, figures, inline references")
    def article(pmcid: str) -> dict[str, Any]:
        """``pmcid`` may be a PMCID (``PMC123`` or ``123``) or the dataset's article id."""
        rec = records.article(pmcid)
        if rec is None:
            raise HTTPException(404, f"no article {pmcid!r}")
        return rec

    # ------------------------------------------------------------------ shards

    def _shards() -> dict[str, dict[str, Any]]:
        return {e["path"]: dict(e) for e in read_manifest(root)["shards"]}

    @app.get("/shards", summary="The shards of the current version")
    def shards() -> dict[str, Any]:
        """Each shard's path, URL, samples, bytes and sha256 (stream them with Range)."""
        out = [{**e, "url": "/" + e["path"]} for e in _shards().values()]
        return {"dataset_version": read_manifest(root)["dataset_version"], "shards": out}

    @app.head("/shards/{path:path}", include_in_schema=False)
    @app.get("/shards/{path:path}", summary="A shard's bytes (HTTP Range supported)",
             response_class=FileResponse,
             responses={200: {"content": {"application/x-tar": {}}},
                        206: {"description": "Partial content"}})
    def shard(path: str) -> FileResponse:
        """Only shards the manifest lists are served (no other path resolves)."""
        entry = _shards().get(f"shards/{path}")
        if entry is None:
            raise HTTPException(404, f"no shard {path!r} in the current version")
        return FileResponse(root / entry["path"], media_type="application/x-tar",
                            filename=Path(entry["path"]).name,
                            content_disposition_type="inline")

    # ------------------------------------------------------------------ facets, health

    @app.get("/facets", summary="Filter values with sample counts")
    def facets() -> dict[str, Any]:
        """For each string filter, its values (most frequent first) and a year range."""
        out: dict[str, Any] = {name: [{"value": v, "count": n}
                                      for v, n in s.catalog.values(name)[:200]]
                               for name in ("license", "license_code", "label", "journal",
                                            "kind")}
        years = s.catalog.years[(s.catalog.years >= 0) & s.catalog.live]
        out["year"] = {"min": int(years.min()), "max": int(years.max())} if len(years) \
            else None
        return out

    @app.get("/health", summary="Versions, counts and available search modes")
    def health() -> dict[str, Any]:
        """``stale`` is true when the dataset has a newer version than the index."""
        return s.status()

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return app
