"""How much of ShapesGenEval can a latent model pass at all through shapes-vae?

A latent denoiser's image is the VAE decoder's output, so the judge's verdicts on VAE round trips
(encode to the posterior mean, decode) of rendered ground truth bound what any denoiser on that
VAE can score. For each image task: fresh renders (anti-aliased or not at random), the share the
judge passes as rendered and after the round trip, the round trips' PSNR, and what failed in
them (the kinds of failed checks, and the first few failures as the judge words them). --record
writes the result into shapes-vae's card as "judge_ceiling". `--video F S` (repeatable) also round-trips motion
videos of F frames of S x S, frame by frame as a video model's latents are decoded, and counts them
as videoeval does (passed, motion, persistence).

    python bench/bench_vae_ceiling.py [--weights-dir DIR] [--per-task N] [--seed S] [--video F S] [--record]
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

from lanterna.engines import weights  # noqa: E402
from lanterna.engines.shapes import load_vae  # noqa: E402
from lanterna.training.data import from_pixels, psnr, to_pixels  # noqa: E402
from lanterna.training.train_vae import reconstruct  # noqa: E402
from lanterna.evaluation.geneval import video_outcome  # noqa: E402
from lanterna.world import sampling  # noqa: E402
from lanterna.world.judge import Verdict, judge, judge_batch  # noqa: E402

EXAMPLES = 3


def round_trip(vae: torch.nn.Module, images: np.ndarray) -> tuple[np.ndarray, float]:
    pixels = to_pixels(images)
    out = reconstruct(vae, pixels)
    return from_pixels(out), psnr(pixels, out)


def pass_rate(verdicts: list[Verdict]) -> float:
    return sum(v.passed for v in verdicts) / len(verdicts)


def failures(verdicts: list[Verdict]) -> dict:
    kinds = Counter(c.kind for v in verdicts if not v.passed for c in v.checks if not c.passed)
    examples = [f for v in verdicts if not v.passed for f in v.failures][:EXAMPLES]
    return {"failed_checks": dict(kinds.most_common()), "examples": examples}


def video_rates(videos: np.ndarray, requirements: list) -> dict[str, float]:
    outcomes = [video_outcome(judge(v, r)) for v, r in zip(videos, requirements)]
    return {k: float(np.mean([o[k] for o in outcomes])) for k in ("passed", "motion", "persistence")}


def video_ceiling(vae: torch.nn.Module, rng: np.random.Generator, n: int, frames: int, size: int) -> dict:
    videos, _, scenes = sampling.sample_video_batch(rng, n, frames=frames, size=size)
    decoded, db = round_trip(vae, videos.reshape(n * frames, size, size, 3))
    requirements = [s.requirements for s in scenes]
    return {"frames": frames, "size": size, "videos": n, "psnr_db": round(db, 2),
            "rendered": video_rates(videos, requirements),
            "round_trip": video_rates(decoded.reshape(videos.shape), requirements)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights-dir", type=Path, default=None)
    p.add_argument("--per-task", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--video", type=int, nargs=2, metavar=("FRAMES", "SIZE"), action="append",
                   help="also motion videos of FRAMES frames of SIZE x SIZE (may be repeated)")
    p.add_argument("--record", action="store_true", help="write the result into shapes-vae's card")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    vae = load_vae(directory=args.weights_dir)
    rng = np.random.default_rng(args.seed)
    tasks = {}
    for task in sampling.IMAGE_TASKS:
        images, _, scenes = sampling.sample_task(rng, task, args.per_task)
        decoded, db = round_trip(vae, images)
        requirements = [s.requirements for s in scenes]
        after = judge_batch(decoded, requirements)
        tasks[task] = {"rendered": pass_rate(judge_batch(images, requirements)),
                       "round_trip": pass_rate(after), "psnr_db": round(db, 2), **failures(after)}
    overall = {k: float(np.mean([t[k] for t in tasks.values()])) for k in ("rendered", "round_trip")}
    result = {"renders_per_task": args.per_task, "seed": args.seed, "overall": overall, "tasks": tasks}
    if args.video:
        result["motion_videos"] = [video_ceiling(vae, rng, args.per_task, *fs) for fs in args.video]
    print(json.dumps(result))
    if args.record:
        card = weights.read_card("shapes-vae", args.weights_dir)
        weights.write_card("shapes-vae", card | {"judge_ceiling": result}, args.weights_dir)


if __name__ == "__main__":
    main()
