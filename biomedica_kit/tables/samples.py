"""Sample byte ranges: read samples (or one member) from shards at the offsets the metadata
records, the one place that turns a ``figures`` row into bytes.

A figures row holds each member's data offset and length (``image_offset``/``image_length``,
``txt_*``, ``json_*``); a sample's members are adjacent in its tar, and samples selected
together are often adjacent too. :func:`group_spans` merges nearby samples of one shard into
spans (one read, or one HTTP Range request, each); :func:`cut_span` slices a span's bytes back
into samples and checks each json names its key, so stale metadata fails loudly instead of
returning another sample's bytes. Subsets, streaming and the notebook gallery all read here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

__all__ = ["ROW_COLUMNS", "Span", "StaleMetadata", "cut_span", "group_spans", "member_spans",
           "read_member", "read_samples"]

#: The figures columns a byte-range read needs.
ROW_COLUMNS = ("key", "shard", "subset", "image_ext", "image_offset", "image_length",
               "txt_offset", "txt_length", "json_offset", "json_length")
_MEMBERS = ("image", "txt", "json")


class StaleMetadata(ValueError):
    """The bytes at the recorded offsets are not the sample's: re-run ``biomedica export``."""


def member_spans(row: Mapping[str, Any]) -> list[tuple[int, int, str]]:
    """``(offset, length, ext)`` of a row's members, in file order."""
    out = []
    for m in _MEMBERS:
        off = row.get(f"{m}_offset")
        if off is not None:
            out.append((int(off), int(row[f"{m}_length"]), row["image_ext"] if m == "image" else m))
    if not out:
        raise ValueError(f"{row.get('key')}: no member offsets")
    return sorted(out)


@dataclass
class Span:
    """Contiguous bytes ``[start, end)`` of one shard covering one or more samples."""

    shard: str
    start: int
    end: int
    items: list[tuple[Mapping[str, Any], list[tuple[int, int, str]]]] = field(default_factory=list)


def group_spans(rows: Iterable[Mapping[str, Any]], *, merge_gap: int = 1 << 16,
                max_span: int = 64 << 20) -> list[Span]:
    """Rows grouped into spans per shard, in (shard, offset) order: a row joins the previous
    span when the gap is at most ``merge_gap`` bytes and the span stays under ``max_span``."""
    out: list[Span] = []
    for r in sorted(rows, key=lambda r: (r["shard"], member_spans(r)[0][0])):
        members = member_spans(r)
        start, end = members[0][0], max(o + n for o, n, _ in members)
        last = out[-1] if out else None
        if last is not None and last.shard == r["shard"] and start >= last.end \
                and start - last.end <= merge_gap and end - last.start <= max_span:
            last.end = end
            last.items.append((r, members))
        else:
            out.append(Span(r["shard"], start, end, [(r, members)]))
    return out


def cut_span(span: Span, blob: bytes, where: str) -> Iterator[tuple[Mapping[str, Any],
                                                                   list[tuple[str, bytes]]]]:
    """``(row, [(ext, bytes)])`` per sample of a span whose bytes are ``blob``."""
    if len(blob) != span.end - span.start:
        raise StaleMetadata(f"{where}: short read at {span.start} (metadata stale? re-export)")
    for r, members in span.items:
        parts = [(ext, blob[o - span.start: o - span.start + n]) for o, n, ext in members]
        meta = dict(parts).get("json")
        if meta is not None and json.loads(meta).get("key") != r["key"]:
            raise StaleMetadata(f"{where}: bytes at {r['json_offset']} are not {r['key']}'s "
                                f"json; figures.parquet is stale (run biomedica export)")
        yield r, parts


def read_samples(root: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], *,
                 merge_gap: int = 1 << 16, max_span: int = 64 << 20
                 ) -> Iterator[tuple[Mapping[str, Any], list[tuple[str, bytes]]]]:
    """Every row's members, read from the local shards under ``root`` (one read per span)."""
    root = Path(root)
    spans = group_spans(rows, merge_gap=merge_gap, max_span=max_span)
    for shard, group in groupby(spans, key=lambda s: s.shard):
        with open(root / shard, "rb") as f:
            for span in group:
                f.seek(span.start)
                yield from cut_span(span, f.read(span.end - span.start), str(root / shard))


def read_member(root: str | os.PathLike[str], row: Mapping[str, Any],
                member: str = "image") -> bytes:
    """One member's bytes (``image``, ``txt`` or ``json``) of one figures row."""
    path = Path(root) / row["shard"]
    off, n = int(row[f"{member}_offset"]), int(row[f"{member}_length"])
    with open(path, "rb") as f:
        f.seek(off)
        data = f.read(n)
    if len(data) != n:
        raise StaleMetadata(f"{path}: short read for {row['key']} (metadata stale? re-export)")
    return data
