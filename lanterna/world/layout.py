"""Requirements -> a concrete scene: sizes, positions and (for video) trajectories.

Objects are placed one at a time, largest first, each uniformly among every position still free:
a box is free when it keeps `EDGE` px from the canvas edge and `GAP` px from every box already
placed, so background pixels always separate two objects (a video object's box is the region it
sweeps over all frames, so objects never meet in any frame). Places and relations restrict where
a centroid may go, with margins, so the rendered pixels' centroid is judged the same way (a
triangle's centroid is 2/3 of the way down its box).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lanterna.world.palette import BACKGROUNDS, EDGE, GAP, Canvas
from lanterna.world.spec import (PLACE_CELLS, Box, ObjectRequirement, Relation, Requirements, Scene,
                                 SceneObject)

PLACE_MARGIN = 2.0  # px (64 x 64) between a placed centroid and its cell's border
RELATION_EXTRA = 3.0  # px (64 x 64) beyond the judge's relation margin
DISPLACEMENT = (10, 20)  # px (64 x 64) of travel for a moving object
GROWTH = 1.4  # minimum side ratio of a growing / shrinking object (area ratio 1.96)
GROWTH_START = (10, 16)  # px (64 x 64): the smaller side of a growing / shrinking object
ATTEMPTS = 60


class LayoutError(ValueError):
    """No layout found: the requirements cannot be drawn, such as two large objects in
    neighbouring cells of the grid (the samplers never ask for those)."""


@dataclass
class Plan:
    """One object to place: its rectangle (the swept region for video) and its trajectory."""

    requirement: ObjectRequirement
    width: int
    height: int
    start: tuple[int, int, int]  # dx, dy, side of the first frame's box inside the rectangle
    end: tuple[int, int, int]  # the same for the last frame

    def centroid_offset(self) -> tuple[float, float]:
        """The shape's centroid relative to the rectangle's corner, in the first frame."""
        dx, dy, side = self.start
        down = 2 / 3 if self.requirement.shape == "triangle" else 1 / 2
        return dx + side / 2, dy + side * down


def side_in(rng: np.random.Generator, band: tuple[int, int]) -> int:
    return band[0] + int(rng.random() * (band[1] - band[0] + 1))


def plan_object(rng: np.random.Generator, obj: ObjectRequirement, canvas: Canvas, smallest: bool) -> Plan:
    band = canvas.size_band(obj.size)
    motion = obj.motion or "still"
    if motion in ("growing", "shrinking"):
        return plan_growth(rng, obj, canvas)
    side = band[0] if smallest else side_in(rng, band)
    if motion == "still":
        return Plan(obj, side, side, (0, 0, side), (0, 0, side))
    travel = side_in(rng, (canvas.length(DISPLACEMENT[0]), canvas.length(DISPLACEMENT[1])))
    if smallest:
        travel = canvas.length(DISPLACEMENT[0])
    horizontal = motion in ("left", "right")
    width, height = (side + travel, side) if horizontal else (side, side + travel)
    first, last = (0, 0, side), ((travel, 0, side) if horizontal else (0, travel, side))
    if motion in ("left", "up"):
        first, last = last, first
    return Plan(obj, width, height, first, last)


def plan_growth(rng: np.random.Generator, obj: ObjectRequirement, canvas: Canvas) -> Plan:
    low, high = canvas.size_band(None)
    small = side_in(rng, (max(low, canvas.length(GROWTH_START[0])), canvas.length(GROWTH_START[1])))
    big_min = int(np.ceil(small * GROWTH))
    # Same parity: the centre stays on the same point for every side in between.
    options = [s for s in range(big_min, high + 1) if (s - small) % 2 == 0]
    if not options:
        small, options = low, [s for s in range(int(np.ceil(low * GROWTH)), high + 1) if (s - low) % 2 == 0]
    big = options[int(rng.integers(len(options)))]
    inset = (big - small) // 2
    first, last = (inset, inset, small), (0, 0, big)
    if obj.motion == "shrinking":
        first, last = last, first
    return Plan(obj, big, big, first, last)


def free_corners(canvas: Canvas, placed: list[tuple[int, int, int, int]], width: int,
                 height: int) -> np.ndarray:
    """bool over top-left corners (y, x): does a width x height rectangle fit there?

    It keeps `EDGE` px from the canvas edge and `GAP` px from every placed rectangle
    (x, y, width, height).
    """
    n = canvas.size
    free = np.zeros((n, n), bool)
    free[EDGE:max(EDGE, n - EDGE - height + 1), EDGE:max(EDGE, n - EDGE - width + 1)] = True
    for x, y, w, h in placed:
        # Corners whose rectangle would come closer than GAP to this one.
        free[max(0, y - GAP - height + 1):y + h + GAP, max(0, x - GAP - width + 1):x + w + GAP] = False
    return free


def place_mask(plan: Plan, place: str, canvas: Canvas) -> np.ndarray:
    """bool over corners: does the centroid land inside the place's cell, with a margin?"""
    n = canvas.size
    row, column = PLACE_CELLS[place]
    margin = PLACE_MARGIN * canvas.scale
    ox, oy = plan.centroid_offset()
    cx = np.arange(n) + ox
    cy = np.arange(n) + oy
    third = n / 3
    ok_x = (cx >= column * third + margin) & (cx <= (column + 1) * third - margin)
    ok_y = (cy >= row * third + margin) & (cy <= (row + 1) * third - margin)
    return ok_y[:, None] & ok_x[None, :]


def relation_mask(plan: Plan, relation: str, other: tuple[float, float], other_is_subject: bool,
                  canvas: Canvas) -> np.ndarray:
    """bool over corners for the second object of a relation, given the first one's centroid."""
    n = canvas.size
    need = canvas.relation_margin + RELATION_EXTRA * canvas.scale
    ox, oy = plan.centroid_offset()
    cx = np.arange(n) + ox
    cy = np.arange(n) + oy
    # "subject REL reference": the object already placed is one of them, this plan the other.
    sign = 1.0 if other_is_subject else -1.0
    if relation in ("left of", "right of"):
        # subject left of reference: reference.x - subject.x >= need
        delta = sign * (cx - other[0]) if relation == "left of" else sign * (other[0] - cx)
        ok = np.broadcast_to((delta >= need)[None, :], (n, n))
    else:
        delta = sign * (cy - other[1]) if relation == "above" else sign * (other[1] - cy)
        ok = np.broadcast_to((delta >= need)[:, None], (n, n))
    return ok


def uniform_free_spot(rng: np.random.Generator, free: np.ndarray, tries: int = 32) -> int | None:
    """A uniformly random True cell (flat index), by rejection first since most grids are open."""
    flat = free.ravel()
    guesses = (rng.random(tries) * flat.size).astype(np.intp)
    hits = guesses[flat[guesses]]
    if len(hits):
        return int(hits[0])
    spots = np.flatnonzero(flat)
    return int(spots[int(rng.random() * len(spots))]) if len(spots) else None


def try_layout(rng: np.random.Generator, plans: list[Plan], relation: Relation | None,
               canvas: Canvas) -> list[tuple[int, int]] | None:
    n = canvas.size
    placed: list[tuple[int, int, int, int]] = []
    corners: list[tuple[int, int] | None] = [None] * len(plans)
    order = sorted(range(len(plans)), key=lambda i: -plans[i].width * plans[i].height)
    for i in order:
        plan = plans[i]
        free = free_corners(canvas, placed, plan.width, plan.height)
        if plan.requirement.place:
            free &= place_mask(plan, plan.requirement.place, canvas)
        if relation is not None:
            other = 1 - i
            if corners[other] is not None:
                ox, oy = plans[other].centroid_offset()
                centroid = (corners[other][0] + ox, corners[other][1] + oy)
                free &= relation_mask(plan, relation.relation, centroid, other == relation.subject, canvas)
        spot = uniform_free_spot(rng, free)
        if spot is None:
            return None
        y, x = divmod(spot, n)
        corners[i] = (x, y)
        placed.append((x, y, plan.width, plan.height))
    return corners  # type: ignore[return-value]


def layout(rng: np.random.Generator, req: Requirements, canvas: Canvas | None = None,
           background: str | None = None, task: str = "") -> Scene:
    """A random scene showing exactly what `req` asks (and nothing else)."""
    canvas = canvas or Canvas()
    instances = [o for o in req.objects for _ in range(o.count)]
    for attempt in range(ATTEMPTS):
        # Late attempts fall back to the smallest sizes so that crowded scenes always fit.
        smallest = attempt >= ATTEMPTS // 2
        plans = [plan_object(rng, o, canvas, smallest) for o in instances]
        corners = try_layout(rng, plans, req.relation, canvas)
        if corners is not None:
            break
    else:
        raise LayoutError(f"no layout found for {req}")
    objects = []
    for plan, (x, y) in zip(plans, corners):
        first = Box(x + plan.start[0], y + plan.start[1], plan.start[2])
        last = Box(x + plan.end[0], y + plan.end[1], plan.end[2])
        objects.append(SceneObject(plan.requirement.colour, plan.requirement.shape, first,
                                   None if last == first else last, plan.requirement.motion or "still"))
    if background is None:
        background = req.background or list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return Scene(background, tuple(objects), req, canvas, task)
