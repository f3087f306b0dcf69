"""The models that ship inside the package, and the default registry built from them."""

from __future__ import annotations

import logging
from pathlib import Path

from lanterna.engines import weights
from lanterna.engines.registry import ModelRegistry
from lanterna.engines.shapes import ShapesEngine, load_clip, load_vae

log = logging.getLogger("lanterna.engines.bundled")

# The first installed image model is the default: shapes-unet, which scores higher on
# ShapesGenEval than shapes-dit after less training (BENCHMARKS.md).
IMAGE_MODELS = ("shapes-unet", "shapes-dit")
VIDEO_MODELS = ("shapes-video",)
SCORER = "shapes-clip"

__all__ = ["default_registry", "load_clip", "load_vae", "installed_models"]


def installed_models(directory: Path | None = None) -> list[str]:
    return [m for m in IMAGE_MODELS + VIDEO_MODELS if weights.has_weights(m, directory)]


def default_registry(directory: Path | None = None) -> ModelRegistry:
    """Every bundled model whose weights are present; the default is the first image model."""
    registry = ModelRegistry()
    for name in installed_models(directory):
        registry.add_engine(name, lambda name=name: ShapesEngine(name, directory))
    images = [m for m in IMAGE_MODELS if weights.has_weights(m, directory)]
    videos = [m for m in VIDEO_MODELS if weights.has_weights(m, directory)]
    registry.default_image_model = images[0] if images else None
    registry.default_video_model = videos[0] if videos else None
    if weights.has_weights(SCORER, directory):
        from lanterna.evaluation.clip_score import ShapesCLIPScorer

        registry.add_scorer(SCORER, lambda: ShapesCLIPScorer.from_bundled(directory))
        registry.default_scorer = SCORER
    return registry
