"""``biomedica evaluate``: models side by side on a dataset's held-out split.

A thin call of :func:`biomedica_train.evaluate.evaluate`; torch and open_clip load inside the
command.
"""

from __future__ import annotations

import click

__all__ = ["evaluate", "parse_model"]

_SOURCES = {"reviewed": ("expert", "override"), "all": ("proposal", "expert", "override")}


def parse_model(value: str) -> tuple[str, str | None]:
    """``(model, pretrained)`` of one ``--model`` value: a checkpoint file or a name is taken
    whole; ``ARCH,PRETRAINED`` splits at the first comma (architecture names have none)."""
    from pathlib import Path

    if Path(value).is_file() or "," not in value:
        return value, None
    arch, pretrained = value.split(",", 1)
    if not arch or not pretrained:
        raise click.BadParameter(f"{value!r}: expected ARCH,PRETRAINED", param_hint="--model")
    return arch, pretrained


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--model", "models", multiple=True, required=True, metavar="MODEL",
              help="A model to evaluate; repeat for several (shown side by side). A checkpoint "
                   "of `biomedica train` (its architecture is recorded), an open_clip "
                   "architecture (random init unless a pretrained tag follows: "
                   "ViT-B-16,openai or ARCH,/path/weights.pt), hf-hub:ORG/REPO or "
                   "local-dir:/path.")
@click.option("--pretrained", default=None,
              help="Pretrained tag or weights file of the one --model given (with several "
                   "models, write each as ARCH,PRETRAINED).")
@click.option("--split", "split", type=click.Choice(["train", "validation", "test"]),
              default="test", show_default=True, help="Which part of the split to evaluate on.")
@click.option("--split-name", default="default", show_default=True,
              help="The split file, DATASET/splits/<name>.parquet (`biomedica split`).")
@click.option("--label-source", type=click.Choice(sorted(_SOURCES)), default="reviewed",
              show_default=True,
              help="Zero-shot truth: reviewed labels (label_source expert or override), or "
                   "all (proposals too).")
@click.option("--taxonomy", default=None, type=click.Path(exists=True),
              help="Taxonomy folder or file whose labels are the zero-shot classes. "
                   "Default: curation/taxonomy.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images (and captions) per forward pass.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Image decoding processes (0: in this process). Default: none for a split "
                   "of 1,024 samples or fewer, else cores - 1.")
@click.option("--device", default=None, help="torch device. Default: cuda when present.")
@click.option("--name", default=None,
              help="Evaluation name: results in DATASET/eval/<name>/. Default: "
                   "<split-name>-<split>-<UTC time>.")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Write the results to this folder instead of DATASET/eval/<name>/.")
@click.option("--allow-overlap", is_flag=True,
              help="Evaluate a checkpoint even on the split part it trained on (labelled as "
                   "overlapping in every output).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar.")
def evaluate(dataset: str, models: tuple[str, ...], pretrained: str | None, split: str,
             split_name: str, label_source: str, taxonomy: str | None, batch_size: int,
             workers: int | None, device: str | None, name: str | None, out: str | None,
             allow_overlap: bool, progress: bool) -> None:
    """Evaluate one or more models on DATASET's held-out split, side by side.

    Zero-shot classification on the taxonomy's primary and secondary labels (truth: the
    reviewed label table), and image<->text retrieval recall@1/5/10 over the split's
    captions, overall and by licence and label. Writes results.parquet, results.md and
    config.json under DATASET/eval/<name>/ and prints the table.
    """
    import warnings

    from biomedica_kit.embed.encoders import ModelUnavailable
    from biomedica_train.evaluate import EvalError
    from biomedica_train.evaluate import evaluate as run_evaluation

    if pretrained is not None and len(models) != 1:
        raise click.UsageError("--pretrained goes with exactly one --model; with several, "
                               "write each as --model ARCH,PRETRAINED")
    specs = [parse_model(m) for m in models]
    if pretrained is not None:
        specs = [(specs[0][0], pretrained)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the summary prints them
            summary = run_evaluation(
                dataset, specs, split=split, split_name=split_name,
                label_sources=_SOURCES[label_source], batch_size=batch_size, device=device,
                name=name, out=out, allow_overlap=allow_overlap, workers=workers,
                taxonomy=taxonomy, progress=progress)
    except (EvalError, ModelUnavailable, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\n".join(summary.format_lines()))
