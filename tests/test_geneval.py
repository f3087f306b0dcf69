"""ShapesGenEval: fixed prompt sets and seeds, a perfect generator scores 1 and a blank one 0, the
video variant's metrics (flicker checked against the evaluation suite's VBench implementation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lanterna.evaluation import geneval
from lanterna.evaluation.video_metrics import temporal_flicker
from lanterna.world.captions import parse_caption
from lanterna.world.layout import layout
from lanterna.world.palette import BACKGROUNDS, HELD_OUT
from lanterna.world.render import render, render_video


def perfect(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
    """Renders each prompt's own scene: what an ideal model would draw."""
    return [Image.fromarray(render(layout(np.random.default_rng(s), parse_caption(p)), antialias=s % 2 == 0))
            for p, s in zip(prompts, seeds)]


def blank(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), BACKGROUNDS["white"]) for _ in prompts]


def perfect_video(prompts: list[str], seeds: list[int], frames: int = 16) -> list[list[Image.Image]]:
    return [[Image.fromarray(f) for f in render_video(layout(np.random.default_rng(s), parse_caption(p)),
                                                      frames, antialias=s % 2 == 0)]
            for p, s in zip(prompts, seeds)]


def test_prompt_sets_are_fixed_distinct_and_parse():
    for task in geneval.TASKS + geneval.VIDEO_TASKS:
        prompts = geneval.prompt_set(task, 50)
        assert len(prompts) == 50 and len({p.text for p in prompts}) == 50
        assert [p.text for p in prompts] == [p.text for p in geneval.prompt_set(task, 60)[:50]]
        for p in prompts:
            assert parse_caption(p.text) == p.requirements
        pairs = {o.kind for p in prompts for o in p.requirements.objects}
        assert (pairs <= HELD_OUT) if task == "novel" else not (pairs & HELD_OUT), task
    # Pinned: a change here changes the benchmark, and scores stop being comparable.
    assert [p.text for p in geneval.prompt_set("single_object", 3)] == [
        "a yellow circle", "there is a large yellow circle", "a picture showing a green circle"]
    assert [p.text for p in geneval.prompt_set("motion", 3)] == [
        "a drawing of an orange triangle moving up", "a picture of a blue triangle moving right",
        "a green cross shrinking"]
    assert all(len(p.requirements.objects) == 2 for p in geneval.prompt_set("color_attr", 50))
    assert all(p.requirements.relation is not None for p in geneval.prompt_set("position", 50))
    assert {p.requirements.objects[0].count for p in geneval.prompt_set("counting", 50)} == {2, 3, 4}
    assert all(p.requirements.is_video for p in geneval.prompt_set("motion", 50))
    seeds = [s for t in geneval.TASKS for i in range(50) for s in geneval.seeds_for(t, i, 4)]
    assert len(set(seeds)) == len(seeds)


def test_perfect_generator_scores_one():
    """Every one of the 50 prompts of every task can be drawn and is judged right."""
    calls = []
    scores = geneval.run_geneval(perfect, prompts_per_task=50, images_per_prompt=1,
                                 progress=lambda done, total: calls.append((done, total)))
    assert scores["overall"] == 1.0
    assert scores["tasks"] == {t: 1.0 for t in geneval.TASKS}
    assert scores["counts"]["novel"] == {"passed": 50, "images": 50}
    assert calls[-1] == (350, 350) and all(d <= t for d, t in calls)
    first = scores["details"][0]
    assert first["task"] == "single_object" and first["passed"] == [True]
    assert first["seeds"] == geneval.seeds_for("single_object", 0, 1)
    assert len(scores["details"]) == 50 * len(geneval.TASKS)


def test_blank_generator_scores_zero_with_reasons():
    scores = geneval.run_geneval(blank, prompts_per_task=4, images_per_prompt=2)
    assert scores["overall"] == 0.0 and set(scores["tasks"].values()) == {0.0}
    for entry in scores["details"]:
        assert not any(entry["passed"])
        assert all(any("found 0" in f for f in failures) for failures in entry["failures"])


def test_scores_count_each_image():
    """Every other image blank: each task scores exactly one half."""
    def half(prompts, seeds):
        good, bad = perfect(prompts, seeds), blank(prompts, seeds)
        return [g if s % 2 == 0 else b for g, b, s in zip(good, bad, seeds)]

    scores = geneval.run_geneval(half, prompts_per_task=3, images_per_prompt=4,
                                 tasks=["counting", "position"], batch=5)
    assert scores["tasks"] == {"counting": 0.5, "position": 0.5} and scores["overall"] == 0.5


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="tasks must be among"):
        geneval.run_geneval(perfect, prompts_per_task=1, tasks=["motion"])
    with pytest.raises(ValueError, match="prompts_per_task"):
        geneval.run_geneval(perfect, prompts_per_task=0)
    with pytest.raises(ValueError, match="returned 1 results for 4"):
        geneval.run_geneval(lambda p, s: perfect(p, s)[:1], prompts_per_task=1, tasks=["novel"])


def test_video_eval_perfect_static_and_flicker():
    def scorer(images, prompts):  # a stand-in CLIP: mean red level of each frame
        return [float(np.asarray(im)[..., 0].mean()) for im in images]

    scores = geneval.run_videoeval(perfect_video, prompts_per_task=5, images_per_prompt=2, scorer=scorer)
    assert scores["passed"] == scores["motion_accuracy"] == scores["persistence"] == 1.0
    videos = perfect_video([p.text for p in geneval.prompt_set("motion", 5) for _ in range(2)],
                           [s for i in range(5) for s in geneval.seeds_for("motion", i, 2)])
    reference = [temporal_flicker(v) for v in videos]
    assert scores["temporal_flicker"] == pytest.approx(np.mean(reference), abs=1e-12)
    assert scores["clip_score"] == pytest.approx(np.mean([np.mean(scorer(v, [])) for v in videos]))

    def frozen(prompts, seeds):  # the first frame held: objects persist, motions fail
        return [[v[0]] * 16 for v in perfect_video(prompts, seeds)]

    still = geneval.run_videoeval(frozen, prompts_per_task=5, images_per_prompt=2)
    assert still["persistence"] == 1.0 and still["temporal_flicker"] == 1.0
    moving = [p for p in geneval.prompt_set("motion", 5)
              if any(o.motion != "still" for o in p.requirements.objects)]
    assert still["motion_accuracy"] == 1 - len(moving) / 5 < 1.0

    empty = geneval.run_videoeval(lambda p, s: [[blank([""], [0])[0]] * 8 for _ in p],
                                  prompts_per_task=3, images_per_prompt=1)
    assert empty["persistence"] == empty["motion_accuracy"] == empty["passed"] == 0.0


def test_flicker_matches_the_vbench_implementation():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    ours = geneval.temporal_flicker(frames)
    theirs = temporal_flicker(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous())
    assert ours == pytest.approx(theirs, abs=1e-12)
