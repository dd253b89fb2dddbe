"""Minimal tar header reading for WebDataset shards: by offset (seek over data) or as a stream.

The stdlib ``tarfile`` reads member data in small blocks and, in stream mode, copies every
member through a Python buffer; for shards that are read millions of times that is the cost
that matters. This reader parses the 512-byte headers itself (ustar, GNU long names, pax) and
reads each member's data with one ``read`` call, or seeks over it when the data is not wanted.
Header checksums are verified; a truncated or corrupt header raises ``ValueError``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

__all__ = ["BLOCK", "iter_tar_files", "iter_tar_stream"]

BLOCK = 512
_ZERO = bytes(BLOCK)
_REGULAR = (b"0", b"\0", b"7")
_META = (b"L", b"x", b"g", b"K")  # records describing the next member


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit is set."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(payload: bytes) -> dict[str, str]:
    """``length key=value\\n`` records of a pax extended header."""
    out, i = {}, 0
    while i < len(payload) and payload[i:i + 1] != b"\0":
        length = int(payload[i:payload.index(b" ", i)])
        key, _, value = payload[payload.index(b" ", i) + 1:i + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        i += length
    return out


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Read n bytes (fewer only at end of stream); network streams may return short reads."""
    data = f.read(n)
    if data is None or len(data) == n or not data:
        return data or b""
    parts = [data]
    got = len(data)
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _walk(f: BinaryIO, path: str, seekable: bool, want: Callable[[str], bool]
          ) -> Iterator[tuple[str, int, int, bytes | None]]:
    pos = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        if seekable:
            f.seek(pos)
        block = _read_exact(f, BLOCK)
        if len(block) < BLOCK or block == _ZERO:
            if block.strip(b"\0"):
                raise ValueError(f"{path}: truncated tar header at byte {pos}")
            return
        if _number(block[148:156]) != sum(block[:148]) + 256 + sum(block[156:]):
            raise ValueError(f"{path}: bad tar header checksum at byte {pos}")
        kind = block[156:157]
        size = int(pax["size"]) if "size" in pax else _number(block[124:136])
        data = pos + BLOCK
        padded = -(-size // BLOCK) * BLOCK
        pos = data + padded
        if kind in _META:
            meta = _read_exact(f, padded)[:size]
            if kind == b"L":
                long_name = meta.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == b"x":
                pax = _pax_records(meta)
            continue
        name = pax.get("path") or long_name or _text(block[:100])
        if block[257:263] == b"ustar\0" and block[345] and not (long_name or "path" in pax):
            name = _text(block[345:500]) + "/" + name  # POSIX ustar name prefix
        long_name, pax = None, {}
        payload: bytes | None = None
        if kind in _REGULAR and want(name):
            payload = _read_exact(f, size)
            if len(payload) < size:
                raise ValueError(f"{path}: truncated member {name!r}")
            if not seekable and padded > size:
                _read_exact(f, padded - size)
        elif not seekable and padded:
            _skip(f, padded, path)
        if kind in _REGULAR:
            yield name, data, size, payload


def _skip(f: BinaryIO, n: int, path: str) -> None:
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            raise ValueError(f"{path}: truncated tar stream")
        n -= len(chunk)


def iter_tar_files(f: BinaryIO, path: str | os.PathLike = "<tar>"
                   ) -> Iterator[tuple[str, int, int]]:
    """``(name, data offset, size)`` of each regular file; seeks over all member data."""
    for name, offset, size, _ in _walk(f, str(path), True, lambda _n: False):
        yield name, offset, size


def iter_tar_stream(f: BinaryIO, path: str = "<stream>",
                    want: Callable[[str], bool] = lambda _n: True
                    ) -> Iterator[tuple[str, bytes | None]]:
    """``(name, data)`` of each regular file of a tar read front to back (no seeks), e.g. an
    HTTP response; data is None for members ``want`` declines (they are read past, not kept)."""
    for name, _, _, payload in _walk(f, path, False, want):
        yield name, payload
