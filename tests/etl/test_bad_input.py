"""Bad input, made by corrupting copies of real corpus files: every case is recorded with a
reason, the run goes on, counts reconcile, and no shard is left half-written."""

from __future__ import annotations

import io
import json
import re
import struct
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from corpus_paths import folder_members, make_tar
from PIL import Image

from biomedica_kit.dataset.verify import verify
from biomedica_kit.etl.build import build

PKG = "PMC12419688"
XML = "koaf197.nxml"
JPG = "koaf197f1.jpg"
GIF = "koaf197f1.gif"


def real_members(corpus: Path) -> dict[str, bytes]:
    return folder_members(corpus / PKG)


def with_doctype(xml: bytes, subset: str) -> bytes:
    """Replace the article's DOCTYPE with one carrying an internal subset."""
    return re.sub(rb"<!DOCTYPE article[^>]*>", b"<!DOCTYPE article [" + subset.encode() + b"]>",
                  xml, count=1).replace(b"<article-title>", b"<article-title>&e;", 1)


def png_claiming(size: tuple[int, int], real_jpg: bytes) -> bytes:
    """Re-encode a real figure as PNG, then patch IHDR to claim a bomb-sized canvas."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(real_jpg)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", *size)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def cmyk(real_jpg: bytes) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(real_jpg)).convert("CMYK").save(buf, format="JPEG", quality=95)
    return bytes(buf.getvalue())


_LEVELS = "abcdfghie"  # nine levels ending in &e;, the entity with_doctype() references
BILLION_LAUGHS = '<!ENTITY a "lol">' + "".join(
    f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip(_LEVELS, _LEVELS[1:], strict=False))

# name -> (how to make members from the real ones, article status, article reason, skip reason)
CASES: dict[str, tuple[Callable[[dict], dict], str, str | None, str | None]] = {
    "malformed_xml": (lambda m: {**m, XML: m[XML][: len(m[XML]) // 2]},
                      "failed", "malformed_xml", None),
    "non_utf8": (lambda m: {**m, XML: m[XML].replace(b"phosphate", b"phosph\xe2te", 1)},
                 "failed", "encoding_error", None),
    "entity_bomb": (lambda m: {**m, XML: with_doctype(m[XML], BILLION_LAUGHS)},
                    "failed", "xml_entities", None),
    "external_entity": (lambda m: {**m, XML: with_doctype(
        m[XML], '<!ENTITY e SYSTEM "file:///etc/passwd">')}, "failed", "xml_entities", None),
    # Declared, never referenced: still refused (its text could only come from outside).
    "external_entity_unreferenced": (lambda m: {**m, XML: with_doctype(
        m[XML], '<!ENTITY e "x"><!ENTITY leak SYSTEM "http://127.0.0.1:9/x">')},
        "failed", "xml_entities", None),
    "external_parameter_entity": (lambda m: {**m, XML: with_doctype(
        m[XML], '<!ENTITY e "x"><!ENTITY % p SYSTEM "file:///etc/passwd"> %p;')},
        "failed", "xml_entities", None),
    "entity_loop": (lambda m: {**m, XML: with_doctype(
        m[XML], '<!ENTITY e "&f;"><!ENTITY f "&e;">')}, "failed", "xml_entities", None),
    # One 100 kB entity referenced 300 times: 30 MB from a 0.2 MB file (quadratic blow-up).
    "entity_blowup": (lambda m: {**m, XML: with_doctype(
        m[XML], '<!ENTITY e "' + "x" * 100_000 + '">').replace(
            b"&e;", b"&e;" * 300, 1)}, "failed", "xml_entities", None),
    "markup_entity": (lambda m: {**m, XML: with_doctype(
        m[XML], '<!ENTITY e "<bold>x</bold>">')}, "failed", "xml_entities", None),
    "zero_size_image": (lambda m: {**m, JPG: b""}, "ok", None, "empty_image"),
    "corrupt_image": (lambda m: {**m, JPG: m[JPG][:3000]}, "ok", None, "decode_error"),
    "garbage_image": (lambda m: {**m, JPG: m[XML][:4000]}, "ok", None, "decode_error"),
    "missing_image": (lambda m: {XML: m[XML]}, "ok", None, "image_missing"),
    "huge_image": (lambda m: {XML: m[XML], "koaf197f1.png": png_claiming((60000, 60000), m[JPG])},
                   "ok", None, "too_large"),
    "no_xml": (lambda m: {JPG: m[JPG]}, "failed", "no_xml", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_package_is_recorded(case, corpus, tmp_path):
    make, status, reason, skip_reason = CASES[case]
    src = tmp_path / "src"
    src.mkdir()
    make_tar(src / f"{PKG}.tar.gz", PKG, make(real_members(corpus)))
    out = tmp_path / "ds"
    s = build(src, out, workers=1, progress=False)
    assert s.reconciles
    (row,) = pq.read_table(out / "report" / "articles.parquet").to_pylist()
    assert (row["status"], row["reason"]) == (status, reason), row
    skips = pq.read_table(out / "report" / "skips.parquet").to_pylist()
    assert [k["reason"] for k in skips] == ([skip_reason] if skip_reason else [])
    assert s.samples == 0
    res = verify(out)
    assert res.ok, res.errors
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_internal_character_entities_are_accepted(corpus, tmp_path):
    # An internal DTD subset declaring character entities, as older PLOS/NLM files have:
    # accepted and expanded (bounded), the article builds as usual.
    src = tmp_path / "src"
    src.mkdir()
    subset = '<!ENTITY delta "&#916;"><!ENTITY e "&delta;-&#x3b1;">'
    make_tar(src / f"{PKG}.tar.gz", PKG,
             {**real_members(corpus), XML: with_doctype(real_members(corpus)[XML], subset)})
    s = build(src, tmp_path / "ds", workers=1, progress=False)
    (row,) = pq.read_table(tmp_path / "ds" / "report" / "articles.parquet").to_pylist()
    assert (row["status"], row["reason"], s.samples) == ("ok", None, 1)
    from biomedica_kit.dataset.shards import iter_samples

    ((_, g),) = list(iter_samples(next((tmp_path / "ds/shards").rglob("*.tar"))))
    assert json.loads(g["json"])["title"].startswith(
        "\u0394-\u03b1Deciphering the tomato phosphate starvation response")


@pytest.mark.parametrize(("subset", "detail"), [
    (BILLION_LAUGHS, "amplification"),
    ('<!ENTITY e SYSTEM "file:///etc/passwd">', "external entity 'e'"),
    ('<!ENTITY e "<b>x</b>">', "holds markup"),
])
def test_entity_refusals_say_why(corpus, subset, detail):
    from biomedica_kit.base.xml import XmlRefused, parse_bytes

    with pytest.raises(XmlRefused) as exc:
        parse_bytes(with_doctype(real_members(corpus)[XML], subset))
    assert exc.value.reason == "xml_entities" and detail in exc.value.detail


def test_truncated_archive(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    good = (corpus / f"{PKG}.tar.gz").read_bytes()
    (src / "truncated.tar.gz").write_bytes(good[: len(good) * 6 // 10])
    (src / "PMC7417471.tar.gz").write_bytes((corpus / "PMC7417471.tar.gz").read_bytes())
    s = build(src, tmp_path / "ds", workers=1, progress=False)
    rows = {r["package"]: r for r in
            pq.read_table(tmp_path / "ds/report/articles.parquet").to_pylist()}
    assert (rows["truncated"]["status"], rows["truncated"]["reason"]) == (
        "failed", "truncated_archive")
    assert rows["PMC7417471"]["status"] == "ok"  # the run went on
    assert s.reconciles and verify(tmp_path / "ds").ok


def test_hostile_members_refused_rest_used(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pkg = src / f"{PKG}.tar.gz"
    with tarfile.open(pkg, "w:gz") as tar:
        for name, data in real_members(corpus).items():
            ti = tarfile.TarInfo(f"{PKG}/{name}")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        for name in ("/tmp/evil.jpg", f"{PKG}/../../evil.jpg"):
            ti = tarfile.TarInfo(name)
            ti.size = 4
            tar.addfile(ti, io.BytesIO(b"evil"))
        for name, kind in ((f"{PKG}/link.jpg", tarfile.SYMTYPE), (f"{PKG}/hard.jpg",
                                                                   tarfile.LNKTYPE)):
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.linkname = "/etc/passwd"
            tar.addfile(ti)
    s = build(src, tmp_path / "ds", workers=1, progress=False)
    (row,) = pq.read_table(tmp_path / "ds/report/articles.parquet").to_pylist()
    assert row["status"] == "ok" and row["n_samples"] == 1 and s.samples == 1
    assert sorted(w.split(": ", 1)[1] for w in row["warnings"]) == [
        "unsafe_member: link to '/etc/passwd'", "unsafe_member: link to '/etc/passwd'",
        "unsafe_path: absolute", "unsafe_path: parent reference"]
    assert not (tmp_path / "evil.jpg").exists() and not Path("/tmp/evil.jpg").exists()


def test_symlinked_image_is_refused(corpus, tmp_path):
    src = tmp_path / "src" / PKG
    src.mkdir(parents=True)
    (src / XML).write_bytes((corpus / PKG / XML).read_bytes())
    (src / JPG).symlink_to("/etc/hostname")
    s = build(tmp_path / "src", tmp_path / "ds", workers=1, progress=False)
    skips = pq.read_table(tmp_path / "ds/report/skips.parquet").to_pylist()
    assert [k["reason"] for k in skips] == ["unsafe_member"] and s.reconciles


def test_cmyk_jpeg_converted_to_rgb(corpus, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    m = real_members(corpus)
    make_tar(src / f"{PKG}.tar.gz", PKG, {XML: m[XML], JPG: cmyk(m[JPG])})
    s = build(src, tmp_path / "ds", workers=1, progress=False)
    assert s.samples == 1
    from biomedica_kit.dataset.shards import iter_samples

    ((_, g),) = list(iter_samples(next((tmp_path / "ds/shards").rglob("*.tar"))))
    img = Image.open(io.BytesIO(g["jpg"]))
    assert img.mode == "RGB" and img.format == "JPEG"


def test_interrupted_writer_leaves_no_partial_shard(corpus, tmp_path, monkeypatch):
    import biomedica_kit.etl.build as b

    calls = {"n": 0}
    original = b.DatasetWriter.add

    def failing_add(self, res):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-build
        original(self, res)

    monkeypatch.setattr(b.DatasetWriter, "add", failing_add)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("PMC12419688.tar.gz", "elife-19405.tar.gz", "elife-32671.tar.gz"):
        (src / name).write_bytes((corpus / name).read_bytes())
    with pytest.raises(KeyboardInterrupt):
        build(src, tmp_path / "ds", workers=1, progress=False)
    left = [p.name for p in (tmp_path / "ds").rglob("*") if p.is_file()]
    assert left == []  # neither a temp file nor a half-written .tar, nor a manifest


def test_unexpected_error_fails_only_that_package(corpus, tmp_path, monkeypatch):
    import biomedica_kit.etl.worker as b

    real = b.parse_jats

    def flaky(data, **kw):
        if kw.get("source_file") == XML:
            raise RuntimeError("parser bug")
        return real(data, **kw)

    monkeypatch.setattr(b, "parse_jats", flaky)
    src = tmp_path / "src"
    src.mkdir()
    for name in (f"{PKG}.tar.gz", "elife-19405.tar.gz"):
        (src / name).write_bytes((corpus / name).read_bytes())
    s = build(src, tmp_path / "ds", workers=1, progress=False)
    rows = {r["package"]: r for r in
            pq.read_table(tmp_path / "ds/report/articles.parquet").to_pylist()}
    assert (rows[PKG]["reason"], rows[PKG]["detail"]) == ("internal_error",
                                                          "RuntimeError: parser bug")
    assert rows["elife-19405"]["status"] == "ok" and s.samples == 1
