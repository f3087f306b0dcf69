"""Scenes to pixels: uint8 H x W x 3 images and F x H x W x 3 videos.

A shape of side s fills its box [0, s]^2 in continuous coordinates: a disc, the full square, an
isosceles triangle with its apex up (base = height = s), or a plus whose arms are s / 3 wide.
Without anti-aliasing a pixel is painted when its centre lies in the shape; with it, the pixel
takes the covered fraction of 8 x 8 sub-samples, blended over the background. Boxes sit on whole
pixels, so the coverage masks depend only on (shape, side, anti-aliasing) and are cached.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lanterna.world.palette import BACKGROUNDS, COLOURS
from lanterna.world.spec import Box, Scene

SUPERSAMPLING = 8


def inside(shape: str, x: np.ndarray, y: np.ndarray, s: float) -> np.ndarray:
    """Is the point (x, y) of the box [0, s]^2 inside the shape? (boundary included)"""
    eps = 1e-9
    in_box = (x >= 0) & (x <= s) & (y >= 0) & (y <= s)
    if shape == "square":
        return in_box
    if shape == "circle":
        return (x - s / 2) ** 2 + (y - s / 2) ** 2 <= (s / 2) ** 2 + eps
    if shape == "triangle":
        return in_box & (np.abs(x - s / 2) <= y / 2 + eps)
    if shape == "cross":
        arm = s / 6 + eps
        return in_box & ((np.abs(x - s / 2) <= arm) | (np.abs(y - s / 2) <= arm))
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=None)
def coverage(shape: str, size: int, antialias: bool) -> np.ndarray:
    """float32 size x size: the fraction of each pixel the shape covers (0 or 1 without AA)."""
    samples = SUPERSAMPLING if antialias else 1
    centres = (np.arange(size * samples) + 0.5) / samples
    covered = inside(shape, centres[None, :], centres[:, None], float(size))
    mask = covered.reshape(size, samples, size, samples).mean(axis=(1, 3), dtype=np.float32)
    mask.setflags(write=False)
    return mask


def paint(image: np.ndarray, shape: str, colour: str, box: Box, antialias: bool) -> None:
    """Blend one shape into a uint8 H x W x 3 image, in place (rounded to the nearest level)."""
    alpha = coverage(shape, box.size, antialias)[..., None]
    region = image[box.y:box.y1, box.x:box.x1]
    if region.shape[:2] != alpha.shape[:2] or box.x < 0 or box.y < 0:
        raise ValueError(f"box {box} leaves the {image.shape[1]} x {image.shape[0]} canvas")
    below = region.astype(np.float32)
    blended = below + alpha * (np.asarray(COLOURS[colour], np.float32) - below)
    region[...] = (blended + 0.5).astype(np.uint8)  # blends of palette colours stay in [0, 255]


@lru_cache(maxsize=None)
def blank(background: str, size: int) -> np.ndarray:
    """A read-only uint8 size x size x 3 canvas of one background colour (copied, not refilled)."""
    frame = np.empty((size, size, 3), np.uint8)
    frame[...] = BACKGROUNDS[background]
    frame.setflags(write=False)
    return frame


def render_frame_into(image: np.ndarray, scene: Scene, t: float, antialias: bool) -> None:
    """Draw the scene at time t in [0, 1] into a uint8 H x W x 3 image."""
    image[...] = blank(scene.background, image.shape[0])
    for obj in scene.objects:
        paint(image, obj.shape, obj.colour, obj.box_at(t), antialias)


def render(scene: Scene, antialias: bool = True) -> np.ndarray:
    """uint8 H x W x 3: the scene (its first frame, for a video scene)."""
    n = scene.canvas.size
    image = np.empty((n, n, 3), np.uint8)
    render_frame_into(image, scene, 0.0, antialias)
    return image


def render_batch(scenes: list[Scene], antialias: bool | list[bool] = True) -> np.ndarray:
    """uint8 N x H x W x 3 for scenes on one canvas size."""
    flags = antialias if isinstance(antialias, list) else [antialias] * len(scenes)
    n = scenes[0].canvas.size if scenes else 64
    images = np.empty((len(scenes), n, n, 3), np.uint8)
    for image, scene, aa in zip(images, scenes, flags):
        render_frame_into(image, scene, 0.0, aa)
    return images


def render_video_into(video: np.ndarray, scene: Scene, antialias: bool) -> None:
    """Fill a uint8 F x H x W x 3 array: frame f shows time f / (F - 1)."""
    frames = len(video)
    if frames < 2:
        raise ValueError(f"a video needs at least 2 frames, got {frames}")
    for f, image in enumerate(video):
        render_frame_into(image, scene, f / (frames - 1), antialias)


def render_video(scene: Scene, frames: int = 16, antialias: bool = True) -> np.ndarray:
    """uint8 F x H x W x 3: frame f shows time f / (F - 1)."""
    n = scene.canvas.size
    video = np.empty((max(frames, 0), n, n, 3), np.uint8)
    render_video_into(video, scene, antialias)
    return video
