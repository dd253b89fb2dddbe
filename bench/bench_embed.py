"""Benchmark embedding and clustering; every ratio is against a baseline measured in the same run.

    .venv/bin/python bench/bench_embed.py                       # 10k and 100k vectors
    .venv/bin/python bench/bench_embed.py --sizes 10000,100000,1000000

1. **Embedding throughput**: ``biomedica_kit.embed.run.embed`` (byte-range reads, decoding in
   worker processes, the model in this one, parts committed to the store) over the 185 REAL
   figures of ``../shared/corpus/figures`` (imported with ``import_pairs``), against a bare
   forward loop of the same model over the same images decoded beforehand (the model alone:
   what the pipeline would reach if loading cost nothing), alternated ``--repeat`` times, best
   of each side. Images only; the default offline model (torchvision MobileNetV2, real
   ImageNet weights). Target: within 10%.
2. **Clustering**: PCA (64 axes) + k-means (k = min(2000, n / 50), 20 iterations) over n
   SYNTHETIC unit vectors of width 512 (a seeded Gaussian mixture, stored float16 in an
   embeddings store), streamed by ``biomedica_kit.cluster.kmeans`` (``fit_projected``, faiss
   back-end, as ``biomedica cluster`` does it, then every vector assigned; inertia = the sum
   of squared distances of every vector to its centroid in the PCA space), against plain
   scikit-learn on the same vectors held in memory (``PCA(64)`` + ``KMeans(n_init=1,
   max_iter=20)``). Each side runs in a fresh process and reports its wall time and peak RSS
   (VmHWM, which starts afresh at exec). Targets: 1M x 512 -> k=2,000 in under 60 s on 2
   cores; peak memory under 2x the vectors (float32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import start

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT.parent / "shared" / "corpus" / "figures" / "pairs.jsonl"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------------------- embedding


def bench_embedding(work: Path, batch_size: int, repeat: int) -> dict:
    """Pipeline images/s vs the bare forward loop over pre-decoded batches."""
    import pyarrow.parquet as pq

    from biomedica_kit.embed.decode import decode_batch
    from biomedica_kit.embed.encoders import DEFAULT_IMAGE_MODEL, load_encoder
    from biomedica_kit.embed.run import default_workers, embed
    from biomedica_kit.etl.pairs import import_pairs
    from biomedica_kit.tables.export import export
    from biomedica_kit.tables.samples import ROW_COLUMNS

    ds = work / "pairs"
    import_pairs(PAIRS, ds, workers=1, progress=False)
    export(ds, workers=1)
    rows = pq.read_table(ds / "metadata" / "figures.parquet",
                         columns=list(ROW_COLUMNS)).to_pylist()
    enc = load_encoder(DEFAULT_IMAGE_MODEL)
    assert enc.image_spec is not None
    batches = [decode_batch(str(ds), rows[i: i + batch_size], enc.image_spec).pixels
               for i in range(0, len(rows), batch_size)]
    enc.encode_images(batches[0])  # warm-up (allocator, oneDNN kernels)
    bare = ours = 0.0
    for r in range(repeat):  # alternated, best of each: the machine's load varies over time
        t0 = time.perf_counter()
        for b in batches:
            enc.encode_images(b)
        bare = max(bare, len(rows) / (time.perf_counter() - t0))
        summary = embed(ds, text_model="none", name=f"bench{r}", batch_size=batch_size,
                        part_size=2048, progress=False)
        ours = max(ours, summary.embedded / (summary.seconds - summary.load_seconds))
    return {"what": f"(a) embed {len(rows)} real figures ({DEFAULT_IMAGE_MODEL}, batch "
                    f"{batch_size}, {default_workers()} decoding workers) vs bare forward "
                    f"over pre-decoded batches", "unit": "images/s", "ours": ours,
            "base": bare, "ratio": bare / ours, "target": "<= 1.10x time",
            "ok": bare / ours <= 1.10}


# ------------------------------------------------------------------------------ clustering

_MAKE = """
import sys, numpy as np
from biomedica_kit.embed.store import EmbeddingStore
n, d, root = int(sys.argv[1]), 512, sys.argv[2]
rng = np.random.default_rng(0)
centers = rng.standard_normal((2000, d)).astype(np.float32)
store = EmbeddingStore(root, "synthetic")
store.info.image_dims, store.info.image_model = d, "SYNTHETIC"
store.save_info()
for s in range(0, n, 100_000):
    m = min(100_000, n - s)
    x = centers[rng.integers(0, 2000, m)] + 0.5 * rng.standard_normal((m, d), np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store.write_part([f"syn{i:08d}" for i in range(s, s + m)], {"image": x}, "SYNTHETIC")
store.save_info()
"""

_OURS = """
import sys, time, numpy as np
from biomedica_kit.cluster import kmeans
from biomedica_kit.embed.store import EmbeddingStore
root, k = sys.argv[1], int(sys.argv[2])
store = EmbeddingStore(root, "synthetic")
source = lambda: store.iter_vectors("image", chunk=65536, dtype=np.float16)  # as run.py
t0 = time.perf_counter()
model, projected = kmeans.fit_projected(source, k, dims=64, seed=0, backend="faiss",
                                        n=store.info.count, folder=root)
sizes = np.zeros(k, np.int64)
inertia = 0.0
with projected:
    for keys, c, d1, d2 in kmeans.assign(projected, model):
        sizes += np.bincount(c, minlength=k)
        inertia += float(np.square(d1, dtype=np.float64).sum())
wall = time.perf_counter() - t0
hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))
print(wall, int(hwm) / 1024, int((sizes > 0).sum()), inertia)
"""

_SKLEARN = """
import sys, time, numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from biomedica_kit.embed.store import EmbeddingStore
root, k = sys.argv[1], int(sys.argv[2])
store = EmbeddingStore(root, "synthetic")
x = np.concatenate([np.asarray(p.vectors("image"), np.float32) for p in store.parts()])
t0 = time.perf_counter()
y = PCA(64, random_state=0).fit_transform(x)
km = KMeans(k, n_init=1, max_iter=20, random_state=0).fit(y)
wall = time.perf_counter() - t0
hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))
print(wall, int(hwm) / 1024, len(set(km.labels_.tolist())), km.inertia_)
"""


def _child(code: str, *args: object) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return [float(v) for v in out.stdout.split()[-4:]]


def bench_clustering(work: Path, n: int, baseline: bool) -> dict:
    """Streaming PCA + k-means vs in-memory scikit-learn over n SYNTHETIC vectors."""
    root = work / f"syn{n}"
    _child(_MAKE, n, root)
    k = min(2000, n // 50)
    load = os.getloadavg()[0]
    wall, peak, used, inertia = _child(_OURS, root, k)
    vectors_mb = n * 512 * 4 / 2 ** 20
    row = {"what": f"(b) PCA 64 + k-means k={k}, {n:,} SYNTHETIC x 512 (float32 "
                   f"{vectors_mb:,.0f} MiB): ours {wall:.1f} s, {peak:,.0f} MiB peak "
                   f"({peak / vectors_mb:.2f}x vectors), {int(used)} clusters used, inertia "
                   f"{inertia:,.0f} over every vector (load {load:.1f} -> "
                   f"{os.getloadavg()[0]:.1f})",
           "unit": "s", "ours": wall, "base": None, "ratio": None,
           "target": "1M -> k=2000 < 60 s, peak < 2x vectors" if n >= 1_000_000 else "info",
           "ok": (wall < 60 and peak < 2 * vectors_mb) if n >= 1_000_000 else None,
           "peak_mb": peak, "vectors_mb": vectors_mb, "inertia": inertia}
    if baseline:
        bwall, bpeak, _, binertia = _child(_SKLEARN, root, k)
        row.update(base=bwall, ratio=wall / bwall, base_peak_mb=bpeak, base_inertia=binertia,
                   what=row["what"] + f"; scikit-learn {bwall:.1f} s, {bpeak:,.0f} MiB peak, "
                                      f"inertia {binertia:,.0f}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description="biomedica-kit embedding and clustering benchmarks")
    ap.add_argument("--sizes", default="10000,100000",
                    help="synthetic vector counts, comma-separated (e.g. 10000,100000,1000000)")
    ap.add_argument("--baseline-max", type=int, default=1_000_000,
                    help="run the scikit-learn baseline up to this many vectors")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2, help="embedding runs (best of each side)")
    ap.add_argument("--skip-embedding", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    work = start(args.workdir, "bench-embed-")
    rows = []
    if not args.skip_embedding:
        rows.append(bench_embedding(work, args.batch_size, args.repeat))
        print(json.dumps(rows[-1]))
    for n in (int(s) for s in args.sizes.split(",") if s):
        rows.append(bench_clustering(work, n, n <= args.baseline_max))
        print(json.dumps(rows[-1]))
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    print("\n| measurement | ours | baseline | ratio | target |\n|---|---|---|---|---|")
    for r in rows:
        base = "-" if r["base"] is None else f"{r['base']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        ok = {True: "ok", False: "**missed**", None: ""}[r["ok"]]
        print(f"| {r['what']} | {r['ours']:.1f} {r['unit']} | {base} | {ratio} | "
              f"{r['target']} {ok} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
