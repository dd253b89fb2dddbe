"""Benchmark search: the real server over HTTP on a SYNTHETIC dataset of ``--samples`` rows.

    .venv/bin/python bench/bench_search.py                    # 200k samples, a few minutes
    .venv/bin/python bench/bench_search.py --samples 1000000  # the issue's 1M (longer)

The dataset is SYNTHETIC (not real data), built so that the real models' queries land in it:
the 185 real captions of ``../shared/corpus/figures/pairs.jsonl`` are embedded with the real
caption model (all-MiniLM-L6-v2, 384 dims: the width the server searches); each synthetic
sample mixes two real captions: its vector is ``normalise(w a + (1 - w) b + noise)`` and its
caption draws words from both in proportion ``w``. Licence categories follow BIOMEDICA's
published split, years skew recent, 5,000 Zipf-distributed journals, the real taxonomy's
primary labels. No images: image search has the same vector path at its own width.

Measured in one run, every ratio against a baseline of the same run:

1. index build time and size (catalog, tantivy keyword index, faiss IVF caption index);
2. p50/p99 over HTTP on loopback (the ``serve`` command, one client, keep-alive) for
   keyword, vector and hybrid queries, without and with a filter (licence + year range),
   with the server's own split into encoding and search;
3. recall@10 of vector and hybrid results against exact search over the same vectors (faiss
   ``IndexFlatIP``; hybrid: the same fusion over the exact list), filters included;
4. the baselines: exact ``IndexFlatIP`` per query (2 threads); ``bm25s`` build and query on
   the same captions; usearch HNSW (f16) build rate and search on a subset;
5. the server's resident memory against the index size on disk, and a projection to 24M.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PAIRS = SHARED / "corpus" / "figures" / "pairs.jsonl"
STORE = "synthetic-minilm"
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9-]{2,}")


def real_captions() -> list[str]:
    """The real captions the synthetic ones are mixed from."""
    return [json.loads(line)["caption"] for line in PAIRS.read_text().splitlines()
            if line.strip()]


def synthesise(ds: Path, n: int, encoder, seed: int = 0) -> dict:
    """Write the SYNTHETIC dataset (manifest, figures.parquet, embeddings store)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from biomedica_kit.dataset.manifest import write_manifest
    from biomedica_kit.embed.store import EmbeddingStore

    rng = np.random.default_rng(seed)
    caps = real_captions()
    words = [_WORD.findall(c) or ["figure"] for c in caps]
    flat_words = np.array([w for ws in words for w in ws], dtype=object)
    lens = np.array([len(ws) for ws in words])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    base = encoder.encode_texts(caps)
    write_manifest(ds, [], parent=None, config={"synthetic": True}, counts={})
    tax = json.loads((SHARED / "taxonomy" / "taxonomy_collapsed_and_filtered.json").read_text())
    labels = np.array(sorted(tax), dtype=object)
    cats = np.array(["commercial", "noncommercial", "other"], dtype=object)
    cat_p = np.array([17_607_694, 5_332_781, 1_109_948], float)
    years = np.arange(2000, 2026)
    year_p = np.linspace(1, 8, len(years))
    store = EmbeddingStore(ds, STORE)
    store.info.text_model, store.info.text_dims = encoder.name, encoder.text_dims
    store.info.text_model_version = encoder.model_version
    store.info.text_model_spec = [encoder.spec, encoder.pretrained]
    schema = pa.schema([
        ("key", pa.string()), ("article_id", pa.string()), ("pmcid", pa.string()),
        ("article_title", pa.string()), ("caption", pa.string()),
        ("license_category", pa.string()), ("license_code", pa.string()), ("year", pa.int64()),
        ("journal", pa.string()), ("figure_kind", pa.string()), ("figure_label", pa.string()),
        ("primary_label", pa.string()), ("shard", pa.string()), ("image_ext", pa.string()),
        ("image_offset", pa.int64()), ("image_length", pa.int64())],
        metadata={b"biomedica_kit.synthetic": b"true"})
    chunk = 65536
    (ds / "metadata").mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(ds / "metadata" / "figures.parquet", schema) as w:
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            a, b = rng.integers(0, len(caps), m), rng.integers(0, len(caps), m)
            wt = rng.uniform(0.2, 1.0, m).astype(np.float32)
            v = wt[:, None] * base[a] + (1 - wt[:, None]) * base[b]
            v += rng.standard_normal(v.shape).astype(np.float32) * 0.02
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            # Captions: ~w of the words from caption a, the rest from b (vectorised).
            k = rng.integers(20, 50, m)
            na = np.maximum(1, (k * wt).astype(int))
            src = np.concatenate([np.repeat(a, na), np.repeat(b, k - na)])
            row = np.concatenate([np.repeat(np.arange(m), na), np.repeat(np.arange(m), k - na)])
            tok = starts[src] + (rng.random(len(src)) * lens[src]).astype(int)
            order = np.argsort(row, kind="stable")
            offsets = np.concatenate([[0], np.cumsum(k)]).astype(np.int32)
            lists = pa.ListArray.from_arrays(pa.array(offsets),
                                             pa.array(flat_words[tok[order]], pa.string()))
            text = pc.binary_join_element_wise("SYNTHETIC",
                                               pc.binary_join(lists, " "), " ")
            keys = [f"synthetic-{j:08d}" for j in range(s, s + m)]
            cat = cats[rng.choice(3, m, p=cat_p / cat_p.sum())]
            w.write_table(pa.table({
                "key": keys, "article_id": [f"synthetic-art-{j // 4}" for j in range(s, s + m)],
                "pmcid": pa.nulls(m, pa.string()), "article_title": ["SYNTHETIC article"] * m,
                "caption": text, "license_category": cat,
                "license_code": np.where(cat == "commercial", "cc-by", "cc-by-nc"),
                "year": years[rng.choice(len(years), m, p=year_p / year_p.sum())],
                "journal": [f"Journal {x:04d}" for x in np.minimum(rng.zipf(1.3, m) - 1, 4999)],
                "figure_kind": np.where(rng.random(m) < 0.9, "figure", "table"),
                "figure_label": ["Figure 1"] * m,
                "primary_label": labels[rng.integers(0, len(labels), m)],
                "shard": ["shards/none.tar"] * m, "image_ext": ["jpg"] * m,
                "image_offset": np.zeros(m, np.int64), "image_length": np.zeros(m, np.int64),
            }, schema=schema))
            store.write_part(keys, {"text": v}, "synthetic")
    store.save_info()
    return {"words": sorted({x.lower() for ws in words for x in ws})}


def du(path: Path) -> int:
    """Bytes of a file, or of the files under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def pct(values: list[float], q: float) -> float:
    """A percentile in ms of seconds ``values``."""
    return round(float(np.percentile(np.asarray(values) * 1e3, q)), 2)


def start_server(ds: Path, threads: int) -> tuple[subprocess.Popen, str]:
    """``biomedica serve`` (the CLI command) on a free loopback port."""
    import requests

    code = "import sys; from biomedica_kit.cli.serve import serve; serve(sys.argv[1:])"
    log = open(ds.parent / "serve.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([sys.executable, "-c", code, str(ds), "--port", "0", "--threads",
                             str(threads)], stderr=log, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while True:
        m = re.search(r"127\.0\.0\.1:(\d+)/", (ds.parent / "serve.log").read_text())
        if m:
            url = f"http://127.0.0.1:{m.group(1)}"
            try:
                if requests.get(url + "/health", timeout=5).ok:
                    return proc, url
            except requests.ConnectionError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((ds.parent / "serve.log").read_text()[-2000:])
        time.sleep(0.2)


def rss(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (bytes) of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=200, help="Timed queries per mode.")
    ap.add_argument("--threads", type=int, default=1, help="Server threads per query.")
    ap.add_argument("--bm25s-docs", type=int, default=200_000,
                    help="Captions the bm25s baseline indexes (at most --samples).")
    ap.add_argument("--usearch-docs", type=int, default=50_000,
                    help="Vectors the usearch HNSW baseline builds (0: skip).")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true",
                    help="Measure the dataset and index a previous run left in --workdir "
                         "(its nprobe chosen again by the current rule) instead of making "
                         "them anew.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faiss
    import requests

    from biomedica_kit.embed.encoders import DEFAULT_TEXT_MODEL, load_encoder
    from biomedica_kit.embed.index import retune
    from biomedica_kit.embed.store import EmbeddingStore
    from biomedica_kit.serve.indexer import index_dataset, read_index_info
    from biomedica_kit.serve.search import FUSE_DEPTH, rrf
    from biomedica_kit.tables.catalog import Catalog, Filters
    from biomedica_kit.tables.keyword_index import KeywordIndex

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-search-"))
    ds = work / "ds"
    reuse = args.reuse and (ds / "index" / "info.json").is_file()
    if ds.exists() and not reuse:
        shutil.rmtree(ds)
    ds.mkdir(parents=True, exist_ok=True)
    res: dict = {"samples": args.samples, "machine": f"{os.cpu_count()} cores, "
                 f"{platform.python_version()}, {platform.machine()}", "synthetic": True}
    import torch

    torch.set_num_threads(1)
    enc = load_encoder(DEFAULT_TEXT_MODEL, device="cpu")
    faiss.omp_set_num_threads(2)
    if reuse:  # the build numbers are the ones the previous run recorded
        words = sorted({w.lower() for c in real_captions() for w in _WORD.findall(c)})
        s = read_index_info(ds)
        vec = {**s["vectors"][STORE]["text"],
               **asdict(retune(ds, EmbeddingStore(ds, STORE), "text"))}
        total = s["seconds"]
        res["samples"] = s["samples"]
        res["reused"] = True
    else:
        t = time.perf_counter()
        words = synthesise(ds, args.samples, enc)["words"]
        res["synthesise_s"] = round(time.perf_counter() - t, 1)
        print(f"synthesised {args.samples} samples in {res['synthesise_s']} s", flush=True)
        # 1. Index build (catalog + tantivy + faiss IVF over the caption vectors).
        t = time.perf_counter()
        vec = index_dataset(ds, refresh=False).vectors[STORE]["text"]
        total = time.perf_counter() - t
    res["build"] = {"total_s": round(total, 1),
                    "vectors_s": vec["seconds"], "factory": vec["factory"],
                    "nlist": vec["nlist"], "nprobe": vec["nprobe"],
                    "tuned_recall": vec["recall_at_10"]}
    res["build"]["catalog_keyword_s"] = round(res["build"]["total_s"] - vec["seconds"], 1)
    idx = ds / "index"
    res["size"] = {"catalog": du(idx / "catalog.arrow"), "keyword": du(idx / "keyword"),
                   "vectors": du(idx / "vectors"), "store": du(ds / "embeddings")}
    res["size"]["index"] = res["size"]["catalog"] + res["size"]["keyword"] + \
        res["size"]["vectors"]
    print(f"indexed in {res['build']['total_s']} s: {json.dumps(res['size'])}", flush=True)

    # Exact baseline: every vector as float32 in an IndexFlatIP.
    store = EmbeddingStore(ds, STORE)
    keys, x = store.load("text")
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    cat = Catalog.open(ds)
    row_id = np.array([cat.id_of(k) for k in keys])
    # Distinct queries for every (mode, filter) run, so no query vector comes from the
    # server's cache; the vector ones embedded here too, for the exact answers.
    rng = np.random.default_rng(7)
    names = [f"{m}{f}" for m in ("keyword", "vector", "hybrid") for f in ("", "+filter")]
    pool: set[str] = set()
    while len(pool) < (len(names) + 1) * args.queries:
        pool.add(" ".join(rng.choice(words, int(rng.integers(2, 5)))))
    ordered = sorted(pool)
    rng.shuffle(ordered)
    sets = {n: ordered[i * args.queries:(i + 1) * args.queries] for i, n in enumerate(names)}
    warm = ordered[len(names) * args.queries:]
    filt = {"license": "noncommercial", "year": "2015-2020"}
    filters = Filters(license=("noncommercial",), years=(2015, 2020))
    fmask = cat.mask(filters)
    res["filter_selectivity"] = round(float(fmask.mean()), 4)
    params = faiss.SearchParameters()
    params.sel = faiss.IDSelectorBatch(np.flatnonzero(fmask[row_id]).astype(np.int64))
    exact: dict[str, np.ndarray] = {}
    qv = enc.encode_texts(sets["vector"])
    t = time.perf_counter()
    _, exact["vector"] = flat.search(qv, FUSE_DEPTH)
    res["exact_flat_ms_per_query"] = round((time.perf_counter() - t) / len(qv) * 1e3, 2)
    for n in ("vector+filter", "hybrid", "hybrid+filter"):
        _, exact[n] = flat.search(enc.encode_texts(sets[n]), FUSE_DEPTH,
                                  params=params if "filter" in n else None)

    # 2. The server over HTTP.
    proc, url = start_server(ds, args.threads)
    try:
        session = requests.Session()
        mem = {"opened": rss(proc.pid)["VmRSS"]}
        for q in warm[:10]:
            session.get(url + "/search", params={"q": q, "mode": "hybrid"}).raise_for_status()
        mem["model_loaded"] = rss(proc.pid)["VmRSS"]
        floor = []  # the HTTP floor: /health (reads manifest.json), same client and server
        for _ in range(args.queries):
            t = time.perf_counter()
            session.get(url + "/health").raise_for_status()
            floor.append(time.perf_counter() - t)
        res["http_floor"] = {"p50_ms": pct(floor, 50), "p99_ms": pct(floor, 99)}
        runs: dict = {}
        for name in names:
            extra = filt if "filter" in name else {}
            lat, server, got = [], [], []
            for q in sets[name]:
                t = time.perf_counter()
                r = session.get(url + "/search", params={"q": q, "mode": name.split("+")[0],
                                                         "k": 10, **extra})
                lat.append(time.perf_counter() - t)
                r.raise_for_status()
                body = r.json()
                server.append(body["timings_ms"])
                got.append([h["key"] for h in body["results"]])
            runs[name] = {"lat": lat, "server": server, "got": got}
        mem.update(rss(proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)
    kw = KeywordIndex(ds)
    table = {}
    for name, run in runs.items():
        mode, filtered = name.split("+")[0], "+" in name
        recall = None
        if mode in ("vector", "hybrid"):
            rs = []
            for q, got, ex_rows in zip(sets[name], run["got"], exact[name], strict=True):
                ex = row_id[ex_rows[ex_rows >= 0]]
                truth = [r["key"] for r in cat.rows(ex[:10], ["key"])]
                if mode == "hybrid":  # the same fusion, over the exact vector list
                    k_ids, k_sc, _ = kw.search(q, FUSE_DEPTH,
                                               filters=filters if filtered else None)
                    fused = rrf({"keyword": (k_ids, k_sc),
                                 "caption_vector": (ex, np.ones(len(ex)))})[:10]
                    truth = [r["key"] for r in cat.rows([h.id for h in fused], ["key"])]
                rs.append(len(set(truth) & set(got)) / max(1, len(truth)))
            recall = round(float(np.mean(rs)), 4)
        enc_ms = [t.get("encode_text", 0.0) for t in run["server"]]
        table[name] = {"p50_ms": pct(run["lat"], 50), "p99_ms": pct(run["lat"], 99),
                       "server_encode_p50_ms": round(float(np.median(enc_ms)), 2),
                       "server_search_p50_ms": round(float(np.median(
                           [sum(v for k, v in t.items() if k != "encode_text")
                            for t in run["server"]])), 2),
                       "recall_at_10": recall}
    res["http"] = table
    res["server_rss"] = mem
    res["rss_over_index"] = round(mem["VmRSS"] / res["size"]["index"], 2)
    # What the indexes cost in memory: the growth past the loaded model (torch + MiniLM).
    res["index_rss_over_index"] = round((mem["VmRSS"] - mem["model_loaded"] + mem["opened"])
                                        / res["size"]["index"], 2)
    baselines(args, res, x, qv, ds)
    project(res)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def baselines(args, res: dict, x: np.ndarray, qv: np.ndarray, ds: Path) -> None:
    """bm25s and usearch on the same data, in this process (each skipped when not
    installed: the ``bench`` extra)."""
    import pyarrow.parquet as pq

    caps = pq.read_table(ds / "metadata" / "figures.parquet",
                         columns=["caption"]).column("caption").to_pylist()
    n = min(args.bm25s_docs, len(caps))
    try:
        import bm25s
    except ImportError:
        print("bm25s not installed (the bench extra): its baseline is skipped")
        args.bm25s_docs = 0
    if not args.bm25s_docs:
        return _usearch(args, res, x, qv)
    t = time.perf_counter()
    tokens = bm25s.tokenize(caps[:n], stopwords="en", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    build = time.perf_counter() - t
    rng = np.random.default_rng(3)
    qs = [" ".join(rng.choice(caps[int(rng.integers(0, n))].split()[1:], 3)) for _ in range(100)]
    lat = []
    for q in qs:
        t = time.perf_counter()
        retriever.retrieve(bm25s.tokenize([q], stopwords="en", show_progress=False), k=10,
                           show_progress=False, n_threads=1)
        lat.append(time.perf_counter() - t)
    res["bm25s"] = {"docs": n, "build_s": round(build, 1), "docs_per_s": round(n / build),
                    "query_p50_ms": pct(lat, 50), "query_p99_ms": pct(lat, 99)}
    _usearch(args, res, x, qv)


def _usearch(args, res: dict, x: np.ndarray, qv: np.ndarray) -> None:
    """usearch HNSW (f16) on the first ``--usearch-docs`` vectors."""
    try:
        from usearch.index import Index
    except ImportError:
        print("usearch not installed (the bench extra): its baseline is skipped")
        return
    if not args.usearch_docs:
        return
    m = min(args.usearch_docs, len(x))
    u = Index(ndim=x.shape[1], metric="ip", dtype="f16")
    t = time.perf_counter()
    u.add(np.arange(m), x[:m], threads=2)
    build = time.perf_counter() - t
    import faiss

    sub = faiss.IndexFlatIP(x.shape[1])
    sub.add(x[:m])
    _, truth = sub.search(qv, 10)
    lat, rec = [], []
    for q, tr in zip(qv, truth, strict=True):
        t = time.perf_counter()
        got = u.search(q, 10, threads=1).keys
        lat.append(time.perf_counter() - t)
        rec.append(len(set(tr) & set(got.tolist())) / 10)
    res["usearch"] = {"vectors": m, "build_s": round(build, 1),
                      "vectors_per_s": round(m / build), "query_p50_ms": pct(lat, 50),
                      "recall_at_10": round(float(np.mean(rec)), 4),
                      "filters_in_search": False}


def project(res: dict) -> None:
    """A projection to 24M samples from what was measured (linear sizes and builds; IVF scan
    cost grows with sqrt(N) at nlist ~ 4 sqrt(N) and the same nprobe)."""
    f = 24_000_000 / res["samples"]
    res["projection_24M"] = {
        "index_GB": round(res["size"]["index"] * f / 1e9, 1),
        "store_GB": round(res["size"]["store"] * f / 1e9, 1),
        "build_h": round(res["build"]["total_s"] * f ** 1.25 / 3600, 1),
        "vector_search_ms": round(res["http"]["vector"]["server_search_p50_ms"] * f ** 0.5,
                                  1)}


def report(res: dict) -> None:
    """The table, printed."""
    print(f"\n{res['samples']:,} SYNTHETIC samples, 384-d caption vectors; {res['machine']}")
    b = res["build"]
    print(f"build {b['total_s']} s (vectors {b['vectors_s']} s, {b['factory']} nlist "
          f"{b['nlist']} nprobe {b['nprobe']}); index {res['size']['index'] / 1e6:.0f} MB "
          f"(catalog {res['size']['catalog'] / 1e6:.0f}, keyword "
          f"{res['size']['keyword'] / 1e6:.0f}, vectors {res['size']['vectors'] / 1e6:.0f})")
    print(f"{'query':<16}{'p50 ms':>8}{'p99 ms':>8}{'encode':>8}{'search':>8}{'recall@10':>11}")
    for name, r in res["http"].items():
        rec = "-" if r["recall_at_10"] is None else f"{r['recall_at_10']:.3f}"
        print(f"{name:<16}{r['p50_ms']:>8}{r['p99_ms']:>8}{r['server_encode_p50_ms']:>8}"
              f"{r['server_search_p50_ms']:>8}{rec:>11}")
    print(f"HTTP floor (GET /health): p50 {res['http_floor']['p50_ms']} ms, p99 "
          f"{res['http_floor']['p99_ms']} ms")
    print(f"exact IndexFlatIP: {res['exact_flat_ms_per_query']} ms/query; filter keeps "
          f"{res['filter_selectivity']:.1%}")
    if "bm25s" in res:
        print(f"bm25s: {json.dumps(res['bm25s'])}")
    if "usearch" in res:
        print(f"usearch HNSW f16: {json.dumps(res['usearch'])}")
    m = res["server_rss"]
    print(f"server RSS {m['VmRSS'] / 1e6:.0f} MB = {res['rss_over_index']}x the index on disk "
          f"(opened {m['opened'] / 1e6:.0f} MB, with the model {m['model_loaded'] / 1e6:.0f} "
          f"MB; without the model: {res['index_rss_over_index']}x)")
    print(f"projection to 24M: {json.dumps(res['projection_24M'])}")


if __name__ == "__main__":
    main()
