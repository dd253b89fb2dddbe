"""Montages: one JPEG grid of a cluster's exemplars, ``montages/<cluster>.jpg``.

Thumbnails are decoded by :func:`biomedica_kit.embed.decode.decode_batch` (byte-range reads,
the image letterboxed on white), nearest-to-centroid exemplars first, then random members.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from biomedica_kit.base.atomic import atomic_path
from biomedica_kit.embed.decode import decode_batch
from biomedica_kit.embed.encoders import ImageSpec

__all__ = ["montage_grid", "write_montages"]


def montage_grid(tiles: np.ndarray, columns: int, gap: int = 4) -> np.ndarray:
    """``tiles`` (``N x S x S x 3``) laid out ``columns`` wide on a white background."""
    n, s = len(tiles), tiles.shape[1]
    rows = max(1, math.ceil(n / columns))
    cols = min(columns, max(1, n))
    out = np.full((rows * (s + gap) + gap, cols * (s + gap) + gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = gap + r * (s + gap), gap + c * (s + gap)
        out[y: y + s, x: x + s] = tile
    return out


def write_montages(dataset: Path, out_dir: Path, exemplars: list[dict],
                   figures_rows: Mapping[str, Mapping[str, Any]], *, tile: int = 128,
                   per_cluster: int = 16, columns: int = 4) -> dict[int, str]:
    """Write every cluster's montage; ``{cluster: path relative to out_dir's parent}``.

    ``exemplars`` are rows of :class:`biomedica_kit.cluster.exemplars.Exemplars`;
    ``figures_rows`` maps their keys to figures rows (location columns).
    """
    from PIL import Image

    spec = ImageSpec(size=tile, resize=tile, resize_mode="longest", fill=255,
                     interpolation="bilinear")
    chosen: dict[int, list[str]] = {}
    for kind in ("centroid", "random"):
        for e in exemplars:
            if e["kind"] != kind:
                continue
            keys = chosen.setdefault(e["cluster"], [])
            if e["key"] not in keys and len(keys) < per_cluster:
                keys.append(e["key"])
    out: dict[int, str] = {}
    for c, keys in sorted(chosen.items()):
        decoded = decode_batch(str(dataset), [figures_rows[k] for k in keys], spec)
        path = out_dir / f"{c}.jpg"
        with atomic_path(path) as tmp:
            Image.fromarray(montage_grid(decoded.pixels, columns)).save(tmp, "JPEG",
                                                                       quality=85)
        out[c] = f"{out_dir.name}/{c}.jpg"
    return out
