"""Figure images: decode under limits, normalise to one storage policy, hash.

Storage policy (documented in docs/images.md):

* JPEG sources in RGB or greyscale are stored byte for byte (no generational loss).
* 8-bit PNG sources are stored byte for byte (lossless stays lossless).
* 16-bit PNGs (greyscale ``I;16``, RGB/RGBA/LA with 16 bits a channel) are stored as 8-bit PNG:
  colour channels keep their high byte (v / 257), greyscale is scaled by its own maximum
  (0..max -> 0..255, never clipped, so a 12-bit scan is not near-black and a 16-bit export is not
  all white).
* EXIF orientation is applied: an image whose orientation tag is not 1 (upright) is rotated or
  flipped so the stored pixels are upright, and re-encoded (JPEG at ``jpeg_quality``, PNG as
  PNG); width and height are those of the stored, upright image.
* Everything else (GIF, TIFF, BMP, WebP, CMYK or YCCK JPEG, 32-bit and float modes, JPEG/PNG
  larger than ``max_side``) is converted to 8-bit RGB (alpha flattened onto white) and encoded as
  JPEG at ``jpeg_quality``; images whose longest side exceeds ``max_side`` are downscaled first.
* Multi-frame files (animated GIF, multi-page TIFF) keep their first frame.

Each stored image records width, height, source format, stored format, the sha256 of the stored
bytes and a 64-bit perceptual hash (DCT pHash of the decoded, upright pixels).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import cast

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = ["ImagePolicy", "ImageRejected", "StoredImage", "orientation", "png_bit_depth",
           "process_image"]

# Truncated files must fail loudly, not decode into half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_ORIENTATION = 0x0112  # the EXIF / TIFF orientation tag
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


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


def png_bit_depth(data: bytes) -> int | None:
    """Bit depth a PNG's IHDR declares (1, 2, 4, 8 or 16); None if ``data`` is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 26:
        return None
    return data[24]


def orientation(img: Image.Image) -> int:
    """The image's EXIF (or TIFF) orientation tag, 1 (upright) when absent or invalid."""
    try:
        value = img.getexif().get(_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, TypeError):  # a corrupt EXIF block: ignore it
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


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

    turn = orientation(img)
    single_png = fmt == "PNG" and getattr(img, "n_frames", 1) == 1
    eight_bit_png = single_png and (png_bit_depth(data) or 8) <= 8 and img.mode not in _HIGH_DEPTH
    fits = max(w, h) <= policy.max_side
    keep = ((fmt == "JPEG" and img.mode in ("RGB", "L")) or eight_bit_png) and fits and turn == 1
    if keep:
        out, ext, converted = data, "jpg" if fmt == "JPEG" else "png", False
        upright: Image.Image = img
        w, h = img.size
    else:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        upright = ImageOps.exif_transpose(img) if turn != 1 else img
        if single_png and fits:
            # A PNG that had to change (16 bits, orientation): still a lossless 8-bit PNG.
            stored = _to_8bit(upright)
            fmt_out, ext = "PNG", "png"
        elif fmt == "JPEG" and img.mode in ("RGB", "L") and max(upright.size) <= policy.max_side:
            stored, fmt_out, ext = upright, "JPEG", "jpg"  # only rotated
        else:
            stored = _to_rgb(upright)
            if max(stored.size) > policy.max_side:
                stored.thumbnail((policy.max_side, policy.max_side), Image.Resampling.LANCZOS)
            fmt_out, ext = "JPEG", "jpg"
        buf = io.BytesIO()
        if fmt_out == "JPEG":
            stored.save(buf, format="JPEG", quality=policy.jpeg_quality, optimize=True)
        else:
            stored.save(buf, format="PNG")
        out, converted = buf.getvalue(), True
        w, h = stored.size
    return StoredImage(
        data=out,
        ext=ext,
        width=w,
        height=h,
        source_format=fmt,
        source_bytes=len(data),
        sha256=hashlib.sha256(out).hexdigest(),
        phash=_phash(upright),  # of the decoded source pixels, upright, before any resizing
        converted=converted,
    )


def _to_8bit(img: Image.Image) -> Image.Image:
    """8 bits a channel, same channels: high-depth greyscale scaled by its range (module doc)."""
    if img.mode in _HIGH_DEPTH:
        # 0..max -> 0..255 (negative floats shift up first); Pillow's linear point stays in C.
        src = img if img.mode in ("I", "F") else img.convert("I")
        lo, hi = cast(tuple[float, float], src.getextrema())  # one band: (min, max)
        lo = min(lo, 0)
        scale = 255.0 / (hi - lo) if hi > lo else 1.0
        return src.point(lambda v: (v - lo) * scale).convert("L")
    if img.mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
        return img
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    if img.mode in _HIGH_DEPTH:
        img = _to_8bit(img)
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
