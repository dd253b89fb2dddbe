"""Benchmark ``biomedica evaluate``: time per 10k samples against a bare forward pass.

    .venv/bin/python bench/bench_eval.py                       # tiny CLIP on the CPU
    .venv/bin/python bench/bench_eval.py --model ViT-B-16 --device cuda --batch-size 256

The 185 REAL figure-caption pairs of ``../shared/corpus/figures`` are imported with
``import_pairs`` and split with every article in ``test`` (fractions 0 / 0 / 1), so all of
them are evaluated. Their labels are SYNTHETIC: eight taxonomy labels assigned round-robin as
overrides, so zero-shot runs on every sample (the numbers it gives mean nothing; the time is
what is measured).

- **ours**: :func:`biomedica_train.evaluate.evaluate` end to end without loading the model
  (the split and labels read, byte-range image reads, decoding in worker processes when the
  split has more than two batches, image and caption forward passes, class prompts, the
  retrieval and zero-shot metrics with their breakdowns, three files written atomically);
- **baseline**: the same model's bare forward over the same images decoded beforehand and the
  same captions and class prompts tokenised beforehand (what evaluation would cost if
  reading, decoding and scoring were free).

Alternated ``--repeat`` times, best of each side (the machine's load varies). Printed: seconds
per 10,000 samples for each side and their ratio, plus the model's load time apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchlib import start

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ROOT.parent / "shared" / "corpus" / "figures" / "pairs.jsonl"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_dataset(work: Path) -> tuple[Path, int]:
    """The real pairs as a dataset: all in the test split, SYNTHETIC round-robin labels."""
    from biomedica_kit.etl.pairs import import_pairs
    from biomedica_kit.labels.table import override
    from biomedica_kit.labels.taxonomy import load_taxonomy
    from biomedica_kit.tables.export import export
    from biomedica_kit.tables.splits import make_split, split_keys

    ds = work / "pairs"
    if not (ds / "splits" / "default.parquet").is_file():
        import_pairs(PAIRS, ds, workers=1, progress=False)
        export(ds, workers=1)
        make_split(ds, fractions={"train": 0.0, "validation": 0.0, "test": 1.0})
        keys = sorted(split_keys(ds, "test"))
        tax = load_taxonomy()
        chosen = [(lab.primary, lab.secondary) for lab in tax.labels[::15]][:8]
        for i, (primary, secondary) in enumerate(chosen):
            override(ds, keys[i::len(chosen)], primary_label=primary, secondary_label=secondary,
                     note="SYNTHETIC benchmark label")
    from biomedica_kit.tables.splits import split_keys as keys_of

    return ds, len(keys_of(ds, "test"))


def bare_forward(ds: Path, model: str, pretrained: str | None, device: str | None,
                 batch_size: int) -> tuple[Callable[[], float], float, str]:
    """A function timing one bare pass, the model's load time and its device."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from biomedica_kit.embed.decode import decode_batch
    from biomedica_kit.labels.taxonomy import load_taxonomy
    from biomedica_kit.tables.samples import ROW_COLUMNS
    from biomedica_train.evaluate import class_prompts, image_spec
    from biomedica_train.models import load_model, resolve_model

    t0 = time.perf_counter()
    m = load_model(resolve_model(model, pretrained), device=device)
    load = time.perf_counter() - t0
    m.model.eval()
    spec = image_spec(m)
    rows = pq.read_table(ds / "metadata" / "figures.parquet",
                         columns=[*ROW_COLUMNS, "caption"]).to_pylist()
    pixels = [decode_batch(str(ds), rows[i:i + batch_size], spec).pixels
              for i in range(0, len(rows), batch_size)]
    tax = load_taxonomy()
    prompts = [p for level in ("primary", "secondary") for ps in class_prompts(tax, level)[1]
               for p in ps]
    texts = [r["caption"] or "" for r in rows] + prompts
    tokens = [m.tokenizer(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    mean = torch.tensor(spec.mean, device=m.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=m.device).view(1, 3, 1, 1)

    def run() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for p in pixels:
                x = torch.from_numpy(np.ascontiguousarray(p)).to(m.device)
                x = x.permute(0, 3, 1, 2).float().div_(255.0)
                m.model.encode_image((x - mean) / std).float().cpu()
            for tok in tokens:
                m.model.encode_text(tok.to(m.device)).float().cpu()
        if str(m.device).startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    run()  # warm-up (allocator, kernels)
    return run, load, str(m.device)


def main() -> None:
    from biomedica_train.models import TINY_MODEL

    ap = argparse.ArgumentParser(description="biomedica evaluate benchmark")
    ap.add_argument("--model", default=TINY_MODEL)
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side (best of each)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for both sides (default: torch's own)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the result to this file")
    args = ap.parse_args()
    work = start(args.workdir, "bench-eval-")
    import warnings

    import torch

    from biomedica_train.evaluate import evaluate

    if args.threads:
        torch.set_num_threads(args.threads)

    ds, n = make_dataset(work)
    run_bare, load, dev = bare_forward(ds, args.model, args.pretrained, args.device,
                                  args.batch_size)
    ours = bare = float("inf")
    load_ours = 0.0
    for r in range(args.repeat):
        bare = min(bare, run_bare())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = evaluate(ds, [(args.model, args.pretrained)], name=f"bench{r}",
                         batch_size=args.batch_size, device=args.device, progress=False)
        ours = min(ours, s.seconds - s.load_seconds)
        load_ours = s.load_seconds
    per = 10_000 / n
    row = {"what": f"evaluate {n} real figures ({args.model}, batch {args.batch_size}, "
                   f"{dev}, {torch.get_num_threads()} torch threads) vs bare forward "
                   f"over pre-decoded images and pre-tokenised captions + class prompts",
           "samples": n, "ours_s_per_10k": ours * per, "base_s_per_10k": bare * per,
           "ratio": ours / bare, "model_load_s": load, "model_load_in_evaluate_s": load_ours,
           "load_average_end": os.getloadavg()[0]}
    print(json.dumps(row))
    print("\n| measurement | ours | baseline | ratio |\n|---|---|---|---|")
    print(f"| {row['what']} | {row['ours_s_per_10k']:.1f} s / 10k | "
          f"{row['base_s_per_10k']:.1f} s / 10k | {row['ratio']:.2f}x |")
    print(f"# model load {load:.1f} s (not counted); load average {os.getloadavg()[0]:.1f} "
          f"at the end", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
