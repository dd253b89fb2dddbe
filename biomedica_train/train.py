"""A training run: open_clip continued pretraining on a dataset's shards, by streaming.

:func:`train` drives open_clip's own training package (``open_clip_train``, not a fork): its
argument defaults (``params.parse_args``), device and distributed set-up
(``init_distributed_device``: one process, or one per GPU under ``torchrun``, DDP), loss
(``open_clip.create_loss``), cosine schedule (``scheduler.cosine_lr``), epoch loop
(``train.train_one_epoch``: AMP autocast, gradient accumulation, clipping, logit-scale clamp)
and validation (``train.evaluate``: loss and retrieval recall on the ``validation`` split).
What it adds is the data (:mod:`biomedica_train.data`: our shards, selected by split,
predicates, labels and weights) and the run's bookkeeping:

- a run folder (``DATASET/train/<name>/`` by default) with ``config.json``, ``out.log``
  (open_clip's log lines: progress, loss, samples/s, learning rate), ``metrics.csv`` (every
  logged scalar: ``step``, ``name``, ``value``) and, with ``tensorboard``, ``tensorboard/``;
- checkpoints in open_clip's format (``epoch``, ``name``, ``state_dict``, ``optimizer``,
  ``scaler``), each written to a temporary file, fsynced and renamed
  (``checkpoints/epoch_<n>.pt`` and ``epoch_latest.pt``), plus ``ckpt["biomedica"]``: the
  architecture, base weights, dataset version, split (name and file digest), text template,
  selection and step, so ``biomedica evaluate --model <checkpoint>`` knows what it holds and
  refuses to test it on its own training articles;
- **resume**: running the same command again continues from ``epoch_latest.pt`` (model,
  optimizer, scaler, epoch, and the data stream's epoch seed); a different configuration in
  the same folder is refused unless ``fresh`` starts over. A kill at any moment leaves the
  last complete checkpoint; one trainer per run folder (a lock).

An epoch is ``samples_per_epoch`` samples (default: the selection's size), so a checkpoint
lands at every epoch's end: make epochs shorter for more frequent checkpoints.
``precision="auto"`` is ``amp`` on CUDA and ``fp32`` on the CPU; the same call runs
unchanged on GPUs, and under ``torchrun --nproc_per_node N -m biomedica_kit.cli train ...``
each process trains on its own shard draws (only rank 0 writes).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from biomedica_kit.base.atomic import atomic_path, atomic_write_bytes, sweep_temporaries
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.tables.splits import make_split, split_path
from biomedica_train.data import (
    MixPart,
    Selection,
    TextTemplate,
    select,
    train_loader,
    val_loader,
)
from biomedica_train.models import CHECKPOINT_META, ModelSpec, load_model, resolve_model

__all__ = ["LATEST", "RUNS_DIR", "MetricsWriter", "TrainConfig", "TrainError", "TrainResult",
           "read_metrics", "run_dir", "train"]

RUNS_DIR = "train"
LATEST = "epoch_latest.pt"
#: Configuration fields that may change when a run resumes (the rest must match).
_RESUMABLE = ("epochs", "workers", "log_every", "tensorboard", "fresh", "device", "base_url",
              "out")


class TrainError(RuntimeError):
    """A run that cannot start (bad selection, a different run in the folder, no data)."""


@dataclass
class TrainConfig:
    """Everything a run depends on (the CLI's options; defaults declared here once)."""

    dataset: str
    model: str
    pretrained: str | None = None
    text: str = "caption"
    subset: str | None = None
    mix: list[MixPart] = field(default_factory=list)
    labels: str = "none"
    split_name: str | None = "default"
    base_url: str | None = None
    epochs: int = 1
    samples_per_epoch: int | None = None
    batch_size: int = 64
    lr: float = 1e-5
    wd: float = 0.2
    warmup: int = 100
    precision: str = "auto"
    accum_freq: int = 1
    grad_clip_norm: float | None = 1.0
    workers: int = 2
    seed: int = 0
    shuffle: int = 2000
    log_every: int = 10
    tensorboard: bool = False
    name: str | None = None
    out: str | None = None
    fresh: bool = False
    device: str | None = None

    def parts(self) -> list[MixPart]:
        """The mix: ``mix`` if given, else ``subset`` (or everything) with weight 1."""
        if self.mix and self.subset:
            raise TrainError("give --subset or --mix, not both (a mix part is a subset)")
        return list(self.mix) or [MixPart(self.subset, 1.0)]


@dataclass
class TrainResult:
    """What :func:`train` did."""

    run_dir: str
    checkpoint: str
    start_epoch: int
    epochs: int
    steps: int
    samples: int
    seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_metrics: dict[str, float] = field(default_factory=dict)
    master: bool = True  # rank 0 (the only rank that writes and reports)

    def format_lines(self) -> list[str]:
        """Human-readable summary (the CLI prints it)."""
        first = f"{self.losses[0][1]:.4f}" if self.losses else "-"
        last = f"{self.losses[-1][1]:.4f}" if self.losses else "-"
        rate = self.samples / self.seconds if self.seconds else 0.0
        lines = [f"run {self.run_dir}: epochs {self.start_epoch} -> {self.epochs}, "
                 f"{self.steps} steps, {self.samples} samples in {self.seconds:.1f} s "
                 f"({rate:.1f} samples/s)",
                 f"loss {first} -> {last}; checkpoint {self.checkpoint}"]
        if self.val_metrics:
            keep = ("val_loss", "image_to_text_R@1", "text_to_image_R@1")
            lines.append("validation: " + ", ".join(
                f"{k} {self.val_metrics[k]:.4f}" for k in keep if k in self.val_metrics))
        return lines


class MetricsWriter:
    """``metrics.csv`` (``step,name,value``), optionally mirrored to TensorBoard; has the
    ``add_scalar`` method open_clip's loop calls on its ``tb_writer``."""

    def __init__(self, folder: Path, tensorboard: bool) -> None:
        self.path = folder / "metrics.csv"
        new = not self.path.is_file()
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - open for the run
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["step", "name", "value", "time"])
        self._tb: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(folder / "tensorboard"))

    def add_scalar(self, name: str, value: float, step: int) -> None:
        """Record one scalar (flushed at once: a killed run keeps what it logged)."""
        self._csv.writerow([step, name, float(value), round(time.time(), 3)])
        self._file.flush()
        if self._tb is not None:
            self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run: str | os.PathLike[str], name: str = "train/loss"
                 ) -> list[tuple[int, float]]:
    """``(step, value)`` rows of one metric from a run's ``metrics.csv``, in step order (a
    resumed run's repeated steps keep their last value)."""
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        return []
    out: dict[int, float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["name"] == name:
                out[int(row["step"])] = float(row["value"])
    return sorted(out.items())


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")[:80]


def run_dir(config: TrainConfig) -> Path:
    """The run folder: ``out``, else ``DATASET/train/<name>`` (name: the model's)."""
    if config.out:
        return Path(config.out)
    name = config.name or _slug(Path(config.model).stem if Path(config.model).is_file()
                                else config.model.split(":")[-1].rsplit("/", 1)[-1])
    return Path(config.dataset) / RUNS_DIR / _slug(name)


def _open_clip_args(config: TrainConfig, arch: str, folder: Path, device: str) -> Any:
    """open_clip_train's argument namespace for this run (its defaults for the rest)."""
    from open_clip_train.params import parse_args

    precision = config.precision
    if precision == "auto":
        precision = "amp" if device.startswith("cuda") else "fp32"
    argv = ["--model", arch, "--batch-size", str(config.batch_size),
            "--lr", str(config.lr), "--wd", str(config.wd), "--warmup", str(config.warmup),
            "--epochs", str(config.epochs), "--precision", precision,
            "--workers", str(config.workers), "--seed", str(config.seed),
            "--accum-freq", str(config.accum_freq), "--log-every-n-steps",
            str(config.log_every), "--val-frequency", "1", "--logs", str(folder.parent),
            "--name", folder.name, "--device", device]
    if config.grad_clip_norm:
        argv += ["--grad-clip-norm", str(config.grad_clip_norm)]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # DDP: each rank's own features
        argv += ["--local-loss", "--gather-with-grad"]
    args = parse_args(argv)
    args.checkpoint_path = str(folder / "checkpoints")
    # What open_clip_train's main derives from the arguments before its loop.
    args.save_logs = True
    args.wandb = False
    args.tensorboard = config.tensorboard
    args.distill = False
    args.log_level = logging.INFO
    return args


@contextlib.contextmanager
def _run_logging(log_file: Path | None) -> Iterator[None]:
    """open_clip's log lines (its format, INFO on the root logger) to stderr and ``out.log``
    for the run only. Not ``open_clip_train.logger.setup_logging``: that sets every logger
    of the process to INFO for good (torch's included) and adds handlers on every call."""
    fmt = logging.Formatter("%(asctime)s | %(levelname)s | %(message)s",
                            datefmt="%Y-%m-%d,%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    root = logging.getLogger()
    level = root.level
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(level)
        for h in handlers:
            root.removeHandler(h)
            h.close()


def _config_record(config: TrainConfig, spec: ModelSpec, sel: Selection) -> dict[str, Any]:
    rec = asdict(config)
    rec["mix"] = [asdict(p) for p in config.parts()]
    rec["model_version"] = spec.model_version
    rec["selection"] = sel.describe()
    return rec


def _check_same_run(folder: Path, record: dict[str, Any], fresh: bool) -> None:
    path = folder / "config.json"
    if fresh or not path.is_file():
        return
    old = json.loads(path.read_text())
    diff = sorted(k for k in record if k not in _RESUMABLE and k != "selection"
                  and old.get(k) != record[k])
    if diff:
        raise TrainError(f"{folder} holds a run with other settings ({', '.join(diff)}); "
                         f"use another --name, or --fresh to start this one over")


def _save_checkpoint(args: Any, model: Any, optimizer: Any, scaler: Any, epoch: int,
                     step: int, meta: dict[str, Any]) -> Path:
    """``epoch_<n>.pt`` and ``epoch_latest.pt``, each atomically (temp, fsync, rename)."""
    import torch

    folder = Path(args.checkpoint_path)
    folder.mkdir(parents=True, exist_ok=True)
    ckpt: dict[str, Any] = {"epoch": epoch, "name": args.name, "state_dict": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            CHECKPOINT_META: {**meta, "epoch": epoch, "step": step,
                                              "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}}
    if scaler is not None:
        ckpt["scaler"] = scaler.state_dict()
    path = folder / f"epoch_{epoch}.pt"
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    with atomic_path(folder / LATEST) as tmp:  # the same file again: a link, not a 2nd save
        try:
            os.link(path, tmp)
        except OSError:  # a filesystem without hard links
            shutil.copyfile(path, tmp)
    return path


def _optimizer(model: Any, args: Any) -> Any:
    """AdamW without weight decay on gains, biases and the logit scale (open_clip's main)."""
    import torch

    def exclude(n: str, p: Any) -> bool:
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": args.wd}],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)


def train(config: TrainConfig) -> TrainResult:
    """Run (or resume) a training run; see the module doc."""
    from open_clip_train.distributed import init_distributed_device, is_master

    from biomedica_kit.embed.encoders import auto_device

    text = TextTemplate(config.text)
    spec = resolve_model(config.model, config.pretrained)
    if config.split_name and not split_path(config.dataset, config.split_name).is_file():
        # No held-out articles yet: make the split first, so evaluation can never leak.
        made = make_split(config.dataset, name=config.split_name)
        logging.getLogger(__name__).warning("made %s", made.format_lines()[0])
    try:
        sel = select(config.dataset, parts=config.parts(), split_name=config.split_name,
                     labels=config.labels, text=text)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    folder = run_dir(config)
    args = _open_clip_args(config, spec.arch, folder, auto_device(config.device))
    init_distributed_device(args)
    master = is_master(args)
    record = _config_record(config, spec, sel)
    if master:
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if master:
            stack.enter_context(dataset_lock(folder, f"train {folder.name}"))
            # A kill -9 mid-save leaves a checkpoint's temporary: the lock sweeps the folder
            # itself only, the checkpoints are one level down.
            sweep_temporaries(folder)
            _check_same_run(folder, record, config.fresh)
            if config.fresh:
                for p in (folder / "checkpoints").glob("*.pt"):
                    p.unlink()
                (folder / "metrics.csv").unlink(missing_ok=True)
            atomic_write_bytes(folder / "config.json",
                               json.dumps(record, indent=2, default=str).encode())
        stack.enter_context(_run_logging(folder / "out.log" if master else None))
        return _run(config, spec, sel, text, folder, args, master)


def _run(config: TrainConfig, spec: ModelSpec, sel: Selection, text: TextTemplate,
         folder: Path, args: Any, master: bool) -> TrainResult:
    """The epochs of a run whose folder is locked and whose configuration is recorded."""
    import torch
    from open_clip import create_loss
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import evaluate, train_one_epoch

    torch.manual_seed(config.seed + args.rank)
    loaded = load_model(spec, device=args.device, precision=args.precision, output_dict=True)
    model = loaded.model
    optimizer = _optimizer(model, args)
    scaler = torch.amp.GradScaler(device=args.device) if args.precision == "amp" else None
    start_epoch = 0
    latest = folder / "checkpoints" / LATEST
    if latest.is_file() and not config.fresh:
        ckpt = torch.load(latest, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        logging.info("resuming %s at epoch %d", latest, start_epoch)
    original = model
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=(
            [args.device] if str(args.device).startswith("cuda") else None))
    data: dict[str, Any] = {"train": train_loader(
        sel, text, loaded.preprocess_train, loaded.tokenizer, batch_size=config.batch_size,
        samples_per_epoch=config.samples_per_epoch, workers=config.workers, seed=config.seed,
        shuffle=config.shuffle, base_url=config.base_url, world_size=args.world_size,
        epoch=start_epoch)}
    val = val_loader(sel, text, loaded.preprocess_val, loaded.tokenizer,
                     batch_size=config.batch_size, base_url=config.base_url)
    if val is not None:
        data["val"] = val
    steps_per_epoch = data["train"].dataloader.num_batches // args.accum_freq
    total = steps_per_epoch * config.epochs
    warmup = min(args.warmup, max(0, total // 10))  # at most a tenth of the run
    scheduler = cosine_lr(optimizer, args.lr, warmup, total)
    loss = create_loss(args)
    writer = MetricsWriter(folder, config.tensorboard) if master else None
    # A resumed run has the same settings (checked), so its base weights are spec's too.
    meta = {"arch": spec.arch, "base_pretrained": spec.pretrained, "run": folder.name,
            "dataset": str(config.dataset),
            "dataset_version": read_manifest(Path(config.dataset))["dataset_version"],
            "text": text.spec, **sel.describe(),
            "model_version": spec.model_version}
    t0, val_metrics = time.perf_counter(), {}
    checkpoint = latest if latest.is_file() else Path("")
    try:
        for epoch in range(start_epoch, config.epochs):
            logging.info("start epoch %d of %d (%d steps of %d samples)", epoch, config.epochs,
                         steps_per_epoch, config.batch_size * args.world_size)
            train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, None, args,
                            tb_writer=writer)
            done = epoch + 1
            if "val" in data:
                val_metrics = evaluate(model, data, done, args, tb_writer=writer)
            if master:
                checkpoint = _save_checkpoint(args, original, optimizer, scaler, done,
                                              done * steps_per_epoch, meta)
                logging.info("checkpoint %s", checkpoint)
            if args.distributed:
                torch.distributed.barrier()
    finally:
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - t0
    epochs_run = max(0, config.epochs - start_epoch)
    return TrainResult(str(folder), str(checkpoint), start_epoch, config.epochs,
                       epochs_run * steps_per_epoch,
                       epochs_run * steps_per_epoch * config.batch_size * args.world_size
                       * args.accum_freq, seconds, read_metrics(folder),
                       {k: float(v) for k, v in (val_metrics or {}).items()
                        if isinstance(v, (int, float)) and math.isfinite(float(v))},
                       master)

