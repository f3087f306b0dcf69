"""Where each object of a caption goes: its own caption and a box of the canvas, for regional guidance.

A caption naming several objects is split into one caption per object (`object_captions`), and
each gets a box: a relation fixes the sides ("a red circle left of a blue square": the circle's
caption on the left half, the square's on the right), an object with a place gets that third of
the canvas, and the others share the canvas in equal strips, side by side or stacked, in an order
the seed picks, so different seeds give different layouts and the same seed the same one.

In a video, an object moving left, right, up or down (alone or not) gets a box that travels: a
window half its box wide along the motion, from near one end of the box in the first frame to
near the other in the last.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lanterna.world.captions import caption_of, object_captions, try_parse
from lanterna.world.spec import PLACE_CELLS, ObjectRequirement, Requirements

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the canvas

SIDE_BOXES: dict[str, Box] = {"left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0),
                              "top": (0.0, 0.0, 1.0, 0.5), "bottom": (0.0, 0.5, 1.0, 1.0)}
RELATION_SIDES: dict[str, tuple[str, str]] = {"left of": ("left", "right"), "right of": ("right", "left"),
                                              "above": ("top", "bottom"), "below": ("bottom", "top")}


MOVES: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}
TRAVEL = (0.05, 0.45)  # where a moving window starts and ends, as fractions of its box's extent


@dataclass(frozen=True)
class Region:
    caption: str
    box: Box
    end_box: Box | None = None  # in a video, the box in the last frame; frames between interpolate


def object_regions(text: str, seed: int) -> list[Region]:
    """One region per object of a caption; none for one still object or text outside the grammar."""
    req = try_parse(text)
    if req is None:
        return []
    moving = any(o.motion in MOVES for o in req.objects)
    captions = object_captions(text) or ([caption_of(Requirements(req.objects, None, req.background))]
                                         if moving else [])
    if not captions:
        return []
    if req.relation is not None:
        r = req.relation
        sides = {r.subject: RELATION_SIDES[r.relation][0], r.reference: RELATION_SIDES[r.relation][1]}
        boxes = [SIDE_BOXES[sides[i]] for i in range(len(req.objects))]
    else:
        boxes = seeded_boxes(req.objects, seed)
    return [Region(c, *travel(b, o.motion)) for c, b, o in zip(captions, boxes, req.objects)]


def travel(box: Box, motion: str | None) -> tuple[Box, Box | None]:
    """The first and last frame's box of an object moving along an axis; still ones keep theirs."""
    if motion not in MOVES:
        return box, None
    axis, sign = MOVES[motion]
    low, high = box[axis], box[axis + 2]
    extent = high - low
    first, last = (low + f * extent for f in (TRAVEL if sign > 0 else TRAVEL[::-1]))

    def window(start: float) -> Box:
        edges = list(box)
        edges[axis], edges[axis + 2] = start, start + extent / 2
        return tuple(edges)  # type: ignore[return-value]

    return window(first), window(last)


def seeded_boxes(objects: tuple[ObjectRequirement, ...], seed: int) -> list[Box]:
    """Placed objects get their third of the canvas; the rest equal strips in a seeded order."""
    free = [i for i, o in enumerate(objects) if o.place is None]
    rng = random.Random(seed)
    order = rng.sample(free, len(free))
    stacked = rng.random() < 0.5
    boxes: list[Box] = []
    for i, obj in enumerate(objects):
        if obj.place is not None:
            row, column = PLACE_CELLS[obj.place]
            boxes.append((column / 3, row / 3, (column + 1) / 3, (row + 1) / 3))
            continue
        a, b = order.index(i) / len(free), (order.index(i) + 1) / len(free)
        boxes.append((0.0, a, 1.0, b) if stacked else (a, 0.0, b, 1.0))
    return boxes
