"""Where each object of a caption goes: its own caption and a box of the canvas, for regional guidance.

A caption naming several objects is split into one caption per object (`object_captions`), and
each gets a box: a relation fixes the sides ("a red circle left of a blue square": the circle's
caption on the left half, the square's on the right), an object with a place gets that third of
the canvas, and the others share the canvas in equal strips, side by side or stacked, in an order
the seed picks, so different seeds give different layouts and the same seed the same one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lanterna.world.captions import object_captions, try_parse
from lanterna.world.spec import PLACE_CELLS, ObjectRequirement

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the canvas

SIDE_BOXES: dict[str, Box] = {"left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0),
                              "top": (0.0, 0.0, 1.0, 0.5), "bottom": (0.0, 0.5, 1.0, 1.0)}
RELATION_SIDES: dict[str, tuple[str, str]] = {"left of": ("left", "right"), "right of": ("right", "left"),
                                              "above": ("top", "bottom"), "below": ("bottom", "top")}


@dataclass(frozen=True)
class Region:
    caption: str
    box: Box


def object_regions(text: str, seed: int) -> list[Region]:
    """One region per object of a caption; none for one object or text outside the grammar."""
    req = try_parse(text)
    captions = object_captions(req) if req is not None else []
    if not captions:
        return []
    if req.relation is not None:
        r = req.relation
        sides = {r.subject: RELATION_SIDES[r.relation][0], r.reference: RELATION_SIDES[r.relation][1]}
        boxes = [SIDE_BOXES[sides[i]] for i in range(len(req.objects))]
    else:
        boxes = seeded_boxes(req.objects, seed)
    return [Region(c, b) for c, b in zip(captions, boxes)]


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
