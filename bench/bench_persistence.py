"""Why do a video model's videos fail object persistence? Each failing frame, classified.

For ShapesGenEval's video prompts (its seeds; the card's sampler, steps and guidance unless
given), every asked object whose count check (the judge's) fails in some frame is looked up in
that frame:
- wrong shape: an object of the asked colour, but of another shape (and of no other asked kind);
- wrong colour: an object of the asked shape, but of another colour (and of no other asked kind);
- missing: neither;
- doubled: more of the asked object than asked.
Printed as JSON: persistence (as videoeval counts it), the failing frames per video, the tally
of the reasons, the oracle's measures of each wrong-shape object (asked shape, found shape, fill,
solidity, box: how near its class's threshold it fell), and for each failing video its prompt and
the reasons by frame.

    python bench/bench_persistence.py --model shapes-video [--weights-dir DIR] [--prompts 25]
        [--videos 2] [--guidance G] [--steps N] [--sampler S] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lanterna.engines.base import GenerationRequest  # noqa: E402
from lanterna.engines.shapes import ShapesEngine  # noqa: E402
from lanterna.evaluation import geneval  # noqa: E402
from lanterna.world.judge import count_checks, judge_video_detections  # noqa: E402
from lanterna.world.oracle import DetectedObject, Detection, as_array_batch, detect_batch  # noqa: E402
from lanterna.world.spec import ObjectRequirement, Requirements  # noqa: E402


def others(det: Detection, req: Requirements) -> list[DetectedObject]:
    """The frame's objects that are none of the asked kinds."""
    asked = {o.kind for o in req.objects}
    return [o for o in det.objects if (o.colour, o.shape) not in asked]


def frame_reason(det: Detection, obj: ObjectRequirement, req: Requirements) -> str:
    """Why the asked object's count failed in one frame (another asked object is no reason)."""
    if sum((o.colour, o.shape) == obj.kind for o in det.objects) > obj.count:
        return "doubled"
    if any(o.colour == obj.colour for o in others(det, req)):
        return "wrong shape"
    if any(o.shape == obj.shape for o in others(det, req)):
        return "wrong colour"
    return "missing"


def failed_objects(det: Detection, req: Requirements) -> list[ObjectRequirement]:
    """The asked objects whose count check (the judge's) fails in a frame."""
    # count_checks gives one check per asked object, in order, then the extras check
    checks = count_checks(det, req)[:len(req.objects)]
    return [obj for obj, c in zip(req.objects, checks) if not c.passed]


def wrong_shapes(det: Detection, obj: ObjectRequirement, req: Requirements) -> list[dict]:
    """The objects of the asked colour but another shape (and no asked kind) in a frame, as the
    oracle measured them."""
    return [{"asked": obj.shape, "found": o.shape, "fill": o.fill, "solidity": o.solidity, "box": o.bbox}
            for o in others(det, req) if o.colour == obj.colour]


def failing_frames(dets: list[Detection], req: Requirements) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for f, det in enumerate(dets):
        if reasons := [frame_reason(det, obj, req) for obj in failed_objects(det, req)]:
            out[f] = reasons
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes-video")
    ap.add_argument("--weights-dir", type=Path, default=None)
    ap.add_argument("--prompts", type=int, default=25)
    ap.add_argument("--videos", type=int, default=2, help="videos a prompt")
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = ShapesEngine(args.model, args.weights_dir)
    rows, reasons, measured = [], Counter(), []
    for prompt, seed in geneval.jobs(["motion"], args.prompts, args.videos):
        result = engine.run(GenerationRequest(task="t2v", prompt=prompt.text, seeds=[seed],
                                              guidance=args.guidance, steps=args.steps,
                                              sampler=args.sampler))
        dets = detect_batch(as_array_batch([np.asarray(f) for f in result.videos[0]]))
        persisted = geneval.video_outcome(judge_video_detections(dets, prompt.requirements))["persistence"]
        frames = failing_frames(dets, prompt.requirements)
        if not persisted:
            reasons.update(r for rs in frames.values() for r in set(rs))
            measured += [m for f in frames for obj in failed_objects(dets[f], prompt.requirements)
                         for m in wrong_shapes(dets[f], obj, prompt.requirements)]
        rows.append({"prompt": prompt.text, "seed": seed, "persisted": persisted,
                     "failing_frames": {str(f): rs for f, rs in frames.items()}})
    failed = [r for r in rows if not r["persisted"]]
    report = {"model": args.model, "weights": engine.weights_hash, "videos": len(rows),
              "persistence": 1 - len(failed) / len(rows),
              "failing_frames_per_failed_video": float(np.mean([len(r["failing_frames"]) for r in failed]))
              if failed else 0.0,
              "reasons (frames of failed videos)": dict(reasons),
              "wrong shapes": {"asked -> found": dict(Counter(f"{m['asked']} -> {m['found']}" for m in measured)),
                               "fill": sorted(m["fill"] for m in measured), "objects": measured},
              "failed": failed}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
