"""Layout grounding: a scene planned from a caption, drawn as a map the denoiser reads beside the noise.

A grounded denoiser takes, next to each latent cell, what object the plan puts there: the share of
the cell inside an object's bounding box (map kind "boxes"), or inside the object's own silhouette
as the renderer draws it ("silhouettes", a segmentation-style layout whose outline already tells a
square from a disc), and that object's colour and shape (one-hot). In
training the map comes from the rendered scene itself; at sampling time `plan_scene` parses the
caption and lays it out with the world's own scene sampler (seeded), so counts, sides, places,
sizes and motions are settled by the plan and the denoiser draws each object in its box. This is
layout-grounded generation as in GLIGEN (Li et al., CVPR 2023), whose grounding tokens pair a
phrase with a box, with the layout planned from the prompt as in LLM-grounded Diffusion (Lian et
al. 2023), here by the caption grammar instead of a language model. A prompt outside the grammar
gets the empty map, which the denoiser also learns (`LAYOUT_DROPOUT` of its training batches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lanterna.world.captions import try_parse
from lanterna.world.layout import LayoutError, layout
from lanterna.world.palette import COLOURS, SHAPES, Canvas
from lanterna.world.render import coverage
from lanterna.world.spec import Box, Scene, SceneObject

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
# Channels: box coverage, then the object's colour, then its shape.
LAYOUT_CHANNELS = 1 + len(COLOURS) + len(SHAPES)
LAYOUT_DROPOUT = 0.2  # share of training scenes shown with the empty map
DEFAULT_MAP_KIND = "boxes"  # what cards and recipes from before map kinds trained on


def plan_scene(text: str, seed: int, canvas: Canvas | None = None, video: bool = False) -> Scene | None:
    """A scene for a caption, the same for the same seed; None outside the grammar, or for a
    caption of the other medium (motions in an image prompt, none in a video prompt)."""
    requirements = try_parse(text)
    if requirements is None or requirements.is_video != video:
        return None
    try:
        return layout(np.random.default_rng([seed, 0x1A7]), requirements, canvas)
    except LayoutError:
        return None


def box_coverage(box: Box, canvas_size: int, cells: int) -> np.ndarray:
    """cells x cells: the share of each latent cell that the box covers."""
    edges = np.arange(cells + 1) * (canvas_size / cells)
    along_x = np.clip(np.minimum(edges[1:], box.x1) - np.maximum(edges[:-1], box.x), 0, None)
    along_y = np.clip(np.minimum(edges[1:], box.y1) - np.maximum(edges[:-1], box.y), 0, None)
    return np.outer(along_y, along_x) / (canvas_size / cells) ** 2


def silhouette_coverage(shape: str, box: Box, canvas_size: int, cells: int) -> np.ndarray:
    """cells x cells: the share of each latent cell inside the shape drawn in the box (anti-aliased)."""
    if canvas_size % cells:
        raise ValueError(f"a {canvas_size} px canvas does not split into {cells} whole cells")
    canvas = np.zeros((canvas_size, canvas_size), np.float32)
    canvas[box.y:box.y1, box.x:box.x1] = coverage(shape, box.size, True)
    k = canvas_size // cells
    return canvas.reshape(cells, k, cells, k).mean(axis=(1, 3))


Coverage = Callable[[str, Box, int, int], np.ndarray]  # (shape, box, canvas size, cells) -> cells x cells
COVERAGES: dict[str, Coverage] = {
    "boxes": lambda shape, box, canvas_size, cells: box_coverage(box, canvas_size, cells),
    "silhouettes": silhouette_coverage,
}
MAP_KINDS: tuple[str, ...] = tuple(COVERAGES)


def check_map_kind(kind: str) -> str:
    if kind not in COVERAGES:
        raise ValueError(f"layout map kind: one of {', '.join(MAP_KINDS)}, got {kind!r}")
    return kind


def frame_map(scene: Scene, t: float, cells: int, kind: str = DEFAULT_MAP_KIND) -> np.ndarray:
    """LAYOUT_CHANNELS x cells x cells for the scene at time t."""
    cover_of = COVERAGES[check_map_kind(kind)]
    out = np.zeros((LAYOUT_CHANNELS, cells, cells), np.float32)
    for obj in scene.objects:
        cover = cover_of(obj.shape, obj.box_at(t), scene.canvas.size, cells)
        out[0] += cover
        out[1 + COLOUR_NAMES.index(obj.colour)] += cover
        out[1 + len(COLOUR_NAMES) + SHAPES.index(obj.shape)] += cover
    return np.minimum(out, 1.0)


def layout_map(scene: Scene | None, cells: int, frames: int | None = None, kind: str = DEFAULT_MAP_KIND) -> np.ndarray:
    """C x cells x cells (an image), or C x F x cells x cells with frame f at time f / (F - 1),
    as the renderer draws a video; zeros for no scene."""
    if frames is None:
        return frame_map(scene, 0.0, cells, kind) if scene else np.zeros((LAYOUT_CHANNELS, cells, cells), np.float32)
    if scene is None:
        return np.zeros((LAYOUT_CHANNELS, frames, cells, cells), np.float32)
    times = [f / max(1, frames - 1) for f in range(frames)]
    return np.stack([frame_map(scene, t, cells, kind) for t in times], axis=1)


def layout_maps(scenes: list[Scene | None], cells: int, frames: int | None = None,
                kind: str = DEFAULT_MAP_KIND) -> np.ndarray:
    """A batch of maps: N x C x (F x) cells x cells."""
    return np.stack([layout_map(s, cells, frames, kind) for s in scenes])


@dataclass(frozen=True)
class CaptionPlanner:
    """The `LayoutPlanner` of the bundled models: `planned_map` with the map kind they trained on."""

    kind: str = DEFAULT_MAP_KIND

    def __post_init__(self) -> None:
        check_map_kind(self.kind)

    def __call__(self, text: str, seed: int, size: int, cells: int, frames: int | None = None) -> np.ndarray | None:
        return planned_map(text, seed, size, cells, frames, self.kind)


def planned_map(text: str, seed: int, size: int, cells: int, frames: int | None = None,
                kind: str = DEFAULT_MAP_KIND) -> np.ndarray | None:
    """The layout map of the caption's plan on a size x size canvas; None where the caption has
    no plan."""
    try:
        canvas = Canvas(size)
    except ValueError:
        return None
    scene = plan_scene(text, seed, canvas, video=frames is not None)
    return None if scene is None else layout_map(scene, cells, frames, kind)


def planned_objects(text: str, seed: int, size: int, video: bool = False) -> list[dict] | None:
    """What the plan for a caption puts where on a size x size canvas, as results report it:
    each object's colour, shape, box [x, y, side] in pixels (and for a video its motion and last
    box); None where the caption has no plan."""
    try:
        scene = plan_scene(text, seed, Canvas(size), video)
    except ValueError:
        return None
    if scene is None:
        return None
    return [object_entry(obj, video) for obj in scene.objects]


def object_entry(obj: SceneObject, video: bool) -> dict:
    entry = {"colour": obj.colour, "shape": obj.shape, "box": [obj.box.x, obj.box.y, obj.box.size]}
    if video:
        end = obj.box_at(1.0)
        entry |= {"motion": obj.motion, "end_box": [end.x, end.y, end.size]}
    return entry

