"""Training batches from the Shapes World, rendered fresh for every step (no data set on disk)."""

from __future__ import annotations

import numpy as np
import torch

from lanterna.world import sampling
from lanterna.world.grounding import DEFAULT_MAP_KIND, LAYOUT_DROPOUT, layout_maps
from lanterna.world.near_miss import near_miss_renders
from lanterna.world.spec import Requirements, Scene


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def from_pixels(x: torch.Tensor) -> np.ndarray:
    """float N x 3 x H x W in [-1, 1] -> uint8 N x H x W x 3."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def image_batch(rng: np.random.Generator, n: int,
                task_mix: dict[str, float] | None = None) -> tuple[torch.Tensor, list[str]]:
    """A mixed batch over the image tasks (`task_mix`, default the training mix), never showing a
    held-out composition."""
    pixels, captions, _ = image_batch_with_requirements(rng, n, task_mix)
    return pixels, captions


def image_batch_with_scenes(rng: np.random.Generator, n: int, task_mix: dict[str, float] | None = None,
                            ) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """`image_batch`, with the scene each image shows."""
    images, captions, scenes = sampling.sample_batch(rng, n, task_mix)
    return to_pixels(images), captions, scenes


def image_batch_with_requirements(rng: np.random.Generator, n: int, task_mix: dict[str, float] | None = None,
                                  ) -> tuple[torch.Tensor, list[str], list[Requirements]]:
    """`image_batch`, with what each caption asks for."""
    pixels, captions, scenes = image_batch_with_scenes(rng, n, task_mix)
    return pixels, captions, [s.requirements for s in scenes]


def near_miss_batch(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, list[str]]:
    """n // 2 training renders, then a render of a near miss of each (one fact changed)."""
    images, captions, scenes = sampling.sample_batch(rng, n // 2)
    miss_images, miss_captions = near_miss_renders(rng, scenes)
    return to_pixels(np.concatenate([images, miss_images])), captions + miss_captions


def video_batch(
    rng: np.random.Generator, n: int, frames: int, size: int
) -> tuple[torch.Tensor, list[str]]:
    """N x 3 x F x H x W videos in [-1, 1] with their motion captions."""
    x, captions, _ = video_batch_with_scenes(rng, n, frames, size)
    return x, captions


def video_batch_with_scenes(rng: np.random.Generator, n: int, frames: int, size: int
                            ) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """`video_batch`, with the scene each video shows."""
    videos, captions, scenes = sampling.sample_video_batch(rng, n, frames=frames, size=size)
    x = torch.from_numpy(np.ascontiguousarray(videos)).float() / 127.5 - 1.0  # N F H W 3
    return x.permute(0, 4, 1, 2, 3), captions, scenes


def layout_batch(rng: np.random.Generator, scenes: list[Scene], cells: int, frames: int | None = None,
                 dropout: float = LAYOUT_DROPOUT, kind: str = DEFAULT_MAP_KIND) -> torch.Tensor:
    """The scenes' layout maps (N x C x (F x) cells x cells), the empty map for `dropout` of them."""
    kept = [s if rng.random() >= dropout else None for s in scenes]
    return torch.from_numpy(layout_maps(kept, cells, frames, kind))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], measured on the 0-255 scale after rounding."""
    a8 = torch.from_numpy(from_pixels(a)).float()
    b8 = torch.from_numpy(from_pixels(b)).float()
    mse = ((a8 - b8) ** 2).mean().clamp_min(1e-10)
    return float(10 * torch.log10(255.0**2 / mse))
