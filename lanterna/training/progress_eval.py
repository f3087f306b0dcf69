"""A small ShapesGenEval run on the EMA weights during training: the learning curve's points."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lanterna.engines.pipeline import LatentDiffusionPipeline, SamplingOptions
from lanterna.training.common import Recipe

PROMPTS_PER_TASK = 8
IMAGES_PER_PROMPT = 2


def quick_geneval(recipe: Recipe) -> Callable[[nn.Module, int], dict]:
    def evaluate(net: nn.Module, step: int) -> dict:
        from lanterna.engines.shapes import load_clip, load_vae
        from lanterna.engines.nets.text import ShapesTokenizer
        from lanterna.evaluation import geneval

        was_training = net.training
        pipe = LatentDiffusionPipeline(net, load_vae(), load_clip(), ShapesTokenizer(),
                                       prediction=recipe.extra.get("prediction", "v"),
                                       shift=recipe.extra.get("shift", 1.0))
        options = SamplingOptions(steps=20, guidance=recipe.extra.get("guidance", 4.0),
                                  sampler="dpmpp-2m", shift=recipe.extra.get("shift", 1.0))
        size = recipe.extra.get("size", 64)
        try:
            if recipe.model == "video":
                frames = recipe.extra.get("frames", 16)

                def generate_video(prompts, seeds):
                    return [pipe.text_to_video(p, [s], options, frames, size, size)[0]
                            for p, s in zip(prompts, seeds)]

                scores = geneval.run_videoeval(generate_video, prompts_per_task=PROMPTS_PER_TASK,
                                               images_per_prompt=IMAGES_PER_PROMPT)
            else:
                def generate(prompts, seeds):
                    from lanterna.bench_cli import runs_of_same_prompt

                    return [image for p, run_seeds in runs_of_same_prompt(prompts, seeds)
                            for image in pipe.text_to_image(p, run_seeds, options, size, size)]

                scores = geneval.run_geneval(generate, prompts_per_task=PROMPTS_PER_TASK,
                                             images_per_prompt=IMAGES_PER_PROMPT)
        finally:
            net.train(was_training)
        return {"geneval": {k: v for k, v in scores.items() if k != "details"}}

    return evaluate
