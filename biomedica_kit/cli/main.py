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
    from biomedica_kit.etl.jats import JatsError, parse_jats

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
@click.option("--source", required=True,
              help="PMC OA mirror in NCBI's layout: a folder or an http(s):// base URL "
                   "(e.g. https://ftp.ncbi.nlm.nih.gov/pub/pmc/); or a flat folder of packages.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--file-list", default=None,
              help="oa_file_list.csv path or URL (default: SOURCE/oa_file_list.csv).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: all cores).")
@click.option("--limit", type=int, default=None, help="Only the first N selected packages.")
@click.option("--license", "licenses", default=None,
              help="Licence categories to take, from the file list's License column: "
                   "commercial,noncommercial,other.")
@click.option("--since", default=None, help="Last Updated on or after (YYYY[-MM[-DD]]).")
@click.option("--until", default=None, help="Last Updated on or before (YYYY[-MM[-DD]]).")
@click.option("--pub-years", default=None,
              help="Publication years from the citation, e.g. 2015-2020, 2018, 2015-.")
@click.option("--pmcids", default=None, help="PMCIDs to take: a comma list or a file of them.")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Download cache of a remote source (default: OUT/cache/packages).")
@click.option("--rate", type=float, default=3.0, show_default=True,
              help="Remote source: requests per second, all downloads together.")
@click.option("--fetch-threads", type=int, default=4, show_default=True,
              help="Remote source: concurrent downloads.")
@click.option("--retries", type=int, default=5, show_default=True,
              help="Remote source: retries per request (exponential backoff).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Remote source: seconds of silence before a request is retried.")
@click.option("--resume/--no-resume", default=None,
              help="Add to an existing dataset in OUT (default: only when built from the same "
                   "source); --no-resume refuses an existing dataset.")
@click.option("--checkpoint-every", type=int, default=1000, show_default=True,
              help="Packages between durable checkpoints (an interrupted build resumes there).")
@click.option("--ray", "ray_address", default=None,
              help="Run workers on Ray: 'local' starts a local runtime, or a cluster address.")
@click.option("--shard-samples", type=int, default=10_000, show_default=True)
@click.option("--shard-bytes", type=int, default=1 << 30, show_default=True)
@click.option("--max-side", type=int, default=4096, show_default=True,
              help="Downscale images whose longer side exceeds this.")
@click.option("--jpeg-quality", type=int, default=90, show_default=True)
@click.option("--entrez-cache", type=click.Path(file_okay=False),
              help="Merge PubMed records already in this Entrez cache into the samples.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(source, out, file_list, workers, limit, licenses, since, until, pub_years, pmcids,
          cache, rate, fetch_threads, retries, timeout, resume, checkpoint_every, ray_address,
          shard_samples, shard_bytes, max_side, jpeg_quality, entrez_cache, quiet) -> None:
    """Build WebDataset shards, manifest and report from SOURCE into OUT.

    Re-running on an existing OUT adds only what is new (a new version). Exits 0 when the run
    completed, even if some articles or downloads failed (see OUT/report/).
    """
    from biomedica_kit.etl.build import BuildConfig
    from biomedica_kit.etl.build import build as run_build
    from biomedica_kit.etl.images import ImagePolicy
    from biomedica_kit.ingest.sources import Selection, is_remote, parse_pmcids, parse_years

    try:
        sel = Selection(
            licenses=frozenset(x.strip() for x in licenses.split(",") if x.strip())
            if licenses else None,
            since=since, until=until, years=parse_years(pub_years) if pub_years else None,
            pmcids=parse_pmcids(pmcids) if pmcids else None, limit=limit)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    policy = None
    if is_remote(source):
        from biomedica_kit.ingest.fetch import FetchPolicy

        policy = FetchPolicy(rate=rate, threads=fetch_threads, retries=retries,
                             read_timeout=timeout)

    cfg = BuildConfig(shard_max_samples=shard_samples, shard_max_bytes=shard_bytes,
                      image=ImagePolicy(max_side=max_side, jpeg_quality=jpeg_quality),
                      entrez_cache=str(Path(entrez_cache).resolve()) if entrez_cache else None)
    try:
        s = run_build(source, out, file_list=file_list, workers=workers, config=cfg,
                      progress=not quiet, selection=sel, resume=resume, cache=cache,
                      fetch_policy=policy, ray=ray_address, checkpoint_every=checkpoint_every)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    skipped = sum(s.skips.values())
    click.echo(f"dataset {s.out} version {s.dataset_version}"
               + (f" (parent {s.parent})" if s.parent else ""))
    click.echo(f"this run: {s.new_packages} packages processed, {s.unchanged_packages} already "
               "built" + (f"; downloads {s.fetch['downloaded']}, from cache {s.fetch['cached']}, "
                          f"failed {s.fetch['failed']}, requests {s.fetch['requests']}, "
                          f"retries {s.fetch['retries']}" if s.fetch else ""))
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
    from biomedica_kit.dataset.verify import verify as run_verify

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
@click.option("--mesh-descriptors", type=click.Path(exists=True, dir_okay=False), default=None,
              help="NLM's MeSH descriptor file (descYYYY.xml[.gz]): adds top-level categories.")
def enrich(dataset, eutils_url, cache_dir, email, api_key, rate, offline,
           mesh_descriptors) -> None:
    """Add PubMed (Entrez) fields to DATASET: metadata/entrez.parquet and a new version."""
    from biomedica_kit.enrich.apply import enrich as run_enrich

    s = run_enrich(dataset, eutils_url=eutils_url, cache_dir=cache_dir, email=email,
                   api_key=api_key, rate=rate, fetch=not offline, progress=True,
                   mesh_descriptors=mesh_descriptors)
    click.echo(f"pmids {s.pmids}  " + " ".join(f"{k}={v}" for k, v in sorted(s.counts.items())))
    click.echo(f"samples changed {s.samples_changed}  version {s.dataset_version}"
               + (f" (parent {s.parent})" if s.parent else " (unchanged)"))
    click.echo(f"entrez table {s.entrez_table}")


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--force", is_flag=True, help="Re-read every shard, ignoring the cached parts.")
@click.option("--workers", type=int, default=None, help="Processes reading shards (default: all).")
def export(dataset: str, force: bool, workers: int | None) -> None:
    """Export DATASET's metadata to metadata/figures.parquet and metadata/articles.parquet.

    Reads only the caption and json members of each shard; only shards whose checksum changed
    since the last export are re-read.
    """
    from biomedica_kit.tables.export import export as run_export

    try:
        s = run_export(dataset, force=force, workers=workers)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    state = "up to date" if s.up_to_date else (
        f"{len(s.shards_read)} shards read, {s.shards_cached} cached")
    click.echo(f"{s.figures_path}: {s.rows} figures, {len(s.columns)} columns")
    click.echo(f"{s.articles_path}: {s.articles} articles")
    click.echo(f"version {s.dataset_version}: {state}  ({s.seconds:.2f} s)")


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]),
              default="table", show_default=True, help="json is JSON Lines.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write to this file (required for parquet) instead of stdout.")
def query(dataset: str, sql: str, fmt: str, out: str | None) -> None:
    """Run SQL on DATASET's views (figures, articles, entrez, labels...) and print the result."""
    import duckdb

    from biomedica_kit.tables.export import connect
    from biomedica_kit.tables.query import write_query

    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet needs --out FILE")
    try:
        n = write_query(connect(dataset), sql, fmt, out=out)
    except (duckdb.Error, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if out is not None:
        click.echo(f"{n} rows -> {out}", err=True)


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--where", default=None, help="ONE SQL boolean expression over the figures view.")
@click.option("--keys", "keys_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Parquet (column 'key') or text file (one key per line) of keys to keep.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New dataset folder.")
@click.option("--shard-samples", type=int, default=None, help="Default: the parent's.")
@click.option("--shard-bytes", type=int, default=None, help="Default: the parent's.")
def subset(dataset, where, keys_file, out, shard_samples, shard_bytes) -> None:
    """Write the samples of DATASET matching --where (or --keys) as a new dataset OUT."""
    from biomedica_kit.tables.subset import subset as run_subset

    if (where is None) == (keys_file is None):
        raise click.UsageError("give exactly one of --where or --keys")
    try:
        s = run_subset(dataset, where, out, keys=keys_file, shard_max_samples=shard_samples,
                       shard_max_bytes=shard_bytes)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"dataset {s.out} version {s.dataset_version} (from {s.parent} "
               f"version {s.parent_version})")
    click.echo(f"samples {s.samples}  articles {s.articles}  shards {s.shards}  by subset " +
               " ".join(f"{k}={v}" for k, v in s.samples_by_subset.items()))
    if s.report_reconciles is not None:
        click.echo(f"report reconciles: {'yes' if s.report_reconciles else 'NO'}")


@main.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Report folder (index.html, one HTML page per notebook, charts/).")
@click.option("--notebook", "notebooks", multiple=True,
              help="A notebook name in notebooks/ or a path; repeatable "
                   "(default: 01_overview and 02_topics).")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Extra notebook parameter (VALUE parsed as JSON when it can be); repeatable.")
@click.option("--no-images", is_flag=True, help="Skip the PNG/SVG chart files (no Chromium).")
@click.option("--timeout", type=int, default=600, show_default=True,
              help="Seconds one notebook cell may run.")
def report(dataset, out, notebooks, params, no_images, timeout) -> None:
    """Run the analysis notebooks on DATASET headless and publish them as HTML in OUT.

    Exports the metadata first when it is missing or stale. Exits 1 if a notebook failed (its
    page still shows the traceback).
    """
    from biomedica_kit.analysis.report import ReportError
    from biomedica_kit.analysis.report import report as run_report

    parameters = {}
    for p in params:
        name, sep, value = p.partition("=")
        if not sep or not name.isidentifier():
            raise click.UsageError(f"--param wants NAME=VALUE, got {p!r}")
        try:
            parameters[name] = json.loads(value)
        except ValueError:
            parameters[name] = value
    try:
        rep = run_report(dataset, out, list(notebooks) or None, parameters=parameters,
                         images=not no_images, timeout=timeout)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    for nb in rep.notebooks:
        click.echo(f"{nb.name}: {len(nb.charts)} charts, {len(nb.notes)} notes, "
                   f"{nb.seconds:.1f} s -> {nb.html}")
    click.echo(f"report {rep.index} ({rep.seconds:.1f} s)")
