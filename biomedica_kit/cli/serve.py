"""Search commands: ``index`` (build or update a dataset's search indexes) and ``serve`` (the
search and streaming server). :func:`register` adds them to the ``biomedica`` group.

Thin calls of :func:`biomedica_kit.serve.indexer.index_dataset` and
:func:`biomedica_kit.serve.app.create_app` (run by uvicorn); the web stack and the models
load inside the command.
"""

from __future__ import annotations

import socket
import sys

import click

__all__ = ["index", "register", "serve"]


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--embeddings", "embeddings", multiple=True,
              help="Embeddings store(s) to index (DATASET/embeddings/NAME; repeatable). "
                   "Default: every store of the dataset.")
@click.option("--no-embeddings", is_flag=True, help="Only the keyword index.")
@click.option("--rebuild", is_flag=True, help="Start the indexes anew instead of updating.")
def index(dataset: str, embeddings: tuple[str, ...], no_embeddings: bool,
          rebuild: bool) -> None:
    """Build or update the search indexes of DATASET (DATASET/index/): a keyword index over
    captions, inline references and article titles/abstracts, and vector indexes over the
    image and caption embeddings. Only new or changed samples are indexed again."""
    from biomedica_kit.dataset.lock import DatasetLocked
    from biomedica_kit.serve.indexer import index_dataset

    stores = [] if no_embeddings else (list(embeddings) or None)
    try:
        summary = index_dataset(dataset, embeddings=stores, rebuild=rebuild)
    except (FileNotFoundError, DatasetLocked, ValueError) as exc:
        _fail(exc)
        return
    click.echo("\n".join(summary.format_lines()))


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0: any free port, printed at start).")
@click.option("--embeddings", default=None,
              help="Embeddings store to search by vector (default: the first indexed).")
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Compute threads per query (faiss, torch).")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(dataset: str, host: str, port: int, embeddings: str | None, threads: int,
          log_level: str) -> None:
    """Serve DATASET over HTTP: the search page at /, the JSON API (/search,
    /search/image, /samples/KEY, /articles/PMCID, /shards/PATH with Range) and its schema at
    /openapi.json. Read-only; run `biomedica index DATASET` first."""
    import uvicorn

    from biomedica_kit.serve.app import create_app
    from biomedica_kit.serve.search import NotIndexed, Searcher

    try:
        searcher = Searcher(dataset, embeddings, threads=threads)
    except (FileNotFoundError, NotIndexed) as exc:
        _fail(exc)
        return
    app = create_app(dataset, searcher=searcher)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        _fail(exc)
        return
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    click.echo(f"serving {dataset} on http://{shown}:{bound}/ (Ctrl-C stops)", err=True)
    sys.stderr.flush()
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info",
                                                                               "debug"))
    uvicorn.Server(config).run(sockets=[sock])


def register(group: click.Group) -> None:
    """Add ``index`` and ``serve`` to the ``biomedica`` group."""
    for cmd in (index, serve):
        group.add_command(cmd)
