"""``biomedica enrich``: PubMed (Entrez) fields for a dataset's articles, as a new version."""

from __future__ import annotations

from typing import Any

import click

from biomedica_kit.cli.options import param_default

__all__ = ["register"]


def _enrich() -> Any:
    from biomedica_kit.enrich.apply import enrich

    return enrich


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--eutils-url", default=None,
              help="E-utilities base URL (default: NCBI's eutils).")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Entrez cache folder (default: DATASET/cache/entrez).")
@click.option("--email", default=None, envvar="NCBI_EMAIL", help="Contact e-mail sent to NCBI.")
@click.option("--api-key", default=None, envvar="NCBI_API_KEY", help="NCBI API key (10 req/s).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Requests per second (default 3, 10 with a key).")
@click.option("--offline", is_flag=True, help="Use only records already in the cache.")
@click.option("--refresh", is_flag=True,
              help="Ask again for the PMIDs the cache holds as not_found (e.g. after a server "
                   "that answered empty sets).")
@click.option("--max-negative-age", "max_negative_age", metavar="DAYS", show_default=True,
              type=click.FloatRange(min=0), default=param_default(_enrich, "max_negative_age_days"),
              help="A cached not_found older than this is asked again in any case "
                   "(inf: keep them for good).")
@click.option("--mesh-descriptors", type=click.Path(exists=True, dir_okay=False), default=None,
              help="NLM's MeSH descriptor file (descYYYY.xml[.gz]): adds top-level categories.")
def enrich(dataset: str, eutils_url: str | None, cache_dir: str | None, email: str | None,
           api_key: str | None, rate: float | None, offline: bool, refresh: bool,
           max_negative_age: float, mesh_descriptors: str | None) -> None:
    """Add PubMed (Entrez) fields to DATASET: metadata/entrez.parquet and a new version."""
    try:
        s = _enrich()(dataset, eutils_url=eutils_url, cache_dir=cache_dir, email=email,
                      api_key=api_key, rate=rate, fetch=not offline, progress=True,
                      mesh_descriptors=mesh_descriptors, refresh=refresh,
                      max_negative_age_days=max_negative_age)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\n".join(s.format_lines()))


def register(group: click.Group) -> None:
    """Add ``enrich`` to the ``biomedica`` group."""
    group.add_command(enrich)
