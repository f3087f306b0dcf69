"""Which way do a video model's objects move, for each motion the prompt asks for?

For ShapesGenEval's video prompts (its seeds; the model card's sampler, steps and guidance, as
`lanterna bench videoeval` runs them), every asked object is tracked by the judge and counted
under the motion it was asked for:
- passed: the judge's motion check holds;
- seen: what the judge saw instead ("no motion", "right", "right and growing", ...), or
  "not tracked" when the object is found in fewer than 2 frames (missing, or doubled);
- toward asked (px): mean net displacement of the tracked centroid along the asked direction
  (for left / right / up / down; positive means the asked way, the judge needs over 6 px on 64 x 64);
- area ratio: median last / first area (for growing / shrinking; the judge needs a 30 % change);
- frames found: mean share of frames where the object is found exactly once.
A soft measure such as "toward asked" moves before the pass rate does. `--source render` runs
the same on the world's own renders of each prompt (what a perfect model would draw).

    python bench/bench_motion.py --model shapes-video [--weights-dir DIR] [--prompts 50]
        [--videos 1] [--source model|render] [--frames 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lanterna.engines.base import GenerationRequest  # noqa: E402
from lanterna.engines.shapes import ShapesEngine  # noqa: E402
from lanterna.evaluation import geneval  # noqa: E402
from lanterna.world.judge import (Track, Verdict, judge_video_detections, motion_check,  # noqa: E402
                                  motion_seen)
from lanterna.world.layout import layout  # noqa: E402
from lanterna.world.oracle import detect_batch  # noqa: E402
from lanterna.world.render import render_video  # noqa: E402
from lanterna.world.spec import MOTIONS, ObjectRequirement, Requirements  # noqa: E402

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def model_videos(args: argparse.Namespace, pairs: list) -> list[np.ndarray]:
    engine = ShapesEngine(args.model, args.weights_dir)
    videos = []
    for prompt, seed in pairs:
        result = engine.run(GenerationRequest(task="t2v", prompt=prompt.text, seeds=[seed]))
        videos.append(np.stack([np.asarray(f.convert("RGB")) for f in result.videos[0]]))
    return videos


def rendered_videos(pairs: list, frames: int) -> list[np.ndarray]:
    return [render_video(layout(np.random.default_rng(seed), prompt.requirements, task="motion"), frames)
            for prompt, seed in pairs]


def verdicts_of(videos: list[np.ndarray], requirements: list[Requirements]) -> list[Verdict]:
    return [judge_video_detections(detect_batch(v), req) for v, req in zip(videos, requirements)]


def seen_as(track: Track) -> str:
    return "not tracked" if track.frames_found < 2 else motion_seen(track)


def toward_asked(obj: ObjectRequirement, track: Track) -> float | None:
    if obj.motion not in DIRECTIONS or track.frames_found < 2:
        return None
    ux, uy = DIRECTIONS[obj.motion]
    return (track.end[0] - track.start[0]) * ux + (track.end[1] - track.start[1]) * uy


def area_ratio(obj: ObjectRequirement, track: Track) -> float | None:
    if obj.motion not in ("growing", "shrinking") or track.frames_found < 2:
        return None
    return track.end_area / track.start_area


def tally(requirements: list[Requirements], verdicts: list[Verdict]) -> dict:
    rows: dict[str, list[dict]] = defaultdict(list)
    for req, verdict in zip(requirements, verdicts):
        tracked = [o for o in req.objects if o.count == 1]  # the judge tracks these, in order
        for obj, tr in zip(tracked, verdict.tracks, strict=True):
            if obj.motion is None:
                continue
            rows[obj.motion].append({"passed": motion_check(obj, tr).passed, "seen": seen_as(tr),
                                     "toward": toward_asked(obj, tr), "ratio": area_ratio(obj, tr),
                                     "found": tr.frames_found / tr.frames})
    return {m: summary(rows[m]) for m in MOTIONS if rows[m]}


def summary(rows: list[dict]) -> dict:
    out = {"objects": len(rows), "passed": sum(r["passed"] for r in rows),
           "seen": dict(Counter(r["seen"] for r in rows).most_common()),
           "frames found": round(statistics.mean(r["found"] for r in rows), 3)}
    toward = [r["toward"] for r in rows if r["toward"] is not None]
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    if toward:
        out["toward asked (px)"] = round(statistics.mean(toward), 2)
    if ratios:
        out["area ratio"] = round(statistics.median(ratios), 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-video")
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--source", choices=("model", "render"), default="model")
    parser.add_argument("--frames", type=int, default=8, help="frames of a render (--source render)")
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--videos", type=int, default=1, help="videos a prompt")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = geneval.jobs(["motion"], args.prompts, args.videos)
    videos = model_videos(args, pairs) if args.source == "model" else rendered_videos(pairs, args.frames)
    requirements = [p.requirements for p, _ in pairs]
    by_motion = tally(requirements, verdicts_of(videos, requirements))
    objects = sum(m["objects"] for m in by_motion.values())
    report = {"model": args.model if args.source == "model" else "render", "videos": len(videos),
              "objects": objects, "passed": sum(m["passed"] for m in by_motion.values()),
              "by motion": by_motion}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
