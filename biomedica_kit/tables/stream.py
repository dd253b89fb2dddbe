"""Streaming samples: WebDataset pipelines over whole shards, and byte-range reads of subsets.

Public API::

    shard_urls(dataset, *, base_url=None, subsets=None) -> list[str]
    make_pipeline(urls, *, shuffle=0, resampled=False, seed=0, decode=True,
                  split_by_node=True, split_by_worker=True, handler=None) -> wds.DataPipeline
    make_train_pipeline(urls, preprocess, tokenizer, *, batch_size=256, shuffle=1000,
                        resampled=True, seed=0, epoch_batches=None, handler=None)
    make_loader(pipeline, *, num_workers=2, **kw) -> wds.WebLoader      # needs torch
    decode_sample(sample, *, rgb=False) -> dict   # {"key", "image", "caption", "meta", "url"}
    read_ranges(rows, *, root=None, base_url=None, session=None, merge_gap=65536,
                max_span=64 MiB, timeout=60) -> Iterator[dict]   # raw {"__key__", ext: bytes}
    stream_rows(rows, *, root=None, base_url=None, decode=True, **kw) -> Iterator[dict]
    stream_subset(dataset, where=None, *, keys=None, params=None, base_url=None,
                  decode=True, session=None) -> Iterator[dict]

**Whole shards.** :func:`make_pipeline` is a ``webdataset.DataPipeline`` over local paths,
``file://`` or ``http(s)://`` URLs (opened with ``requests``; no ``curl`` needed): shard list
(or ``ResampledShards`` with ``resampled=True``, sampling shards with replacement, seeded per
node/worker/epoch), ``split_by_node`` and ``split_by_worker`` (not with resampling: every
worker draws its own shards), tar expansion, a shuffle buffer of ``shuffle`` samples
(deterministic from ``seed`` and the epoch), and decoding to
``{"key", "image": PIL.Image, "caption": str, "meta": dict, "url"}``.

It is a plain iterable and works without torch. With torch installed it is an
``IterableDataset``: wrap it with :func:`make_loader` (a ``webdataset.WebLoader``, i.e. a torch
``DataLoader``) and each worker reads its own shards. Without torch, ``webdataset`` splits by
the ``RANK``/``WORLD_SIZE`` and ``WORKER``/``NUM_WORKERS`` environment variables.

**Training (open_clip shape).** :func:`make_train_pipeline` follows open_clip's
``get_wds_dataset``: resampled shards, sample shuffle, RGB decode, ``preprocess(image)``,
``tokenizer([caption])[0]``, then batches of ``(images, texts)``. With open_clip::

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16")
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    pipe = make_train_pipeline(shard_urls(ds), preprocess, tokenizer, batch_size=256,
                               epoch_batches=steps_per_epoch // num_workers)
    loader = make_loader(pipe, num_workers=8)
    for images, texts in loader: ...

**Subsets without copying.** :func:`stream_subset` selects rows of ``figures.parquet`` (a
predicate or keys, exactly as :func:`biomedica_kit.tables.subset.subset`) and reads only those
samples' bytes: ``seek``/``read`` on local shards, HTTP ``Range`` requests on a server. A
sample's members are adjacent in its tar, so one range covers a sample; neighbouring samples
closer than ``merge_gap`` bytes share one request. Samples come in shard order. A server that
ignores ``Range`` (answers 200) is an error rather than a silent full download, and each
sample's json ``key`` is checked against the metadata, so stale offsets fail loudly.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.dataset.shards import IMAGE_EXTS
from biomedica_kit.tables.samples import ROW_COLUMNS, cut_span, group_spans, read_samples

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa
    import requests
    import webdataset as wds

_IMAGE_KEYS = tuple(IMAGE_EXTS) + ("jpeg", "webp", "tif", "tiff")
# What a byte-range read needs from a row (its licence subset is not needed to read it).
_LOCATION = tuple(c for c in ROW_COLUMNS if c != "subset")

__all__ = ["RangeNotSupported", "decode_sample", "make_loader", "make_pipeline",
           "make_train_pipeline", "read_ranges", "shard_urls", "stream_rows", "stream_subset"]


class RangeNotSupported(OSError):
    """The server answered a Range request with the whole file (or a wrong range)."""


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def shard_urls(dataset: str | os.PathLike, *, base_url: str | None = None,
               subsets: Iterable[str] | None = None) -> list[str]:
    """The current manifest's shards as local paths, or as URLs under ``base_url`` (the URL
    the dataset folder is served at)."""
    manifest = read_manifest(Path(dataset))
    keep = set(subsets) if subsets is not None else None
    rels = [s["path"] for s in manifest.get("shards", []) if keep is None or s["subset"] in keep]
    if base_url:
        return [base_url.rstrip("/") + "/" + r for r in rels]
    return [str(Path(dataset) / r) for r in rels]


# --------------------------------------------------------------------------- whole shards


def _open_url(url: str, session: requests.Session | None, timeout: float):
    """A readable binary stream for a path, file:// or http(s):// URL."""
    if _is_http(url):
        import requests

        r = (session or requests).get(url, stream=True, timeout=timeout)
        r.raise_for_status()
        r.raw.decode_content = True
        return r.raw
    if url.startswith("file://"):
        url = unquote(urlsplit(url).path)
    return open(url, "rb")


def _expand_shards(handler: Callable[[Exception], bool], session=None, timeout: float = 60.0):
    """Pipeline stage: shard URLs (str or {"url"}) -> WebDataset samples, closing each shard.

    Members are read with :func:`biomedica_kit.dataset.tario.iter_tar_stream` (one read each)
    instead of webdataset's ``tarfile`` stream expander, which copies every member through a
    Python loop; grouping into samples is webdataset's own ``group_by_keys``.
    """
    from webdataset.tariterators import group_by_keys

    from biomedica_kit.dataset.tario import iter_tar_stream

    def files(src):
        for item in src:
            url = item["url"] if isinstance(item, dict) else item
            try:
                stream = _open_url(url, session, timeout)
            except Exception as exc:  # noqa: BLE001 - the handler decides, as in webdataset
                exc.args = (*exc.args, url)
                if handler(exc):
                    continue
                break
            try:
                for name, data in iter_tar_stream(stream, url):
                    yield {"fname": name, "data": data, "__url__": url}
                yield {}  # end of shard: group_by_keys closes the sample (a resampled shard
                # may follow itself, repeating the last key)
            except Exception as exc:  # noqa: BLE001 - a broken shard: the handler decides
                exc.args = (*exc.args, url)
                if not handler(exc):
                    raise
            finally:
                stream.close()

    def stage(src):
        return group_by_keys(files(src), handler=handler)

    return stage


def decode_sample(sample: Mapping[str, Any], *, rgb: bool = False,
                  min_size: int | None = None) -> dict[str, Any]:
    """``{"key", "image": PIL.Image, "caption", "meta", "url"}`` from a raw WebDataset sample
    (``__key__`` plus member bytes by extension). ``rgb`` converts the image to RGB.

    ``min_size`` lets a JPEG decode at a reduced scale (libjpeg's DCT scaling, PIL's
    ``draft``) that still leaves both sides at least ``min_size`` pixels: a model that resizes
    to 224 px gets the same pixels from a 3000 px figure for a fraction of the decode and
    resize time. Other formats decode whole."""
    from PIL import Image

    ext = next((e for e in _IMAGE_KEYS if e in sample), None)
    image: Image.Image | None = None
    if ext is not None:
        image = Image.open(io.BytesIO(sample[ext]))
        if min_size:  # JPEG only (other formats ignore it), as embed.decode does
            image.draft(image.mode, (min_size, min_size))
        image.load()
        if rgb and image.mode != "RGB":
            image = image.convert("RGB")
    txt, meta = sample.get("txt"), sample.get("json")
    return {
        "key": sample["__key__"],
        "image": image,
        "caption": txt.decode("utf-8") if isinstance(txt, bytes) else txt,
        "meta": json.loads(meta) if isinstance(meta, (bytes, str)) else (meta or {}),
        "url": sample.get("__url__"),
    }


def _seeded_shuffle(bufsize: int, seed: int | None, epoch: Callable[[], int] | None = None):
    """Sample shuffle: deterministic from (seed, node/worker, epoch) when seed is given.

    The epoch is ``epoch()`` when given (a value shared with the process that sets it, e.g.
    open_clip's ``SharedEpoch``: loader workers are new copies each epoch, so a counter kept
    in the stage would restart), else the number of times this stage has run."""
    import webdataset as wds
    from webdataset.utils import pytorch_worker_seed

    if seed is None:
        return wds.shuffle(bufsize, initial=min(bufsize, 100))

    class _Shuffle(wds.PipelineStage):
        runs = -1

        def run(self, src):
            self.runs += 1
            now = epoch() if epoch is not None else self.runs
            rng = random.Random(f"{seed}/{pytorch_worker_seed()}/{now}")
            return wds.shuffle(bufsize, min(bufsize, 100), rng=rng)(src)

    return _Shuffle()


def make_pipeline(urls: str | Sequence[str], *, shuffle: int = 0, resampled: bool = False,
                  seed: int | None = 0, decode: bool = True, split_by_node: bool = True,
                  split_by_worker: bool = True,
                  handler: Callable[[Exception], bool] | None = None,
                  session: requests.Session | None = None,
                  epoch: Callable[[], int] | None = None) -> wds.DataPipeline:
    """A WebDataset pipeline over shards (see module doc); yields decoded sample dicts, or
    raw WebDataset samples with ``decode=False``.

    ``shuffle`` is the sample shuffle buffer (0: stream order); with ``resampled`` shards are
    drawn with replacement forever (bound an epoch with ``.with_epoch(n)``). ``handler``
    decides what a bad shard or sample does (default: raise; ``wds.warn_and_continue`` skips).
    ``epoch`` returns the current epoch for the resampling and shuffle seeds (training loops
    set it before each epoch; without it, each run of the pipeline object counts as one).
    """
    import webdataset as wds
    from webdataset.utils import pytorch_worker_seed

    handler = handler or wds.reraise_exception
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("no shard URLs")
    if resampled:
        worker_seed = None
        if epoch is not None:
            def worker_seed() -> int:  # noqa: E306 - the shared epoch joins the worker's seed
                return pytorch_worker_seed() * 1_000_003 + epoch()
        stages: list = [wds.ResampledShards(urls, seed=seed or 0, deterministic=seed is not None,
                                            worker_seed=worker_seed)]
    else:
        stages = [wds.SimpleShardList(urls)]
        if shuffle:
            # Same shard order on every worker/node (seed + epoch), then split between them.
            stages.append(wds.detshuffle(bufsize=len(urls), initial=len(urls), seed=seed or 0))
        if split_by_node:
            stages.append(wds.split_by_node)
        if split_by_worker:
            stages.append(wds.split_by_worker)
    stages.append(_expand_shards(handler, session))
    if shuffle:
        stages.append(_seeded_shuffle(shuffle, seed, epoch))
    if decode:
        stages.append(wds.map(decode_sample, handler=handler))
    return wds.DataPipeline(*stages)


def make_train_pipeline(urls: str | Sequence[str], preprocess: Callable[[Any], Any],
                        tokenizer: Callable[[list[str]], Any], *, batch_size: int = 256,
                        shuffle: int = 1000, resampled: bool = True, seed: int | None = 0,
                        epoch_batches: int | None = None,
                        handler: Callable[[Exception], bool] | None = None,
                        session: requests.Session | None = None) -> wds.DataPipeline:
    """open_clip-shaped training pipeline yielding ``(images, texts)`` batches.

    ``preprocess`` maps a PIL RGB image to an array/tensor; ``tokenizer`` maps a list of
    strings to token rows (open_clip's tokenizers do). ``epoch_batches`` bounds an epoch (per
    worker) for resampled streams. Samples without image or caption are dropped.
    """
    import webdataset as wds

    handler = handler or wds.reraise_exception
    pipe = make_pipeline(urls, shuffle=shuffle, resampled=resampled, seed=seed, decode=False,
                         handler=handler, session=session)
    pipe.append(wds.select(lambda s: any(e in s for e in _IMAGE_KEYS) and s.get("txt")))
    pipe.append(wds.map(lambda s: decode_sample(s, rgb=True), handler=handler))
    pipe.append(wds.map(lambda d: (preprocess(d["image"]), tokenizer([d["caption"]])[0]),
                        handler=handler))
    pipe.append(wds.batched(batch_size, partial=not resampled))
    if epoch_batches is not None:
        pipe = pipe.with_epoch(epoch_batches)
    return pipe


def make_loader(pipeline: wds.DataPipeline, *, num_workers: int = 2, **kw: Any):
    """A ``webdataset.WebLoader`` (torch DataLoader, ``batch_size=None``: the pipeline batches
    or yields samples itself). Requires torch; the pipeline alone does not."""
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        raise ImportError("make_loader needs torch (pip install torch); the pipeline itself "
                          "is a plain iterable without it") from None
    import webdataset as wds

    kw.setdefault("batch_size", None)
    if num_workers > 0:
        kw.setdefault("persistent_workers", False)
    return wds.WebLoader(pipeline, num_workers=num_workers, **kw)


# ----------------------------------------------------------------------------- byte ranges


def _rows(rows: pa.Table | pl.DataFrame | Iterable[Mapping[str, Any]]
          ) -> list[dict[str, Any]]:
    """Location columns of figures rows given as a pyarrow Table, a polars DataFrame or dicts."""
    names = getattr(rows, "column_names", None) or getattr(rows, "columns", None)
    if names is not None:
        missing = [c for c in _LOCATION if c not in names]
        if missing:
            raise ValueError(f"rows lack location columns {missing} (from figures.parquet)")
        table: Any = rows.select(list(_LOCATION))  # type: ignore[union-attr]
        return table.to_pylist() if hasattr(table, "to_pylist") else table.to_dicts()
    return [{c: r[c] for c in _LOCATION} for r in rows]  # type: ignore[index]


def _fetch(url: str, start: int, end: int, session, timeout: float) -> bytes:
    r = session.get(url, headers={"Range": f"bytes={start}-{end - 1}"}, timeout=timeout)
    if r.status_code != 206:
        r.close()
        if r.status_code == 200:
            raise RangeNotSupported(f"{url}: server ignored the Range header (status 200)")
        r.raise_for_status()
        raise RangeNotSupported(f"{url}: unexpected status {r.status_code} for a range")
    cr = r.headers.get("Content-Range", "")
    if not cr.startswith(f"bytes {start}-{end - 1}/") or len(r.content) != end - start:
        raise RangeNotSupported(f"{url}: asked bytes {start}-{end - 1}, got {cr!r} "
                                f"({len(r.content)} bytes)")
    return r.content


def read_ranges(rows: pa.Table | pl.DataFrame | Iterable[Mapping[str, Any]], *,
                root: str | os.PathLike | None = None, base_url: str | None = None,
                session: requests.Session | None = None, merge_gap: int = 1 << 16,
                max_span: int = 64 << 20, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
    """Raw samples ``{"__key__", "__url__", <ext>: bytes}`` for figures rows, read by offset
    from local shards under ``root`` or over HTTP Range requests under ``base_url``."""
    if (root is None) == (base_url is None):
        raise ValueError("give exactly one of root (local dataset) or base_url (HTTP)")
    if base_url is not None and session is None:
        import requests

        session = requests.Session()
    data = _rows(rows)
    if root is not None:
        for r, members in read_samples(root, data, merge_gap=merge_gap, max_span=max_span):
            yield _sample(str(Path(root) / r["shard"]), r, members)
        return
    assert base_url is not None
    for span in group_spans(data, merge_gap=merge_gap, max_span=max_span):
        url = base_url.rstrip("/") + "/" + span.shard
        blob = _fetch(url, span.start, span.end, session, timeout)
        for r, members in cut_span(span, blob, url):
            yield _sample(url, r, members)


def _sample(url: str, row: Mapping[str, Any], members: list[tuple[str, bytes]]
            ) -> dict[str, Any]:
    return {"__key__": row["key"], "__url__": url, **dict(members)}


def stream_rows(rows: pa.Table | pl.DataFrame | Iterable[Mapping[str, Any]], *,
                root: str | os.PathLike | None = None, base_url: str | None = None,
                decode: bool = True, **kw: Any) -> Iterator[dict[str, Any]]:
    """:func:`read_ranges`, decoded with :func:`decode_sample` unless ``decode=False``."""
    for sample in read_ranges(rows, root=root, base_url=base_url, **kw):
        yield decode_sample(sample) if decode else sample


def stream_subset(dataset: str | os.PathLike, where: str | None = None, *,
                  keys: str | os.PathLike | Iterable[str] | None = None,
                  params: Sequence[Any] | dict[str, Any] | None = None,
                  base_url: str | None = None, decode: bool = True,
                  session: requests.Session | None = None, **kw: Any) -> Iterator[dict[str, Any]]:
    """Stream the samples a predicate (or keys) selects, without writing a subset.

    The selection runs on the local dataset's metadata; bytes come from its shards, or from
    ``base_url`` (where the same dataset is served over HTTP) with Range requests.
    """
    from biomedica_kit.tables.subset import select_rows

    rows = select_rows(dataset, where, keys=keys, params=params)
    if base_url is not None:
        yield from stream_rows(rows, base_url=base_url, decode=decode, session=session, **kw)
    else:
        yield from stream_rows(rows, root=dataset, decode=decode, **kw)
