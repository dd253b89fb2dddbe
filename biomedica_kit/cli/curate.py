"""Curation commands: ``embed``, ``cluster``, ``propose``, ``label``, ``taxonomy``,
``import-pairs``. :func:`register` adds them to the ``biomedica`` group.

Each is a thin call of the library (:mod:`biomedica_kit.embed.run`,
:mod:`biomedica_kit.cluster.run`, :mod:`biomedica_kit.labels`,
:mod:`biomedica_kit.ingest.pairs`); heavy libraries (torch) load inside the command.
"""

from __future__ import annotations

import sys

import click

__all__ = ["register"]

_DEFAULTS = ("torchvision:mobilenet_v2 (torchvision's ImageNet weights, packaged) for images "
             "and all-MiniLM-L6-v2 (packaged) for captions: both work offline")


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--model", default=None,
              help=f"Image model. Default: {_DEFAULTS}. Others: an open_clip architecture "
                   "(with --pretrained TAG or FILE), hf-hub:ORG/REPO (BiomedCLIP: "
                   "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224), "
                   "local-dir:/path (a downloaded snapshot), torchvision:ARCH (--pretrained "
                   "FILE), or none.")
@click.option("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file; "
                                                 "torchvision weights file.")
@click.option("--text-model", default=None,
              help="Caption model: a sentence-transformers name or folder, 'same' (the image "
                   "model's text tower), or none. Default: the image model's text tower if it "
                   "has one, else all-MiniLM-L6-v2.")
@click.option("--name", default=None, help="Store name under DATASET/embeddings/ "
                                           "(default: from the models).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--part-size", type=int, default=2048, show_default=True,
              help="Samples per committed part (what an interruption can lose).")
@click.option("--workers", type=int, default=None,
              help="Decoding processes (default: cores - 1; 0 decodes in this process).")
@click.option("--device", default=None, help="torch device (default: cuda when present).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def embed(dataset: str, model: str | None, pretrained: str | None, text_model: str | None,
          name: str | None, batch_size: int, part_size: int, workers: int | None,
          device: str | None, progress: bool) -> None:
    """Embed every sample's image and caption into DATASET/embeddings/<name>/.

    Resumable (an interrupted run loses at most one part) and incremental (a new dataset
    version embeds only its new keys).
    """
    from biomedica_kit.embed.encoders import ModelUnavailable
    from biomedica_kit.embed.run import ModelMismatch
    from biomedica_kit.embed.run import embed as run

    try:
        summary = run(dataset, model=model, pretrained=pretrained, text_model=text_model,
                      name=name, batch_size=batch_size, part_size=part_size, workers=workers,
                      device=device, progress=progress)
    except (ModelUnavailable, ModelMismatch, ValueError, FileNotFoundError) as exc:
        _fail(exc)
    click.echo("\n".join(summary.format_lines()))


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--k", "k", type=int, required=True, help="Number of clusters.")
@click.option("--pca", type=int, default=64, show_default=True,
              help="PCA dimensions before k-means (0: none).")
@click.option("--embeddings", default=None, help="Store name (default: the only or newest).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--kind", type=click.Choice(["image", "text"]), default="image",
              show_default=True, help="Which vectors to cluster.")
@click.option("--backend", type=click.Choice(["faiss", "minibatch"]), default=None,
              help="k-means: faiss (sampled Lloyd) or minibatch (streaming scikit-learn); "
                   "default faiss when installed.")
@click.option("--map", "map_method", type=click.Choice(["umap", "pca"]), default=None,
              help="2-D map method (default umap when installed).")
@click.option("--run", "run_name", default=None, help="Run name (default: STORE-kK-sSEED).")
@click.option("--montages/--no-montages", default=True, show_default=True)
@click.option("--propose/--no-propose", default=True, show_default=True,
              help="Also write label proposals and a label version (as `propose`).")
@click.option("--taxonomy", type=click.Path(exists=True), default=None,
              help="Taxonomy folder or file (default: curation/taxonomy).")
def cluster(dataset: str, k: int, pca: int, embeddings: str | None, seed: int, kind: str,
            backend: str | None, map_method: str | None, run_name: str | None,
            montages: bool, propose: bool, taxonomy: str | None) -> None:
    """PCA + k-means over DATASET's embeddings -> DATASET/clusters/<run>/ (assignments,
    exemplars, stats, montages, 2-D map, near-duplicates; proposals unless --no-propose)."""
    from dataclasses import replace

    from biomedica_kit.cluster.run import ClusterConfig
    from biomedica_kit.cluster.run import cluster as run

    cfg = ClusterConfig(k=k, pca=pca, seed=seed, kind=kind)
    if backend:
        cfg = replace(cfg, backend=backend)
    if map_method:
        cfg = replace(cfg, map_method=map_method)
    try:
        summary = run(dataset, cfg, embeddings=embeddings, run=run_name, montages=montages)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    click.echo("\n".join(summary.format_lines()))
    if propose:
        _propose(dataset, summary.run, taxonomy)


def _propose(dataset: str, run: str, taxonomy: str | None) -> None:
    from biomedica_kit.labels.proposals import propose_run
    from biomedica_kit.labels.table import propagate
    from biomedica_kit.labels.taxonomy import load_taxonomy

    tax = load_taxonomy(taxonomy)
    for w in tax.warnings:
        click.echo(f"taxonomy: {w}", err=True)
    table = propose_run(dataset, run, taxonomy=taxonomy)
    version = propagate(dataset, run, taxonomy=taxonomy)
    top = sorted(table.to_pylist(), key=lambda r: -r["score"])[:5]
    click.echo(f"proposals {table.num_rows} clusters (taxonomy {tax.version}); "
               f"labels version {version}")
    for r in top:
        click.echo(f"  cluster {r['cluster']}: {r['primary_label']} / {r['secondary_label']} "
                   f"({r['panel_type']}, score {r['score']:.2f})")


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--clusters", "run", required=True, help="The cluster run (clusters/<run>/).")
@click.option("--taxonomy", type=click.Path(exists=True), default=None,
              help="Taxonomy folder or file (default: curation/taxonomy).")
def propose(dataset: str, run: str, taxonomy: str | None) -> None:
    """Score labels for every cluster of a run and propagate them to a new label version
    (DATASET/labels/<version>.parquet; expert and override labels are kept)."""
    from biomedica_kit.labels.taxonomy import TaxonomyError

    try:
        _propose(dataset, run, taxonomy)
    except (TaxonomyError, ValueError, FileNotFoundError) as exc:
        _fail(exc)


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--clusters", "run", required=True, help="The cluster run.")
@click.option("--cluster", "cluster_id", type=int, required=True)
@click.option("--accept", "action", flag_value="accept", help="Take the proposal.")
@click.option("--reject", "action", flag_value="reject", help="Clear the cluster's labels.")
@click.option("--change", "change", default=None, metavar="PRIMARY/SECONDARY",
              help="Use these labels instead of the proposal.")
@click.option("--panel-type", type=click.Choice(["single", "multiple"]), default=None)
@click.option("--by", default=None, help="Who decides (recorded).")
@click.option("--note", default=None)
def label(dataset: str, run: str, cluster_id: int, action: str | None, change: str | None,
          panel_type: str | None, by: str | None, note: str | None) -> None:
    """Record an expert decision on one cluster's proposal (a new label version)."""
    from biomedica_kit.labels.table import Decision, LabelError, decide

    if (action is None) == (change is None):
        _fail(ValueError("give exactly one of --accept, --reject, --change P/S"))
    primary = secondary = None
    if change is not None:
        primary, _, secondary = change.partition("/")
        action = "change"
    try:
        version = decide(dataset, run, [Decision(cluster_id, str(action), primary or None,
                                                 secondary or None, panel_type, by, note)])
    except LabelError as exc:
        _fail(exc)
    click.echo(f"labels version {version}: cluster {cluster_id} {action}")


@click.command()
@click.argument("path", required=False, type=click.Path(exists=True))
def taxonomy(path: str | None) -> None:
    """Validate a taxonomy (default: curation/taxonomy) and report inconsistencies in its
    expert cluster labels."""
    from biomedica_kit.labels.taxonomy import (
        TaxonomyError,
        check_cluster_labels,
        load_cluster_labels,
        load_taxonomy,
    )

    try:
        tax = load_taxonomy(path)
    except TaxonomyError as exc:
        _fail(exc)
    n_sec = sum(len(v) for v in tax.tree.values())
    click.echo(f"taxonomy {tax.source}: {len(tax.tree)} primary, {n_sec} secondary labels "
               f"(version {tax.version})")
    for w in tax.warnings:
        click.echo(f"  warning: {w}")
    try:
        report = check_cluster_labels(tax, load_cluster_labels(path))
    except TaxonomyError as exc:
        click.echo(f"no expert cluster labels checked: {exc}")
        return
    click.echo(f"expert cluster labels: {report.clusters} clusters")
    for line in report.format_lines():
        click.echo(f"  {line}")


@click.command("import-pairs")
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--workers", type=int, default=None, help="Worker processes (default: all cores).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def import_pairs(pairs: str, out: str, workers: int | None, progress: bool) -> None:
    """Build a dataset from image-caption pairs (JSON Lines: image path relative to the file,
    caption; optional pmcid, doi, license, figure_label, year, journal; other fields kept),
    exactly as `build` does: image policy, skips with reasons, licence categories (unknown ->
    other), manifest, report."""
    from biomedica_kit.etl.build import NothingToBuild
    from biomedica_kit.etl.pairs import import_pairs as run
    from biomedica_kit.ingest.pairs import PairsError

    try:
        summary = run(pairs, out, workers=workers, progress=progress)
    except (PairsError, NothingToBuild, FileExistsError) as exc:
        _fail(exc)
    click.echo("\n".join(summary.format_lines()))
    if summary.samples == 0:
        _fail(ValueError(f"no sample was written from {pairs} (see {out}/report/)"))


def register(group: click.Group) -> None:
    """Add the curation commands to the ``biomedica`` group."""
    for cmd in (embed, cluster, propose, label, taxonomy, import_pairs):
        group.add_command(cmd)
