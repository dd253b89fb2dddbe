"""``biomedica embed``: every sample's image and caption vectors, resumable and incremental.

:func:`embed` refreshes ``metadata/figures.parquet`` (a no-op when current), takes the dataset's
writer lock, and streams the rows whose key the store does not hold yet, ``part_size`` at a
time: images are read by byte range and decoded in worker processes
(:class:`biomedica_kit.embed.decode.Decoder`), the model runs in this process on the device
(CUDA when present), captions come from the figures table; each part is committed to the
store (:class:`biomedica_kit.embed.store.EmbeddingStore`) before the next begins. Killing the
run loses at most the part in flight; running it again embeds only what is missing, and so
does running it on a new dataset version (only its new keys are embedded).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from biomedica_kit.base.atomic import sweep_temporaries
from biomedica_kit.dataset.lock import dataset_lock
from biomedica_kit.dataset.manifest import read_manifest
from biomedica_kit.embed.decode import Decoder
from biomedica_kit.embed.encoders import (
    DEFAULT_IMAGE_MODEL,
    DEFAULT_TEXT_MODEL,
    Encoder,
    load_encoder,
)
from biomedica_kit.embed.store import EmbeddingStore
from biomedica_kit.tables.export import META_DIR, export
from biomedica_kit.tables.samples import ROW_COLUMNS

__all__ = ["EmbedSummary", "ModelMismatch", "default_workers", "embed", "open_models",
           "store_name"]


class ModelMismatch(ValueError):
    """A store exists under this name with vectors of other models."""


@dataclass
class EmbedSummary:
    """What :func:`embed` did."""

    dataset: str
    store: str
    path: str
    dataset_version: str
    image_model: str | None
    text_model: str | None
    device: str
    total: int  # samples of the current version
    embedded: int  # embedded by this run
    already: int  # found in the store
    parts_written: int
    seconds: float
    load_seconds: float = 0.0  # of ``seconds``: loading the models

    def format_lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        busy = self.seconds - self.load_seconds
        rate = self.embedded / busy if busy > 0 else 0.0
        return [f"store     {self.path}",
                f"models    image {self.image_model or '-'}; text {self.text_model or '-'} "
                f"(device {self.device})",
                f"samples   {self.total} in version {self.dataset_version}: {self.embedded} "
                f"embedded now, {self.already} already there",
                f"time      {self.seconds:.1f} s ({self.load_seconds:.1f} s loading models; "
                f"{rate:.1f} samples/s after)"]


def default_workers() -> int:
    """Decoding processes: one core is left to the model (none on a one-core machine)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def open_models(model: str | None = None, *, pretrained: str | None = None,
                text_model: str | None = None, device: str | None = None
                ) -> tuple[Encoder | None, Encoder | None]:
    """``(image encoder, caption encoder)`` for the CLI's options.

    ``model`` defaults to :data:`DEFAULT_IMAGE_MODEL` (``none``: captions only); ``text_model``
    defaults to the image model's own text tower when it has one (CLIP-like models), else to
    :data:`DEFAULT_TEXT_MODEL` (``none``: images only; ``same``: the image model's tower).
    """
    image = None if model == "none" else load_encoder(model or DEFAULT_IMAGE_MODEL,
                                                      pretrained=pretrained, device=device)
    if text_model == "none":
        return image, None
    if text_model in (None, "same") and image is not None and image.joint:
        return image, image
    if text_model == "same":
        raise ValueError(f"{model}: the image model has no text tower (--text-model same)")
    return image, load_encoder(text_model or DEFAULT_TEXT_MODEL, device=device)


def store_name(image: Encoder | None, text: Encoder | None) -> str:
    """Default store name: the image model's, plus the caption model's when it is another."""
    if image is None or text is None or text is image:
        return (image or text).name  # type: ignore[union-attr]
    return f"{image.name}__{text.name}"


def _check_models(store: EmbeddingStore, image: Encoder | None, text: Encoder | None) -> None:
    info = store.info
    want = (image.model_version if image else None, text.model_version if text else None)
    if store.exists() and (info.image_model_version, info.text_model_version) != want:
        raise ModelMismatch(
            f"{store.path} holds vectors of {info.image_model_version} / "
            f"{info.text_model_version}, not {want[0]} / {want[1]}; use another --name")
    info.image_model_version, info.text_model_version = want
    info.image_model_spec = [image.spec, image.pretrained] if image else None
    info.text_model_spec = [text.spec, text.pretrained] if text else None
    info.image_model = image.name if image else None
    info.text_model = text.name if text else None
    info.image_dims = image.image_dims if image else None
    info.text_dims = text.text_dims if text else None
    info.joint = bool(image is not None and image is text)


def _pending(figures: Path, done: set[str], size: int) -> Iterator[list[dict[str, Any]]]:
    """Figures rows (location columns + caption) whose key is not in ``done``, ``size`` a
    list, in figures order, streamed from the Parquet file."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    done_arr = pa.array(sorted(done), pa.string())
    buf: list[dict[str, Any]] = []
    for batch in pq.ParquetFile(figures).iter_batches(batch_size=size,
                                                      columns=[*ROW_COLUMNS, "caption"]):
        if len(done_arr):
            batch = batch.filter(pc.invert(pc.is_in(batch.column("key"), value_set=done_arr)))
        buf.extend(batch.to_pylist())
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


def _count_pending(figures: Path, done: set[str]) -> tuple[int, int]:
    """``(samples in the version, of them already embedded)``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    keys = pq.read_table(figures, columns=["key"]).column("key")
    have = pc.sum(pc.is_in(keys, value_set=pa.array(sorted(done), pa.string()))).as_py() \
        if done else 0
    return len(keys), int(have or 0)


def embed(dataset: str | os.PathLike[str], *, model: str | None = None,
          pretrained: str | None = None, text_model: str | None = None,
          name: str | None = None, batch_size: int = 32, part_size: int = 2048,
          workers: int | None = None, device: str | None = None,
          progress: bool = True) -> EmbedSummary:
    """Embed the samples of the dataset's current version that the store lacks (module doc).

    ``model``/``pretrained``/``text_model`` as :func:`open_models`; ``name`` the store
    (default :func:`store_name`); ``batch_size`` images per forward pass; ``part_size`` rows
    per committed part (the unit of resumption); ``workers`` decoding processes (default
    :func:`default_workers`; 0 decodes in this process).
    """
    t0 = time.perf_counter()
    root = Path(dataset)
    export(root)
    t_load = time.perf_counter()
    image, text = open_models(model, pretrained=pretrained, text_model=text_model,
                              device=device)
    t_load = time.perf_counter() - t_load
    if image is None and text is None:
        raise ValueError("nothing to embed: both --model and --text-model are none")
    with dataset_lock(root, "embed"):
        version = read_manifest(root)["dataset_version"]
        store = EmbeddingStore(root, name or store_name(image, text))
        _check_models(store, image, text)
        sweep_temporaries(store.path)
        store.remove_uncommitted()
        done = store.keys()
        figures = root / META_DIR / "figures.parquet"
        total, already = _count_pending(figures, done)
        store.save_info()
        n_parts = embedded = 0
        workers = default_workers() if workers is None else workers
        bar = _progress(total - already, progress, store.name)
        spec = image.image_spec if image is not None else None
        with Decoder(root, spec, workers if spec else 0) if spec else _NoDecoder() as dec:
            for rows in _pending(figures, done, part_size):
                vectors = _embed_part(rows, image, text, dec, batch_size, bar)
                store.write_part([r["key"] for r in rows], vectors, version)
                store.save_info()
                n_parts += 1
                embedded += len(rows)
        bar.close()
        store.info.dataset_version = version
        store.info.history.append({"dataset_version": version, "embedded": embedded,
                                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        store.save_info()
    return EmbedSummary(
        dataset=str(root), store=store.name, path=str(store.path), dataset_version=version,
        image_model=image.model_version if image else None,
        text_model=text.model_version if text else None,
        device=(image or text).device,  # type: ignore[union-attr]
        total=total, embedded=embedded, already=already, parts_written=n_parts,
        seconds=round(time.perf_counter() - t0, 3), load_seconds=round(t_load, 3))


class _NoDecoder:
    """Stands in for :class:`Decoder` when no image model runs."""

    def __enter__(self) -> _NoDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _embed_part(rows: list[dict[str, Any]], image: Encoder | None, text: Encoder | None,
                dec: Decoder | _NoDecoder, batch_size: int, bar: Any) -> dict[str, np.ndarray]:
    """Image and caption vectors of one part's rows (in row order)."""
    out: dict[str, np.ndarray] = {}
    batches = [rows[i: i + batch_size] for i in range(0, len(rows), batch_size)]
    if image is not None and isinstance(dec, Decoder):
        chunks = []
        for decoded in dec.map(batches):
            chunks.append(image.encode_images(decoded.pixels))
            if text is None:
                bar.update(len(decoded.keys))
        out["image"] = np.concatenate(chunks)
    if text is not None:
        chunks = []
        for batch in batches:
            chunks.append(text.encode_texts([r.get("caption") or "" for r in batch]))
            bar.update(len(batch))
        out["text"] = np.concatenate(chunks)
    return out


def _progress(total: int, enabled: bool, name: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", desc=f"embed {name}", disable=not enabled,
                dynamic_ncols=True)
