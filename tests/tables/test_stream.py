"""Streaming: WebDataset pipelines (local and HTTP), worker/node splitting, DataLoader or plain
iteration, open_clip-shaped batches, and byte-range streaming of subsets over a real loopback
HTTP server that honours Range."""

from __future__ import annotations

import importlib.util
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import iter_samples
from biomedica_kit.tables import stream
from biomedica_kit.tables.subset import select_rows


@pytest.fixture(scope="module")
def ds(corpus_dataset) -> Path:
    """The real corpus (7 samples, 2 subsets) in shards of 2 samples: 4+ shards to split."""
    return corpus_dataset


@pytest.fixture(scope="module")
def truth(ds) -> dict[str, dict[str, bytes]]:
    return {k: g for s in read_manifest(ds)["shards"] for k, g in iter_samples(ds / s["path"])}


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves files under ``server.root``; honours single ``Range: bytes=a-b`` requests."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        srv = self.server
        path = (srv.root / self.path.lstrip("/").split("?")[0]).resolve()
        if srv.root not in path.parents or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        srv.log.append((self.path, rng))
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and srv.ranges:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            if start >= len(data):
                self.send_error(416)
                return
            end = min(end, len(data) - 1)
            body = data[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes" if srv.ranges else "none")
        self.end_headers()
        # Counted before writing: the client may finish reading before this thread resumes.
        with srv.lock:
            srv.sent += len(body)
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(root: Path, *, ranges: bool = True):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.root, server.ranges, server.log, server.sent = root.resolve(), ranges, [], 0
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def http(ds):
    server, url = _serve(ds)
    yield server, url
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------------- whole shards


def test_local_pipeline_yields_decoded_samples(ds, truth):
    got = list(stream.make_pipeline(stream.shard_urls(ds)))
    assert sorted(d["key"] for d in got) == sorted(truth)
    for d in got:
        assert isinstance(d["image"], Image.Image) and d["image"].size[0] > 0
        assert d["caption"] == truth[d["key"]]["txt"].decode("utf-8")
        assert d["meta"] == json.loads(truth[d["key"]]["json"])
        assert d["image"].size == (d["meta"]["image_width"], d["meta"]["image_height"])


def test_http_pipeline_equals_local(ds, http, truth):
    server, url = http
    urls = stream.shard_urls(ds, base_url=url)
    assert all(u.startswith("http://127.0.0.1:") for u in urls)
    raw = list(stream.make_pipeline(urls, decode=False))
    assert sorted(s["__key__"] for s in raw) == sorted(truth)
    for s in raw:
        ext = next(e for e in ("jpg", "png") if e in s)
        assert s[ext] == truth[s["__key__"]][ext]
    assert len(server.log) == len(urls)


def test_subsets_filter_and_file_urls(ds, truth):
    other = stream.shard_urls(ds, subsets=["other"])
    keys = [d["key"] for d in stream.make_pipeline(["file://" + u for u in other])]
    metas = {k: json.loads(g["json"]) for k, g in truth.items()}
    assert sorted(keys) == sorted(k for k, m in metas.items() if m["license_category"] == "other")


def test_shuffle_is_seeded_and_complete(ds, truth):
    urls = stream.shard_urls(ds)
    a = [d["key"] for d in stream.make_pipeline(urls, shuffle=10, seed=3)]
    b = [d["key"] for d in stream.make_pipeline(urls, shuffle=10, seed=3)]
    plain = [d["key"] for d in stream.make_pipeline(urls)]
    assert a == b and sorted(a) == sorted(truth)
    assert a != plain  # 7 samples over 4 shards: a seeded shuffle that changes nothing is a bug
    pipe = stream.make_pipeline(urls, shuffle=10, seed=3)
    assert [d["key"] for d in pipe] != [d["key"] for d in pipe]  # next epoch, new order


def test_resampled_draws_forever_until_epoch_bound(ds, truth):
    pipe = stream.make_pipeline(stream.shard_urls(ds), resampled=True, seed=1).with_epoch(20)
    keys = [d["key"] for d in pipe]
    assert len(keys) == 20 and set(keys) <= set(truth)
    assert len(keys) > len(set(keys))  # with replacement


def test_worker_and_node_splitting(ds, truth, monkeypatch):
    urls = stream.shard_urls(ds)
    assert len(urls) >= 4
    for env in (("WORKER", "NUM_WORKERS"), ("RANK", "WORLD_SIZE")):
        parts = []
        for i in range(2):
            monkeypatch.setenv(env[0], str(i))
            monkeypatch.setenv(env[1], "2")
            parts.append([d["__key__"] for d in stream.make_pipeline(urls, decode=False)])
        monkeypatch.delenv(env[0])
        monkeypatch.delenv(env[1])
        assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == sorted(truth)


def test_dataloader_or_plain_iteration(ds, truth):
    pipe = stream.make_pipeline(stream.shard_urls(ds), decode=False)
    if importlib.util.find_spec("torch") is None:
        with pytest.raises(ImportError, match="torch"):
            stream.make_loader(pipe)
        keys = [s["__key__"] for s in pipe]
    else:
        loader = stream.make_loader(pipe, num_workers=2)
        keys = [s["__key__"] for s in loader]
    assert sorted(keys) == sorted(truth)  # each sample exactly once, however many workers


def test_train_pipeline_batches(ds, truth):
    def preprocess(img):
        assert img.mode == "RGB"
        return np.asarray(img.resize((16, 16)), dtype=np.float32) / 255

    def tokenizer(texts):
        return np.array([[len(t.split()), 0, 1, 2] for t in texts], dtype=np.int64)

    pipe = stream.make_train_pipeline(stream.shard_urls(ds), preprocess, tokenizer,
                                      batch_size=3, resampled=False, shuffle=0)
    batches = list(pipe)
    assert sum(len(b[0]) for b in batches) == len(truth)
    images, texts = batches[0]
    assert images.shape == (3, 16, 16, 3) and texts.shape == (3, 4)
    first = [json.loads(g["json"]) for g in truth.values()]
    lengths = {len(m["caption"].split()) for m in first}
    assert set(int(t[0]) for b in batches for t in b[1]) <= lengths
    pipe = stream.make_train_pipeline(stream.shard_urls(ds), preprocess, tokenizer,
                                      batch_size=2, epoch_batches=5)
    assert len(list(pipe)) == 5


# ------------------------------------------------------------------------------ byte ranges


WHERE = "license_category = 'other' AND figure_index IN (1, 3)"


def test_local_range_stream_is_exactly_the_subset(ds, truth):
    rows = select_rows(ds, WHERE)
    want = rows.column("key").to_pylist()
    assert len(want) == 2
    got = list(stream.stream_subset(ds, WHERE))
    assert [d["key"] for d in got] == want
    for d in got:
        assert d["caption"] == truth[d["key"]]["txt"].decode()
        assert d["meta"]["key"] == d["key"] and d["image"].size[0] > 0
    raw = list(stream.stream_subset(ds, WHERE, decode=False))
    for s in raw:
        assert {k: v for k, v in s.items() if not k.startswith("__")} == truth[s["__key__"]]


def test_http_range_stream_is_exactly_the_subset(ds, http, truth):
    server, url = http
    rows = select_rows(ds, WHERE)
    want = rows.column("key").to_pylist()
    raw = list(stream.stream_subset(ds, WHERE, base_url=url, decode=False))
    assert [s["__key__"] for s in raw] == want
    for s in raw:
        assert {k: v for k, v in s.items() if not k.startswith("__")} == truth[s["__key__"]]
    assert server.log and all(rng and rng.startswith("bytes=") for _, rng in server.log)
    shard_bytes = sum(s["bytes"] for s in read_manifest(ds)["shards"])
    member_bytes = sum(len(v) for s in raw for k, v in s.items() if not k.startswith("__"))
    assert member_bytes <= server.sent < member_bytes + 2048 * len(raw) < shard_bytes
    decoded = list(stream.stream_subset(ds, WHERE, base_url=url))
    assert [d["key"] for d in decoded] == want and all(d["image"] for d in decoded)


def test_adjacent_samples_share_one_request(ds, http):
    server, url = http
    rows = select_rows(ds, "license_category = 'other'")
    per_shard = len(set(rows.column("shard").to_pylist()))
    list(stream.read_ranges(rows, base_url=url))
    assert len(server.log) == per_shard < rows.num_rows
    server.log.clear()
    list(stream.read_ranges(rows, base_url=url, merge_gap=-1))
    assert len(server.log) == rows.num_rows


def test_server_without_range_support_is_an_error(ds):
    server, url = _serve(ds, ranges=False)
    try:
        with pytest.raises(stream.RangeNotSupported):
            list(stream.stream_subset(ds, WHERE, base_url=url))
    finally:
        server.shutdown()
        server.server_close()


def test_stale_offsets_fail_loudly(ds):
    rows = select_rows(ds, "license_category = 'other'").to_pylist()
    a, b = rows[0], rows[1]
    bad = [{**a, **{k: b[k] for k in ("json_offset", "json_length")}}]
    with pytest.raises(ValueError, match="stale"):
        list(stream.read_ranges(bad, root=ds))


def test_polars_rows_from_lazy_drive_the_range_reader(ds, http, truth):
    import polars as pl

    from biomedica_kit.tables.connect import lazy

    server, url = http
    rows = lazy(ds).filter(pl.col("figure_kind") == "figure").sort("key").collect()
    got = [d["key"] for d in stream.stream_rows(rows, base_url=url)]
    assert sorted(got) == rows["key"].to_list() and got
    assert set(got) <= set(truth)
    with pytest.raises(ValueError, match="location columns"):
        list(stream.stream_rows(rows.drop("json_offset"), root=ds))


def test_decode_at_reduced_jpeg_scale_keeps_the_requested_size(ds, truth):
    raws = [s for s in stream.make_pipeline(stream.shard_urls(ds), decode=False) if "jpg" in s]
    assert raws, "the corpus dataset has JPEG samples"
    reduced = 0
    for raw in raws:
        full = stream.decode_sample(raw, rgb=True)
        small = stream.decode_sample(raw, rgb=True, min_size=64)
        w, h = full["image"].size
        sw, sh = small["image"].size
        assert min(sw, sh) >= min(64, min(w, h))  # never below what the model asks for
        if min(w, h) >= 128:  # big enough for a DCT scale of 2 or more
            assert sw < w and sh < h and small["image"].mode == "RGB"
            reduced += 1
        assert small["caption"] == full["caption"] and small["meta"] == full["meta"]
    assert reduced
