"""Image storage policy on inputs made from a real corpus figure (PMC12419688's koaf197f1.jpg):
16-bit PNGs of every colour type become 8-bit (scaled, not clipped), and EXIF orientation is
applied everywhere so stored pixels are upright and width/height are the stored size."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from corpus_paths import make_tar
from PIL import Image

from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.etl.build import build
from biomedica_kit.etl.images import png_bit_depth, process_image

PKG = "PMC12419688"


@pytest.fixture(scope="module")
def figure(corpus) -> bytes:
    return (corpus / PKG / "koaf197f1.jpg").read_bytes()


def png16(arr: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour PNGs): ``arr`` is
    uint16, HxW (grey, type 0) or HxWxC (RGB 2, grey+alpha 4, RGBA 6)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_16_bit_greyscale_png_is_scaled_not_clipped(figure):
    grey = np.asarray(_decode(figure).convert("L"))
    src = png16(grey.astype(np.uint16) * 257, 0)
    assert _decode(src).mode == "I;16"
    # What storing the source as is would give a loader: a naive convert is nearly all white.
    naive = np.asarray(_decode(src).convert("L"))
    assert (naive == 255).mean() > 0.95
    s = process_image(src)
    assert (s.ext, s.converted, s.source_format) == ("png", True, "PNG")
    assert png_bit_depth(s.data) == 8
    stored = _decode(s.data)
    assert stored.mode == "L" and stored.size == (s.width, s.height) == (750, 495)
    diff = np.abs(np.asarray(stored, dtype=int) - grey.astype(int))
    assert diff.max() <= 1
    assert abs(np.asarray(stored.convert("RGB")).mean() - grey.mean()) < 1


def test_12_bit_data_in_16_bits_is_not_black(figure):
    grey = np.asarray(_decode(figure).convert("L")).astype(np.uint16)
    s = process_image(png16(grey * 16, 0))  # 0..4080: what a 12-bit camera writes
    stored = np.asarray(_decode(s.data), dtype=int)
    assert np.abs(stored - grey.astype(int)).max() <= 1


@pytest.mark.parametrize(("color_type", "mode"), [(2, "RGB"), (4, "LA"), (6, "RGBA")])
def test_16_bit_colour_pngs_are_stored_as_8_bit(figure, color_type, mode):
    rgb = np.asarray(_decode(figure).convert("RGB")).astype(np.uint16)
    alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint16)
    grey = np.asarray(_decode(figure).convert("L")).astype(np.uint16)[..., None]
    arr = {2: rgb, 4: np.concatenate([grey, alpha], axis=2),
           6: np.concatenate([rgb, alpha], axis=2)}[color_type] * 257
    src = png16(arr, color_type)
    assert png_bit_depth(src) == 16
    s = process_image(src)
    assert (s.ext, s.converted, png_bit_depth(s.data)) == ("png", True, 8)
    stored = _decode(s.data)
    expect = (arr // 257).astype(int)
    # Pillow decodes 16-bit grey+alpha as RGBA: stored so, with the same grey and alpha values.
    got = np.asarray(stored.convert(mode), dtype=int)
    assert stored.mode == {2: "RGB", 4: "RGBA", 6: "RGBA"}[color_type]
    assert got.shape == expect.shape and np.abs(got - expect).max() == 0


def test_8_bit_png_is_still_stored_byte_for_byte(figure):
    buf = io.BytesIO()
    _decode(figure).save(buf, format="PNG")
    s = process_image(buf.getvalue())
    assert s.data == buf.getvalue() and not s.converted


def _with_orientation(figure: bytes, fmt: str, value: int) -> bytes:
    img = _decode(figure)
    buf = io.BytesIO()
    if fmt == "TIFF":
        img.save(buf, format="TIFF", tiffinfo={274: value})
    else:
        exif = Image.Exif()
        exif[0x0112] = value
        img.save(buf, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


_TURN = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270,
         8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
@pytest.mark.parametrize("value", [6, 3, 8])
def test_exif_orientation_is_applied(figure, fmt, value):
    src = _with_orientation(figure, fmt, value)
    if fmt != "TIFF":  # Pillow turns TIFFs upright itself while opening them
        assert _decode(src).getexif().get(0x0112) == value
        assert _decode(src).size == (750, 495)
    s = process_image(src)
    upright = np.asarray(_decode(figure).convert("RGB").transpose(_TURN[value]), dtype=int)
    stored = _decode(s.data)
    assert (stored.width, stored.height) == (s.width, s.height)
    assert (s.width, s.height) == ((495, 750) if value in (6, 8) else (750, 495))
    assert stored.getexif().get(0x0112, 1) == 1  # nothing left for a viewer to rotate again
    assert s.converted and s.ext == {"JPEG": "jpg", "PNG": "png", "TIFF": "jpg"}[fmt]
    err = np.abs(np.asarray(stored.convert("RGB"), dtype=int) - upright).mean()
    assert err < (0.01 if fmt == "PNG" else 3), err


def test_upright_jpeg_is_stored_byte_for_byte(figure):
    s = process_image(figure)
    assert s.data == figure and not s.converted and (s.width, s.height) == (750, 495)
    tagged = _with_orientation(figure, "JPEG", 1)
    assert process_image(tagged).data == tagged


def test_build_records_the_stored_size(corpus, figure, tmp_path):
    xml = (corpus / PKG / "koaf197.nxml").read_bytes()
    src = tmp_path / "src"
    src.mkdir()
    make_tar(src / f"{PKG}.tar.gz", PKG,
             {"koaf197.nxml": xml, "koaf197f1.jpg": _with_orientation(figure, "JPEG", 6)})
    s = build(src, tmp_path / "ds", workers=1, progress=False)
    assert s.samples == 1
    ((_, g),) = list(iter_samples(next((tmp_path / "ds/shards").rglob("*.tar"))))
    meta = json.loads(g["json"])
    img = _decode(g["jpg"])
    assert img.size == (meta["image_width"], meta["image_height"]) == (495, 750)
    assert meta["image_size"] == [495, 750] and meta["image_converted"]
