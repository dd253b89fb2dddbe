"""Decoding for the encoders, in worker processes that need no torch.

:func:`decode_batch` reads a batch of ``figures`` rows' images from the shards by byte range
(:func:`biomedica_kit.tables.samples.read_samples`: one read per run of adjacent samples),
decodes them with Pillow and brings each to the encoder's :class:`ImageSpec` (RGB, resized,
cropped or padded), returning one ``uint8`` array. :class:`Decoder` runs it on a pool of
fork-server processes (started without the writer's lock descriptor, and importing only this
module), keeping a bounded window of batches in flight and handing them back in order, so
the model's forward pass in the main process never waits on decoding when the pool keeps up.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from biomedica_kit.base.pool import ordered_window
from biomedica_kit.embed.encoders import ImageSpec
from biomedica_kit.tables.samples import read_samples

__all__ = ["Decoded", "Decoder", "decode_batch", "fit_image"]

_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


@dataclass
class Decoded:
    """A decoded batch: ``pixels[i]`` is the image of ``keys[i]`` (``N x S x S x 3`` uint8)."""

    keys: list[str]
    pixels: np.ndarray


def fit_image(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """One image as ``spec.size x spec.size x 3`` uint8 (RGB; resize, then crop or pad)."""
    if image.mode != "RGB":
        image = image.convert("RGBA").convert("RGB") if "transparency" in image.info \
            or image.mode in ("P", "LA", "PA") else image.convert("RGB")
    flt = _FILTERS.get(spec.interpolation, Image.Resampling.BICUBIC)
    w, h = image.size
    s = spec.size
    if spec.resize_mode == "squash":
        return np.asarray(image.resize((s, s), flt))
    if spec.resize_mode == "longest":
        scale = s / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new("RGB", (s, s), (spec.fill,) * 3)
        canvas.paste(image.resize((nw, nh), flt), ((s - nw) // 2, (s - nh) // 2))
        return np.asarray(canvas)
    scale = spec.resize / min(w, h)
    nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
    image = image.resize((nw, nh), flt)
    left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
    return np.asarray(image.crop((left, top, left + s, top + s)))


def decode_batch(root: str, rows: Sequence[Mapping[str, Any]], spec: ImageSpec) -> Decoded:
    """Read and decode the images of ``rows`` (figures rows with location columns).

    Samples come back in the order given. An image that does not decode raises
    :class:`ValueError` naming its key (the build only writes images that decoded).
    """
    order = {r["key"]: i for i, r in enumerate(rows)}
    out = np.empty((len(rows), spec.size, spec.size, 3), dtype=np.uint8)
    for row, parts in read_samples(root, rows):
        ext = row["image_ext"]
        data = next(b for e, b in parts if e == ext)
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.draft("RGB", (spec.resize, spec.resize))  # JPEG: decode at reduced size
                out[order[row["key"]]] = fit_image(im, spec)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ValueError(f"{row['key']}: image does not decode: {exc}") from exc
    return Decoded([r["key"] for r in rows], out)


class _Call:
    """``decode_batch(root, rows, spec)`` as a picklable one-argument callable."""

    def __init__(self, root: str, spec: ImageSpec) -> None:
        self.root, self.spec = root, spec

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> Decoded:
        return decode_batch(self.root, rows, self.spec)


class Decoder:
    """Decode batches on ``workers`` processes (0: in this process), results in order."""

    def __init__(self, root: str | os.PathLike[str], spec: ImageSpec, workers: int) -> None:
        self.call = _Call(str(root), spec)
        self.workers = workers
        self.pool: Executor | None = None
        if workers > 0:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods
                                              else "spawn")
            if "forkserver" in methods:
                ctx.set_forkserver_preload([__name__])
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)

    def map(self, batches: Iterable[Sequence[Mapping[str, Any]]]) -> Iterator[Decoded]:
        """Decoded batches in input order, at most ``2 * workers + 1`` ahead."""
        if self.pool is None:
            yield from map(self.call, batches)
            return
        yield from ordered_window(self.pool, self.call, batches, 2 * self.workers + 1)

    def close(self) -> None:
        """Stop the worker processes."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
