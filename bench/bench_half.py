"""Does storing a bundled model in fp16 lose anything measurable?

For each model in the weights folder, the model's own metric with its fp32 weights and with the
same weights rounded through fp16 (the loader computes in fp32 either way, so rounding is the
only difference):
- shapes-vae: reconstruction PSNR on the held-out renders;
- shapes-clip: zero-shot retrieval and near-miss accuracy on the held-out renders;
- denoisers: images (videos, for a video model: every frame) for the first prompts of every
  ShapesGenEval task at fixed seeds (20 steps DPM-Solver++, the card's guidance): the largest
  per-pixel difference and whether the judge's verdicts change.
Prints one JSON line per model; --record also writes it to the model card as "fp16_check", and
--record-into DIR to the card of the same model in DIR (the fp16 export of the same run, e.g. the
bundled folder, when the check ran on an fp32 export; the two cards must be of the same step and training time).

    python bench/bench_half.py [--weights-dir DIR] [--models NAME ...] [--prompts-per-task N]
                               [--record] [--record-into DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lanterna.engines import weights  # noqa: E402
from lanterna.engines.nets.text import ShapesTokenizer  # noqa: E402
from lanterna.engines.pipeline import SamplingOptions  # noqa: E402
from lanterna.engines.shapes import ShapesEngine, load_clip, load_vae  # noqa: E402
from lanterna.evaluation import geneval  # noqa: E402
from lanterna.training import train_clip, train_vae  # noqa: E402
from lanterna.world.judge import judge  # noqa: E402

IMAGE_DENOISERS = ("shapes-dit", "shapes-unet")
VIDEO_DENOISERS = ("shapes-video",)


@torch.no_grad()
def rounded_through_fp16(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.copy_(p.half().float())
    for b in module.buffers():
        if b.is_floating_point():
            b.copy_(b.half().float())
    return module


def check_vae(directory: Path | None) -> dict:
    full = train_vae.held_out_psnr(load_vae(directory=directory))
    half = train_vae.held_out_psnr(rounded_through_fp16(load_vae(directory=directory)))
    return {"metric": "held-out PSNR (dB)", "fp32": round(full, 3), "fp16": round(half, 3)}


def clip_scores(model: nn.Module, tokenizer: ShapesTokenizer) -> dict:
    near_miss = train_clip.near_miss_accuracy(model, tokenizer)
    return {"retrieval": train_clip.retrieval_accuracy(model, tokenizer)["mean"],
            "near_miss_images": near_miss["images"]["mean"], "near_miss_captions": near_miss["captions"]["mean"]}


def check_clip(directory: Path | None) -> dict:
    tokenizer = ShapesTokenizer()
    full = clip_scores(load_clip(directory=directory), tokenizer)
    half = clip_scores(rounded_through_fp16(load_clip(directory=directory)), tokenizer)
    return {"metric": "retrieval and near-miss accuracy (means)", "fp32": full, "fp16": half,
            "equal": full == half}


def sample(name: str, card: dict, directory: Path | None, half: bool, prompts_per_task: int) -> tuple[list, list]:
    engine = ShapesEngine(name, directory)
    engine.load()
    pipe = engine.pipeline
    if half:
        rounded_through_fp16(pipe.denoiser)
    options = SamplingOptions(steps=20, guidance=card["defaults"]["guidance"], sampler="dpmpp-2m")
    width, height = card["defaults"]["width"], card["defaults"]["height"]
    if "max_frames" in card:
        pairs = geneval.jobs(list(geneval.VIDEO_TASKS), prompts_per_task, 1)
        videos = [pipe.text_to_video(p.text, [seed], options, card["max_frames"], height, width)[0]
                  for p, seed in pairs]
        frames = [np.stack([geneval.as_uint8(f) for f in video]) for video in videos]
        return frames, [judge(list(video), p.requirements) for video, (p, _) in zip(frames, pairs)]
    pairs = geneval.jobs(list(geneval.TASKS), prompts_per_task, 1)
    images = [pipe.text_to_image(p.text, [seed], options, height, width)[0] for p, seed in pairs]
    return images, geneval.judge_images(images, [p.requirements for p, _ in pairs])


def check_denoiser(name: str, directory: Path | None, prompts_per_task: int) -> dict:
    card = weights.read_card(name, directory)
    full_images, full_verdicts = sample(name, card, directory, False, prompts_per_task)
    half_images, half_verdicts = sample(name, card, directory, True, prompts_per_task)
    diffs = [int(np.abs(geneval.as_uint8(a).astype(int) - geneval.as_uint8(b).astype(int)).max())
             for a, b in zip(full_images, half_images)]
    changed = sum(a.passed != b.passed for a, b in zip(full_verdicts, half_verdicts))
    unit = "videos" if "max_frames" in card else "images"
    return {"metric": f"{unit} passing the judge", unit: len(diffs),
            "fp32": sum(v.passed for v in full_verdicts), "fp16": sum(v.passed for v in half_verdicts),
            "verdicts_changed": changed, "max_pixel_difference_of_255": max(diffs),
            "median_max_pixel_difference_of_255": float(np.median(diffs))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--models", nargs="+", default=["shapes-vae", "shapes-clip", *IMAGE_DENOISERS, *VIDEO_DENOISERS])
    parser.add_argument("--prompts-per-task", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--record", action="store_true", help="write each result into its model card")
    parser.add_argument("--record-into", type=Path, metavar="DIR",
                        help="also write it into the card of the same model (same step and training time) in DIR")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models:
        if not weights.has_weights(name, args.weights_dir):
            print(json.dumps({"model": name, "skipped": "no weights"}))
            continue
        if args.record_into:
            require_same_export(name, args.record_into, args.weights_dir)
        if name == "shapes-vae":
            row = check_vae(args.weights_dir)
        elif name == "shapes-clip":
            row = check_clip(args.weights_dir)
        else:
            row = check_denoiser(name, args.weights_dir, args.prompts_per_task)
        print(json.dumps({"model": name, **row}), flush=True)
        if args.record:
            record(name, row, args.weights_dir)
        if args.record_into:
            record(name, row, args.record_into)
    return 0


def require_same_export(name: str, directory: Path, checked_dir: Path | None) -> None:
    """Before any work: the card in `directory` must be of the weights being checked."""
    mark = ("steps", "train_seconds")
    theirs = [weights.read_card(name, directory).get(k) for k in mark]
    ours = [weights.read_card(name, checked_dir).get(k) for k in mark]
    if theirs != ours:
        raise SystemExit(f"error: {name} in {directory} is of step {theirs[0]} after {theirs[1]} s of training, "
                         f"the checked weights of step {ours[0]} after {ours[1]} s: not the same run's export")


def record(name: str, row: dict, directory: Path | None) -> None:
    card = weights.read_card(name, directory)
    card["fp16_check"] = row
    weights.write_card(name, card, directory)


if __name__ == "__main__":
    raise SystemExit(main())
