"""Input limits of the server and the checks that enforce them.

Everything a client sends is bounded before work is done on it: the query text
(:data:`MAX_QUERY_CHARS`), page size and depth (:data:`MAX_K`, :data:`MAX_OFFSET`), filter
values (:func:`parse_filters`: at most :data:`MAX_FILTER_VALUES` each, of bounded length,
years as ``YYYY`` or ranges), the request body (:data:`MAX_UPLOAD_BYTES`, checked from
``Content-Length`` before the body is read, by :class:`BodyLimit`) and an uploaded image
(:func:`open_upload`: an allowed format, at most :data:`MAX_PIXELS` decoded pixels, read from
its header before anything is decoded). Every refusal is an :class:`InputError` carrying the
HTTP status and a message that says what was wrong.
"""

from __future__ import annotations

import io
import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from biomedica_kit.tables.catalog import Filters, parse_years

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGE_FORMATS", "MAX_FILTER_VALUES", "MAX_K", "MAX_OFFSET", "MAX_PIXELS",
           "MAX_QUERY_CHARS", "MAX_UPLOAD_BYTES", "BodyLimit", "InputError", "open_upload",
           "parse_filters"]

MAX_QUERY_CHARS = 500
MAX_K = 100
MAX_OFFSET = 1000
MAX_FILTER_VALUES = 20
MAX_FILTER_CHARS = 200
#: Bytes of a request body (an image upload with its form fields).
MAX_UPLOAD_BYTES = 16 << 20
#: Decoded pixels of an uploaded image (width x height), read from its header.
MAX_PIXELS = 40_000_000
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP")


class InputError(ValueError):
    """A request refused: ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _values(name: str, raw: Sequence[str] | None) -> tuple[str, ...]:
    """Filter values: repeated parameters and comma lists alike, deduplicated, in order."""
    out: list[str] = []
    for item in raw or ():
        for v in item.split(","):
            v = v.strip()
            if not v:
                continue
            if len(v) > MAX_FILTER_CHARS:
                raise InputError(f"{name}: a value is longer than {MAX_FILTER_CHARS} "
                                 f"characters")
            if v not in out:
                out.append(v)
    if len(out) > MAX_FILTER_VALUES:
        raise InputError(f"{name}: at most {MAX_FILTER_VALUES} values")
    return tuple(out)


def parse_filters(*, license: Sequence[str] | None = None,
                  license_code: Sequence[str] | None = None,
                  label: Sequence[str] | None = None, journal: Sequence[str] | None = None,
                  kind: Sequence[str] | None = None, year: str | None = None) -> Filters:
    """:class:`Filters` from query parameters (InputError on a malformed one)."""
    years: tuple[int | None, int | None] = (None, None)
    if year is not None and year.strip():
        try:
            years = parse_years(year)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    return Filters(license=_values("license", license),
                   license_code=_values("license_code", license_code),
                   label=_values("label", label), journal=_values("journal", journal),
                   kind=_values("kind", kind), years=years)


def open_upload(data: bytes) -> Image.Image:
    """An uploaded image, checked (InputError: empty, not an image of an allowed format,
    too many pixels, or corrupt), opened but not yet loaded."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError("the uploaded image is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise InputError(f"the upload is over {MAX_UPLOAD_BYTES >> 20} MiB", 413)
    try:
        im = Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))
    except Image.DecompressionBombError as exc:
        raise InputError(f"the image has too many pixels ({exc}); at most {MAX_PIXELS:,} "
                         f"decoded pixels are accepted", 413) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(f"not an image of a known format ({', '.join(IMAGE_FORMATS)})"
                         ) from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise InputError(f"the image is {w} x {h} pixels; at most {MAX_PIXELS:,} decoded "
                         f"pixels are accepted", 413)
    if w < 1 or h < 1:
        raise InputError("the image has no pixels")
    try:  # decode a copy in full: the one returned stays lazy (a JPEG may decode smaller)
        with Image.open(io.BytesIO(data)) as probe:
            probe.load()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise InputError(f"the image does not decode: {exc}") from None
    return im


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a request body must declare its length (411 otherwise) and stay
    under ``limit`` bytes (413), refused before the body is read."""

    def __init__(self, app: ASGIApp, limit: int = MAX_UPLOAD_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is None:
            if "transfer-encoding" in headers:
                await _json(send, 411, "a request body needs a Content-Length header")
                return
        elif not length.isdigit():
            await _json(send, 400, "Content-Length is not a number")
            return
        elif int(length) > self.limit:
            await _json(send, 413, f"the request body is over {self.limit >> 20} MiB")
            return
        await self.app(scope, receive, send)


async def _json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
