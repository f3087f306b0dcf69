"""Pixels to palette labels: the oracle's first step.

Each pixel is snapped to the nearest palette colour (backgrounds included). An anti-aliased edge
pixel is a blend of an object colour over the background, and such a blend can sit nearer a third
colour (red at 60 % over white is nearer orange than red), which would ring every red shape with
an orange one. So each object colour also stands for its blends with the image's background: a
pixel nearest the segment background -> colour is that colour when its coverage is at least half,
and background otherwise. Pure palette pixels snap exactly as before.

The snap is a lookup table over colours quantised to 6 bits a channel (built once, ~0.5 s):
`labels[background][code]`, with the background found first as the most frequent of the three
background colours among plain nearest-colour snaps (of every other pixel in x and in y).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from lanterna.world.palette import BACKGROUNDS, COLOURS

OBJECT_NAMES: tuple[str, ...] = tuple(COLOURS)
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)
# Label ids: object colours 0-5, then the backgrounds 6-8.
PALETTE = np.array([*COLOURS.values(), *BACKGROUNDS.values()], np.float64)
N_OBJECTS = len(OBJECT_NAMES)
BITS = 6
SHIFT = 8 - BITS


def quantised_colours() -> np.ndarray:
    """The centre of each 6-bit colour bin, indexed by its code (r << 12 | g << 6 | b)."""
    levels = (np.arange(1 << BITS, dtype=np.float64) + 0.5) * (1 << SHIFT) - 0.5
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    return np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1)


@lru_cache(maxsize=1)
def tables() -> tuple[np.ndarray, np.ndarray]:
    """(nearest palette id per code, blend-aware label per background and code)."""
    colours = quantised_colours()
    # |x - p|^2 for every colour x and palette entry p, as one matrix product.
    norms = (colours * colours) @ np.ones((3, 1))
    distances = norms - 2 * colours @ PALETTE.T + np.square(PALETTE).sum(1)
    nearest = distances.argmin(1).astype(np.uint8)
    labels = np.empty((len(BACKGROUNDS), len(colours)), np.uint8)
    for b, background in enumerate(BACKGROUNDS.values()):
        labels[b] = blend_labels(colours, np.asarray(background, np.float64), N_OBJECTS + b, distances)
    return nearest, labels


def blend_labels(colours: np.ndarray, background: np.ndarray, background_id: int,
                 pure_distances: np.ndarray) -> np.ndarray:
    """Per colour: the nearest of the pure background colours and the segments from this
    background to each object colour (the object colour from half coverage up)."""
    offset = colours - background
    offset_norm = (offset * offset) @ np.ones(3)
    backgrounds = np.ascontiguousarray(pure_distances[:, N_OBJECTS:])
    best = backgrounds.min(1)
    label = (N_OBJECTS + backgrounds.argmin(1)).astype(np.uint8)
    for c, colour in enumerate(COLOURS.values()):
        direction = np.asarray(colour, np.float64) - background
        length = direction.dot(direction)
        along = offset @ direction
        cover = np.clip(along / length, 0.0, 1.0)
        # |offset - cover * direction|^2, the distance to the blend segment
        distance = offset_norm - 2 * cover * along + cover**2 * length
        nearer = distance < best
        best = np.where(nearer, distance, best)
        label[nearer] = np.where(cover[nearer] >= 0.5, c, background_id)
    return label


def codes(images: np.ndarray) -> np.ndarray:
    """uint8 ... x 3 -> int32 ... colour codes."""
    q = images >> SHIFT
    code = q[..., 0].astype(np.int32)
    code <<= BITS
    code |= q[..., 1]
    code <<= BITS
    code |= q[..., 2]
    return code


def snap(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x H x W x 3 -> (labels N x H x W uint8, background id per image N)."""
    nearest, labels = tables()
    code = codes(images)
    # Every other pixel in each direction is plenty to tell the background.
    near = nearest[code[:, ::2, ::2]]
    counts = np.stack([(near == N_OBJECTS + b).sum(axis=(1, 2)) for b in range(len(BACKGROUNDS))], 1)
    background = counts.argmax(1)
    out = np.empty(code.shape, np.uint8)
    for b in range(len(BACKGROUNDS)):
        which = background == b
        if which.any():
            out[which] = labels[b][code[which]]
    return out, background
