"""The real server (``biomedica serve`` on 127.0.0.1) over the 185 real pairs, by real HTTP:
search finds a caption's own figure and an image finds itself; filters hold inside the
search; samples, images, articles and shards (Range) come back byte-exact; bad input gets a
JSON error; nothing is written."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from search_server import search_dataset, search_server

_TIMEOUT = 120


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    return search_server(tmp_path_factory)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return search_dataset(tmp_path_factory)


@pytest.fixture(scope="module")
def figures(ds) -> list[dict]:
    cols = ["key", "caption", "pmcid", "article_id", "license_category", "image_sha256",
            "year", "shard", "image_ext"]
    return pq.read_table(ds / "metadata" / "figures.parquet", columns=cols).to_pylist()


@pytest.fixture(scope="module")
def snapshot(ds):
    """The dataset's files (size, mtime) before any request: the server must not write."""
    return _files(ds)


def _files(ds: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(ds)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(ds.rglob("*")) if p.is_file()}


def _distinct(figures: list[dict], n: int) -> list[dict]:
    """``n`` samples spread over the table whose image and caption are unique to them."""
    shas = [r["image_sha256"] for r in figures]
    caps = [r["caption"] for r in figures]
    ok = [r for r in figures if shas.count(r["image_sha256"]) == 1
          and caps.count(r["caption"]) == 1 and len(r["caption"] or "") > 60]
    step = max(1, len(ok) // n)
    return ok[::step][:n]


def get(url: str, path: str, **params) -> requests.Response:
    return requests.get(url + path, params=params, timeout=_TIMEOUT)


def test_health_and_schema(url, snapshot):
    h = get(url, "/health").json()
    assert h["samples"] == 185 and h["keyword_docs"] == 185 and not h["stale"]
    assert h["vectors"] == {"image": 185, "text": 185}
    assert h["modes"] == ["keyword", "vector", "hybrid"] and h["image_search"]
    paths = get(url, "/openapi.json").json()["paths"]
    for p in ("/search", "/search/image", "/samples/{key}", "/samples/{key}/image",
              "/articles/{pmcid}", "/shards/{path}"):
        assert p in paths, p


@pytest.mark.parametrize("mode", ["keyword", "vector", "hybrid"])
def test_a_caption_finds_its_own_figure(url, figures, mode):
    for row in _distinct(figures, 8):
        res = get(url, "/search", q=row["caption"][:400], mode=mode, k=3).json()
        keys = [r["key"] for r in res["results"]]
        assert row["key"] in keys, (mode, row["key"], keys)
        if mode == "vector":  # the same text, embedded: cosine 1, first
            assert keys[0] == row["key"]
        top = res["results"][keys.index(row["key"])]
        assert top["caption"] == row["caption"] and top["pmcid"] == row["pmcid"]
        assert isinstance(top["score"], float) and top["thumbnail_url"].endswith("/thumbnail")


def test_results_carry_each_sources_score_and_rank(url, figures):
    row = _distinct(figures, 1)[0]
    res = get(url, "/search", q=row["caption"][:300], mode="hybrid", k=5).json()
    first = res["results"][0]
    assert set(first["sources"]) <= {"keyword", "caption_vector"}
    assert res["results"] == sorted(res["results"], key=lambda r: -r["score"])
    assert all(0 < r["score"] <= 2 / 61 + 1e-6 for r in res["results"])  # RRF, k=60


def test_an_image_finds_itself_first(url, figures):
    for row in _distinct(figures, 5):
        img = requests.get(f"{url}/samples/{row['key']}/image", timeout=_TIMEOUT).content
        res = requests.post(f"{url}/search/image", files={"image": ("q.img", img)},
                            data={"k": "5"}, timeout=_TIMEOUT).json()
        assert res["results"][0]["key"] == row["key"], (row["key"], res["results"][:2])
        assert res["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_image_and_text_together(url, figures):
    row = _distinct(figures, 3)[2]
    img = requests.get(f"{url}/samples/{row['key']}/image", timeout=_TIMEOUT).content
    res = requests.post(f"{url}/search/image", files={"image": ("q.img", img)},
                        data={"q": row["caption"][:300], "k": "5"}, timeout=_TIMEOUT).json()
    assert res["mode"] == "image+text"
    first = res["results"][0]
    assert first["key"] == row["key"]
    assert {"image_vector", "keyword", "caption_vector"} <= set(first["sources"])


def test_more_like_this_leaves_the_sample_out(url, figures):
    row = _distinct(figures, 2)[1]
    res = get(url, f"/samples/{row['key']}/similar", k=8).json()
    keys = [r["key"] for r in res["results"]]
    assert len(keys) == 8 and row["key"] not in keys


def test_filters_apply_inside_the_search(url, figures):
    # Licence: six noncommercial samples; a filtered top-10 holds all six, nothing else.
    nc = {r["key"] for r in figures if r["license_category"] == "noncommercial"}
    assert len(nc) == 6
    for mode in ("keyword", "vector", "hybrid"):
        res = get(url, "/search", q="figure cell", mode=mode, k=10,
                  license="noncommercial").json()
        got = {r["key"] for r in res["results"]}
        assert got <= nc and all(r["license"] == "noncommercial" for r in res["results"])
        if mode != "keyword":  # every vector matches: a filtered top-10 is never short
            assert got == nc
    # Taxonomy label: the few samples labelled Clinical Imaging, all of them, by vector.
    facets = get(url, "/facets").json()
    labels = {f["value"]: f["count"] for f in facets["label"]}
    rare = min(labels, key=labels.get)
    res = get(url, "/search", q="pathway diagram", mode="vector", k=20, label=rare).json()
    assert len(res["results"]) == labels[rare] < 20
    assert all(r["label"] == rare for r in res["results"])
    # Year range and kind.
    res = get(url, "/search", q="signaling pathway", mode="hybrid", k=20,
              year="2015-2016", kind="figure").json()
    assert res["results"] and all(2015 <= r["year"] <= 2016 for r in res["results"])
    none = get(url, "/search", q="signaling pathway", mode="hybrid", kind="table").json()
    assert none["results"] == []


def test_pages_continue_each_other(url):
    whole = get(url, "/search", q="protein pathway cell", mode="hybrid", k=20).json()
    p1 = get(url, "/search", q="protein pathway cell", mode="hybrid", k=10, page=1).json()
    p2 = get(url, "/search", q="protein pathway cell", mode="hybrid", k=10, page=2).json()
    keys = [r["key"] for r in whole["results"]]
    assert [r["key"] for r in p1["results"] + p2["results"]] == keys
    kw = get(url, "/search", q="protein", mode="keyword", k=5, offset=5).json()
    assert kw["offset"] == 5 and kw["total"] > 10


def test_samples_images_and_articles(url, ds, figures):
    row = next(r for r in figures if r["pmcid"])
    rec = get(url, f"/samples/{row['key']}").json()
    assert rec["key"] == row["key"] and rec["caption"] == row["caption"]
    assert rec["image_url"] == f"/samples/{row['key']}/image"
    # Image bytes are the shard member's bytes exactly.
    img = get(url, f"/samples/{row['key']}/image")
    with tarfile.open(ds / row["shard"]) as tar:
        member = tar.extractfile(f"{row['key']}.{row['image_ext']}").read()
    assert img.content == member and img.headers["content-type"].startswith("image/")
    thumb = get(url, f"/samples/{row['key']}/thumbnail", size=128)
    from PIL import Image

    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 128
    art = get(url, f"/articles/{row['pmcid']}").json()
    assert art["article"]["pmcid"] == row["pmcid"]
    assert row["key"] in {f["key"] for f in art["figures"]}
    assert get(url, f"/articles/{row['pmcid'][3:]}").json() == art  # digits alone work too
    assert get(url, "/articles/PMC0").status_code == 404


def test_shards_stream_with_range(url, ds):
    from biomedica_kit.tables.stream import make_pipeline, shard_urls, stream_subset

    listing = get(url, "/shards").json()
    entry = listing["shards"][0]
    local = (ds / entry["path"]).read_bytes()
    r = requests.get(url + entry["url"], headers={"Range": "bytes=512-1535"}, timeout=_TIMEOUT)
    assert r.status_code == 206 and r.content == local[512:1536]
    assert r.headers["content-range"] == f"bytes 512-1535/{len(local)}"
    r = requests.get(url + entry["url"], headers={"Range": "bytes=-100"}, timeout=_TIMEOUT)
    assert r.status_code == 206 and r.content == local[-100:]
    r = requests.get(url + entry["url"], headers={"Range": f"bytes={len(local)}-"},
                     timeout=_TIMEOUT)
    assert r.status_code == 416
    head = requests.head(url + entry["url"], timeout=_TIMEOUT)
    assert int(head.headers["content-length"]) == len(local) == entry["bytes"]
    assert head.headers["accept-ranges"] == "bytes"
    # WebDataset over the server's URLs: every sample of every shard, in order.
    urls = shard_urls(ds, base_url=url)
    keys = [s["key"] for s in make_pipeline(urls, split_by_node=False, split_by_worker=False)]
    assert len(keys) == 185
    # Byte ranges of a subset over HTTP (Range requests against /shards/...).
    got = list(stream_subset(ds, "license_category = 'noncommercial'", base_url=url))
    assert len(got) == 6 and all(s["image"].size[0] > 0 for s in got)


@pytest.mark.parametrize("path", [
    "/shards/../manifest.json", "/shards/%2e%2e/manifest.json", "/shards//etc/passwd",
    "/shards/commercial/..%2F..%2Fmanifest.json", "/shards/manifest.json",
    "/shards/shards/other/other-000000.tar"])
def test_no_path_outside_the_listed_shards(url, path):
    r = requests.get(url + path, timeout=_TIMEOUT)
    assert r.status_code == 404 and "error" in r.json()
    assert b"dataset_version" not in r.content and b"root:" not in r.content


def _error(r: requests.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert body["status"] == status and body["error"]
    return body["error"]


def test_bad_input_gets_a_clear_json_error(url):
    assert "q" in _error(get(url, "/search", q="x" * 501), 422)
    assert "k" in _error(get(url, "/search", q="cell", k=101), 422)
    assert "k" in _error(get(url, "/search", q="cell", k=0), 422)
    assert "offset" in _error(get(url, "/search", q="cell", offset=5000), 422)
    assert "page" in _error(get(url, "/search", q="cell", k=100, page=12), 422)
    assert "mode" in _error(get(url, "/search", q="cell", mode="sql"), 422)
    assert "year" in _error(get(url, "/search", q="cell", year="20x5"), 422)
    assert "license" in _error(get(url, "/search", q="cell",
                                   license=",".join(f"v{i}" for i in range(21))), 422)
    assert _error(requests.post(url + "/search", timeout=_TIMEOUT), 405)
    assert _error(requests.delete(url + "/samples/x", timeout=_TIMEOUT), 405)
    assert _error(get(url, "/nowhere"), 404)
    # Query strings are never SQL: quotes and statements are just words or keys.
    assert _error(get(url, "/samples/x' OR '1'='1"), 404)
    assert _error(get(url, "/articles/1; DROP TABLE articles"), 404)
    res = get(url, "/search", q="'; DROP TABLE figures; --", mode="keyword")
    assert res.status_code == 200
    # A text without words matches no keyword (not an error: by vector it still means
    # something).
    assert get(url, "/search", q="!!! ???", mode="keyword").json()["results"] == []


def _png_header(side: int) -> bytes:
    """A tiny PNG whose header declares ``side`` x ``side`` 8-bit grey pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_uploads_are_bounded(url):
    from PIL import Image

    post = lambda **kw: requests.post(url + "/search/image", timeout=_TIMEOUT, **kw)  # noqa: E731
    assert "image" in _error(post(files={"image": ("a.png", b"not an image")}), 422)
    assert _error(post(data={"k": "3"}), 422)
    assert "empty" in _error(post(files={"image": ("a.png", b"")}), 422)
    # Over the body limit: refused from Content-Length, before the body is read.
    assert "MiB" in _error(post(files={"image": ("big.png", b"\0" * (17 << 20))}), 413)
    # A 100-byte PNG declaring 60,000 x 60,000 pixels (and 9,000 x 9,000, under PIL's own
    # bomb limit but over ours): refused from the header, never decoded.
    for side in (60000, 9000):
        assert "pixels" in _error(post(files={"image": ("bomb.png", _png_header(side))}), 413)
    # A real image cut short: refused as not decoding.
    buf = io.BytesIO()
    Image.new("RGB", (300, 300), "red").save(buf, "PNG")
    assert "decode" in _error(post(files={"image": ("cut.png", buf.getvalue()[:-40])}), 422)
    # A body without a declared length.
    chunks = iter([b"--x\r\n", b"\r\n"])
    r = requests.post(url + "/search/image", data=chunks, timeout=_TIMEOUT,
                      headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert "Content-Length" in _error(r, 411)


def test_the_server_wrote_nothing(url, ds, snapshot):
    get(url, "/search", q="cell", mode="hybrid")
    assert _files(ds) == snapshot
    assert json.loads((ds / "index" / "info.json").read_text())["samples"] == 185
