"""Feature extractors for the set metrics, behind one interface and a name registry.

A `FeatureExtractor` maps uint8 B x 3 x H x W images to B x dim features. Built in:
- `shapes-clip`: the bundled CLIP's image tower (Frechet distance in CLIP space, Kynkaanniemi et
  al. 2023, "The Role of ImageNet Classes in Frechet Inception Distance").
- `inception-v3`: FID's Inception-v3 pool features (2048-d); `inception-v3-logits`: its 1008-class
  logits without the head's bias, the Inception Score's input in torchmetrics / torch-fidelity.
Users add their own with `register_feature_extractor(name, factory)`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from lanterna.engines import weights
from lanterna.evaluation.inception import WEIGHTS_FILENAME, FIDInceptionV3

log = logging.getLogger("lanterna.evaluation.features")

SHAPES_CLIP = "shapes-clip"
INCEPTION_ENV = "LANTERNA_INCEPTION_WEIGHTS"


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 B x 3 x H x W -> float B x dim."""


FeatureFactory = Callable[[], FeatureExtractor]


class MissingFeatureWeights(FileNotFoundError):
    pass


def fingerprint(extractor: FeatureExtractor) -> str:
    """What identifies an extractor's weights, beyond its name (empty when it has none)."""
    return str(getattr(extractor, "fingerprint", ""))


class ModuleFeatures:
    """Any callable (an nn.Module, a function) from uint8 images to features, as an extractor."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor], dim: int | None = None,
                 fingerprint: str = "") -> None:
        self.name = name
        self.fn = fn
        self.fingerprint = fingerprint
        self.dim = dim if dim is not None else self._probe_dim()

    def _probe_dim(self) -> int:
        return int(self(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).shape[-1])

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.fn(images)
        return out.unsqueeze(0) if out.dim() == 1 else out


class ShapesCLIPFeatures:
    """The image embedding of a `ShapesCLIP` (projected into the joint space, not normalised)."""

    def __init__(self, model: torch.nn.Module, image_size: int | None = None, fingerprint: str = "",
                 name: str = SHAPES_CLIP) -> None:
        self.name = name
        self.model = model.eval()
        self.image_size = image_size or clip_image_size(model)
        self.fingerprint = fingerprint
        self.dim = int(self(torch.zeros(1, 3, self.image_size, self.image_size, dtype=torch.uint8)).shape[-1])

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(shapes_clip_pixels(images, self.image_size)).float()


def clip_image_size(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "image_size", None)
    return int(size) if size else 64


def shapes_clip_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images -> the float [-1, 1] pixels the Shapes nets take, resized to `size` if needed."""
    x = images.float() / 127.5 - 1.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class InceptionFeatures:
    """FID's Inception-v3: 2048-d pool features, or with `logits=True` its unbiased logits."""

    def __init__(self, weights_path: str | Path | None = None, logits: bool = False) -> None:
        path = inception_weights_path(weights_path)
        self.net = FIDInceptionV3.from_file(path)
        self.logits = logits
        self.name = "inception-v3-logits" if logits else "inception-v3"
        self.dim = 1008 if logits else 2048
        self.fingerprint = weights.file_hash(str(path))[:16]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pool = self.net(images)
        return self.net.logits(pool) if self.logits else pool


def inception_weights_path(path: str | Path | None = None) -> Path:
    """The local Inception weights: `path`, else $LANTERNA_INCEPTION_WEIGHTS, else the cache dir."""
    chosen = Path(path or os.environ.get(INCEPTION_ENV)
                  or Path.home() / ".cache" / "lanterna" / "weights" / WEIGHTS_FILENAME).expanduser()
    if not chosen.is_file():
        raise MissingFeatureWeights(
            f"Inception-v3 weights not found at {chosen}. Nothing is downloaded at run time: put "
            f"FID's standard weights file {WEIGHTS_FILENAME} (a PyTorch state dict, as released with "
            f"pytorch-fid; torch-fidelity's weights-inception-2015-12-05-6726825d.pth is the same "
            f"file) there, or point ${INCEPTION_ENV} or --inception-weights at it.")
    return chosen


def load_bundled_clip(directory: Path | None = None) -> tuple[torch.nn.Module, str]:
    """The bundled `shapes-clip` and its weights hash; a clear error when it is not bundled."""
    if not weights.has_weights(SHAPES_CLIP, directory):
        where = weights.tensors_path(SHAPES_CLIP, directory)
        raise MissingFeatureWeights(
            f"the bundled shapes-clip weights are missing ({where} and its .json card); train and "
            f"export them with `lanterna train clip --export`, or use another scorer / feature "
            f"extractor (a transformers CLIP folder, inception-v3)")
    from lanterna.engines.nets.text import ShapesCLIP, ShapesCLIPConfig

    card = weights.read_card(SHAPES_CLIP, directory)
    model = ShapesCLIP(ShapesCLIPConfig(**card["config"]))
    model.load_state_dict(weights.load_state(SHAPES_CLIP, directory))
    return model.eval(), weights.weights_hash(SHAPES_CLIP, directory)


def _bundled_clip_features() -> FeatureExtractor:
    model, digest = load_bundled_clip()
    return ShapesCLIPFeatures(model, fingerprint=digest)


_REGISTRY: dict[str, FeatureFactory] = {
    SHAPES_CLIP: _bundled_clip_features,
    "inception-v3": lambda: InceptionFeatures(),
    "inception-v3-logits": lambda: InceptionFeatures(logits=True),
}


def register_feature_extractor(name: str, factory: FeatureFactory) -> None:
    """Make `name` usable wherever an extractor is named (library calls, `--features NAME`)."""
    _REGISTRY[name] = factory


def available_feature_extractors() -> list[str]:
    return sorted(_REGISTRY)


def get_feature_extractor(name: str | FeatureExtractor) -> FeatureExtractor:
    if not isinstance(name, str):
        return name
    if name not in _REGISTRY:
        raise KeyError(f"unknown feature extractor {name!r}; available: "
                       f"{', '.join(available_feature_extractors())}")
    return _REGISTRY[name]()
