"""``biomedica``: one entry point, one subcommand per stage.

Each subcommand is a thin call of the library function of the same name; heavy libraries are
imported inside the subcommand that needs them so ``biomedica parse`` starts fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="biomedica-kit")
def main() -> None:
    """Build, explore and curate BIOMEDICA-style image-caption datasets from PMC OA."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--indent", type=int, default=None, help="Pretty-print with this indent.")
def parse(files: tuple[str, ...], indent: int | None) -> None:
    """Parse JATS/nXML FILES and print one JSON object per article (JSON Lines).

    Images are looked up beside each file. A file that cannot be parsed prints an object with
    ``error`` and ``reason`` and the command exits 1 after the rest.
    """
    from biomedica_kit.jats import JatsError, parse_jats

    failed = 0
    out = sys.stdout
    for f in files:
        p = Path(f)
        siblings = [x.name for x in p.parent.iterdir() if x.is_file()]
        try:
            articles = parse_jats(p.read_bytes(), source_file=p.name, files=siblings)
        except JatsError as exc:
            failed += 1
            out.write(json.dumps({"file": f, "error": str(exc), "reason": exc.reason}) + "\n")
            continue
        for a in articles:
            out.write(json.dumps(a.to_dict(), ensure_ascii=False, indent=indent) + "\n")
    if failed:
        sys.exit(1)


@main.command()
@click.option("--source", required=True, help="Folder of PMC OA packages (NCBI layout or flat).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--file-list", type=click.Path(exists=True, dir_okay=False),
              help="oa_file_list.csv (default: SOURCE/oa_file_list.csv when present).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: all cores).")
@click.option("--limit", type=int, default=None, help="Only the first N packages.")
@click.option("--shard-samples", type=int, default=10_000, show_default=True)
@click.option("--shard-bytes", type=int, default=1 << 30, show_default=True)
@click.option("--max-side", type=int, default=4096, show_default=True,
              help="Downscale images whose longer side exceeds this.")
@click.option("--jpeg-quality", type=int, default=90, show_default=True)
@click.option("--entrez-cache", type=click.Path(file_okay=False),
              help="Merge PubMed records already in this Entrez cache into the samples.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(source, out, file_list, workers, limit, shard_samples, shard_bytes, max_side,
          jpeg_quality, entrez_cache, quiet) -> None:
    """Build WebDataset shards, manifest and report from SOURCE into OUT.

    Exits 0 when the run completed, even if some articles failed (see OUT/report/).
    """
    from biomedica_kit.build import BuildConfig
    from biomedica_kit.build import build as run_build
    from biomedica_kit.images import ImagePolicy

    cfg = BuildConfig(shard_max_samples=shard_samples, shard_max_bytes=shard_bytes,
                      image=ImagePolicy(max_side=max_side, jpeg_quality=jpeg_quality),
                      entrez_cache=str(Path(entrez_cache).resolve()) if entrez_cache else None)
    try:
        s = run_build(source, out, file_list=file_list, workers=workers, limit=limit, config=cfg,
                      progress=not quiet)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    skipped = sum(s.skips.values())
    click.echo(f"dataset {s.out} version {s.dataset_version}")
    click.echo(f"packages {s.packages}  articles " +
               " ".join(f"{k}={v}" for k, v in sorted(s.articles.items())))
    click.echo(f"figures {s.figures}  figure images {s.images}  samples {s.samples}  "
               f"skipped {skipped}  shards {s.shards}  exact duplicates {s.exact_duplicates}")
    click.echo("samples by subset " +
               " ".join(f"{k}={v}" for k, v in s.samples_by_subset.items()))
    if s.skips:
        click.echo("skips by reason " + " ".join(f"{k}={v}" for k, v in sorted(s.skips.items())))
    click.echo(f"reconciles: {s.images} images = {s.samples} samples + {skipped} skips -> "
               f"{'yes' if s.reconciles else 'NO'}  ({s.seconds:.1f} s)")
    if not s.reconciles:
        sys.exit(3)


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
def verify(dataset: str) -> None:
    """Re-check DATASET: manifest, checksums, counts, members of every sample. Exit 0 if all ok."""
    from biomedica_kit.shards import verify as run_verify

    res = run_verify(Path(dataset))
    for w in res.warnings:
        click.echo(f"warning: {w}", err=True)
    for e in res.errors:
        click.echo(f"error: {e}", err=True)
    click.echo(f"{'OK' if res.ok else 'FAILED'}: {res.shards} shards, {res.samples} samples, "
               f"{len(res.errors)} errors")
    sys.exit(0 if res.ok else 1)


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--eutils-url", default=None,
              help="E-utilities base URL (default: NCBI's eutils).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Entrez cache folder (default: DATASET/cache/entrez).")
@click.option("--email", default=None, envvar="NCBI_EMAIL", help="Contact e-mail sent to NCBI.")
@click.option("--api-key", default=None, envvar="NCBI_API_KEY", help="NCBI API key (10 req/s).")
@click.option("--rate", type=float, default=None,
              help="Requests per second (default 3, 10 with a key).")
@click.option("--offline", is_flag=True, help="Use only records already in the cache.")
def enrich(dataset, eutils_url, cache_dir, email, api_key, rate, offline) -> None:
    """Add PubMed (Entrez) fields to DATASET: metadata/entrez.parquet and a new version."""
    from biomedica_kit.enrich import enrich as run_enrich

    s = run_enrich(dataset, eutils_url=eutils_url, cache_dir=cache_dir, email=email,
                   api_key=api_key, rate=rate, fetch=not offline, progress=True)
    click.echo(f"pmids {s.pmids}  " + " ".join(f"{k}={v}" for k, v in sorted(s.counts.items())))
    click.echo(f"samples changed {s.samples_changed}  version {s.dataset_version}"
               + (f" (parent {s.parent})" if s.parent else " (unchanged)"))
    click.echo(f"entrez table {s.entrez_table}")
