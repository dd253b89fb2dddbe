"""``biomedica parse`` and ``biomedica build``: JATS to JSON, and a PMC OA source to a dataset.

Every default of ``build`` is the library's (:class:`~biomedica_kit.etl.config.BuildConfig`,
:class:`~biomedica_kit.etl.images.ImagePolicy`, :class:`~biomedica_kit.ingest.fetch.FetchPolicy`),
read through :mod:`biomedica_kit.cli.options`; every value is checked before anything is
written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from biomedica_kit.cli.options import field_default, parsed

__all__ = ["register"]


def _build_config() -> Any:
    from biomedica_kit.etl.config import BuildConfig

    return BuildConfig()


def _fetch_policy() -> Any:
    from biomedica_kit.ingest.fetch import FetchPolicy

    return FetchPolicy()


def _run_settings() -> Any:
    from biomedica_kit.etl import config

    return config


def _licences(value: str) -> frozenset[str]:
    from biomedica_kit.dataset.licenses import CATEGORIES

    chosen = frozenset(x.strip() for x in value.split(",") if x.strip())
    bad = sorted(chosen - set(CATEGORIES))
    if bad or not chosen:
        raise ValueError(f"unknown licence categories {bad}; use a comma list of "
                         f"{', '.join(CATEGORIES)}")
    return chosen


def _date(end: bool) -> Any:
    def check(value: str) -> str:
        from biomedica_kit.ingest.sources import parse_date_bound

        parse_date_bound(value, end=end)  # Selection normalises the value given
        return value

    return check


def _years(value: str) -> tuple[int, int]:
    from biomedica_kit.ingest.sources import parse_years

    return parse_years(value)


def _pmcids(value: str) -> frozenset[str]:
    from biomedica_kit.ingest.sources import parse_pmcids

    ids = parse_pmcids(value)
    if not ids:
        raise ValueError(f"no PMCIDs in {value!r} (a comma list, or a file of them)")
    return ids


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--indent", type=click.IntRange(min=0), default=None,
              help="Pretty-print with this indent.")
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


@click.command()
@click.option("--source", required=True,
              help="PMC OA mirror in NCBI's layout: a folder or an http(s):// base URL "
                   "(e.g. https://ftp.ncbi.nlm.nih.gov/pub/pmc/); or a flat folder of packages.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Dataset folder.")
@click.option("--file-list", default=None,
              help="oa_file_list.csv path or URL (default: SOURCE/oa_file_list.csv). Its File "
                   "paths must lie inside SOURCE.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: all cores).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the first N selected packages.")
@click.option("--license", "licenses", default=None, callback=parsed(_licences),
              help="Licence categories to take, from the file list's License column: "
                   "commercial,noncommercial,other.")
@click.option("--since", default=None, callback=parsed(_date(end=False)),
              help="Last Updated on or after (YYYY[-MM[-DD[ HH:MM[:SS]]]]).")
@click.option("--until", default=None, callback=parsed(_date(end=True)),
              help="Last Updated on or before (YYYY[-MM[-DD[ HH:MM[:SS]]]]).")
@click.option("--pub-years", default=None, callback=parsed(_years),
              help="Publication years from the citation, e.g. 2015-2020, 2018, 2015-.")
@click.option("--pmcids", default=None, callback=parsed(_pmcids),
              help="PMCIDs to take: a comma list or a file of them.")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Download cache of a remote source (default: OUT/cache/packages).")
@click.option("--rate", type=click.FloatRange(min=0), show_default=True,
              default=field_default(_fetch_policy, "rate"),
              help="Remote source: requests per second, all downloads together (0: no limit).")
@click.option("--fetch-threads", type=click.IntRange(min=1), show_default=True,
              default=field_default(_fetch_policy, "threads"),
              help="Remote source: concurrent downloads.")
@click.option("--retries", type=click.IntRange(min=0), show_default=True,
              default=field_default(_fetch_policy, "retries"),
              help="Remote source: retries per request (exponential backoff).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), show_default=True,
              default=field_default(_fetch_policy, "read_timeout"),
              help="Remote source: seconds of silence before a request is retried.")
@click.option("--resume/--no-resume", default=None,
              help="Add to an existing dataset in OUT (default: only when built from the same "
                   "source); --no-resume refuses an existing dataset.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), show_default=True,
              default=field_default(_run_settings, "CHECKPOINT_EVERY"),
              help="Packages between durable checkpoints (an interrupted build resumes there).")
@click.option("--ray", "ray_address", default=None,
              help="Run workers on Ray: 'local' starts a local runtime, or a cluster address.")
@click.option("--shard-samples", type=click.IntRange(min=1), show_default=True,
              default=field_default(_build_config, "shard_max_samples"),
              help="Samples per shard at most.")
@click.option("--shard-bytes", type=click.IntRange(min=1), show_default=True,
              default=field_default(_build_config, "shard_max_bytes"),
              help="Bytes per shard at most (a larger sample gets a shard of its own).")
@click.option("--max-side", type=click.IntRange(min=1), show_default=True,
              default=field_default(_build_config, "image.max_side"),
              help="Downscale images whose longer side exceeds this (at least the smallest "
                   "side an image may have).")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), show_default=True,
              default=field_default(_build_config, "image.jpeg_quality"),
              help="JPEG quality of converted images.")
@click.option("--entrez-cache", type=click.Path(file_okay=False),
              help="Merge PubMed records already in this Entrez cache into the samples.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(source: str, out: str, file_list: str | None, workers: int | None, limit: int | None,
          licenses: frozenset[str] | None, since: str | None, until: str | None,
          pub_years: tuple[int, int] | None, pmcids: frozenset[str] | None, cache: str | None,
          rate: float, fetch_threads: int, retries: int, timeout: float, resume: bool | None,
          checkpoint_every: int, ray_address: str | None, shard_samples: int, shard_bytes: int,
          max_side: int, jpeg_quality: int, entrez_cache: str | None, quiet: bool) -> None:
    """Build WebDataset shards, manifest and report from SOURCE into OUT.

    Re-running on an existing OUT adds only what is new (a new version). Exits 0 when the run
    completed, even if some articles or downloads failed (see OUT/report/); exits 1 when
    there was nothing to build (a source without packages, a selection matching none of them)
    or when every package of the run failed.
    """
    from dataclasses import replace

    from biomedica_kit.etl.build import build as run_build
    from biomedica_kit.ingest.sources import Selection, is_remote

    defaults = _build_config()
    try:
        cfg = replace(defaults, shard_max_samples=shard_samples, shard_max_bytes=shard_bytes,
                      image=replace(defaults.image, max_side=max_side,
                                    jpeg_quality=jpeg_quality),
                      entrez_cache=str(Path(entrez_cache).resolve()) if entrez_cache else None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    policy = None
    if is_remote(source):
        policy = replace(_fetch_policy(), rate=rate, threads=fetch_threads, retries=retries,
                         read_timeout=timeout)
    sel = Selection(licenses=licenses, since=since, until=until, years=pub_years,
                    pmcids=pmcids, limit=limit)
    try:
        s = run_build(source, out, file_list=file_list, workers=workers, config=cfg,
                      progress=not quiet, selection=sel, resume=resume, cache=cache,
                      fetch_policy=policy, ray=ray_address, checkpoint_every=checkpoint_every)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\n".join(s.format_lines()))
    if s.problem:
        raise click.ClickException(s.problem)
    if not s.reconciles:
        sys.exit(3)


def register(group: click.Group) -> None:
    """Add ``parse`` and ``build`` to the ``biomedica`` group."""
    for cmd in (parse, build):
        group.add_command(cmd)
