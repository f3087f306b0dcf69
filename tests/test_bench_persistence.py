"""bench/bench_persistence.py's reasons for a failing frame, on rendered frames built to show each."""

from __future__ import annotations

import pytest

from lanterna.world import Scene, SceneObject, parse_caption, render
from lanterna.world.oracle import detect_batch
from lanterna.world.spec import Box
from tests.bench_scripts import load_bench_script

CAPTION = "a blue square and a red cross"


def frame(objects) -> list:
    scene = Scene("white", tuple(SceneObject(c, s, Box(x, y, size)) for c, s, x, y, size in objects),
                  parse_caption(CAPTION))
    return detect_batch(render(scene)[None])


@pytest.mark.parametrize("objects, reasons", [
    ([("blue", "square", 6, 24, 14), ("red", "cross", 40, 24, 14)], {}),
    ([("blue", "circle", 6, 24, 14), ("red", "cross", 40, 24, 14)], {0: ["wrong shape"]}),
    ([("green", "square", 6, 24, 14), ("red", "cross", 40, 24, 14)], {0: ["wrong colour"]}),
    ([("red", "cross", 40, 24, 14)], {0: ["missing"]}),
    ([("blue", "square", 6, 4, 14), ("blue", "square", 6, 40, 14), ("red", "cross", 40, 24, 14)],
     {0: ["doubled"]}),
])
def test_each_reason_is_found_where_it_was_drawn(objects, reasons):
    script = load_bench_script("bench_persistence")
    dets = frame(objects)
    assert script.failing_frames(dets, parse_caption(CAPTION)) == reasons


def test_a_wrong_shape_is_reported_with_the_oracles_measures():
    script = load_bench_script("bench_persistence")
    det = frame([("blue", "circle", 6, 24, 14), ("red", "cross", 40, 24, 14)])[0]
    square = parse_caption(CAPTION).objects[0]
    (found,) = script.wrong_shapes(det, square, parse_caption(CAPTION))
    assert found["asked"] == "square" and found["found"] == "circle"
    assert 0.66 < found["fill"] < 0.93 and found["box"][2] - found["box"][0] == 14
    assert script.wrong_shapes(det, parse_caption(CAPTION).objects[1], parse_caption(CAPTION)) == []


def test_another_asked_object_of_the_same_colour_is_not_a_wrong_shape():
    script = load_bench_script("bench_persistence")
    req = parse_caption("a red square and a red cross")
    scene = Scene("white", (SceneObject("red", "cross", Box(40, 24, 14)),), req)
    det = detect_batch(render(scene)[None])[0]
    assert script.failed_objects(det, req) == [req.objects[0]]  # the square is missing, the cross is there
    assert script.wrong_shapes(det, req.objects[0], req) == []
    assert script.failing_frames([det], req) == {0: ["missing"]}
