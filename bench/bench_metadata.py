"""Benchmark the metadata layer; every ratio is against a baseline measured in the same run.

    .venv/bin/python bench/bench_metadata.py                  # defaults: well under 2 minutes
    .venv/bin/python bench/bench_metadata.py --rows 24000000  # the full BIOMEDICA-sized table

Three measurements:

1. **Export** (``metadata.export``, reads only txt/json members) in rows/s, against reading and
   decoding every full sample of the same shards (tar read, PIL decode, caption, json) and
   against reading every full sample without the image decode.
2. **Group-by latency** over a SYNTHETIC figures table of ``--rows`` rows (generated below by
   :func:`synthetic_figures`; clearly not real data): the real export's column names and types
   for the columns involved, BIOMEDICA's published licence split, the real taxonomy's 16
   primary labels. DuckDB and Polars, for count-by-licence and year x primary label, against
   the I/O floor of reading the same columns with pyarrow.
3. **Streaming** samples/s of ``stream.make_pipeline(decode=False)`` over the shards, against
   reading the same samples as loose files and against ``cat`` of the same shard bytes.

The shards are REAL samples (``data/sample/packages`` and ``../shared/corpus/pmc_oa``) replicated
under new keys to ``--samples`` samples so timings are not dominated by start-up. All reads are
from a warm page cache (each input is read once before it is timed). Timings are medians of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SOURCES = [ROOT / "data" / "sample" / "packages", SHARED / "corpus" / "pmc_oa"]


def median_time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Median wall time of ``repeat`` calls after one warm-up call; the last call's result."""
    result = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


# ---------------------------------------------------------------------- replicated dataset


def replicated_dataset(work: Path, n_samples: int, shard_samples: int) -> Path:
    """A dataset of ``n_samples`` real samples (the two real sources, replicated under new keys)."""
    from biomedica_kit.dataset.manifest import read_manifest, write_manifest
    from biomedica_kit.dataset.shards import ShardWriter, iter_samples
    from biomedica_kit.etl.build import build

    real = []
    for i, src in enumerate(SOURCES):
        ds = work / f"src{i}"
        build(src, ds, workers=1, progress=False)
        for s in read_manifest(ds)["shards"]:
            for key, group in iter_samples(ds / s["path"]):
                real.append((key, s["subset"], group))
    out = work / "bench-ds"
    writers: dict[str, ShardWriter] = {}
    for i in range(n_samples):
        key, subset, group = real[i % len(real)]
        new_key = f"r{i:07d}_{key}"
        meta = json.loads(group["json"])
        meta["key"] = new_key
        ext = next(e for e in ("jpg", "png") if e in group)
        members = [(ext, group[ext]), ("txt", group["txt"]),
                   ("json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())]
        if subset not in writers:
            writers[subset] = ShardWriter(out, subset, max_samples=shard_samples)
        writers[subset].write(new_key, members)
    shards = [info for w in writers.values() for info in w.close()]
    write_manifest(out, shards, parent=None, config={"bench": "replicated real samples"},
                   counts={})
    return out


# -------------------------------------------------------------------------------- export


def bench_export(ds: Path, repeat: int) -> list[tuple[str, float, str, str]]:
    import pyarrow.parquet as pq
    from PIL import Image

    from biomedica_kit.dataset.manifest import read_manifest
    from biomedica_kit.dataset.shards import iter_samples
    from biomedica_kit.tables import export as metadata

    shards = [ds / s["path"] for s in read_manifest(ds)["shards"]]
    n = sum(s["samples"] for s in read_manifest(ds)["shards"])

    def decode_all() -> int:
        import io

        count = 0
        for p in shards:
            for _, g in iter_samples(p):
                ext = "jpg" if "jpg" in g else "png"
                with Image.open(io.BytesIO(g[ext])) as im:
                    im.load()
                g["txt"].decode()
                json.loads(g["json"])
                count += 1
        return count

    def read_all() -> int:
        count = 0
        for p in shards:
            for _, g in iter_samples(p):
                g["txt"].decode()
                json.loads(g["json"])
                count += 1
        return count

    t_decode, _ = median_time(decode_all, repeat)
    t_read, _ = median_time(read_all, repeat)
    t_exp1, _ = median_time(lambda: metadata.export(ds, force=True, workers=1), repeat)
    t_expn, _ = median_time(lambda: metadata.export(ds, force=True), repeat)
    t_noop, _ = median_time(lambda: metadata.export(ds), repeat)
    rows = [("decode every full sample (baseline)", n / t_decode, "samples/s", "1.00")]
    for name, t in (("read every full sample, no image decode", t_read),
                    ("export, 1 process", t_exp1),
                    (f"export, {os.cpu_count()} processes", t_expn)):
        rows.append((name, n / t, "rows/s", f"{t_decode / t:.2f}"))
    rows.append(("export when already current (no-op)", t_noop * 1000, "ms", "-"))
    # What export reads: each member's 512-byte header plus the txt/json data, no image bytes.
    figs = pq.read_table(ds / "metadata" / "figures.parquet",
                         columns=["txt_length", "json_length"]).to_pydict()
    read_mb = (sum(figs["txt_length"]) + sum(figs["json_length"]) + 3 * 512 * n) / 1e6
    total_mb = sum(s["bytes"] for s in read_manifest(ds)["shards"]) / 1e6
    rows.append((f"bytes export reads (of {total_mb:.0f} MB of shards)", read_mb, "MB",
                 f"{read_mb / total_mb:.3f}"))
    return rows


# ------------------------------------------------------------------------------ group-by


def synthetic_figures(path: Path, rows: int, seed: int = 0) -> None:
    """Write a SYNTHETIC figures table (not real data) with the real export's types.

    Columns: key, shard, subset/license_category (BIOMEDICA's published split 17.6M / 5.3M /
    1.1M), year (2000-2025, skewed to recent years), journal (5,000 names, Zipf-like),
    article_id, figure_kind, image_width/height, primary_label (the real taxonomy's 16 primary
    classes), keywords (0-5 of 2,000 synthetic terms). Written in row groups of 1M rows.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    tax = json.loads((SHARED / "taxonomy" / "taxonomy_collapsed_and_filtered.json").read_text())
    labels = np.array(sorted(tax), dtype=object)
    cats = np.array(["commercial", "noncommercial", "other"], dtype=object)
    cat_p = np.array([17_607_694, 5_332_781, 1_109_948], dtype=float)
    cat_p /= cat_p.sum()
    years = np.arange(2000, 2026)
    year_p = np.linspace(1, 8, len(years))
    year_p /= year_p.sum()
    journals = np.array([f"Journal {i:04d}" for i in range(5000)], dtype=object)
    terms = np.array([f"term {i:04d}" for i in range(2000)], dtype=object)
    rng = np.random.default_rng(seed)
    schema = pa.schema([
        ("key", pa.string()), ("shard", pa.string()), ("subset", pa.string()),
        ("license_category", pa.string()), ("year", pa.int64()), ("journal", pa.string()),
        ("article_id", pa.string()), ("figure_kind", pa.string()), ("image_width", pa.int64()),
        ("image_height", pa.int64()), ("primary_label", pa.string()),
        ("keywords", pa.list_(pa.string())),
    ], metadata={b"biomedica_kit.synthetic": b"true"})
    with pq.ParquetWriter(path, schema) as w:
        for start in range(0, rows, 1_000_000):
            n = min(1_000_000, rows - start)
            idx = np.arange(start, start + n)
            cat = cats[rng.choice(3, n, p=cat_p)]
            article = idx // 4
            n_kw = rng.integers(0, 6, n)
            offsets = np.concatenate([[0], np.cumsum(n_kw)])
            kw = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                          pa.array(terms[rng.integers(0, 2000, offsets[-1])],
                                                   pa.string()))
            zipf = np.minimum(rng.zipf(1.3, n) - 1, 4999)
            cat_s = pa.array(cat, pa.string())
            art_s = pc.cast(pa.array(article), pa.string())
            join = pc.binary_join_element_wise
            w.write_table(pa.table({
                "key": join("SYN", art_s, "_fig", pc.cast(pa.array(idx % 4), pa.string()), ""),
                "shard": join("shards/", cat_s, "/", cat_s, "-",
                              pc.utf8_lpad(pc.cast(pa.array(idx // 10_000), pa.string()), 6,
                                           "0"), ".tar", ""),
                "subset": pa.array(cat, pa.string()),
                "license_category": pa.array(cat, pa.string()),
                "year": pa.array(rng.choice(years, n, p=year_p)),
                "journal": pa.array(journals[zipf], pa.string()),
                "article_id": join("SYN", art_s, ""),
                "figure_kind": pa.array(np.where(rng.random(n) < 0.9, "figure", "table"),
                                        pa.string()),
                "image_width": pa.array(rng.integers(200, 4096, n)),
                "image_height": pa.array(rng.integers(200, 4096, n)),
                "primary_label": pa.array(labels[rng.integers(0, len(labels), n)], pa.string()),
                "keywords": kw,
            }, schema=schema))


def bench_groupby(path: Path, rows: int, repeat: int) -> list[tuple[str, float, str, str]]:
    import duckdb
    import polars as pl
    import pyarrow.parquet as pq

    con = duckdb.connect()
    src = f"read_parquet('{path}')"
    out = []
    for name, cols, sql, pol in (
        ("count by licence", ["license_category"],
         f"SELECT license_category, count(*) FROM {src} GROUP BY 1",
         lambda: pl.scan_parquet(path).group_by("license_category").agg(pl.len()).collect()),
        ("year x primary_label", ["year", "primary_label"],
         f"SELECT year, primary_label, count(*) FROM {src} GROUP BY 1, 2",
         lambda: pl.scan_parquet(path).group_by("year", "primary_label").agg(pl.len())
         .collect()),
    ):
        t_read, _ = median_time(lambda c=cols: pq.read_table(path, columns=c), repeat)
        t_duck, res = median_time(lambda s=sql: con.execute(s).fetchall(), repeat)
        t_pol, pres = median_time(pol, repeat)
        assert sum(r[-1] for r in res) == rows == pres["len"].sum()  # both counted every row
        out.append((f"{name}: pyarrow read of the columns (baseline)", t_read * 1000, "ms",
                    "1.00"))
        out.append((f"{name}: DuckDB group-by", t_duck * 1000, "ms", f"{t_duck / t_read:.2f}"))
        out.append((f"{name}: Polars group-by", t_pol * 1000, "ms", f"{t_pol / t_read:.2f}"))
        out.append((f"{name}: DuckDB peak RSS (fresh process)", _duckdb_peak_mb(sql), "MB",
                    "-"))
    return out


def _duckdb_peak_mb(sql: str) -> float:
    """Peak resident memory of a new Python process that runs one DuckDB query (MB).

    Read from VmHWM, which starts afresh at exec; getrusage's ru_maxrss would carry over
    the (large) resident size of this benchmark process from the fork.
    """
    code = (f"import duckdb; duckdb.connect().execute({sql!r}).fetchall(); "
            "print(next(l.split()[1] for l in open('/proc/self/status') "
            "if l.startswith('VmHWM')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True)
    return int(out.stdout.strip()) / 1024


# ----------------------------------------------------------------------------- streaming


def bench_streaming(ds: Path, work: Path, repeat: int) -> list[tuple[str, float, str, str]]:
    from biomedica_kit.dataset.manifest import read_manifest
    from biomedica_kit.dataset.shards import iter_samples
    from biomedica_kit.tables import stream

    shards = [str(ds / s["path"]) for s in read_manifest(ds)["shards"]]
    n = sum(s["samples"] for s in read_manifest(ds)["shards"])
    loose = work / "loose"
    loose.mkdir(exist_ok=True)
    files = []
    for p in shards:
        for key, group in iter_samples(Path(p)):
            for ext, data in group.items():
                f = loose / f"{key}.{ext}"
                f.write_bytes(data)
                files.append(f)

    def pipeline() -> int:
        return sum(1 for _ in stream.make_pipeline(shards, decode=False))

    def read_loose() -> int:
        total = 0
        for f in files:
            with open(f, "rb") as fh:
                total += len(fh.read())
        return total

    def cat_null() -> int:
        # GNU cat may splice straight to /dev/null without copying to user space: shown for
        # reference, but not the baseline.
        subprocess.run(["cat", *shards], stdout=subprocess.DEVNULL, check=True)
        return 0

    def cat() -> int:
        # The baseline: every byte delivered to a reading process, as a pipeline consumes it.
        out = subprocess.run(f"cat {' '.join(map(shlex.quote, shards))} | wc -c", shell=True,
                             check=True, capture_output=True)
        return int(out.stdout)

    t_null, _ = median_time(cat_null, repeat)
    t_cat, _ = median_time(cat, repeat)
    t_loose, _ = median_time(read_loose, repeat)
    t_pipe, count = median_time(pipeline, repeat)
    assert count == n
    mb = sum(os.path.getsize(p) for p in shards) / 1e6
    return [
        ("cat | wc -c of the shard bytes (baseline)", n / t_cat, "samples/s", "1.00"),
        (f"  = {mb / t_cat:.0f} MB/s over {mb:.0f} MB", mb / t_cat, "MB/s", "-"),
        ("cat > /dev/null (may skip the copy; reference)", n / t_null, "samples/s",
         f"{t_cat / t_null:.2f}"),
        ("same samples as loose files (open+read)", n / t_loose, "samples/s",
         f"{t_cat / t_loose:.2f}"),
        ("make_pipeline(decode=False) over shards", n / t_pipe, "samples/s",
         f"{t_cat / t_pipe:.2f}"),
        ("  ... vs loose files", n / t_pipe, "samples/s", f"{t_loose / t_pipe:.2f}"),
        *_bench_http(ds, work, shards, files, n, repeat),
    ]


def _bench_http(ds: Path, work: Path, shards: list[str], files: list[Path], n: int,
                repeat: int) -> list[tuple[str, float, str, str]]:
    """The same comparison over HTTP on 127.0.0.1 (keep-alive): one request per loose file
    against one streamed request per shard, as when a dataset is read from a remote store."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import requests

    from biomedica_kit.tables import stream

    class Quiet(SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so loose files do not pay a connect each
        disable_nagle_algorithm = True  # else each small response waits on a delayed ACK

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # the client closing its keep-alive connection at the end is not an error

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(work)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        rel = os.path.relpath(ds, work)
        urls = [f"{base}/{rel}/{os.path.relpath(p, ds)}" for p in shards]
        loose_urls = [f"{base}/{os.path.relpath(f, work)}" for f in files]
        session = requests.Session()

        def http_loose() -> int:
            return sum(len(session.get(u).content) for u in loose_urls)

        def http_shards() -> int:
            return sum(1 for _ in stream.make_pipeline(urls, decode=False, session=session))

        t_loose, _ = median_time(http_loose, repeat)
        t_pipe, count = median_time(http_shards, repeat)
        assert count == n
    finally:
        server.shutdown()
        server.server_close()
    return [
        ("HTTP 127.0.0.1: loose files, one GET each (baseline)", n / t_loose, "samples/s",
         "1.00"),
        ("HTTP 127.0.0.1: make_pipeline over shard URLs", n / t_pipe, "samples/s",
         f"{t_loose / t_pipe:.2f}"),
    ]


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000,
                    help="rows of the SYNTHETIC group-by table (24000000: BIOMEDICA size)")
    ap.add_argument("--samples", type=int, default=1_500,
                    help="replicated real samples in the shards (export and streaming)")
    ap.add_argument("--shard-samples", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-metadata-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        ds = replicated_dataset(work, args.samples, args.shard_samples)
        table = [("EXPORT", None, "", "")]
        table += bench_export(ds, args.repeat)
        syn = work / "synthetic_figures.parquet"
        synthetic_figures(syn, args.rows)
        table.append((f"GROUP-BY over {args.rows:,} SYNTHETIC rows", None, "", ""))
        table += bench_groupby(syn, args.rows, args.repeat)
        table.append((f"STREAMING {args.samples:,} replicated real samples, warm cache", None,
                      "", ""))
        table += bench_streaming(ds, work, args.repeat)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.system()}; median of {args.repeat} runs; "
          f"total {time.perf_counter() - t0:.0f} s")
    print(f"{'measurement':<58} {'value':>12}  {'unit':<10} {'vs baseline':>11}")
    for name, value, unit, ratio in table:
        if value is None:
            print(f"\n{name}")
        else:
            print(f"{name:<58} {value:>12,.1f}  {unit:<10} {ratio:>11}")
    print("\nvs baseline: export rows = speed-up over the decode baseline (higher is faster), "
          "bytes = fraction of the shard bytes read; group-by = time / pyarrow read time "
          "(lower is faster); streaming = speed relative to cat (1.00 = as fast as cat).")


if __name__ == "__main__":
    sys.exit(main())
