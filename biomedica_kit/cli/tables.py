"""``biomedica export``, ``query`` and ``subset``: the metadata tables, SQL on them, and new
datasets made of the samples a query selects."""

from __future__ import annotations

import click

__all__ = ["register"]


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--force", is_flag=True, help="Re-read every shard, ignoring the cached parts.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes reading shards (default: all).")
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
    click.echo("\n".join(s.format_lines()))


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.argument("sql")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]),
              default="table", show_default=True, help="json is JSON Lines.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write to this file (required for parquet) instead of stdout.")
@click.option("--full-session", is_flag=True, default=False,
              help="Run any SQL in an unrestricted DuckDB session (files anywhere, COPY, "
                   "ATTACH, extensions). Without it, only queries that return rows run, on "
                   "the dataset's files only, with no network and no extension installs.")
def query(dataset: str, sql: str, fmt: str, out: str | None, full_session: bool) -> None:
    """Run SQL on DATASET's views (figures, articles, entrez, labels...) and print the result."""
    import duckdb

    from biomedica_kit.tables.connect import check_read_only_sql, connect
    from biomedica_kit.tables.query import write_query

    if fmt == "parquet" and out is None:
        raise click.UsageError("--format parquet needs --out FILE")
    try:
        con = connect(dataset, read_only=not full_session)
        if not full_session:
            check_read_only_sql(con, sql)
        n = write_query(con, sql, fmt, out=out)
    except (duckdb.Error, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if out is not None:
        click.echo(f"{n} rows -> {out}", err=True)


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--where", default=None, help="ONE SQL boolean expression over the figures view.")
@click.option("--keys", "keys_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Parquet (column 'key') or text file (one key per line) of keys to keep.")
@click.option("--view", default=None,
              help="A saved view (DATASET/views/NAME.json, saved from the notebooks' explorer).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New dataset folder.")
@click.option("--shard-samples", type=click.IntRange(min=1), default=None,
              help="Samples per shard at most (default: the parent's).")
@click.option("--shard-bytes", type=click.IntRange(min=1), default=None,
              help="Bytes per shard at most (default: the parent's).")
def subset(dataset: str, where: str | None, keys_file: str | None, view: str | None, out: str,
           shard_samples: int | None, shard_bytes: int | None) -> None:
    """Write the samples of DATASET matching --where (or --keys, or --view) as a new dataset OUT."""
    from biomedica_kit.tables.subset import subset as run_subset

    if sum(x is not None for x in (where, keys_file, view)) != 1:
        raise click.UsageError("give exactly one of --where, --keys or --view")
    try:
        keys: str | list[str] | None = keys_file
        if view is not None:
            from biomedica_kit.analysis.views import selection

            sel = selection(dataset, view)
            where, keys = sel.where, sel.keys
        s = run_subset(dataset, where, out, keys=keys, shard_max_samples=shard_samples,
                       shard_max_bytes=shard_bytes)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\n".join(s.format_lines()))


def register(group: click.Group) -> None:
    """Add ``export``, ``query`` and ``subset`` to the ``biomedica`` group."""
    for cmd in (export, query, subset):
        group.add_command(cmd)
