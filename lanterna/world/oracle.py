"""The oracle's eyes: `detect` finds the coloured shapes in an image (shared WORLD.md).

Pixels are snapped to palette labels (snap.py), each object colour's 8-connected components of at
least 12 px (on 64 x 64; scaled by area) become objects, classified by two numbers:
- fill = area / bounding-box area: square 1.0, circle pi / 4 = 0.79, cross 5 / 9 = 0.56,
  triangle 0.5;
- solidity = area / convex-hull area: 1.0 for the convex shapes, 5 / 7 = 0.71 for the cross.
Area is counted in pixels and the hull is taken over the pixels' corners, so a filled pixel square
has solidity exactly 1 and no small shape exceeds it. Rasterising shifts both numbers for small
shapes (a 10 px triangle fills 0.56 of its box with solidity 0.86; a 10 px cross with 4 px arms
fills 0.64 with solidity 0.78), so the thresholds below sit midway between the measured ranges of
the rendered classes over every size, not between the ideal values.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np
from scipy import ndimage

from lanterna.world.palette import Canvas
from lanterna.world.snap import BACKGROUND_NAMES, N_OBJECTS, OBJECT_NAMES, snap

# In-plane 8-connectivity only: a batch is labelled at once without joining images.
CONNECTIVITY = np.zeros((3, 3, 3), bool)
CONNECTIVITY[1] = True

# Measured over every side from 8 to 26 px at random sub-pixel offsets, anti-aliased or not:
# cross solidity <= 0.805 < 0.834 <= triangle (>= 0.855 from 10 px) < circle, square;
# triangle fill <= 0.633 (0.605 from 10 px) < 0.662 <= circle fill <= 0.905 < 0.980 <= square.
CROSS_SOLIDITY = 0.83  # below: the only non-convex shape
SQUARE_FILL = 0.93  # above: square
CIRCLE_FILL = 0.635  # above: circle, below: triangle


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    shape: str
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)
    centroid: tuple[float, float]  # x, y in pixel coordinates (a pixel's centre is at +0.5)
    area: int
    fill: float
    solidity: float

    @property
    def size(self) -> int:
        """The bounding box's longer side, px."""
        return max(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1])

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Detection:
    """Everything found in one image."""

    background: str
    objects: tuple[DetectedObject, ...]
    canvas: Canvas


def classify(fill: float, solidity: float) -> str:
    if solidity < CROSS_SOLIDITY:
        return "cross"
    if fill >= SQUARE_FILL:
        return "square"
    if fill >= CIRCLE_FILL:
        return "circle"
    return "triangle"


# The hull is measured by its support lines, vectorised over every component at once. A hull of
# pixel corners has edges along lattice vectors; the support lines are taken normal to every
# primitive lattice vector (a, b) with |a|, |b| <= 8 (176 directions). The polygon they bound
# circumscribes the hull and equals it when each hull edge runs along one of those vectors: so
# for every rendered shape and, measured, for noisy discs; long thin slivers with edges along
# other vectors come out up to ~6 % larger.
HULL_LATTICE = 8


def support_directions(order: int) -> tuple[np.ndarray, np.ndarray]:
    vectors = {(a // gcd(a, b), b // gcd(a, b)) for a in range(-order, order + 1)
               for b in range(-order, order + 1) if (a, b) != (0, 0)}
    # In order of angle from -90 degrees: the rightward directions (x >= 0) come first.
    angles = np.sort([(np.arctan2(b, a) + np.pi / 2) % (2 * np.pi) - np.pi / 2 for a, b in vectors])
    return np.cos(angles), np.sin(angles)


UX, UY = support_directions(HULL_LATTICE)
UX_NEXT, UY_NEXT = np.roll(UX, -1), np.roll(UY, -1)
SIN_STEP = UX * UY_NEXT - UY * UX_NEXT  # sine of the angle to the next direction
RIGHTWARD = int(np.sum(UX >= -1e-9))  # the first RIGHTWARD directions have x >= 0


def hull_areas(rows: np.ndarray, left: np.ndarray, right: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Convex-hull areas of pixel sets given row by row, for many sets at once.

    rows, left, right: per row of every set, its y and its leftmost and rightmost pixel's x;
    starts: where each set's rows begin. The hull is that of the pixels' corners (unit squares).
    """
    # A row's highest reach along u: its right edge when u points right, else its left edge,
    # plus its bottom edge when u points down, else its top edge. (Broadcast, not a matrix
    # product: threaded BLAS on these thin products costs more than it saves.)
    ys = rows.astype(np.float64)[:, None]
    reach = np.empty((len(rows), len(UX)))
    reach[:, :RIGHTWARD] = (right + 1.0)[:, None] * UX[:RIGHTWARD]
    reach[:, RIGHTWARD:] = left.astype(np.float64)[:, None] * UX[RIGHTWARD:]
    reach += ys * UY
    reach += np.maximum(UY, 0.0)
    h = np.maximum.reduceat(reach, starts, axis=0)  # support function per set and direction
    h_next = np.roll(h, -1, axis=1)
    # Vertex k: where the support lines k and k + 1 meet.
    vx = (h * UY_NEXT - h_next * UY) / SIN_STEP
    vy = (UX * h_next - UX_NEXT * h) / SIN_STEP
    return 0.5 * (vx * np.roll(vy, -1, axis=1) - np.roll(vx, -1, axis=1) * vy).sum(1)


def hull_area(mask: np.ndarray) -> float:
    """Convex-hull area of one pixel set (a 2-d mask)."""
    rows = np.flatnonzero(mask.any(1))
    if len(rows) == 0:
        return 0.0
    left = mask[rows].argmax(1)
    right = mask.shape[1] - 1 - mask[rows, ::-1].argmax(1)
    return float(hull_areas(rows, left, right, np.array([0]))[0])


def as_array_batch(images) -> np.ndarray:
    """uint8 N x H x W x 3 from an array (N x H x W x 3 or H x W x 3) or a list of PIL images."""
    if isinstance(images, np.ndarray):
        array = images
    else:
        array = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im)
                          for im in images])
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"images must be N x H x W x 3 RGB, got shape {array.shape}")
    if array.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {array.dtype}")
    if array.shape[1] != array.shape[2]:
        raise ValueError(f"the Shapes World canvas is square, got {array.shape[2]} x {array.shape[1]}")
    return array


def detect_batch(images, chunk: int = 256) -> list[Detection]:
    """`detect` for many same-size images at once (the benchmark's and the tests' path)."""
    array = as_array_batch(images)
    out: list[Detection] = []
    for start in range(0, len(array), chunk):
        out.extend(detect_chunk(array[start:start + chunk]))
    return out


def components(labels: np.ndarray) -> np.ndarray:
    """Connected components of each object colour: int32 N x H x W ids (0 = none).

    All object pixels are labelled at once; only images where two colours touch (never in a
    correct render, objects keep 2 px apart) are labelled again colour by colour.
    """
    objects = labels < N_OBJECTS
    comp, n = ndimage.label(objects, structure=CONNECTIVITY)
    if n == 0:
        return comp
    flat = comp.ravel()
    idx = np.flatnonzero(flat)
    colour = labels.ravel()[idx].astype(np.float64)
    count = np.bincount(flat[idx], minlength=n + 1)
    total = np.bincount(flat[idx], colour, minlength=n + 1)
    squares = np.bincount(flat[idx], colour**2, minlength=n + 1)
    mixed = np.flatnonzero(count * squares != total**2)
    if len(mixed) == 0:
        return comp
    plane = labels.shape[1] * labels.shape[2]
    next_id = n + 1
    in_mixed = np.isin(flat[idx], mixed)
    for i in np.unique(idx[in_mixed] // plane):
        comp[i] = 0
        for c in range(N_OBJECTS):
            sub, k = ndimage.label(labels[i] == c, structure=CONNECTIVITY[1])
            comp[i][sub > 0] = sub[sub > 0] + next_id - 1
            next_id += k
    return comp


def detect_chunk(images: np.ndarray) -> list[Detection]:
    n_images, height, width = images.shape[:3]
    canvas = Canvas(height)
    labels, backgrounds = snap(images)
    comp = components(labels)
    found: list[list[DetectedObject]] = [[] for _ in range(n_images)]
    idx = np.flatnonzero(comp)
    if len(idx):
        ids = comp.ravel()[idx]
        order = np.argsort(ids, kind="stable")  # raster order within a component: by row, then x
        idx, ids = idx[order], ids[order]
        first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        areas = np.diff(np.r_[first, len(ids)])
        keep = areas >= canvas.min_area
        pixel_keep = np.repeat(keep, areas)
        idx, ids = idx[pixel_keep], ids[pixel_keep]
        if len(idx):
            found = measure(idx, ids, labels, canvas, found)
    return [Detection(BACKGROUND_NAMES[b], tuple(sorted(objs, key=lambda o: (o.centroid[1], o.centroid[0]))),
                      canvas) for b, objs in zip(backgrounds, found)]


def measure(idx: np.ndarray, ids: np.ndarray, labels: np.ndarray, canvas: Canvas,
            found: list[list[DetectedObject]]) -> list[list[DetectedObject]]:
    """Each component's box, centroid, fill, solidity and class (pixels sorted by component)."""
    height, width = labels.shape[1:]
    image, rest = np.divmod(idx, height * width)
    y, x = np.divmod(rest, width)
    first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    area = np.diff(np.r_[first, len(ids)])
    x0, x1 = np.minimum.reduceat(x, first), np.maximum.reduceat(x, first) + 1
    y0, y1 = np.minimum.reduceat(y, first), np.maximum.reduceat(y, first) + 1
    cx = np.add.reduceat(x, first) / area + 0.5
    cy = np.add.reduceat(y, first) / area + 0.5
    # Rows of each component: its pixels are in raster order, so a row starts where y or id changes.
    row_first = np.flatnonzero(np.r_[True, (ids[1:] != ids[:-1]) | (y[1:] != y[:-1])])
    row_last = np.r_[row_first[1:], len(ids)] - 1
    component_rows = np.searchsorted(row_first, first)
    hulls = hull_areas(y[row_first], x[row_first], x[row_last], component_rows)
    fill = area / ((x1 - x0) * (y1 - y0))
    solidity = np.minimum(1.0, area / np.maximum(hulls, 1.0))
    shapes = [classify(f, s) for f, s in zip(fill.tolist(), solidity.tolist())]
    colour = labels.ravel()[idx[first]]
    columns = [a.tolist() for a in (image[first], colour, x0, y0, x1, y1, cx, cy, area,
                                    fill.round(4), solidity.round(4))]
    for shape, (i, c, bx0, by0, bx1, by1, px, py, n, f, s) in zip(shapes, zip(*columns)):
        found[i].append(DetectedObject(OBJECT_NAMES[c], shape, (bx0, by0, bx1, by1), (px, py), n, f, s))
    return found


def detect(image) -> list[DetectedObject]:
    """The coloured shapes in one image (PIL image or uint8 H x W x 3 array)."""
    return list(detect_batch([image] if not isinstance(image, np.ndarray) else image)[0].objects)
