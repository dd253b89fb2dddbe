"""Models: which open_clip architecture and weights a name means, and our checkpoints.

A model is named as open_clip names it, plus our checkpoints:

- an architecture with a ``pretrained`` tag or weights file (``ViT-B-16`` + ``openai`` or
  ``/path/epoch_3.pt``); no ``pretrained`` means random initialisation;
- ``hf-hub:org/repo`` (BiomedCLIP:
  ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``; BMCA-CLIP), checked at
  once so a machine without network fails in seconds, not after the hub's retries;
- ``local-dir:/path`` (a downloaded snapshot with ``open_clip_config.json``);
- a checkpoint file written by ``biomedica train`` (open_clip's format: ``epoch``, ``name``,
  ``state_dict``, ``optimizer``, ``scaler``), which records its architecture under the key
  ``biomedica``, so ``--model run/checkpoints/epoch_2.pt`` is enough.

``biomedica-tiny-clip`` (``model_configs/``, registered with open_clip on import) is a 2-layer,
64-wide ViT + text transformer: the architecture the CPU tests and smoke runs train from
random initialisation, since no CLIP weights can be downloaded where they run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biomedica_kit.embed.encoders import (
    ModelUnavailable,
    auto_device,
    check_open_clip_model,
    open_clip_version,
)

__all__ = ["CHECKPOINT_META", "MODEL_CONFIG_DIR", "TINY_MODEL", "LoadedModel", "ModelSpec",
           "checkpoint_meta", "load_model", "register_model_configs", "resolve_model"]

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
TINY_MODEL = "biomedica-tiny-clip"
#: The checkpoint key holding what biomedica train knows of a run (architecture, data, step).
CHECKPOINT_META = "biomedica"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_registered = False


def register_model_configs() -> None:
    """Make the configs in ``model_configs/`` known to open_clip (once per process)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    _registered = True


@dataclass(frozen=True)
class ModelSpec:
    """An open_clip architecture and its weights (a tag, a file, or None for random init)."""

    arch: str
    pretrained: str | None = None
    label: str = ""  # how tables name the model

    @property
    def model_version(self) -> str:
        """Exact identity: architecture and weights (a file by its digest)."""
        return open_clip_version(self.arch, self.pretrained)


def checkpoint_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``biomedica`` record of a checkpoint file (empty for other open_clip files)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # not a torch file, truncated, or pickles beyond weights
        raise ModelUnavailable(f"{path}: not a readable checkpoint ({exc})") from None
    meta = ckpt.get(CHECKPOINT_META) if isinstance(ckpt, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def resolve_model(model: str, pretrained: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` a ``--model`` / ``--pretrained`` pair names (see module doc)."""
    path = Path(model)
    if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
        meta = checkpoint_meta(path)
        arch = meta.get("arch")
        if not arch:
            raise ModelUnavailable(
                f"{model}: a weights file without a recorded architecture; pass the "
                f"architecture as --model and the file as --pretrained")
        step = meta.get("step")
        run = meta.get("run", path.parent.parent.name)
        label = f"{run}@{step if step is not None else path.stem}"
        return ModelSpec(str(arch), str(path), label)
    if pretrained and not Path(pretrained).is_file() and pretrained.endswith(_WEIGHT_SUFFIXES):
        raise ModelUnavailable(f"--pretrained {pretrained}: no such file")
    label = model if not pretrained else f"{model}:{Path(pretrained).name}"
    return ModelSpec(model, pretrained, label)


@dataclass
class LoadedModel:
    """An open_clip model with its transforms and tokenizer, on ``device``."""

    spec: ModelSpec
    model: Any
    preprocess_train: Any
    preprocess_val: Any
    tokenizer: Any
    device: str


def load_model(spec: ModelSpec, *, device: str | None = None, precision: str = "fp32",
               **kwargs: Any) -> LoadedModel:
    """Create the model (open_clip's ``create_model_and_transforms``) and its tokenizer.

    Hub and local-dir names are checked first
    (:func:`biomedica_kit.embed.encoders.check_open_clip_model`); any error
    loading weights becomes :class:`ModelUnavailable` with the name in it. ``kwargs`` go to
    open_clip (e.g. ``aug_cfg``, ``output_dict``).
    """
    import open_clip

    register_model_configs()
    check_open_clip_model(spec.arch)
    dev = auto_device(device)
    try:
        model, pre_train, pre_val = open_clip.create_model_and_transforms(
            spec.arch, pretrained=spec.pretrained, precision=precision, device=dev, **kwargs)
    except (RuntimeError, FileNotFoundError, KeyError) as exc:
        raise ModelUnavailable(f"open_clip {spec.arch} ({spec.pretrained}): {exc}") from None
    tokenizer = open_clip.get_tokenizer(spec.arch)
    return LoadedModel(spec, model, pre_train, pre_val, tokenizer, dev)
