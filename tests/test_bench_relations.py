"""bench/bench_relations.py's failure classes, on rendered scenes built to fall in each one."""

from __future__ import annotations

import pytest

from lanterna.world import Scene, SceneObject, judge, parse_caption, render
from lanterna.world.spec import Box
from tests.bench_scripts import load_bench_script

PAIR = "a yellow circle and a red triangle"
LEFT_OF = "a yellow circle to the left of a red triangle"


def load_script():
    return load_bench_script("bench_relations")


@pytest.mark.parametrize("objects, caption, expected", [
    ([("red", "circle", 6, 24, 16), ("yellow", "triangle", 40, 24, 16)], PAIR, "attributes swapped"),
    ([("yellow", "circle", 6, 24, 16), ("red", "triangle", 40, 24, 16)], PAIR, "passed"),
    ([("yellow", "circle", 6, 24, 16)], PAIR, "object missing"),
    ([("yellow", "circle", 6, 4, 16), ("red", "triangle", 40, 4, 16), ("red", "circle", 20, 40, 16)], PAIR,
     "extra object"),
    ([("yellow", "circle", 6, 24, 16), ("red", "square", 40, 24, 16)], PAIR, "other object"),
    ([("yellow", "circle", 40, 24, 16), ("red", "triangle", 6, 24, 16)], LEFT_OF, "relation reversed"),
    ([("yellow", "circle", 6, 24, 16), ("red", "triangle", 40, 24, 16)], LEFT_OF, "passed"),
    ([("yellow", "circle", 4, 20, 24), ("red", "triangle", 36, 20, 16)], "a small " + PAIR[2:], "size wrong"),
])
def test_each_class_is_found_where_it_was_drawn(objects, caption, expected):
    requirements = parse_caption(caption)
    scene = Scene("white", tuple(SceneObject(c, s, Box(x, y, size)) for c, s, x, y, size in objects),
                  requirements)
    verdict = judge(render(scene), requirements)
    assert load_script().classify(verdict, requirements) == expected
