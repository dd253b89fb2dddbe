"""ETL benchmarks: each measurement is a ratio against a baseline measured in the same run.

(a) parse      parse_jats vs a bare lxml parse (etree.fromstring) of the same real corpus XML
(b) build      full build (processes) on a SYNTHETIC mirror vs a bare single-core pass over the
               same packages (tar read + lxml parse + PIL decode of every image)
(c) shards     ShardWriter MB/s vs GNU ``tar -cf`` of the same files
(d) startup    one ``biomedica parse`` over a few hundred real XML files vs one python process
               that only lxml-parses the same files
(e) memory     peak RSS of a one-process build as the corpus doubles (should stay flat)

Also: articles/s/core of the build and the core-hours it projects for PMC OA's 6.36M articles.

Usage: ``python bench/bench_etl.py [--articles 192] [--workdir DIR]`` (about 2-3 minutes on a
2-core machine with the defaults). The synthetic corpus is made by bench/synth.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
CORPUS = ROOT.parent / "shared" / "corpus" / "pmc_oa"
PMC_OA_ARTICLES = 6_360_000
BIN = Path(sys.executable).parent


def corpus_xml() -> list[Path]:
    """Every article XML file of the real corpus."""
    return sorted(p for p in CORPUS.glob("*/*") if p.suffix in (".xml", ".nxml"))


def best_of(fn, repeat: int = 3) -> float:
    """Fastest wall time of ``repeat`` runs (the least disturbed by other load)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_parse(rounds: int) -> dict:
    from lxml import etree

    from biomedica_kit.etl.jats import parse_jats

    blobs = [p.read_bytes() for p in corpus_xml()]
    n_articles = sum(len(parse_jats(b)) for b in blobs) * rounds

    def bare():
        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        for _ in range(rounds):
            for b in blobs:
                etree.fromstring(b, parser)

    def ours():
        for _ in range(rounds):
            for b in blobs:
                parse_jats(b)

    t_bare, t_ours = best_of(bare), best_of(ours)
    return {"what": "(a) parse_jats vs bare lxml parse", "unit": "articles/s",
            "ours": n_articles / t_ours, "base": n_articles / t_bare,
            "ratio": t_ours / t_bare, "target": "<= 3x time", "ok": t_ours / t_bare <= 3}


def bench_build(mirror: Path, work: Path) -> tuple[dict, dict]:
    from lxml import etree
    from PIL import Image

    from biomedica_kit.etl.build import build
    from biomedica_kit.ingest.sources import discover_local

    refs = discover_local(mirror)
    cores = os.cpu_count() or 1

    def bare():
        for r in refs:
            with tarfile.open(r.location, "r:gz") as tar:
                for m in tar:
                    data = tar.extractfile(m).read()
                    if m.name.endswith(".nxml"):
                        etree.fromstring(data)
                    else:
                        Image.open(io.BytesIO(data)).load()

    t_bare = best_of(bare, 1)
    out = work / "build"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    s = build(mirror, out, workers=cores, progress=False)
    t_build = time.perf_counter() - t
    per_core = len(refs) / t_build / cores
    row = {"what": f"(b) full build, {cores} processes, vs bare 1-core read+parse+decode",
           "unit": "articles/s", "ours": len(refs) / t_build, "base": len(refs) / t_bare,
           "ratio": (t_build * cores) / t_bare, "target": "(core-time ratio; info)", "ok": None}
    proj = {"articles": len(refs), "samples": s.samples, "cores": cores,
            "articles_per_s": len(refs) / t_build, "articles_per_s_per_core": per_core,
            "core_hours_pmc_oa": PMC_OA_ARTICLES / per_core / 3600}
    return row, proj


def bench_shards(mirror: Path, work: Path) -> dict:
    """Write the same sample files with ShardWriter and with tar -cf."""
    from biomedica_kit.dataset.shards import ShardWriter
    from biomedica_kit.ingest.sources import discover_local

    files = work / "files"
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir(parents=True)
    samples = []
    for r in discover_local(mirror):
        with tarfile.open(r.location, "r:gz") as tar:
            for m in tar:
                if m.name.endswith(".jpg"):
                    key = Path(m.name).stem
                    img = tar.extractfile(m).read()
                    members = [("jpg", img), ("txt", b"SYNTHETIC caption " * 20),
                               ("json", json.dumps({"key": key}).encode() * 10)]
                    samples.append((key, members))
                    for ext, data in members:
                        (files / f"{key}.{ext}").write_bytes(data)
    names = sorted(p.name for p in files.iterdir())
    total = sum((files / n).stat().st_size for n in names)
    (work / "list.txt").write_text("\n".join(names) + "\n")

    def ours():
        root = work / "shardout"
        shutil.rmtree(root, ignore_errors=True)
        w = ShardWriter(root, "bench", max_samples=1 << 30, max_bytes=1 << 40)
        for key, members in samples:
            w.write(key, members)
        w.close()

    def gnu_tar():
        subprocess.run(["tar", "-cf", str(work / "gnu.tar"), "-C", str(files), "-T",
                        str(work / "list.txt")], check=True)
        # ShardWriter fsyncs its shard before renaming it (durability); so must the baseline.
        fd = os.open(work / "gnu.tar", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    t_ours, t_tar = best_of(ours), best_of(gnu_tar)
    mb = total / 1e6
    return {"what": f"(c) ShardWriter vs GNU tar -cf ({mb:.0f} MB, {len(samples)} samples)",
            "unit": "MB/s", "ours": mb / t_ours, "base": mb / t_tar,
            "ratio": t_tar / t_ours, "target": ">= 80% of tar", "ok": t_tar / t_ours >= 0.8}


def bench_startup(work: Path, copies: int) -> dict:
    files = [str(p) for p in corpus_xml()] * copies
    script = work / "bare_parse.py"
    script.write_text("import sys\nfrom lxml import etree\n"
                      "p = etree.XMLParser(resolve_entities=False, no_network=True)\n"
                      "for f in sys.argv[1:]:\n    etree.fromstring(open(f, 'rb').read(), p)\n")

    def ours():
        subprocess.run([str(BIN / "biomedica"), "parse", *files], check=False,
                       stdout=subprocess.DEVNULL)

    def bare():
        subprocess.run([sys.executable, str(script), *files], check=True)

    t_ours, t_bare = best_of(ours), best_of(bare)
    return {"what": f"(d) `biomedica parse` of {len(files)} real files vs bare lxml process",
            "unit": "files/s", "ours": len(files) / t_ours, "base": len(files) / t_bare,
            "ratio": t_ours / t_bare, "target": "<= 4x time", "ok": t_ours / t_bare <= 4}


def bench_memory(mirror: Path, work: Path, sizes: list[int]) -> dict:
    """Peak RSS of a one-process build over the first N packages, for growing N.

    Read from the child's VmHWM, which starts afresh at exec (getrusage's ru_maxrss would
    carry over this benchmark process's own resident size from the fork).
    """
    code = ("import sys\nfrom biomedica_kit.etl.build import build\n"
            "build(sys.argv[1], sys.argv[2], workers=1, progress=False, limit=int(sys.argv[3]))\n"
            "print(next(l.split()[1] for l in open('/proc/self/status') "
            "if l.startswith('VmHWM')))\n")
    rss = {}
    for n in sizes:
        out = work / f"mem{n}"
        shutil.rmtree(out, ignore_errors=True)
        res = subprocess.run([sys.executable, "-c", code, str(mirror), str(out), str(n)],
                             check=True, capture_output=True, text=True, cwd=ROOT)
        rss[n] = int(res.stdout.split()[-1]) / 1024  # KiB -> MiB
    lo, hi = rss[sizes[0]], rss[sizes[-1]]
    return {"what": "(e) peak RSS, 1-process build, " + ", ".join(
        f"{n} art. {v:.0f} MiB" for n, v in rss.items()), "unit": "MiB",
        "ours": hi, "base": lo, "ratio": hi / lo, "target": "flat (<= 1.25x for 4x corpus)",
        "ok": hi / lo <= 1.25}


def main() -> None:
    ap = argparse.ArgumentParser(description="biomedica-kit ETL benchmarks")
    ap.add_argument("--articles", type=int, default=192, help="SYNTHETIC articles to generate")
    ap.add_argument("--parse-rounds", type=int, default=5)
    ap.add_argument("--startup-copies", type=int, default=12)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="biomedica-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    from synth import make_mirror

    t0 = time.perf_counter()
    mirror = work / "mirror"
    if not (mirror / "oa_file_list.csv").is_file():
        make_mirror(mirror, a.articles)
    gen = time.perf_counter() - t0
    rows = [bench_parse(a.parse_rounds)]
    build_row, proj = bench_build(mirror, work)
    rows += [build_row, bench_shards(mirror, work), bench_startup(work, a.startup_copies),
             bench_memory(mirror, work, [a.articles // 4, a.articles // 2, a.articles])]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"machine: {os.cpu_count()} cores, {mem:.0f} GiB, Python "
          f"{platform.python_version()}, {platform.system()} {platform.machine()}; "
          f"synthetic corpus: {a.articles} articles ({gen:.0f} s to generate)")
    print(f"| {'measurement':<72} | {'ours':>9} | {'baseline':>9} | {'ratio':>6} | target |")
    print(f"|{'-' * 74}|{'-' * 11}|{'-' * 11}|{'-' * 8}|--------|")
    for r in rows:
        mark = "" if r["ok"] is None else (" ok" if r["ok"] else " MISSED")
        print(f"| {r['what']:<72} | {r['ours']:>9.1f} | {r['base']:>9.1f} | "
              f"{r['ratio']:>5.2f}x | {r['target']}{mark} |")
    print(f"build: {proj['articles_per_s']:.2f} articles/s on {proj['cores']} cores = "
          f"{proj['articles_per_s_per_core']:.2f} articles/s/core ({proj['samples']} samples); "
          f"projected {proj['core_hours_pmc_oa']:,.0f} core-hours for "
          f"{PMC_OA_ARTICLES / 1e6:.2f}M PMC OA articles")
    print(f"total {time.perf_counter() - t0:.0f} s; work dir {work}")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "projection": proj}, indent=2))
    if a.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
