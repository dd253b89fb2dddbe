"""``biomedica train``: open_clip continued pretraining on a dataset, by streaming.

A thin call of :func:`biomedica_train.train.train`; its defaults come from
:class:`biomedica_train.train.TrainConfig` (declared once). torch and open_clip load inside
the command.
"""

from __future__ import annotations

import sys

import click

from biomedica_kit.cli.options import LazyDefault, field_default
from biomedica_train.text import LABEL_FILTERS, TEXT_PRESETS

__all__ = ["train"]


def _config() -> object:
    """A TrainConfig for its defaults (imported when click needs them, not at CLI start)."""
    from biomedica_train.train import TrainConfig

    return TrainConfig(dataset="", model="")


def _d(name: str) -> LazyDefault:
    return field_default(_config, name)


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--model", required=True,
              help="open_clip architecture (ViT-B-16, biomedica-tiny-clip...), hf-hub:ORG/REPO, "
                   "local-dir:/PATH, or a checkpoint of an earlier run (continues from it).")
@click.option("--pretrained", default=None,
              help="Weights: an open_clip tag (openai, laion2b_s34b_b88k...) or a file. "
                   "Without it an architecture starts from random weights.")
@click.option("--text", default=_d("text"), show_default=True,
              help=f"The text each image trains with: a preset ({', '.join(TEXT_PRESETS)}) "
                   "or a template over {caption}, {refs}, {title}, {primary_label}, "
                   "{secondary_label}, {panel_type}.")
@click.option("--subset", default=None,
              help="SQL predicate over figures_labeled: train only on the samples it selects.")
@click.option("--mix", multiple=True,
              help="WEIGHT:PREDICATE, repeatable: draw samples from each part in proportion "
                   "to its weight (instead of --subset).")
@click.option("--labels", type=click.Choice(LABEL_FILTERS), default=_d("labels"),
              show_default=True,
              help="Keep only labelled samples: any label, or expert-reviewed ones.")
@click.option("--split-name", default=_d("split_name"), show_default=True,
              help="Train on the 'train' side of DATASET/splits/NAME.parquet (biomedica split).")
@click.option("--no-split", is_flag=True,
              help="Train on every sample (no held-out articles: evaluation then leaks).")
@click.option("--base-url", default=None,
              help="Stream the shards over HTTP from where DATASET is served "
                   "(e.g. http://127.0.0.1:8765 from biomedica serve).")
@click.option("--epochs", type=click.IntRange(min=1), default=_d("epochs"), show_default=True)
@click.option("--samples-per-epoch", type=click.IntRange(min=1), default=None,
              help="Samples per epoch (a checkpoint at every epoch's end) [default: the "
                   "selection's size].")
@click.option("--batch-size", type=click.IntRange(min=1), default=_d("batch_size"),
              show_default=True, help="Per process (GPU).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=_d("lr"),
              show_default=True, help="Peak learning rate (cosine schedule).")
@click.option("--wd", type=click.FloatRange(min=0), default=_d("wd"), show_default=True,
              help="AdamW weight decay (not on gains, biases, logit scale).")
@click.option("--warmup", type=click.IntRange(min=0), default=_d("warmup"), show_default=True,
              help="Warm-up steps (at most a tenth of the run).")
@click.option("--precision", type=click.Choice(["auto", "amp", "amp_bf16", "fp32", "bf16"]),
              default=_d("precision"), show_default=True,
              help="auto: amp on CUDA, fp32 on the CPU.")
@click.option("--accum-freq", type=click.IntRange(min=1), default=_d("accum_freq"),
              show_default=True, help="Gradient accumulation (batches per optimizer step).")
@click.option("--grad-clip-norm", type=click.FloatRange(min=0), default=_d("grad_clip_norm"),
              show_default=True, help="0 disables clipping.")
@click.option("--workers", type=click.IntRange(min=0), default=_d("workers"),
              show_default=True, help="Data loader processes per GPU/process.")
@click.option("--seed", type=int, default=_d("seed"), show_default=True)
@click.option("--shuffle", type=click.IntRange(min=0), default=_d("shuffle"),
              show_default=True, help="Sample shuffle buffer.")
@click.option("--log-every", type=click.IntRange(min=1), default=_d("log_every"),
              show_default=True, help="Log progress and loss every N steps.")
@click.option("--tensorboard", is_flag=True, help="Also log to RUN/tensorboard/.")
@click.option("--name", default=None,
              help="Run name: DATASET/train/NAME [default: the model's name].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder instead of DATASET/train/NAME.")
@click.option("--fresh", is_flag=True, help="Start the run over (drops its checkpoints).")
@click.option("--device", default=None, help="cuda, cuda:1, cpu [default: cuda when present].")
def train(dataset: str, model: str, pretrained: str | None, text: str, subset: str | None,
          mix: tuple[str, ...], labels: str, split_name: str, no_split: bool,
          base_url: str | None, epochs: int, samples_per_epoch: int | None, batch_size: int,
          lr: float, wd: float, warmup: int, precision: str, accum_freq: int,
          grad_clip_norm: float, workers: int, seed: int, shuffle: int, log_every: int,
          tensorboard: bool, name: str | None, out: str | None, fresh: bool,
          device: str | None) -> None:
    """Continue pretraining a CLIP model on DATASET's shards, by streaming.

    open_clip's own training loop (open_clip_train) on the train split's samples; checkpoints
    in open_clip's format under RUN/checkpoints/, progress in RUN/out.log and
    RUN/metrics.csv. Running the same command again resumes from the last checkpoint. On
    several GPUs: torchrun --nproc_per_node N $(which biomedica) train ...
    """
    from biomedica_kit.dataset.lock import DatasetLocked
    from biomedica_kit.embed.encoders import ModelUnavailable
    from biomedica_train.data import parse_mix
    from biomedica_train.train import TrainConfig, TrainError
    from biomedica_train.train import train as run_train

    try:
        config = TrainConfig(
            dataset=dataset, model=model, pretrained=pretrained, text=text, subset=subset,
            mix=parse_mix(mix), labels=labels, split_name=None if no_split else split_name,
            base_url=base_url, epochs=epochs, samples_per_epoch=samples_per_epoch,
            batch_size=batch_size, lr=lr, wd=wd, warmup=warmup, precision=precision,
            accum_freq=accum_freq, grad_clip_norm=grad_clip_norm or None, workers=workers,
            seed=seed, shuffle=shuffle, log_every=log_every, tensorboard=tensorboard,
            name=name, out=out, fresh=fresh, device=device)
        result = run_train(config)
    except (TrainError, DatasetLocked, ModelUnavailable, ValueError, FileNotFoundError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if result.master:
        click.echo("\n".join(result.format_lines()))
