"""Shapes World: the oracle reads every rendered scene right, captions round-trip, training never
shows a held-out composition, every caption word is in the vocabulary, wrong images fail."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import ConvexHull

from lanterna.engines.nets.text import ShapesTokenizer
from lanterna.world import captions, sampling
from lanterna.world.captions import caption_of, object_captions, parse_caption, try_parse
from lanterna.world.judge import (
    judge, judge_batch, judge_detection, judge_video_detections, relation_gap, the_one)
from lanterna.world.layout import layout
from lanterna.world.near_miss import EDITS, near_miss, near_miss_scene
from lanterna.world.regions import SIDE_BOXES, object_regions
from lanterna.world.oracle import classify, detect, detect_batch, hull_area
from lanterna.world.palette import (
    BACKGROUNDS,
    COLOURS,
    EDGE,
    GAP,
    HELD_OUT,
    MIN_SIDE,
    SHAPES,
    SIZE_BANDS,
    Canvas,
)
from lanterna.world.render import coverage, render, render_batch, render_video
from lanterna.world.spec import (
    MOTIONS,
    PLACE_CELLS,
    RELATIONS,
    Box,
    ObjectRequirement,
    Relation,
    Requirements,
    Scene,
    SceneObject,
    place_of,
)

SCENES_PER_TASK = 2000  # the full oracle check, for every task, anti-aliased and not
VIDEOS = 2000
GROUND_TRUTH_TASKS = sampling.IMAGE_TASKS + ("place",)


def kinds_of(objects) -> Counter:
    return Counter((o.colour, o.shape) for o in objects)


def boxes_keep_apart(boxes: list[Box], size: int) -> bool:
    for b in boxes:
        if b.x < EDGE or b.y < EDGE or b.x1 > size - EDGE or b.y1 > size - EDGE:
            return False
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart_x = a.x1 + GAP <= b.x or b.x1 + GAP <= a.x
            apart_y = a.y1 + GAP <= b.y or b.y1 + GAP <= a.y
            if not (apart_x or apart_y):
                return False
    return True


# ---------------------------------------------------------------- oracle on ground truth

@pytest.mark.parametrize("task", GROUND_TRUTH_TASKS)
def test_oracle_judges_every_rendered_scene_right(task):
    rng = np.random.default_rng([7, GROUND_TRUTH_TASKS.index(task)])
    for antialias in (False, True):
        images, texts, scenes = sampling.sample_task(rng, task, SCENES_PER_TASK, antialias=antialias)
        detections = detect_batch(images)
        for text, scene, det in zip(texts, scenes, detections):
            assert parse_caption(text) == scene.requirements, text
            assert kinds_of(det.objects) == kinds_of(scene.objects), (text, antialias, det.objects)
            assert det.background == scene.background
            verdict = judge_detection(det, scene.requirements)
            assert verdict.passed, (text, antialias, verdict.failures)
            assert boxes_keep_apart([o.box for o in scene.objects], 64), scene


def test_oracle_judges_every_motion_video_right():
    rng = np.random.default_rng(11)
    seen = Counter()
    for start in range(0, VIDEOS, 250):  # in chunks: 2,000 videos would hold 400 MB at once
        videos, texts, scenes = sampling.sample_video_batch(rng, 250, frames=16, size=64)
        detections = detect_batch(videos.reshape(-1, 64, 64, 3))
        for i, (text, scene) in enumerate(zip(texts, scenes)):
            req = parse_caption(text)
            assert req == scene.requirements
            verdict = judge_video_detections(detections[i * 16:(i + 1) * 16], req)
            assert verdict.passed, (text, verdict.failures)
            seen.update(o.motion for o in req.objects)
            for f in range(16):
                assert boxes_keep_apart([o.box_at(f / 15) for o in scene.objects], 64), (text, f)
    assert set(seen) == set(MOTIONS)


def test_oracle_judges_small_videos_right():
    """8 frames of 32 x 32: sizes, margins and motion thresholds scale with the canvas."""
    rng = np.random.default_rng(12)
    videos, texts, scenes = sampling.sample_video_batch(rng, 400, frames=8, size=32)
    assert videos.shape == (400, 8, 32, 32, 3)
    detections = detect_batch(videos.reshape(-1, 32, 32, 3))
    for i, (text, scene) in enumerate(zip(texts, scenes)):
        verdict = judge_video_detections(detections[i * 8:(i + 1) * 8], scene.requirements)
        assert verdict.passed, (text, verdict.failures)
        for o in scene.objects:
            assert MIN_SIDE <= o.box.size <= 13 and MIN_SIDE <= o.box_at(1).size <= 13


def test_video_motion_is_big_enough_for_the_judge():
    rng = np.random.default_rng(13)
    videos, texts, scenes = sampling.sample_video_batch(rng, 200, frames=16, size=64)
    for video, text, scene in zip(videos, texts, scenes):
        verdict = judge(video, scene.requirements)
        for track, obj in zip(verdict.tracks, scene.requirements.objects):
            dx, dy = track.end[0] - track.start[0], track.end[1] - track.start[1]
            ratio = track.end_area / track.start_area
            if obj.motion in ("left", "right", "up", "down"):
                assert max(abs(dx), abs(dy)) > 6 + 3 and 0.9 < ratio < 1.1, text
            elif obj.motion in ("growing", "shrinking"):
                # About a fixed centre; a triangle's centroid, 2/3 down its box, drifts by side / 6.
                assert max(ratio, 1 / ratio) > 1.3 + 0.3 and max(abs(dx), abs(dy)) < 3, text
            else:
                assert max(abs(dx), abs(dy)) < 1 and ratio == 1, text


# ---------------------------------------------------------------- classifier and hull

def test_rendered_shape_classes_at_every_size():
    """Each class at every drawable size sits on its side of both thresholds, with room."""
    for antialias in (False, True):
        for size in range(MIN_SIDE, 27):
            for shape in SHAPES:
                mask = coverage(shape, size, antialias) >= 0.5
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
                fill, solidity = crop.mean(), crop.sum() / hull_area(crop)
                assert classify(fill, solidity) == shape, (shape, size, fill, solidity)


def test_hull_area_matches_scipy():
    rng = np.random.default_rng(0)
    masks = [coverage(s, n, aa) >= 0.5 for s in SHAPES for n in range(MIN_SIDE, 27) for aa in (0, 1)]
    for _ in range(200):  # unions of rectangles: arbitrary hulls, overestimated by a few % at most
        mask = np.zeros((24, 24), bool)
        for _ in range(rng.integers(1, 4)):
            x, y = rng.integers(0, 16, 2)
            w, h = rng.integers(2, 9, 2)
            mask[y:y + h, x:x + w] = True
        masks.append(mask)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        corners = np.concatenate([np.stack([xs + a, ys + b], 1) for a in (0, 1) for b in (0, 1)])
        exact = ConvexHull(corners).volume
        ratio = hull_area(mask) / exact
        rendered = i < len(SHAPES) * (27 - MIN_SIDE) * 2
        assert (abs(ratio - 1) < 1e-9) if rendered else (1 - 1e-9 < ratio < 1.06), (i, ratio)


def test_detect_measures_one_square():
    scene = Scene("white", (SceneObject("blue", "square", Box(10, 12, 20)),),
                  Requirements((ObjectRequirement("blue", "square"),)))
    [obj] = detect(Image.fromarray(render(scene, antialias=False)))
    assert (obj.colour, obj.shape, obj.bbox, obj.area) == ("blue", "square", (10, 12, 30, 32), 400)
    assert obj.centroid == scene.objects[0].box.centre == (20.0, 22.0)
    assert obj.fill == 1.0 and obj.solidity == 1.0


def test_antialiased_edges_do_not_make_phantom_objects():
    """Red over white at ~60 % cover is nearer orange than red: plain snapping would ring it."""
    for colour in COLOURS:
        for background in BACKGROUNDS:
            scene = Scene(background, (SceneObject(colour, "circle", Box(8, 8, 40)),),
                          Requirements((ObjectRequirement(colour, "circle"),)))
            found = detect(render(scene, antialias=True))
            assert [(o.colour, o.shape) for o in found] == [(colour, "circle")], (colour, background, found)


# ---------------------------------------------------------------- captions

@pytest.mark.parametrize("task", sampling.IMAGE_TASKS + ("place", "motion"))
def test_captions_round_trip(task):
    rng = np.random.default_rng([3, len(task)])
    for _ in range(400):
        req = sampling.sample_requirements(rng, task)
        plain = caption_of(req)
        assert parse_caption(plain) == req
        assert parse_caption(caption_of(req, rng)) == req
        assert caption_of(parse_caption(plain)) == plain


def test_every_place_relation_motion_and_template_round_trips():
    rng = np.random.default_rng(4)
    colour_shapes = [(c, s) for c in COLOURS for s in SHAPES]
    reqs = [Requirements((ObjectRequirement("red", "circle", place=p),)) for p in PLACE_CELLS]
    reqs += [Requirements((ObjectRequirement("red", "circle"), ObjectRequirement("blue", "cross")),
                          Relation(0, r, 1)) for r in RELATIONS]
    reqs += [Requirements((ObjectRequirement("green", "square", motion=m),)) for m in MOTIONS]
    reqs += [Requirements((ObjectRequirement(c, s, count=n, size=z),), background=b)
             for (c, s) in colour_shapes for n in (1, 2, 3, 4) for z in (None, *SIZE_BANDS)
             for b in (None, *BACKGROUNDS)]
    for req in reqs:
        variants = {caption_of(req, rng) for _ in range(30)} | {caption_of(req)}
        for text in variants:
            assert parse_caption(text) == req, text
    assert parse_caption("A Red Circle.") == parse_caption("a red circle")
    assert parse_caption("a red circle in the middle").objects[0].place == "center"
    assert parse_caption("an orange cross with a black background").background == "black"


@pytest.mark.parametrize("text, complaint", [
    ("", "empty"),
    ("a big red circle", "expected a colour"),
    ("a red hexagon", "expected a shape"),
    ("two red circle", "plural shape"),
    ("a red circles", "expected a shape"),
    ("five red circles", "a, an or a number"),
    ("a red circle and a red circle", "named once"),
    ("three red circles and two blue squares", "at most 4"),
    ("a red circle moving sideways", "direction"),
    ("a red circle in the corner", "expected a place"),
    ("a red circle moving left to the left of a blue square", "relation"),
    ("two red circles moving left", "counted group"),
    ("a red circle, please", "not in the grammar"),
    ("a red circle on a white background and a blue square", "unexpected"),
    ("a red circle to the left of a blue square and a green cross", "unexpected"),
])
def test_text_outside_the_grammar_is_refused_clearly(text, complaint):
    with pytest.raises(ValueError, match="not a Shapes World caption") as info:
        parse_caption(text)
    assert complaint in str(info.value)
    assert try_parse(text) is None


@pytest.mark.parametrize("text, parts", [
    ("an image of a yellow circle and a large red triangle on a black background",
     ["a yellow circle on a black background", "a large red triangle on a black background"]),
    ("a green cross above two blue squares", []),  # a relation joins single objects; not a caption
    ("a small green cross to the left of an orange square",
     ["a small green cross", "an orange square"]),
    ("there are two red circles and a blue cross in the top left",
     ["two red circles", "a blue cross in the top left"]),
    ("a red circle moving left and a blue square growing",
     ["a red circle moving left", "a blue square growing"]),
    ("three purple squares", []),
    ("a red circle", []),
    ("a red circle, please", []),
])
def test_object_captions_name_each_object_alone(text, parts):
    whole = try_parse(text)
    assert (object_captions(whole) if whole is not None else []) == parts
    for part, obj in zip(parts, whole.objects if parts else ()):
        assert parse_caption(part) == Requirements((obj,), None, whole.background)


@pytest.mark.parametrize("relation, first, second", [
    ("to the left of", "left", "right"), ("right of", "right", "left"),
    ("above", "top", "bottom"), ("below", "bottom", "top")])
def test_a_relation_puts_each_object_on_its_side(relation, first, second):
    text = f"an image of a red circle {relation} a blue square"
    for seed in range(5):
        regions = object_regions(text, seed)
        assert [r.caption for r in regions] == ["a red circle", "a blue square"]
        assert [r.box for r in regions] == [SIDE_BOXES[first], SIDE_BOXES[second]]


def test_objects_share_the_canvas_in_seeded_strips():
    text = "a red circle and a blue square and a green cross"
    layouts = {tuple(r.box for r in object_regions(text, seed)) for seed in range(40)}
    assert len(layouts) > 4  # the seed picks the order and the direction
    assert object_regions(text, 7) == object_regions(text, 7)
    for boxes in layouts:
        assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) == pytest.approx(1.0)
        for i, a in enumerate(boxes):  # strips do not overlap
            for b in boxes[i + 1:]:
                assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])
    placed = object_regions("a red circle in the top right and a blue square", 3)
    assert placed[0].box == pytest.approx((2 / 3, 0.0, 1.0, 1 / 3))
    assert placed[1].box == (0.0, 0.0, 1.0, 1.0)  # the one object without a place: all of it
    assert object_regions("two red circles", 0) == [] and object_regions("hello", 0) == []


def test_every_caption_word_is_in_the_vocabulary():
    tokenizer = ShapesTokenizer()
    vocabulary = set(tokenizer.vocabulary())
    grammar = set(" ".join([*captions.PREFIXES, "there is are and a an one", *captions.NUMBERS.values(),
                            *COLOURS, *BACKGROUNDS, *SHAPES, *captions.PLURALS.values(), *SIZE_BANDS,
                            *(p for ps in captions.PLACE_PHRASES.values() for p in ps),
                            *captions.MOTION_PHRASES.values(),
                            *(p for ps in captions.RELATION_PHRASES.values() for p in ps),
                            "on with background middle"]).split())
    assert grammar <= vocabulary, grammar - vocabulary
    rng = np.random.default_rng(5)
    texts = [caption_of(sampling.sample_requirements(rng, task), rng)
             for task in sampling.IMAGE_TASKS + ("place", "motion") for _ in range(300)]
    assert {w for t in texts for w in re.findall(r"\w+", t)} <= vocabulary
    tokens = tokenizer.encode(texts)  # the text encoder's default length: nothing is cut
    assert not any(tokens.unknown_words) and not any(tokens.truncated)


# ---------------------------------------------------------------- sampling

def test_training_never_shows_a_held_out_composition():
    rng = np.random.default_rng(6)
    batches = sampling.training_sampler(rng, 256)
    shown = Counter()
    for _ in range(20):
        images, texts, scenes = next(batches)
        for text, scene, det in zip(texts, scenes, detect_batch(images)):
            pairs = {(o.colour, o.shape) for o in scene.objects}
            pairs |= {o.kind for o in parse_caption(text).objects}
            pairs |= {(o.colour, o.shape) for o in det.objects}
            assert not pairs & HELD_OUT, text
            assert "purple triangle" not in text and "orange cross" not in text, text
            shown.update(pairs)
    # Purple, orange, triangles and crosses are all shown, just never in those two pairs.
    assert {c for c, _ in shown} == set(COLOURS) and {s for _, s in shown} == set(SHAPES)
    _, video_texts, video_scenes = sampling.sample_video_batch(rng, 300, frames=2, size=64)
    assert not {(o.colour, o.shape) for s in video_scenes for o in s.objects} & HELD_OUT
    with pytest.raises(ValueError, match="novel is held out"):
        sampling.sample_batch(rng, 4, task_mix={"novel": 1.0})


def test_novel_task_asks_only_the_held_out_compositions():
    rng = np.random.default_rng(8)
    _, texts, scenes = sampling.sample_task(rng, "novel", 300)
    assert {o.kind for s in scenes for o in s.requirements.objects} == set(HELD_OUT)


@pytest.mark.parametrize("task", sampling.IMAGE_TASKS + ("place",))
def test_a_near_miss_is_false_of_the_original_render_and_the_original_of_its_render(task):
    rng = np.random.default_rng(11)
    scenes = [sampling.sample_scene(rng, task) for _ in range(150)]
    misses = [near_miss_scene(rng, s) for s in scenes]
    originals, missed = render_batch(scenes), render_batch(misses)
    assert not any(v.passed for v in judge_batch(originals, [m.requirements for m in misses]))
    assert not any(v.passed for v in judge_batch(missed, [s.requirements for s in scenes]))
    assert all(v.passed for v in judge_batch(missed, [m.requirements for m in misses]))
    for scene, miss in zip(scenes, misses):
        before = {o.kind for o in scene.requirements.objects}
        assert not ({o.kind for o in miss.requirements.objects} - before) & HELD_OUT
        if not miss.requirements.background:
            assert miss.background == scene.background  # only the edited fact differs


def changed_facts(req: Requirements, miss: Requirements) -> list[str]:
    """What differs between two requirements, fact by fact ('swap': two colours exchanged)."""
    facts = [name for name in ("relation", "background") if getattr(req, name) != getattr(miss, name)]
    pairs = list(zip(req.objects, miss.objects))
    if len(pairs) == 2 and all(a.colour != b.colour for a, b in pairs) \
            and pairs[0][0].colour == pairs[1][1].colour and pairs[1][0].colour == pairs[0][1].colour:
        return facts + ["swap"]
    for a, b in pairs:
        facts += [f for f in ("colour", "shape", "count", "size", "place") if getattr(a, f) != getattr(b, f)]
    return facts


def test_a_near_miss_changes_one_fact_and_every_kind_of_fact_gets_changed():
    rng = np.random.default_rng(12)
    changed = Counter()
    for task in sampling.TRAINING_TASKS:
        for _ in range(200):
            req = sampling.sample_requirements(rng, task)
            miss = near_miss(rng, req)
            facts = changed_facts(req, miss)
            assert len(facts) == 1 and len(miss.objects) == len(req.objects), (req, miss)
            changed.update(facts)
    assert set(changed) == {"relation", "background", "swap", "colour", "shape", "count", "size", "place"}
    assert len(EDITS) == len(changed)


def test_sample_batch_is_deterministic_and_fast():
    a = sampling.sample_batch(np.random.default_rng(9), 64)
    b = sampling.sample_batch(np.random.default_rng(9), 64)
    assert a[0].shape == (64, 64, 64, 3) and a[0].dtype == np.uint8
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    rng = np.random.default_rng(10)
    times = []
    for _ in range(7):
        start = time.process_time()
        sampling.sample_batch(rng, 64)
        times.append(time.process_time() - start)
    # Target 30 ms; the bound leaves room for a busy machine but not for a per-pixel loop.
    assert np.median(times) < 0.1, times


def test_sizes_follow_the_words():
    rng = np.random.default_rng(14)
    for word, (low, high) in SIZE_BANDS.items():
        req = Requirements((ObjectRequirement("red", "square", count=3, size=word),))
        for _ in range(50):
            scene = layout(rng, req)
            assert all(low <= o.box.size <= high for o in scene.objects)
    assert Canvas(32).size_band("small") == (MIN_SIDE, MIN_SIDE) and Canvas(32).size_band("large") == (10, 13)


# ---------------------------------------------------------------- wrong images fail, with reasons

def scene_for(text: str, seed: int = 0) -> Scene:
    return layout(np.random.default_rng(seed), parse_caption(text))


def test_wrong_colour_fails():
    scene = scene_for("a red circle")
    wrong = replace(scene, objects=(replace(scene.objects[0], colour="blue"),))
    verdict = judge(render(wrong), "a red circle")
    assert not verdict.passed
    where = place_of(*verdict.objects[0].centroid, 64)
    assert verdict.failures == [f"1 red circle: found 0; the image shows blue circle ({where})",
                                f"no other circles: found blue circle ({where})"]


def test_wrong_count_fails():
    scene = scene_for("three green triangles")
    fewer = replace(scene, objects=scene.objects[:2])
    verdict = judge(render(fewer), "three green triangles")
    assert not verdict.passed and verdict.failures == ["3 green triangles: found 2"]


def test_swapped_relation_fails():
    text = "a red circle to the left of a blue square"
    scene = scene_for(text)
    assert judge(render(scene), text).passed
    verdict = judge(render(scene), "a blue square to the left of a red circle")
    assert not verdict.passed
    [failure] = verdict.failures
    assert failure.startswith("blue square left of red circle: centroid x")
    circle, square = (the_one(verdict.objects, o) for o in parse_caption(text).objects)
    assert relation_gap(circle, square, "left of") > 0  # on the asked side
    assert relation_gap(square, circle, "left of") == -relation_gap(circle, square, "left of")
    assert relation_gap(square, circle, "right of") == relation_gap(circle, square, "left of")


def test_blank_image_fails():
    blank = Image.new("RGB", (64, 64), BACKGROUNDS["white"])
    verdict = judge(blank, "a red circle and a blue square")
    assert not verdict.passed and verdict.objects == []
    assert verdict.failures == ["1 red circle: found 0; the image shows nothing",
                                "1 blue square: found 0; the image shows nothing"]


def test_extra_object_of_an_asked_kind_fails():
    scene = Scene("white", (SceneObject("green", "square", Box(5, 5, 14)),
                            SceneObject("red", "square", Box(40, 40, 14))),
                  Requirements((ObjectRequirement("green", "square"),)))
    verdict = judge(render(scene), "a green square")
    assert not verdict.passed and verdict.failures == ["no other squares: found red square (bottom right)"]
    assert judge(render(scene), "a green square and a red square").passed


def test_wrong_place_size_and_background_fail():
    scene = Scene("gray", (SceneObject("yellow", "cross", Box(4, 4, 24)),),
                  Requirements((ObjectRequirement("yellow", "cross"),)))
    image = render(scene)
    assert judge(image, "a large yellow cross in the top left on a gray background").passed
    verdict = judge(image, "a small yellow cross at the bottom on a white background")
    assert not verdict.passed
    assert [c.kind for c in verdict.checks if not c.passed] == ["size", "place", "background"]


def test_wrong_motion_fails_and_still_is_no_change():
    text = "a red circle moving right"
    video = render_video(scene_for(text), 16)
    assert judge(list(video), text).passed
    verdict = judge(video, "a red circle moving left")
    assert not verdict.passed and verdict.failures[0].endswith(": right")
    still = render_video(scene_for("a red circle standing still"), 16)
    verdict = judge(still, "a red circle growing")
    assert not verdict.passed and verdict.failures[0].endswith(": no motion")
    with pytest.raises(ValueError, match="motion"):
        judge(video[0], text)


def test_object_missing_from_frames_breaks_persistence():
    text = "a blue square growing"
    video = render_video(scene_for(text), 16)
    gone = video.copy()
    gone[2:6] = video[0, 0, 0]  # four frames of background only: 12 of 16 frames < 90 %
    verdict = judge(gone, text)
    assert not verdict.passed
    assert verdict.failures[0].startswith("1 blue square: holds in 12 of 16 frames")
    assert verdict.tracks[0].frames_found == 12


def test_verdicts_batch_like_single_images():
    rng = np.random.default_rng(15)
    images, texts, scenes = sampling.sample_task(rng, "position", 20)
    asked = [parse_caption(t) for t in reversed(texts)]  # mostly the wrong requirements
    batch = judge_batch(images, asked)
    assert [v.passed for v in batch] == [judge(im, r).passed for im, r in zip(images, asked)]
