"""Random captions and renders for every task, and the training mix.

`sample_requirements(rng, task)` draws what a caption asks; `layout` makes a scene of it and the
renderer draws it. Training only ever draws colour-shape pairs from `TRAINING_PAIRS`, so the
held-out compositions (purple triangle, orange cross) appear in no training image or caption;
only the `novel` task, which `sample_batch` refuses, asks for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from lanterna.world.captions import caption_of
from lanterna.world.layout import layout
from lanterna.world.palette import BACKGROUNDS, HELD_OUT, TRAINING_PAIRS, Canvas
from lanterna.world.render import render_batch, render_video_into
from lanterna.world.spec import (MOTIONS, PLACE_CELLS, RELATIONS, ObjectRequirement, Relation,
                                 Requirements, Scene)

IMAGE_TASKS: tuple[str, ...] = ("single_object", "two_objects", "counting", "colors", "position",
                                "color_attr", "novel")
TRAINING_TASKS: tuple[str, ...] = ("single_object", "two_objects", "counting", "colors", "position",
                                   "color_attr", "place")
VIDEO_TASKS: tuple[str, ...] = ("motion",)
TRAINING_MIX: dict[str, float] = {"single_object": 0.15, "two_objects": 0.15, "counting": 0.15,
                                  "colors": 0.1, "position": 0.15, "color_attr": 0.1, "place": 0.2}
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = tuple(sorted(HELD_OUT))
SIZE_WORDS: tuple[str, ...] = ("small", "large")
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)
PLACE_NAMES: tuple[str, ...] = tuple(PLACE_CELLS)


def chance(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def one_of(rng: np.random.Generator, options):
    return options[int(rng.random() * len(options))]


def size_word(rng: np.random.Generator, p: float) -> str | None:
    return one_of(rng, SIZE_WORDS) if chance(rng, p) else None


def background_word(rng: np.random.Generator, p: float) -> str | None:
    return one_of(rng, BACKGROUND_NAMES) if chance(rng, p) else None


def distinct_pairs(rng: np.random.Generator, k: int, other_shapes: bool = False,
                   other_colours: bool = False) -> list[tuple[str, str]]:
    """k training pairs, all different (optionally in shape and/or in colour)."""
    chosen: list[tuple[str, str]] = []
    while len(chosen) < k:
        pair = one_of(rng, TRAINING_PAIRS)
        if pair in chosen or (other_shapes and any(pair[1] == c[1] for c in chosen)) \
                or (other_colours and any(pair[0] == c[0] for c in chosen)):
            continue
        chosen.append(pair)
    return chosen


def single(rng: np.random.Generator, pairs, size_p: float, background_p: float) -> Requirements:
    colour, shape = one_of(rng, pairs)
    return Requirements((ObjectRequirement(colour, shape, size=size_word(rng, size_p)),),
                        background=background_word(rng, background_p))


def pair_of(rng: np.random.Generator, other_shapes: bool, other_colours: bool) -> Requirements:
    objects = tuple(ObjectRequirement(c, s, size=size_word(rng, 0.2))
                    for c, s in distinct_pairs(rng, 2, other_shapes, other_colours))
    return Requirements(objects, background=background_word(rng, 0.2))


def counting(rng: np.random.Generator) -> Requirements:
    colour, shape = one_of(rng, TRAINING_PAIRS)
    count = int(rng.integers(2, 5))
    return Requirements((ObjectRequirement(colour, shape, count, size=size_word(rng, 0.2)),),
                        background=background_word(rng, 0.2))


def position(rng: np.random.Generator) -> Requirements:
    objects = tuple(ObjectRequirement(c, s) for c, s in distinct_pairs(rng, 2))
    return Requirements(objects, Relation(0, one_of(rng, RELATIONS), 1), background_word(rng, 0.2))


def place(rng: np.random.Generator) -> Requirements:
    k = 1 if chance(rng, 0.7) else 2
    places = rng.permutation(len(PLACE_NAMES))[:k]
    # Two placed objects with sizes would not fit the text encoder's 22 words.
    objects = tuple(ObjectRequirement(c, s, size=size_word(rng, 0.3 if k == 1 else 0.0), place=PLACE_NAMES[p])
                    for (c, s), p in zip(distinct_pairs(rng, k), places))
    return Requirements(objects, background=background_word(rng, 0.2))


def motion(rng: np.random.Generator) -> Requirements:
    k = 1 if chance(rng, 0.6) else 2
    objects = []
    for colour, shape in distinct_pairs(rng, k):
        move = one_of(rng, MOTIONS)
        size = None if move in ("growing", "shrinking") else size_word(rng, 0.2)
        objects.append(ObjectRequirement(colour, shape, size=size, motion=move))
    return Requirements(tuple(objects), background=background_word(rng, 0.2))


def sample_requirements(rng: np.random.Generator, task: str) -> Requirements:
    """What a random caption of `task` asks for."""
    if task == "single_object":
        return single(rng, TRAINING_PAIRS, size_p=0.4, background_p=0.25)
    if task == "colors":
        return single(rng, TRAINING_PAIRS, size_p=0.25, background_p=1.0)
    if task == "novel":
        return single(rng, HELD_OUT_PAIRS, size_p=0.4, background_p=0.3)
    if task == "two_objects":
        return pair_of(rng, other_shapes=True, other_colours=False)
    if task == "color_attr":
        return pair_of(rng, other_shapes=True, other_colours=True)
    if task == "counting":
        return counting(rng)
    if task == "position":
        return position(rng)
    if task == "place":
        return place(rng)
    if task == "motion":
        return motion(rng)
    raise ValueError(f"unknown task {task!r}; tasks: {', '.join(IMAGE_TASKS + ('place', 'motion'))}")


def distinct_captions(rng: np.random.Generator, task: str, n: int,
                      excluded: frozenset[str] | set[str] = frozenset()) -> dict[str, Requirements]:
    """n different captions of `task` (none in `excluded`), each with what it asks for, in the
    order drawn."""
    seen: dict[str, Requirements] = {}
    while len(seen) < n:
        req = sample_requirements(rng, task)
        text = caption_of(req, rng)
        if text not in excluded:
            seen.setdefault(text, req)
    return seen


def sample_scene(rng: np.random.Generator, task: str, canvas: Canvas | None = None) -> Scene:
    return layout(rng, sample_requirements(rng, task), canvas, task=task)


def antialias_flags(rng: np.random.Generator, n: int, antialias: bool | None) -> list[bool]:
    """None: each image anti-aliased or not at random."""
    if antialias is None:
        return [bool(b) for b in rng.integers(0, 2, n)]
    return [bool(antialias)] * n


def sample_task(rng: np.random.Generator, task: str, n: int, antialias: bool | None = None,
                canvas: Canvas | None = None) -> tuple[np.ndarray, list[str], list[Scene]]:
    """n renders of one image task: (uint8 N x H x W x 3, captions, scenes)."""
    if task in VIDEO_TASKS:
        raise ValueError(f"{task!r} is a video task: use sample_video_batch")
    scenes = [sample_scene(rng, task, canvas) for _ in range(n)]
    captions = [caption_of(s.requirements, rng) for s in scenes]
    return render_batch(scenes, antialias_flags(rng, n, antialias)), captions, scenes


def mix_tasks(rng: np.random.Generator, n: int, task_mix: Mapping[str, float] | None) -> list[str]:
    mix = dict(task_mix or TRAINING_MIX)
    for task in mix:
        if task not in TRAINING_TASKS:
            raise ValueError(f"training mixes only {', '.join(TRAINING_TASKS)}, not {task!r} "
                             "(novel is held out for evaluation; motion is video)")
    names = list(mix)
    if not all(isinstance(w, (int, float)) and w >= 0 for w in mix.values()) or not sum(mix.values()) > 0:
        raise ValueError(f"a task mix's shares are numbers >= 0, not all 0; got {mix}")
    weights = np.asarray([mix[t] for t in names], np.float64)
    picks = rng.choice(len(names), size=n, p=weights / weights.sum())
    return [names[i] for i in picks]


def sample_batch(rng: np.random.Generator, n: int, task_mix: Mapping[str, float] | None = None,
                 antialias: bool | None = None, canvas: Canvas | None = None,
                 ) -> tuple[np.ndarray, list[str], list[Scene]]:
    """A training batch over the image tasks (never a held-out composition)."""
    scenes = [sample_scene(rng, task, canvas) for task in mix_tasks(rng, n, task_mix)]
    captions = [caption_of(s.requirements, rng) for s in scenes]
    return render_batch(scenes, antialias_flags(rng, n, antialias)), captions, scenes


def training_sampler(rng: np.random.Generator, batch_size: int,
                     task_mix: Mapping[str, float] | None = None, antialias: bool | None = None,
                     canvas: Canvas | None = None) -> Iterator[tuple[np.ndarray, list[str], list[Scene]]]:
    """Endless training batches from `sample_batch`."""
    while True:
        yield sample_batch(rng, batch_size, task_mix, antialias, canvas)


def sample_video_batch(rng: np.random.Generator, n: int, frames: int = 16, size: int = 64,
                       antialias: bool | None = None) -> tuple[np.ndarray, list[str], list[Scene]]:
    """n motion videos: (uint8 N x F x H x W x 3, captions, scenes); never held-out pairs."""
    if frames < 2:
        raise ValueError(f"a video needs at least 2 frames, got {frames}")
    canvas = Canvas(size)
    scenes = [sample_scene(rng, "motion", canvas) for _ in range(n)]
    captions = [caption_of(s.requirements, rng) for s in scenes]
    videos = np.empty((n, frames, size, size, 3), np.uint8)
    for video, scene, aa in zip(videos, scenes, antialias_flags(rng, n, antialias)):
        render_video_into(video, scene, aa)
    return videos, captions, scenes

