"""bench/bench_motion.py's tally, on the world's renders of ShapesGenEval's video prompts."""

from __future__ import annotations

import pytest

from lanterna.evaluation import geneval
from tests.bench_scripts import load_bench_script

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up", "growing": "shrinking",
            "shrinking": "growing", "still": "no motion"}


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("bench_motion")


@pytest.fixture(scope="module")
def rendered(bench):
    pairs = geneval.jobs(["motion"], 30, 1)
    return bench.rendered_videos(pairs, 8), [p.requirements for p, _ in pairs]


def test_renders_move_as_asked(bench, rendered):
    videos, requirements = rendered
    by_motion = bench.tally(requirements, bench.verdicts_of(videos, requirements))
    assert set(by_motion) == {"left", "right", "up", "down", "growing", "shrinking", "still"}
    for motion, row in by_motion.items():
        assert row["passed"] == row["objects"], (motion, row)
        assert row["frames found"] == 1.0
    for motion in ("left", "right", "up", "down"):
        assert by_motion[motion]["toward asked (px)"] > 6
    assert by_motion["growing"]["area ratio"] > 1.3 > 1 / 1.3 > by_motion["shrinking"]["area ratio"]


def test_played_backwards_every_motion_is_seen_reversed(bench, rendered):
    videos, requirements = rendered
    by_motion = bench.tally(requirements, bench.verdicts_of([v[::-1] for v in videos], requirements))
    for motion, row in by_motion.items():
        assert row["seen"] == {OPPOSITE[motion]: row["objects"]}, (motion, row)
        assert row["passed"] == (row["objects"] if motion == "still" else 0)
    for motion in ("left", "right", "up", "down"):
        assert by_motion[motion]["toward asked (px)"] < -6
