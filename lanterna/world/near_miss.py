"""Near misses: requirements that differ from a caption's in exactly one fact.

A near miss is what a generator gets wrong most often (a shape, a count, a side, which colour goes
with which shape), so a scorer that must rank a right image above a near-miss image learns the
facts the judge checks. Every edit makes each caption false of the other's render; dropping an
object would not (the judge, like GenEval, lets an image show more than its caption names).
Edits never introduce a held-out colour-shape pair.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from lanterna.world.captions import caption_of
from lanterna.world.layout import layout
from lanterna.world.palette import BACKGROUNDS, COLOURS, MAX_OBJECTS, SHAPES, TRAINING_PAIRS
from lanterna.world.render import render_batch
from lanterna.world.sampling import antialias_flags
from lanterna.world.spec import PLACE_CELLS, ObjectRequirement, Requirements, Scene

OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
OTHER_SIZE: dict[str, str] = {"small": "large", "large": "small"}

Edit = Callable[[np.random.Generator, Requirements], Requirements | None]


def other(rng: np.random.Generator, options, current):
    choices = [o for o in options if o != current]
    return choices[int(rng.integers(len(choices)))]


def one_object(rng: np.random.Generator, req: Requirements) -> int:
    return int(rng.integers(len(req.objects)))


def with_object(req: Requirements, i: int, obj: ObjectRequirement) -> Requirements:
    return replace(req, objects=req.objects[:i] + (obj,) + req.objects[i + 1:])


def new_pair_allowed(req: Requirements, i: int, colour: str, shape: str) -> bool:
    """A trainable pair, and not a kind another object of the caption already is."""
    kinds = {o.kind for j, o in enumerate(req.objects) if j != i}
    return (colour, shape) in TRAINING_PAIRS and (colour, shape) not in kinds


def other_shape(rng: np.random.Generator, req: Requirements) -> Requirements | None:
    i = one_object(rng, req)
    obj = req.objects[i]
    shape = other(rng, SHAPES, obj.shape)
    return with_object(req, i, replace(obj, shape=shape)) if new_pair_allowed(req, i, obj.colour, shape) else None


def other_colour(rng: np.random.Generator, req: Requirements) -> Requirements | None:
    i = one_object(rng, req)
    obj = req.objects[i]
    colour = other(rng, tuple(COLOURS), obj.colour)
    return with_object(req, i, replace(obj, colour=colour)) if new_pair_allowed(req, i, colour, obj.shape) else None


def other_count(rng: np.random.Generator, req: Requirements) -> Requirements | None:
    i = one_object(rng, req)
    obj = req.objects[i]
    if req.relation or obj.place or obj.motion:
        return None
    count = obj.count + (1 if rng.random() < 0.5 else -1)
    if not 1 <= count <= MAX_OBJECTS or req.total_objects - obj.count + count > MAX_OBJECTS:
        return None
    return with_object(req, i, replace(obj, count=count))


def flipped_relation(rng: np.random.Generator, req: Requirements) -> Requirements | None:
    if req.relation is None:
        return None
    return replace(req, relation=replace(req.relation, relation=OPPOSITE[req.relation.relation]))


def swapped_colours(rng: np.random.Generator, req: Requirements) -> Requirements | None:
    """Attribute binding: the same colours and shapes, each colour on the other shape."""
    if len(req.objects) != 2:
        return None
    a, b = req.objects
    if a.colour == b.colour or a.shape == b.shape:
        return None
    swapped = (replace(a, colour=b.colour), replace(b, colour=a.colour))
    if any(o.kind not in TRAINING_PAIRS for o in swapped):
        return None
    return replace(req, objects=swapped)


def other_size(rng: np.random.Generator, req: Requirements) -> Requirements | None:
    sized = [i for i, o in enumerate(req.objects) if o.size]
    if not sized:
        return None
    i = sized[int(rng.integers(len(sized)))]
    return with_object(req, i, replace(req.objects[i], size=OTHER_SIZE[req.objects[i].size]))


def other_place(rng: np.random.Generator, req: Requirements) -> Requirements | None:
    placed = [i for i, o in enumerate(req.objects) if o.place]
    if not placed:
        return None
    i = placed[int(rng.integers(len(placed)))]
    taken = {o.place for o in req.objects}
    place = other(rng, tuple(p for p in PLACE_CELLS if p not in taken), None)
    return with_object(req, i, replace(req.objects[i], place=place))


def other_background(rng: np.random.Generator, req: Requirements) -> Requirements | None:
    if req.background is None:
        return None
    return replace(req, background=other(rng, tuple(BACKGROUNDS), req.background))


EDITS: tuple[Edit, ...] = (other_shape, other_colour, other_count, flipped_relation, swapped_colours,
                           other_size, other_place, other_background)


def near_miss(rng: np.random.Generator, req: Requirements) -> Requirements:
    """`req` with one fact changed, the edit chosen at random among those that apply."""
    for k in rng.permutation(len(EDITS)):
        for _ in range(4):  # a random pick can collide with another object's kind
            try:
                miss = EDITS[k](rng, req)
            except ValueError:  # the edit made requirements the world cannot hold
                miss = None
            if miss is not None and miss != req:
                return miss
    raise ValueError(f"no near miss of {req}")


def near_miss_scene(rng: np.random.Generator, scene: Scene) -> Scene:
    """A scene of a near miss of `scene`'s requirements, on the same background unless that is the edit."""
    miss = near_miss(rng, scene.requirements)
    return layout(rng, miss, scene.canvas, background=miss.background or scene.background, task=scene.task)


def near_miss_renders(rng: np.random.Generator, scenes: list[Scene]) -> tuple[np.ndarray, list[str]]:
    """A render and a caption of a near miss of each scene (uint8 N x H x W x 3, captions)."""
    misses = [near_miss_scene(rng, s) for s in scenes]
    images = render_batch(misses, antialias_flags(rng, len(misses), None))
    return images, [caption_of(s.requirements, rng) for s in misses]
