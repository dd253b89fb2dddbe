"""Evaluate CLIP models on a dataset's held-out split: zero-shot taxonomy labels and retrieval.

Public API::

    evaluate(dataset, models, *, split="test", split_name="default",
             label_sources=REVIEWED, batch_size=64, device=None, name=None, out=None,
             allow_overlap=False, workers=None, taxonomy=None, progress=True) -> EvalSummary
    read_results(dataset, name=None) -> polars.DataFrame      # the newest evaluation's rows
    check_overlap(spec, split_name, split, digest, *, allow=False) -> (note, warnings)
    class_prompts(taxonomy, level) -> (classes, prompts per class)   # PROMPT_TEMPLATES filled

**Samples.** The keys of ``split`` in ``DATASET/splits/<split_name>.parquet`` (made by
``biomedica split``; a missing file is an :class:`EvalError` saying so), read from the shards
by byte range. Images go through the model's own preprocessing settings (size, resize mode,
interpolation, mean/std from open_clip's ``preprocess_cfg``), decoded in worker processes
(:class:`biomedica_kit.embed.decode.Decoder`, as ``biomedica embed`` does) once the split has
more than 1,024 samples (below, starting the processes costs more than it saves). Models that
want the same image size share one decoding pass, models of one architecture share the
tokenised captions and prompts, and every model runs batched on its device (CUDA when
present, else CPU: the same code).

**Zero-shot classification** (tasks ``zeroshot_primary``, ``zeroshot_secondary``): the classes
are exactly the taxonomy's labels (:func:`biomedica_kit.labels.taxonomy.load_taxonomy`: 16
primary, 119 secondary labels in BIOMEDICA's), the truth is each sample's label in the newest
label version whose ``label_source`` is in ``label_sources`` (default :data:`REVIEWED`: expert
decisions and overrides; add ``proposal`` to score against proposals too). A class's text
vector is the normalised mean of its prompts' normalised vectors (CLIP's prompt ensemble) over
:data:`PROMPT_TEMPLATES`::

    "a biomedical figure showing {label}."
    "{label}"
    "a biomedical figure: {description}"

``{label}`` is the label as the taxonomy names it, ``{description}`` its description
(``curation/taxonomy/label_descriptions.json``; the label itself when it has none), the same
prompt the label proposer (:mod:`biomedica_kit.labels.proposals`) scores. Metrics: top-1,
top-5, balanced accuracy (:mod:`biomedica_train.metrics`), ``n``, and top-1 / top-5 per class.

**Retrieval** (``retrieval_i2t``, ``retrieval_t2i``): every split sample with a caption is a
query and the gallery is the same samples' other side; recall@1/5/10 overall, by the query's
``license_category`` and by its primary label (the same label sources; ``(unlabelled)``
otherwise). Samples sharing a caption text or an image are equivalent answers
(:func:`biomedica_train.metrics.equivalence_classes`).

**Overlap guard.** A checkpoint written by ``biomedica train`` records the split it trained
on (``name``, ``digest`` of the split file, the parts ``used``). Evaluating it on a part of
the same split that it used is refused (:class:`LeakageError`) unless ``allow_overlap``, and
the model is then labelled as such in every output; a split file whose digest differs from
the recorded one gives a warning (the split was remade or extended since training). A
checkpoint trained without a split (``used: ["all"]``) overlaps any split of its own dataset
(the same folder or ``dataset_version``) and gives a warning on others.

**Output** (:mod:`biomedica_train.results`): ``DATASET/eval/<name>/`` (or ``out``) with
``results.parquet`` (long format), ``results.md`` (models side by side) and ``config.json``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from biomedica_kit.embed.decode import Decoder
from biomedica_kit.embed.encoders import IMAGENET_MEAN, IMAGENET_STD, ImageSpec, auto_device
from biomedica_kit.labels.table import SOURCES, label_versions, read_labels
from biomedica_kit.labels.taxonomy import Taxonomy, load_taxonomy
from biomedica_kit.tables.export import META_DIR, export
from biomedica_kit.tables.samples import ROW_COLUMNS
from biomedica_kit.tables.splits import (
    SPLIT_NAMES,
    SplitError,
    split_digest,
    split_info,
    split_keys,
)
from biomedica_train import metrics
from biomedica_train.models import LoadedModel, ModelSpec, checkpoint_meta, load_model
from biomedica_train.results import (
    UNKNOWN,
    UNLABELLED,
    eval_dir,
    read_results,
    render_markdown,
    side_by_side,
    write_results,
)

if TYPE_CHECKING:
    import polars as pl

__all__ = ["PROMPT_TEMPLATES", "RECALL_AT", "REVIEWED", "EvalError", "EvalSummary",
           "LeakageError", "check_overlap", "class_prompts", "evaluate", "image_spec",
           "read_results"]

#: Prompt templates of the zero-shot classes (module doc); ``{label}``, ``{description}``.
PROMPT_TEMPLATES = ("a biomedical figure showing {label}.", "{label}",
                    "a biomedical figure: {description}")
#: The label sources counted as reviewed (the default truth of zero-shot).
REVIEWED = ("expert", "override")
RECALL_AT = (1, 5, 10)
#: Splits of more samples than this are decoded in worker processes by default (below, the
#: processes' start costs more than decoding in this one: measured on 185 real figures).
_WORKERS_FROM = 1024
_TOP_K = 5


class EvalError(ValueError):
    """An evaluation that cannot run (no split, no samples, bad arguments)."""


class LeakageError(EvalError):
    """A checkpoint trained on the split part it would be evaluated on."""


@dataclass
class EvalSummary:
    """What :func:`evaluate` wrote."""

    name: str
    path: str
    models: list[str]
    split: str
    samples: int  # retrieval queries (split samples with a caption)
    labelled: dict[str, int]  # zero-shot samples per task
    table: pl.DataFrame  # models side by side (overall rows)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load_seconds: float = 0.0  # of ``seconds``: loading the models

    def format_lines(self) -> list[str]:
        """The summary as the CLI prints it: the side-by-side table in Markdown."""
        from biomedica_train.results import markdown_table

        zs = ", ".join(f"{k} {v}" for k, v in self.labelled.items())
        return [f"evaluation {self.name}: {self.path}",
                f"split {self.split}: {self.samples} samples for retrieval; labelled for "
                f"zero-shot: {zs or 'none'} ({self.seconds:.1f} s, "
                f"{self.load_seconds:.1f} s of it loading models)",
                *[f"warning: {w}" for w in self.warnings], "", markdown_table(self.table)]


# ------------------------------------------------------------------------------- the guard


def check_overlap(spec: ModelSpec, split_name: str, split: str, digest: str, *,
                  dataset: str | os.PathLike[str] | None = None,
                  dataset_version: str | None = None,
                  allow: bool = False) -> tuple[str | None, list[str]]:
    """``(overlap note or None, warnings)`` for evaluating ``spec`` on ``split`` of the split
    file ``split_name`` whose digest is ``digest`` (module doc). Raises :class:`LeakageError`
    for a checkpoint that trained on that part unless ``allow``.

    A checkpoint trained without a split (``used`` is ``["all"]``) trained on every sample
    of its dataset: it overlaps when its recorded dataset is ``dataset`` (the same folder) or
    has the same ``dataset_version``, and gives a warning otherwise (it may have seen them).
    """
    if not spec.pretrained or not Path(spec.pretrained).is_file():
        return None, []
    meta = checkpoint_meta(spec.pretrained)
    recorded = meta.get("split")
    if not isinstance(recorded, dict):
        return None, []
    used = [str(u) for u in recorded.get("used") or ()]
    out: list[str] = []
    if "all" in used:
        trained_on = str(meta.get("dataset") or "")
        same = (dataset is not None and trained_on
                and Path(trained_on).resolve() == Path(dataset).resolve()) \
            or (dataset_version is not None and meta.get("dataset_version") == dataset_version)
        if not same:
            out.append(f"{spec.label}: trained without a split on {trained_on or 'a dataset'} "
                       f"(version {meta.get('dataset_version')}); it may have seen these "
                       f"samples")
            return None, out
        why = f"trained on every sample of {trained_on} (no split)"
    elif recorded.get("name") != split_name:
        return None, []
    else:
        rec_digest = str(recorded.get("digest") or "")
        if rec_digest and not digest.startswith(rec_digest):
            out.append(f"{spec.label}: split {split_name!r} changed since training (digest "
                       f"{rec_digest[:12]} then, {digest[:12]} now): articles added since "
                       f"were placed afresh")
        if split not in used:
            return None, out
        why = f"trained on the {split!r} part of split {split_name!r} (it used {used})"
    note = f"trained on {split_name}/{split}"
    if not allow:
        raise LeakageError(
            f"{spec.label} ({spec.pretrained}) was {why}; evaluating it on {split_name}/"
            f"{split} measures memorisation. Evaluate on another part or split, or pass "
            f"allow_overlap=True (--allow-overlap) to run it anyway, labelled as overlapping")
    return note, out


# ------------------------------------------------------------------------------- prompts


def class_prompts(taxonomy: Taxonomy, level: str) -> tuple[list[str], list[list[str]]]:
    """``(classes, prompts per class)`` for ``level`` ``primary`` or ``secondary``: the
    taxonomy's labels in its order, each with :data:`PROMPT_TEMPLATES` filled in."""
    if level == "primary":
        classes = list(taxonomy.tree)
        descs = [taxonomy.primary_descriptions.get(c) or c for c in classes]
    elif level == "secondary":
        classes = [lab.secondary for lab in taxonomy.labels]
        descs = [lab.description or lab.secondary for lab in taxonomy.labels]
    else:
        raise ValueError(f"level must be primary or secondary, not {level!r}")
    return classes, [[t.format(label=c, description=d) for t in PROMPT_TEMPLATES]
                     for c, d in zip(classes, descs, strict=True)]


# ------------------------------------------------------------------------------- models


def image_spec(loaded: LoadedModel) -> ImageSpec:
    """How ``loaded`` wants its images, from open_clip's ``preprocess_cfg``."""
    cfg = dict(getattr(loaded.model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", 224)
    size = int(size[0] if isinstance(size, list | tuple) else size)
    return ImageSpec(size=size, resize=size, mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                     std=tuple(cfg.get("std", IMAGENET_STD)),
                     interpolation=str(cfg.get("interpolation", "bicubic")),
                     resize_mode=str(cfg.get("resize_mode", "shortest")),
                     fill=int(cfg.get("fill_color", 0)))


@dataclass
class _Model:
    spec: ModelSpec
    label: str
    loaded: LoadedModel
    image: ImageSpec
    overlap: str | None
    meta: dict[str, Any]


def _normalised(x: Any) -> np.ndarray:
    import torch

    return torch.nn.functional.normalize(x.float(), dim=-1).cpu().numpy().astype(np.float32)


def _encode_images(m: _Model, pixels: np.ndarray) -> np.ndarray:
    import torch

    dev, spec = m.loaded.device, m.image
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(dev, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(spec.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=dev).view(1, 3, 1, 1)
    with torch.inference_mode():
        return _normalised(m.loaded.model.encode_image((x - mean) / std))


class _Tokens:
    """Token batches per architecture and text list: models of one architecture (a base and
    its fine-tuned checkpoints) share a tokenizer, and open_clip's BPE is slow Python."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.cache: dict[tuple[str, str], list[Any]] = {}

    def get(self, m: _Model, what: str, texts: Sequence[str]) -> list[Any]:
        key = (m.spec.arch, what)
        if key not in self.cache:
            self.cache[key] = [m.loaded.tokenizer(list(texts[i:i + self.batch_size]))
                               for i in range(0, len(texts), self.batch_size)]
        return self.cache[key]


def _encode_tokens(m: _Model, batches: list[Any], bar: Any = None) -> np.ndarray:
    import torch

    out = []
    for tokens in batches:
        with torch.inference_mode():
            out.append(_normalised(m.loaded.model.encode_text(tokens.to(m.loaded.device))))
        if bar is not None:
            bar.update(len(tokens))
    dims = int(out[0].shape[1]) if out else 0
    return np.concatenate(out) if out else np.zeros((0, dims), np.float32)


def _class_vectors(m: _Model, level: str, prompts: list[list[str]], tokens: _Tokens
                   ) -> np.ndarray:
    flat = [p for ps in prompts for p in ps]
    vecs = _encode_tokens(m, tokens.get(m, level, flat)).reshape(len(prompts), len(prompts[0]),
                                                                 -1)
    mean = vecs.mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def _open(models: Iterable[str | ModelSpec | tuple[str, str | None]], device: str,
          split_name: str, split: str, digest: str, allow: bool, root: Path
          ) -> tuple[list[_Model], list[str]]:
    from biomedica_train.models import resolve_model

    checked: list[tuple[ModelSpec, str, str | None]] = []
    notes: list[str] = []
    labels: set[str] = set()
    for item in models:  # every guard before any model loads
        if isinstance(item, ModelSpec):
            spec = item
        elif isinstance(item, tuple):
            spec = resolve_model(item[0], item[1])
        else:
            spec = resolve_model(item)
        overlap, warn = check_overlap(spec, split_name, split, digest, dataset=root,
                                      dataset_version=_dataset_version(root), allow=allow)
        notes += warn
        label = spec.label or spec.arch
        if overlap:
            label += f" [{overlap}]"
        base, i = label, 2
        while label in labels:
            label, i = f"{base} #{i}", i + 1
        labels.add(label)
        checked.append((spec, label, overlap))
    out: list[_Model] = []
    for spec, label, overlap in checked:
        loaded = load_model(spec, device=device)
        loaded.model.eval()
        meta = checkpoint_meta(spec.pretrained) if spec.pretrained and \
            Path(spec.pretrained).is_file() else {}
        out.append(_Model(spec, label, loaded, image_spec(loaded), overlap, meta))
    if not out:
        raise EvalError("no model to evaluate")
    return out, notes


# ------------------------------------------------------------------------------- samples


def _rows(root: Path, keys: set[str]) -> list[dict[str, Any]]:
    """Figures rows of ``keys`` (location, caption, licence, image digest), shard order."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    figures = root / META_DIR / "figures.parquet"
    have = set(pq.read_schema(figures).names)
    cols = [*ROW_COLUMNS, *(c for c in ("caption", "license_category", "image_sha256")
                            if c in have)]
    t = pq.read_table(figures, columns=cols)
    t = t.filter(pc.is_in(t.column("key"), value_set=pa.array(sorted(keys), pa.string())))
    return sorted(t.to_pylist(), key=lambda r: (r["shard"], r["image_offset"]))


def _labels(root: Path, keys: list[str], sources: Sequence[str]) -> dict[str, dict[str, Any]]:
    import polars as pl

    t = read_labels(root)
    t = t.filter(pl.col("key").is_in(keys) & pl.col("label_source").is_in(list(sources)))
    return {r["key"]: r for r in t.select("key", "primary_label", "secondary_label",
                                          "label_source").iter_rows(named=True)}


def _batches(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def _image_vectors(root: Path, rows: list[dict[str, Any]], models: list[_Model],
                   batch_size: int, workers: int | None, bar: Any) -> list[np.ndarray]:
    """Image vectors per model (row order); one decoding pass per distinct image spec."""
    from biomedica_kit.embed.run import default_workers

    out: dict[int, list[np.ndarray]] = {i: [] for i in range(len(models))}
    by_spec: dict[ImageSpec, list[int]] = {}
    for i, m in enumerate(models):
        by_spec.setdefault(m.image, []).append(i)
    if workers is None:  # starting worker processes takes seconds: they pay on large splits
        workers = default_workers() if len(rows) > _WORKERS_FROM else 0
    for spec, members in by_spec.items():
        with Decoder(root, spec, workers) as dec:
            for decoded in dec.map(_batches(rows, batch_size)):
                for i in members:
                    out[i].append(_encode_images(models[i], decoded.pixels))
                    bar.update(len(decoded.keys))
    return [np.concatenate(out[i]) if out[i] else np.zeros((0, 1), np.float32)
            for i in range(len(models))]


# ------------------------------------------------------------------------------- results


def _row(m: _Model, task: str, metric: str, group_by: str, group: str, value: float,
         n: int) -> dict[str, Any]:
    return {"model": m.label, "model_version": m.spec.model_version, "task": task,
            "metric": metric, "group_by": group_by, "group": group, "value": float(value),
            "n": int(n)}


def _retrieval_rows(m: _Model, img: np.ndarray, txt: np.ndarray, classes: np.ndarray,
                    groups: dict[str, list[str]]) -> list[dict[str, Any]]:
    out = []
    for task, q, g in (("retrieval_i2t", img, txt), ("retrieval_t2i", txt, img)):
        ranks = metrics.retrieval_ranks(q, g, classes)
        for k in RECALL_AT:
            out.append(_row(m, task, f"recall@{k}", "all", "all",
                            metrics.recall_at(ranks, k), len(ranks)))
        for group_by, values in groups.items():
            arr = np.array(values, dtype=object)
            for gv in sorted(set(values)):
                sel = ranks[arr == gv]
                for k in RECALL_AT:
                    out.append(_row(m, task, f"recall@{k}", group_by, gv,
                                    metrics.recall_at(sel, k), len(sel)))
    return out


def _zero_shot_rows(m: _Model, task: str, img: np.ndarray, class_vecs: np.ndarray,
                    classes: list[str], truth: np.ndarray) -> list[dict[str, Any]]:
    res = metrics.zero_shot(img @ class_vecs.T, truth)
    out = [_row(m, task, "top1", "all", "all", res.top1, res.n),
           _row(m, task, "top5", "all", "all", res.top5, res.n),
           _row(m, task, "balanced_accuracy", "all", "all", res.balanced_accuracy, res.n)]
    for c, (n, t1, t5) in sorted(res.per_class.items()):
        out.append(_row(m, task, "top1", "class", classes[c], t1, n))
        out.append(_row(m, task, "top5", "class", classes[c], t5, n))
    return out


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", desc="evaluate", disable=not enabled,
                dynamic_ncols=True)


def _default_name(split_name: str, split: str) -> str:
    return f"{split_name}-{split}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def evaluate(dataset: str | os.PathLike[str],
             models: Sequence[str | ModelSpec | tuple[str, str | None]], *,
             split: str = "test", split_name: str = "default",
             label_sources: Sequence[str] = REVIEWED, batch_size: int = 64,
             device: str | None = None, name: str | None = None,
             out: str | os.PathLike[str] | None = None, allow_overlap: bool = False,
             workers: int | None = None, taxonomy: str | os.PathLike[str] | None = None,
             progress: bool = True) -> EvalSummary:
    """Evaluate ``models`` on ``split`` of ``DATASET/splits/<split_name>.parquet`` (module doc).

    ``models``: names as :func:`biomedica_train.models.resolve_model` takes them (a checkpoint
    file, an architecture, ``hf-hub:...``), ``(arch, pretrained)`` pairs or
    :class:`~biomedica_train.models.ModelSpec`. ``label_sources``: which labels count as
    truth for zero-shot. ``workers``: decoding processes (default: none for a split of 1,024
    samples or fewer, else :func:`biomedica_kit.embed.run.default_workers`). Results go to
    ``out`` or ``DATASET/eval/<name>/`` (default name ``<split_name>-<split>-<UTC time>``;
    an earlier evaluation of that name is replaced).
    """
    import polars as pl

    t0 = time.perf_counter()
    root = Path(dataset)
    if split not in SPLIT_NAMES:
        raise EvalError(f"unknown split {split!r}; one of {SPLIT_NAMES}")
    bad = sorted(set(label_sources) - set(SOURCES))
    if bad or not label_sources:
        raise EvalError(f"label sources must be some of {SOURCES}, got {list(label_sources)}")
    if batch_size < 1:
        raise EvalError("batch_size must be at least 1")
    try:
        info = split_info(root, split_name)
        keys = split_keys(root, split, split_name)
    except SplitError as exc:
        raise EvalError(str(exc)) from None
    name = name or _default_name(split_name, split)
    folder = Path(out) if out is not None else eval_dir(root, name)
    digest = split_digest(root, split_name)
    export(root)  # figures.parquet of the current version
    rows = _rows(root, keys)
    if not rows:
        raise EvalError(f"split {split_name!r} has no {split} sample in the dataset's current "
                        f"version ({len(keys)} keys in the split file)")
    dev = auto_device(device)
    t_load = time.perf_counter()
    loaded, notes = _open(models, dev, split_name, split, digest, allow_overlap, root)
    t_load = time.perf_counter() - t_load
    for w in notes:
        warnings.warn(w, stacklevel=2)
    tax = load_taxonomy(taxonomy)
    labs = _labels(root, [r["key"] for r in rows], label_sources)
    captions = [(r.get("caption") or "").strip() for r in rows]
    with_text = [i for i, c in enumerate(captions) if c]
    if not with_text:
        raise EvalError(f"no {split} sample has a caption: nothing to retrieve")

    levels: dict[str, tuple[list[str], list[list[str]], list[int], np.ndarray]] = {}
    excluded: dict[str, int] = {}
    for level, column in (("primary", "primary_label"), ("secondary", "secondary_label")):
        classes, prompts = class_prompts(tax, level)
        index = {c: i for i, c in enumerate(classes)}
        labelled = [(i, labs[r["key"]][column]) for i, r in enumerate(rows)
                    if r["key"] in labs and labs[r["key"]][column] is not None]
        known = [(i, index[v]) for i, v in labelled if v in index]
        excluded[level] = len(labelled) - len(known)
        if excluded[level]:
            notes.append(f"{excluded[level]} {level} labels are not classes of taxonomy "
                         f"{tax.source}: left out of zero-shot")
        levels[level] = (classes, prompts, [i for i, _ in known],
                         np.array([c for _, c in known], dtype=np.int64))

    n_text = len(with_text) * len(loaded)
    bar = _progress(len(rows) * len(loaded) + n_text, progress)
    image_vecs = _image_vectors(root, rows, loaded, batch_size, workers, bar)
    texts = [captions[i] for i in with_text]
    sub = [rows[i] for i in with_text]
    eq = metrics.equivalence_classes(texts, [r.get("image_sha256") for r in sub])
    groups = {"license_category": [r.get("license_category") or UNKNOWN for r in sub],
              "primary_label": [(labs.get(r["key"]) or {}).get("primary_label") or UNLABELLED
                                for r in sub]}
    out_rows: list[dict[str, Any]] = []
    tokens = _Tokens(batch_size)
    for m, img in zip(loaded, image_vecs, strict=True):
        txt = _encode_tokens(m, tokens.get(m, "captions", texts), bar)
        out_rows += _retrieval_rows(m, img[with_text], txt, eq, groups)
        for level, (classes, prompts, idx, truth) in levels.items():
            if idx:
                out_rows += _zero_shot_rows(m, f"zeroshot_{level}", img[idx],
                                            _class_vectors(m, level, prompts, tokens),
                                            classes, truth)
    bar.close()
    results = pl.DataFrame(out_rows, schema={"model": pl.String, "model_version": pl.String,
                                             "task": pl.String, "metric": pl.String,
                                             "group_by": pl.String, "group": pl.String,
                                             "value": pl.Float64, "n": pl.Int64})
    labelled_n = {f"zeroshot_{lv}": len(v[2]) for lv, v in levels.items()}
    for lv, v in levels.items():
        if not v[2]:
            notes.append(f"no {split} sample has a {lv} label from {list(label_sources)}: "
                         f"no zero-shot {lv} result")
    seconds = round(time.perf_counter() - t0, 3)
    versions = label_versions(root)
    config = {
        "name": name, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": str(root), "dataset_version": _dataset_version(root),
        "split": {"name": split_name, "split": split, "digest": digest,
                  "dataset_version": info.get("dataset_version"), "keys": len(keys)},
        "labels": {"version": versions[-1] if versions else None,
                   "sources": list(label_sources), "taxonomy": tax.source,
                   "taxonomy_version": tax.version},
        "models": [{"label": m.label, "arch": m.spec.arch, "pretrained": m.spec.pretrained,
                    "model_version": m.spec.model_version, "leakage": bool(m.overlap),
                    "overlap": m.overlap, "checkpoint": _jsonable(m.meta),
                    "image_size": m.image.size, "device": m.loaded.device} for m in loaded],
        "samples": {"split": len(rows), "retrieval": len(with_text), **labelled_n,
                    "labels_outside_taxonomy": excluded},
        "classes": {lv: v[0] for lv, v in levels.items()},
        "prompts": {"templates": list(PROMPT_TEMPLATES),
                    **{lv: dict(zip(v[0], v[1], strict=True)) for lv, v in levels.items()}},
        "batch_size": batch_size, "device": dev, "seconds": seconds,
        "load_seconds": round(t_load, 3), "warnings": notes,
    }
    write_results(folder, results, config, render_markdown(results, config))
    return EvalSummary(name=name, path=str(folder), models=[m.label for m in loaded],
                       split=f"{split_name}/{split}", samples=len(with_text),
                       labelled=labelled_n, table=side_by_side(results), warnings=notes,
                       seconds=seconds, load_seconds=round(t_load, 3))


def _dataset_version(root: Path) -> str:
    from biomedica_kit.dataset.manifest import read_manifest

    return str(read_manifest(root)["dataset_version"])


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's record with values JSON can hold (others as their text)."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        out[str(k)] = v if isinstance(v, str | int | float | bool | list | dict | None) \
            else str(v)
    return out
