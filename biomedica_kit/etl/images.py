"""Figure images: decode under limits, normalise to one storage policy, hash.

Storage policy (documented in docs/images.md):

* JPEG sources in RGB or greyscale are stored byte for byte (no generational loss).
* PNG sources are stored byte for byte (lossless stays lossless).
* Everything else (GIF, TIFF, BMP, WebP, CMYK or YCCK JPEG, 16-bit and float modes, JPEG/PNG
  larger than ``max_side``) is converted to 8-bit RGB (alpha flattened onto white) and encoded as
  JPEG at ``jpeg_quality``; images whose longest side exceeds ``max_side`` are downscaled first.
* Multi-frame files (animated GIF, multi-page TIFF) keep their first frame.

Each stored image records width, height, source format, stored format, the sha256 of the stored
bytes and a 64-bit perceptual hash (DCT pHash of the decoded pixels).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageFile, UnidentifiedImageError

# Truncated files must fail loudly, not decode into half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageRejected(ValueError):
    """The image could not be stored; ``reason`` is a short code for the skip table."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImagePolicy:
    """Limits and encoding settings for figure images."""

    max_pixels: int = 200_000_000  # decompression-bomb guard: refuse larger images undecoded
    max_side: int = 4096  # longer sides are downscaled before storing
    min_side: int = 32  # smaller images are icons or spacers, not figures
    jpeg_quality: int = 90
    max_bytes: int = 256 * 1024 * 1024  # refuse source files larger than this


@dataclass(frozen=True)
class StoredImage:
    """An image ready to be written to a shard."""

    data: bytes
    ext: str  # "jpg" or "png": the WebDataset member extension
    width: int
    height: int
    source_format: str
    source_bytes: int
    sha256: str
    phash: str
    converted: bool


def process_image(data: bytes, policy: ImagePolicy | None = None) -> StoredImage:
    """Decode, check and normalise one image; raise :class:`ImageRejected` with a reason."""
    policy = policy or ImagePolicy()
    if not data:
        raise ImageRejected("empty_image", "zero-byte file")
    if len(data) > policy.max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes > {policy.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = (img.format or "unknown").upper()
            w, h = img.size
            # Check the declared size before decoding a single pixel.
            if w * h > policy.max_pixels:
                raise ImageRejected("too_large", f"{w}x{h} pixels > {policy.max_pixels}")
            img.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_large", str(exc)) from None
    except UnidentifiedImageError as exc:
        raise ImageRejected("decode_error", f"not a recognised image: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}") from None
    if min(w, h) < policy.min_side:
        raise ImageRejected("too_small", f"{w}x{h} < {policy.min_side}px")

    keep = (
        (fmt == "JPEG" and img.mode in ("RGB", "L"))
        or (fmt == "PNG" and getattr(img, "n_frames", 1) == 1)
    ) and max(w, h) <= policy.max_side
    phash = _phash(img)
    if keep:
        out, ext, converted = data, "jpg" if fmt == "JPEG" else "png", False
    else:
        rgb = _to_rgb(img)
        if max(w, h) > policy.max_side:
            rgb.thumbnail((policy.max_side, policy.max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=policy.jpeg_quality, optimize=True)
        out, ext, converted = buf.getvalue(), "jpg", True
        w, h = rgb.size
    return StoredImage(
        data=out,
        ext=ext,
        width=w,
        height=h,
        source_format=fmt,
        source_bytes=len(data),
        sha256=hashlib.sha256(out).hexdigest(),
        phash=phash,
        converted=converted,
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Scale high bit depth to 8 bits by its actual range, so scans are not all-white.
        lo, hi = img.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 1.0
        img = img.point(lambda v: (v - lo) * scale).convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


def _phash(img: Image.Image) -> str:
    import imagehash  # scipy-backed; imported here so `biomedica parse` stays light

    frame = img
    if frame.mode not in ("L", "RGB"):
        frame = _to_rgb(img)
    return str(imagehash.phash(frame))
