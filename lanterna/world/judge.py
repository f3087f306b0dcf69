"""The oracle's verdict: does an image (or video) show what the requirements ask? (shared WORLD.md)

GenEval's rule: the image passes when EVERY requirement holds and there is no extra object of an
asked kind. A kind is a shape (GenEval's object class): asked for "a green square", an image with
a green square and a red square fails, and so does one with two green squares.

Checks, each with a reason an agent can act on:
- count: exactly `count` objects of the asked colour and shape;
- no extras: no object of an asked shape in a colour not asked for that shape;
- size: bounding box under 17 px for `small`, at least 17 px for `large` (64 x 64; scaled);
- place: the centroid's cell of the 3 x 3 grid;
- relation: `A left of B` when A's centroid x is at least 4 px smaller than B's (right of,
  above, below likewise);
- background: the most common background colour.
Video: the still checks must hold in at least 90 % of the frames (for the counts, that is object
persistence); each object is tracked by colour and shape over the frames where it is found once,
and its motion is the set of what changed between its first and last such frame: a net centroid
displacement over 6 px (left / right / up / down) and an area change over 30 % (growing /
shrinking). The asked motion must be the only change; standing still is no change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lanterna.world.captions import MOTION_PHRASES, parse_caption
from lanterna.world.oracle import DetectedObject, Detection, as_array_batch, detect_batch
from lanterna.world.palette import AREA_CHANGE, PLURALS
from lanterna.world.spec import ObjectRequirement, Requirements, place_of

PERSISTENCE = 0.9  # fraction of frames a still requirement must hold in


@dataclass(frozen=True)
class Check:
    requirement: str  # what is asked, e.g. "1 red circle", "red circle in the top left"
    passed: bool
    reason: str  # what the oracle saw
    kind: str  # count | extras | size | place | relation | background | motion


@dataclass(frozen=True)
class Track:
    """One asked object followed through a video."""

    name: str  # colour and shape
    frames_found: int
    frames: int
    start: tuple[float, float] | None = None  # centroid in its first tracked frame
    end: tuple[float, float] | None = None
    start_area: int | None = None
    end_area: int | None = None
    motion: tuple[str, ...] = ()  # what changed: left/right/up/down/growing/shrinking


@dataclass(frozen=True)
class Verdict:
    passed: bool
    failures: list[str]  # "requirement: reason" for every failed check
    checks: list[Check]
    background: str
    objects: list[DetectedObject]  # for a video: in its first frame
    tracks: list[Track] = field(default_factory=list)


def listing(objs: Sequence[DetectedObject], canvas_size: int) -> str:
    if not objs:
        return "nothing"
    return ", ".join(f"{o.name} ({place_of(*o.centroid, canvas_size)})" for o in objs)


def count_phrase(obj: ObjectRequirement) -> str:
    return f"{obj.count} {obj.colour} {obj.shape if obj.count == 1 else PLURALS[obj.shape]}"


def count_checks(det: Detection, req: Requirements) -> list[Check]:
    checks = []
    n = det.canvas.size
    for obj in req.objects:
        found = [o for o in det.objects if (o.colour, o.shape) == obj.kind]
        reason = f"found {len(found)}"
        if not found:
            similar = [o for o in det.objects if o.shape == obj.shape or o.colour == obj.colour]
            reason += f"; the image shows {listing(similar or det.objects, n)}"
        checks.append(Check(count_phrase(obj), len(found) == obj.count, reason, "count"))
    asked = {o.kind for o in req.objects}
    shapes = sorted({o.shape for o in req.objects})
    extras = [o for o in det.objects if o.shape in shapes and (o.colour, o.shape) not in asked]
    checks.append(Check(f"no other {' or '.join(PLURALS[s] for s in shapes)}", not extras,
                        f"found {listing(extras, n)}" if extras else "none", "extras"))
    return checks


def the_one(objects: Sequence[DetectedObject], obj: ObjectRequirement) -> DetectedObject | None:
    found = [o for o in objects if (o.colour, o.shape) == obj.kind]
    return found[0] if obj.count == 1 and len(found) == 1 else None


def size_check(det: Detection, obj: ObjectRequirement) -> Check | None:
    found = [o for o in det.objects if (o.colour, o.shape) == obj.kind]
    if obj.size is None or len(found) != obj.count:
        return None
    split = det.canvas.small_large_split
    wrong = [o for o in found if (o.size < split) != (obj.size == "small")]
    sizes = ", ".join(f"{o.size} px" for o in found)
    return Check(f"{obj.name} is {obj.size}", not wrong,
                 f"bounding box {sizes} (small < {split:g} px <= large)", "size")


def place_check(det: Detection, obj: ObjectRequirement) -> Check | None:
    one = the_one(det.objects, obj)
    if obj.place is None or one is None:
        return None
    where = place_of(*one.centroid, det.canvas.size)
    x, y = one.centroid
    return Check(f"{obj.name} in the {obj.place}", where == obj.place,
                 f"it is in the {where} (centroid {x:.1f}, {y:.1f})", "place")


def relation_axis(relation: str) -> int:
    return 0 if relation in ("left of", "right of") else 1


def relation_gap(subject: DetectedObject, reference: DetectedObject, relation: str) -> float:
    """How far (px) the subject is on the asked side of the reference; negative: the other side."""
    axis = relation_axis(relation)
    gap = reference.centroid[axis] - subject.centroid[axis]
    return -gap if relation in ("right of", "below") else gap


def relation_check(det: Detection, req: Requirements) -> Check | None:
    if req.relation is None:
        return None
    r = req.relation
    subject, reference = req.objects[r.subject], req.objects[r.reference]
    a, b = the_one(det.objects, subject), the_one(det.objects, reference)
    if a is None or b is None:
        return None
    axis = relation_axis(r.relation)
    gap = relation_gap(a, b, r.relation)
    margin = det.canvas.relation_margin
    name = "x" if axis == 0 else "y"
    return Check(f"{subject.name} {r.relation} {reference.name}", gap >= margin,
                 f"centroid {name}: {a.centroid[axis]:.1f} against {b.centroid[axis]:.1f} "
                 f"(needs {margin:g} px on the asked side, has {gap:.1f})", "relation")


def background_check(det: Detection, req: Requirements) -> Check | None:
    if req.background is None:
        return None
    return Check(f"{req.background} background", det.background == req.background,
                 f"the background is {det.background}", "background")


def still_checks(det: Detection, req: Requirements, with_sizes: bool = True) -> list[Check]:
    checks = count_checks(det, req)
    for obj in req.objects:
        checks.extend(c for c in (size_check(det, obj) if with_sizes else None,
                                  place_check(det, obj)) if c)
    checks.extend(c for c in (relation_check(det, req), background_check(det, req)) if c)
    return checks


def verdict_of(checks: list[Check], det: Detection, tracks: list[Track] | None = None) -> Verdict:
    failures = [f"{c.requirement}: {c.reason}" for c in checks if not c.passed]
    return Verdict(not failures, failures, checks, det.background, list(det.objects), tracks or [])


def judge_detection(det: Detection, req: Requirements) -> Verdict:
    """The verdict on one image already run through `detect_batch`."""
    if req.is_video:
        raise ValueError("the requirements ask for motion: judge a video (a list of frames)")
    return verdict_of(still_checks(det, req), det)


# ---------------------------------------------------------------- video

def motion_of(first: DetectedObject, last: DetectedObject, det: Detection) -> tuple[str, ...]:
    threshold = det.canvas.motion_displacement
    dx = last.centroid[0] - first.centroid[0]
    dy = last.centroid[1] - first.centroid[1]
    seen = []
    if abs(dx) > threshold:
        seen.append("right" if dx > 0 else "left")
    if abs(dy) > threshold:
        seen.append("down" if dy > 0 else "up")
    ratio = last.area / first.area
    if ratio > 1 + AREA_CHANGE:
        seen.append("growing")
    elif ratio < 1 - AREA_CHANGE:
        seen.append("shrinking")
    return tuple(seen)


def track(dets: list[Detection], obj: ObjectRequirement) -> tuple[Track, list[DetectedObject]]:
    found = [(f, the_one(d.objects, obj)) for f, d in enumerate(dets)]
    found = [(f, o) for f, o in found if o is not None]
    if not found:
        return Track(obj.name, 0, len(dets)), []
    (_, first), (_, last) = found[0], found[-1]
    motion = motion_of(first, last, dets[0]) if len(found) >= 2 else ()
    return Track(obj.name, len(found), len(dets), first.centroid, last.centroid, first.area, last.area,
                 motion), [o for _, o in found]


def motion_seen(tr: Track) -> str:
    """What a tracked object did, in words: "no motion", "right", "right and growing", ..."""
    return " and ".join(tr.motion) if tr.motion else "no motion"


def motion_check(obj: ObjectRequirement, tr: Track) -> Check:
    label = f"{obj.name} {MOTION_PHRASES[obj.motion]}"
    if tr.frames_found < 2:
        return Check(label, False, f"found once in only {tr.frames_found} of {tr.frames} frames", "motion")
    asked = () if obj.motion == "still" else (obj.motion,)
    dx = tr.end[0] - tr.start[0]
    dy = tr.end[1] - tr.start[1]
    seen = motion_seen(tr)
    ratio = tr.end_area / tr.start_area
    return Check(label, tuple(tr.motion) == asked,
                 f"net displacement ({dx:+.1f}, {dy:+.1f}) px, area x{ratio:.2f}: {seen}", "motion")


def across_frames(per_frame: list[list[Check]]) -> list[Check]:
    """Each still check over a video: it must hold in at least PERSISTENCE of the frames."""
    grouped: dict[tuple[str, str], list[tuple[int, Check]]] = {}
    for f, frame in enumerate(per_frame):
        for c in frame:
            grouped.setdefault((c.requirement, c.kind), []).append((f, c))
    checks = []
    for (label, kind), seen in grouped.items():
        held = sum(c.passed for _, c in seen)
        reason = f"holds in {held} of {len(per_frame)} frames"
        failing = next(((f, c) for f, c in seen if not c.passed), None)
        if failing is not None:
            reason += f"; frame {failing[0]}: {failing[1].reason}"
        checks.append(Check(label, held >= PERSISTENCE * len(per_frame), reason, kind))
    return checks


def judge_video_detections(dets: list[Detection], req: Requirements) -> Verdict:
    """The verdict on a video whose frames went through `detect_batch`."""
    if len(dets) < 2:
        raise ValueError(f"a video needs at least 2 frames, got {len(dets)}")
    checks = across_frames([still_checks(d, req, with_sizes=False) for d in dets])
    tracks = []
    for obj in req.objects:
        if obj.count != 1:
            continue
        tr, seen = track(dets, obj)
        tracks.append(tr)
        if obj.size is not None and seen:  # judged where the object is first found
            first = next(d for d in dets if the_one(d.objects, obj) is not None)
            checks.extend(c for c in [size_check(first, obj)] if c)
        if obj.motion is not None:
            checks.append(motion_check(obj, tr))
    return verdict_of(checks, dets[0], tracks)


# ---------------------------------------------------------------- entry points

def is_frames(media) -> bool:
    if isinstance(media, np.ndarray):
        return media.ndim == 4
    return isinstance(media, (list, tuple))


def judge(media, requirements: Requirements | str) -> Verdict:
    """The verdict on an image (PIL or uint8 H x W x 3) or a video (list of frames, or F x H x W x 3).

    `requirements` may be a caption, parsed with `parse_caption`.
    """
    if isinstance(requirements, str):
        requirements = parse_caption(requirements)
    if is_frames(media):
        frames = as_array_batch(media if isinstance(media, np.ndarray) else list(media))
        if len(frames) == 1 and not requirements.is_video:
            return judge_detection(detect_batch(frames)[0], requirements)
        return judge_video_detections(detect_batch(frames), requirements)
    return judge_detection(detect_batch(as_array_batch([media]))[0], requirements)


def judge_batch(images, requirements: Sequence[Requirements]) -> list[Verdict]:
    """One verdict per image of a batch (N x H x W x 3 or a list of same-size images)."""
    dets = detect_batch(images)
    if len(dets) != len(requirements):
        raise ValueError(f"{len(dets)} images but {len(requirements)} requirements")
    return [judge_detection(d, r) for d, r in zip(dets, requirements)]
