"""A small ShapesGenEval run on the EMA weights during training: the learning curve's points."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lanterna.engines.pipeline import LatentDiffusionPipeline, SamplingOptions
from lanterna.training.common import Recipe
from lanterna.training.samples import save_sheet

PROMPTS_PER_TASK = 8
IMAGES_PER_PROMPT = 2
VIDEO_SHEET_FRAMES = 4  # frames shown per video in the sample sheet, evenly spaced


def run_card(recipe: Recipe, net: nn.Module) -> dict:
    """What a model card of this run would say of the net's layout input."""
    return {"config": {"layout_channels": getattr(net.config, "layout_channels", 0)},
            "grounding": recipe.extra.get("grounding", {})}


def quick_geneval(recipe: Recipe, samples_dir: Path | None = None) -> Callable[[nn.Module, int], dict]:
    """The evaluation; with `samples_dir`, every image it judged (a row per task; for videos,
    a few frames of each) goes into a sample sheet there, captions beside it."""

    def evaluate(net: nn.Module, step: int) -> dict:
        from lanterna.engines.shapes import grounding_of, load_clip, load_vae
        from lanterna.engines.nets.text import ShapesTokenizer, text_conditioner, text_context_of
        from lanterna.evaluation import geneval

        was_training = net.training
        text = text_conditioner(load_clip(), text_context_of(recipe.extra))
        pipe = LatentDiffusionPipeline(net, load_vae(), text, ShapesTokenizer(),
                                       prediction=recipe.extra.get("prediction", "v"),
                                       shift=recipe.sampling_shift,
                                       grounding=grounding_of(run_card(recipe, net)))
        options = SamplingOptions(steps=20, guidance=recipe.extra.get("guidance", 4.0),
                                  sampler="dpmpp-2m")
        size = recipe.extra.get("size", 64)
        made: list[tuple[str, object]] = []
        try:
            if recipe.model == "video":
                frames = recipe.extra.get("frames", 16)

                def generate_video(prompts, seeds):
                    videos = [pipe.text_to_video(p, [s], options, frames, size, size)[0]
                              for p, s in zip(prompts, seeds)]
                    every = max(1, len(videos[0]) // VIDEO_SHEET_FRAMES) if videos else 1
                    for p, video in zip(prompts, videos):
                        shown = video[::every][:VIDEO_SHEET_FRAMES]
                        made.extend((f"{p} (frame {i * every})", frame) for i, frame in enumerate(shown))
                    return videos

                scores = geneval.run_videoeval(generate_video, prompts_per_task=PROMPTS_PER_TASK,
                                               images_per_prompt=IMAGES_PER_PROMPT)
            else:
                def generate(prompts, seeds):
                    from lanterna.bench_cli import runs_of_same_prompt

                    images = [(p, image) for p, run_seeds in runs_of_same_prompt(prompts, seeds)
                              for image in pipe.text_to_image(p, run_seeds, options, size, size)]
                    made.extend(images)
                    return [image for _, image in images]

                scores = geneval.run_geneval(generate, prompts_per_task=PROMPTS_PER_TASK,
                                             images_per_prompt=IMAGES_PER_PROMPT)
        finally:
            net.train(was_training)
        if samples_dir is not None and made:
            columns = PROMPTS_PER_TASK * IMAGES_PER_PROMPT * (VIDEO_SHEET_FRAMES if recipe.model == "video" else 1)
            save_sheet(samples_dir, step, [image for _, image in made], min(columns, 32),
                       [caption for caption, _ in made])
        return {"geneval": {k: v for k, v in scores.items() if k != "details"}}

    return evaluate
