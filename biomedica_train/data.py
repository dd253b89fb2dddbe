"""Training data: a dataset's shards streamed into open_clip batches, selected and mixed.

What a run trains on is decided before any byte is read, from the dataset's tables:

- the **split**: only ``train`` samples of ``splits/<name>.parquet`` (the article-grouped
  decision file of :mod:`biomedica_kit.tables.splits`), so evaluation on ``test`` never sees a
  training article; ``split_name=None`` trains on everything (said in the run's config);
- **subsets**: one or more SQL predicates over ``figures_labeled`` (figures joined with the
  newest label table), each with a weight: a mix draws every sample from part *i* with
  probability ``weight_i / sum(weights)`` (webdataset's ``RandomMix``), whatever the parts'
  sizes, as open_clip's ``--train-data-upsampling-factors`` does for shard lists;
- **labels**: ``labels="reviewed"`` keeps only samples whose label an expert decided
  (``label_source`` expert or override), ``"any"`` any labelled sample; the text template can
  use the labels too.

The **text** of a sample is a template over its fields: ``{caption}``, ``{refs}`` (the
sentences of the article that cite the figure, from ``inline_refs``), ``{title}``,
``{primary_label}``, ``{secondary_label}``, ``{panel_type}``. Presets: ``caption``,
``caption+refs``, ``label+caption``, ``label``. A sample whose template needs a field it
lacks (no label, no reference) is dropped and counted, never trained on an empty string.

Bytes come from the dataset's shards, local or over HTTP (``base_url``: where the dataset is
served, e.g. ``biomedica serve``), through :func:`biomedica_kit.tables.stream.make_pipeline`:
shards resampled with replacement, seeded per rank, loader worker and epoch (the epoch comes
from open_clip's ``SharedEpoch``, so each epoch draws other shards), a sample shuffle buffer,
the key filter *before* any image is decoded, then RGB decode (a JPEG at the smallest DCT
scale that still covers the model's input), open_clip's ``preprocess``, and batches whose
texts are tokenized in one call. An epoch is ``samples_per_epoch`` samples (default: the
selection's size), split over ranks and loader workers as open_clip splits them.

Validation batches (open_clip's ``evaluate``: loss and retrieval on the ``validation``
split) read only the selected samples' bytes, by offset (:func:`~biomedica_kit.tables.stream.
stream_rows`), in a fixed order.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from biomedica_kit.tables.connect import connect
from biomedica_kit.tables.splits import split_digest, split_info
from biomedica_kit.tables.stream import decode_sample, make_pipeline, shard_urls, stream_rows
from biomedica_kit.tables.subset import validate_predicate
from biomedica_train.text import LABEL_FIELDS, LABEL_FILTERS, TextTemplate

if TYPE_CHECKING:
    import torch

__all__ = ["MixPart", "Selection", "parse_mix", "sample_stream", "select", "train_loader",
           "val_loader"]

_log = logging.getLogger(__name__)
#: What a template field needs of a sample, as SQL over figures_labeled (the selection applies
#: it, so counts are exact and no sample is dropped while streaming).
_NEEDS = {"caption": "caption IS NOT NULL AND trim(caption) <> ''",
          "refs": "n_inline_refs > 0",
          "title": "coalesce(title, article_title) IS NOT NULL",
          **{f: f"{f} IS NOT NULL" for f in LABEL_FIELDS}}
_MIX = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*:\s*(.+)$", re.S)


@dataclass(frozen=True)
class MixPart:
    """One part of a training mix: a predicate over ``figures_labeled`` (None: all) and its
    sampling weight."""

    where: str | None
    weight: float = 1.0


def parse_mix(values: Sequence[str]) -> list[MixPart]:
    """``WEIGHT:PREDICATE`` strings (the CLI's ``--mix``) as :class:`MixPart` s."""
    parts = []
    for v in values:
        m = _MIX.match(v)
        if not m or float(m.group(1)) <= 0:
            raise ValueError(f"--mix {v!r}: expected WEIGHT:PREDICATE with WEIGHT > 0, e.g. "
                             f"\"3:primary_label = 'Microscopy'\"")
        parts.append(MixPart(m.group(2).strip(), float(m.group(1))))
    return parts


@dataclass
class Selection:
    """The samples of a run, decided from the tables (see module doc)."""

    dataset: str
    split_name: str | None
    split_digest: str | None
    parts: list[MixPart]
    keys: list[set[str] | None]  # per part; None: every sample (no filter)
    counts: list[int]
    labels: dict[str, dict[str, str | None]] = field(default_factory=dict)
    label_version: str | None = None
    validation: Any = None  # pyarrow Table: the validation split's location rows

    @property
    def total(self) -> int:
        """Samples selected over all parts (a sample in two parts counts twice)."""
        return sum(self.counts)

    def describe(self) -> dict[str, Any]:
        """What the run's config and checkpoints record of the selection."""
        return {"split": {"name": self.split_name, "digest": self.split_digest,
                          "used": ["train"] if self.split_name else ["all"]},
                "mix": [{"where": p.where, "weight": p.weight, "samples": n}
                        for p, n in zip(self.parts, self.counts, strict=True)],
                "labels": self.label_version,
                "validation_samples": 0 if self.validation is None else self.validation.num_rows}


def select(dataset: str | os.PathLike[str], *, parts: Sequence[MixPart] = (),
           split_name: str | None = "default", labels: str = "none",
           text: TextTemplate | None = None) -> Selection:
    """Decide the run's samples (see module doc). ``labels`` is one of :data:`LABEL_FILTERS`.

    Raises ValueError for a bad predicate, a missing split or an empty selection.
    """
    if labels not in LABEL_FILTERS:
        raise ValueError(f"labels {labels!r}: one of {LABEL_FILTERS}")
    parts = list(parts) or [MixPart(None, 1.0)]
    need_labels = labels != "none" or bool(text and text.needs_labels)
    con = connect(dataset, read_only=True)
    try:
        views = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
        source = "figures_labeled" if "figures_labeled" in views else "figures"
        if need_labels and "labels" not in views:
            raise ValueError(f"{dataset} has no label table (labels/); propose or review "
                             f"labels first, or train without label text / filters")
        conds: list[str] = []
        digest = None
        if split_name is not None:
            split_info(dataset, split_name)  # a clear error when the split is missing
            digest = split_digest(dataset, split_name)[:16]
            conds.append(f"key IN (SELECT key FROM splits WHERE name = "
                         f"'{split_name}' AND split = 'train')")
        if labels == "reviewed":
            conds.append("label_source IN ('expert', 'override')")
        elif labels == "any":
            conds.append("primary_label IS NOT NULL")
        if text is not None:
            conds.extend(_NEEDS[f] for f in text.fields)
        keys: list[set[str] | None] = []
        counts: list[int] = []
        for p in parts:
            where = [*conds, f"({validate_predicate(p.where)})"] if p.where else conds
            sql = f"SELECT key FROM {source}" + (" WHERE " + " AND ".join(where) if where else "")
            try:
                rows = [r[0] for r in con.execute(sql).fetchall()]
            except Exception as exc:  # duckdb's errors name the column or syntax at fault
                raise ValueError(f"selection failed ({p.where or 'all samples'}): {exc}"
                                 ) from None
            if not rows:
                raise ValueError(f"no training samples for {p.where or 'all samples'}"
                                 + (f" in split {split_name!r} train" if split_name else ""))
            keys.append(set(rows) if where else None)
            counts.append(len(rows))
        label_rows: dict[str, dict[str, str | None]] = {}
        label_version = None
        if need_labels:
            for k, *vals in con.execute(
                    f"SELECT key, {', '.join(LABEL_FIELDS)} FROM labels").fetchall():
                label_rows[k] = dict(zip(LABEL_FIELDS, vals, strict=True))
            lv = con.execute("SELECT max(label_version) FROM labels").fetchone()
            label_version = str(lv[0]) if lv and lv[0] is not None else None
        validation = None
        if split_name is not None:
            val_where = " AND ".join([
                f"key IN (SELECT key FROM splits WHERE name = '{split_name}' "
                f"AND split = 'validation')", *(_NEEDS[f] for f in (text.fields if text else ()))])
            validation = con.sql(f"SELECT * FROM {source} WHERE {val_where} "
                                 f"ORDER BY shard, image_offset").to_arrow_table()
    finally:
        con.close()
    return Selection(str(dataset), split_name, digest, parts, keys, counts, label_rows,
                     label_version, validation)


def _image_size(preprocess: Callable[[Any], Any]) -> int | None:
    """The side a torchvision transform pipeline resizes or crops to (None: unknown)."""
    for t in getattr(preprocess, "transforms", []):
        size = getattr(t, "size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and size:
            return int(max(size))
    return None


def _sample_fn(sel: Selection, text: TextTemplate, preprocess: Callable[[Any], Any]
               ) -> Callable[[dict], Any]:
    """raw sample -> ``(image tensor, text)``. JPEGs decode at the smallest DCT scale that
    still covers the model's input with a margin (``decode_sample(min_size=...)``): the
    same pixels reach the crop for a fraction of the decode and resize cost."""
    size = _image_size(preprocess)
    min_size = int(size * 1.15) if size else None

    def to_pair(raw: dict) -> Any:
        d = decode_sample(raw, rgb=True, min_size=min_size)
        t = text.render(d["caption"], d["meta"], sel.labels.get(d["key"]))
        if t is None or d["image"] is None:  # the selection excludes these: a stale table
            _log.warning("sample %s: no image or no %s; skipped", d["key"], text.spec)
            return None
        return preprocess(d["image"]), t
    return to_pair


def _collate_fn(tokenizer: Callable[[list[str]], Any]
                ) -> Callable[[list[tuple[Any, str]]], tuple[torch.Tensor, torch.Tensor]]:
    """Stack a batch's images; tokenize its texts in one call (twice the rate of one call per
    text with open_clip's tokenizer)."""
    def collate(samples: list[tuple[Any, str]]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        images, texts = zip(*samples, strict=True)
        return torch.stack(list(images)), tokenizer(list(texts))
    return collate


def _part_pipeline(urls: list[str], keys: set[str] | None, fn: Callable[[dict], Any], *,
                   seed: int, shuffle: int, epoch: Callable[[], int]) -> Any:
    import webdataset as wds

    pipe = make_pipeline(urls, shuffle=shuffle, resampled=True, seed=seed, decode=False,
                         handler=wds.warn_and_continue, epoch=epoch)
    if keys is not None:  # before decoding: a filtered-out sample costs no image decode
        pipe.append(wds.select(lambda s: s["__key__"] in keys))
    pipe.append(wds.map(fn, handler=wds.warn_and_continue))
    pipe.append(wds.select(lambda x: x is not None))
    return pipe


def sample_stream(sel: Selection, fn: Callable[[dict], Any], *, seed: int = 0,
                  shuffle: int = 2000, epoch: Callable[[], int] = lambda: 0,
                  base_url: str | None = None) -> Any:
    """The endless, seeded stream of ``fn(raw sample)`` over the selection: each mix part
    resampled from the shards and filtered by key, parts drawn by weight (``RandomMix``);
    samples for which ``fn`` returns None are left out."""
    import webdataset as wds

    urls = shard_urls(sel.dataset, base_url=base_url)
    parts = [_part_pipeline(urls, k, fn, seed=seed + 7919 * i, shuffle=shuffle, epoch=epoch)
             for i, k in enumerate(sel.keys)]
    if len(parts) == 1:
        return parts[0]
    total = sum(p.weight for p in sel.parts)
    return wds.RandomMix(parts, probs=[p.weight / total for p in sel.parts])


def train_loader(sel: Selection, text: TextTemplate, preprocess: Callable[[Any], Any],
                 tokenizer: Callable[[list[str]], Any], *, batch_size: int,
                 samples_per_epoch: int | None = None, workers: int = 2, seed: int = 0,
                 shuffle: int = 2000, base_url: str | None = None, world_size: int = 1,
                 epoch: int = 0) -> Any:
    """open_clip's ``DataInfo`` over the selection's training stream (see module doc)."""
    import webdataset as wds
    from open_clip_train.data import DataInfo, SharedEpoch

    shared = SharedEpoch(epoch=epoch)
    stream = sample_stream(sel, _sample_fn(sel, text, preprocess), seed=seed,
                           shuffle=shuffle, epoch=shared.get_value, base_url=base_url)
    pipe = wds.DataPipeline(stream, wds.batched(batch_size, partial=False,
                                                collation_fn=_collate_fn(tokenizer)))
    n = samples_per_epoch or sel.total
    # As open_clip's get_wds_dataset: whole batches per worker, every rank the same count.
    global_batch = batch_size * world_size
    num_batches = max(1, math.ceil(n / global_batch))
    w = max(1, workers)
    per_worker = max(1, math.ceil(num_batches / w))
    num_batches = per_worker * w
    pipe = pipe.with_epoch(per_worker)
    loader = wds.WebLoader(pipe, batch_size=None, shuffle=False, num_workers=workers,
                           persistent_workers=False)
    loader.num_batches = num_batches
    loader.num_samples = num_batches * global_batch
    return DataInfo(dataloader=loader, shared_epoch=shared)


class _Validation:
    """Validation pairs read by offset, in a fixed order, as batches (one worker)."""

    def __init__(self, sel: Selection, fn: Callable[[dict], Any],
                 collate: Callable[[list[Any]], Any], batch_size: int,
                 base_url: str | None) -> None:
        self.sel, self.fn, self.collate = sel, fn, collate
        self.batch_size, self.base_url = batch_size, base_url

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        kw: dict[str, Any] = ({"base_url": self.base_url} if self.base_url
                              else {"root": self.sel.dataset})
        batch: list[Any] = []
        for raw in stream_rows(self.sel.validation, decode=False, **kw):
            pair = self.fn(raw)
            if pair is None:
                continue
            batch.append(pair)
            if len(batch) == self.batch_size:
                yield self.collate(batch)
                batch = []
        if batch:
            yield self.collate(batch)


def val_loader(sel: Selection, text: TextTemplate, preprocess: Callable[[Any], Any],
               tokenizer: Callable[[list[str]], Any], *, batch_size: int,
               base_url: str | None = None) -> Any | None:
    """open_clip's ``DataInfo`` over the validation split (None when it is empty)."""
    if sel.validation is None or sel.validation.num_rows == 0:
        return None
    from open_clip_train.data import DataInfo

    loader: Any = _Validation(sel, _sample_fn(sel, text, preprocess), _collate_fn(tokenizer),
                              batch_size, base_url)
    loader.num_samples = sel.validation.num_rows
    loader.num_batches = math.ceil(sel.validation.num_rows / batch_size)
    return DataInfo(dataloader=loader)
