"""`lanterna bench geneval|videoeval|samplers`: ShapesGenEval of a model, printed as JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, replace
from typing import Callable

from PIL import Image

from lanterna.engines.base import Engine, GenerationRequest, Scorer

log = logging.getLogger("lanterna.bench")

STEP_COUNTS = (4, 8, 16, 32, 100)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="benchmark a model on ShapesGenEval")
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, helptext in (("geneval", "ShapesGenEval of an image model"),
                           ("videoeval", "ShapesGenEval's video variant")):
        q = sub.add_parser(name, help=helptext)
        add_common(q)
        q.add_argument("--prompts-per-task", type=int, default=50)
        q.add_argument("--images-per-prompt", type=int, default=4)
        q.add_argument("--tasks", nargs="*", help="only these tasks")
        if name == "geneval":
            q.add_argument("--best-of", type=int, default=1,
                           help="generate K candidates per image and keep the best by CLIP")
        q.set_defaults(func=run_bench)
    q = sub.add_parser("samplers", help="ShapesGenEval overall for each sampler and step count")
    add_common(q)
    q.add_argument("--samplers", nargs="*")
    q.add_argument("--step-counts", nargs="*", type=int, default=list(STEP_COUNTS))
    q.add_argument("--prompts-per-task", type=int, default=50)
    q.add_argument("--images-per-prompt", type=int, default=4)
    q.set_defaults(func=run_samplers)


def add_common(q: argparse.ArgumentParser) -> None:
    q.add_argument("--model", help="model name (default: the default image/video model)")
    q.add_argument("--sampler")
    q.add_argument("--steps", type=int)
    q.add_argument("--guidance", type=float)
    q.add_argument("--shift", type=float,
                   help="the sampling schedule's shift (default: the model card's; bundled-format models)")
    q.add_argument("--composition", type=float, nargs=2, metavar=("WEIGHT", "FROM_T"),
                   help="guide each object of a several-object prompt by its own caption at flow "
                        "times >= FROM_T (default: the model card's; WEIGHT 0 turns it off)")
    q.add_argument("--layout", choices=("planned", "empty"), default="planned",
                   help="a grounded model's layout: planned from each prompt (as served), or the "
                        "empty map for every prompt, as a prompt outside the caption grammar gets")
    q.add_argument("--backend", default="torch")
    q.add_argument("--config", help="model registry file (TOML)")
    q.add_argument("--threads", type=int)
    q.add_argument("--record", action="store_true",
                   help="also append the result to the model card's benchmarks (bundled-format models)")


def load(args: argparse.Namespace, capability: str) -> tuple[Engine, Scorer | None]:
    import torch

    from lanterna.engines.bundled import default_registry

    if args.threads:
        torch.set_num_threads(args.threads)
    registry = default_registry()
    engine = registry.get(args.model, capability)
    if args.shift is not None:
        loaded_pipeline(engine, "--shift").shift = args.shift
    if args.composition is not None:
        from lanterna.engines.pipeline import Composition

        try:
            composition = Composition(*args.composition)
        except ValueError as e:
            raise SystemExit(f"--composition: {e}") from None
        loaded_pipeline(engine, "--composition").composition = composition
    if args.layout == "empty":
        pipeline = loaded_pipeline(engine, "--layout")
        if pipeline.grounding is None:
            raise SystemExit(f"--layout: {engine.name} is not a grounded model; it reads no layout")
        pipeline.grounding = replace(pipeline.grounding, plan=no_plan)
    return engine, registry.scorer()


def no_plan(*_args) -> None:
    """A layout planner with no plan for any prompt: every image gets the empty map."""
    return None


def loaded_pipeline(engine: Engine, option: str):
    """The pipeline of a bundled-format model, to sample with other settings than its card's for
    this process only."""
    from lanterna.engines.shapes import ShapesEngine

    if not isinstance(engine, ShapesEngine):
        raise SystemExit(f"{option}: {engine.name} is not a bundled-format model; its scheduler sets its own")
    engine.load()
    return engine.pipeline


def pipeline_of(engine: Engine):
    """A bundled-format model's pipeline once loaded; None for other models, or before loading."""
    from lanterna.engines.shapes import ShapesEngine

    return engine.pipeline if isinstance(engine, ShapesEngine) else None


def composition_report(engine: Engine) -> dict | None:
    """The composition a bundled-format model sampled with (None for none, or for other models)."""
    c = pipeline.composition if (pipeline := pipeline_of(engine)) else None
    return None if c is None or c.weight == 0 else asdict(c)


def layout_report(engine: Engine) -> str | None:
    """The layout a grounded bundled-format model read ("planned" or "empty"); None for others."""
    grounding = pipeline.grounding if (pipeline := pipeline_of(engine)) else None
    if grounding is None:
        return None
    return "empty" if grounding.plan is no_plan else "planned"


def shift_of(engine: Engine) -> float | None:
    """The shift a bundled-format model sampled with (None for others, or before it loaded)."""
    return pipeline.shift if (pipeline := pipeline_of(engine)) else None


def runs_of_same_prompt(prompts: list[str], seeds: list[int]) -> list[tuple[str, list[int]]]:
    """Consecutive pairs with one prompt become one batched run."""
    runs: list[tuple[str, list[int]]] = []
    for prompt, seed in zip(prompts, seeds):
        if runs and runs[-1][0] == prompt:
            runs[-1][1].append(seed)
        else:
            runs.append((prompt, [seed]))
    return runs


def candidate_seeds(seed: int, k: int) -> list[int]:
    """A benchmark seed and k - 1 more far from every benchmark seed: best-of-k's candidates."""
    return [seed + 1_000_003 * j for j in range(k)]


def image_generator(engine: Engine, args: argparse.Namespace, scorer: Scorer | None,
                    best_of: int = 1, sampler: str | None = None,
                    steps: int | None = None) -> Callable[[list[str], list[int]], list[Image.Image]]:
    def generate(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        images = []
        for prompt, run_seeds in runs_of_same_prompt(prompts, seeds):
            all_seeds = [c for s in run_seeds for c in candidate_seeds(s, best_of)]
            result = engine.run(GenerationRequest(
                task="t2i", prompt=prompt, seeds=all_seeds, steps=steps or args.steps,
                guidance=args.guidance, sampler=sampler or args.sampler, backend=args.backend))
            if best_of == 1 or scorer is None:
                images += result.images
                continue
            scores = scorer.clip_scores(result.images, [prompt] * len(result.images))
            for i in range(len(run_seeds)):
                group = range(i * best_of, (i + 1) * best_of)
                images.append(result.images[max(group, key=scores.__getitem__)])
        return images

    return generate


def run_bench(args: argparse.Namespace) -> int:
    from lanterna.evaluation import geneval

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    video = args.bench == "videoeval"
    engine, scorer = load(args, "t2v" if video else "t2i")
    start = time.perf_counter()
    if video:
        def generate_video(prompts: list[str], seeds: list[int]) -> list[list[Image.Image]]:
            out = []
            for prompt, seed in zip(prompts, seeds):
                result = engine.run(GenerationRequest(
                    task="t2v", prompt=prompt, seeds=[seed], steps=args.steps,
                    guidance=args.guidance, sampler=args.sampler, backend=args.backend))
                out.append(result.videos[0])
            return out

        clip = None if scorer is None else scorer.clip_scores
        scores = geneval.run_videoeval(generate_video, prompts_per_task=args.prompts_per_task,
                                       images_per_prompt=args.images_per_prompt, scorer=clip)
    else:
        generate = image_generator(engine, args, scorer, args.best_of)
        scores = geneval.run_geneval(generate, prompts_per_task=args.prompts_per_task,
                                     images_per_prompt=args.images_per_prompt, tasks=args.tasks)
    report = {k: v for k, v in scores.items() if k != "details"}
    report.update(model=engine.name, weights=engine.weights_hash, sampler=args.sampler or
                  engine.defaults.sampler, steps=args.steps or engine.defaults.steps,
                  guidance=engine.defaults.guidance if args.guidance is None else args.guidance,
                  shift=shift_of(engine), composition=composition_report(engine), layout=layout_report(engine),
                  backend=args.backend, seconds=round(time.perf_counter() - start, 1))
    report.update(prompts_per_task=args.prompts_per_task, images_per_prompt=args.images_per_prompt)
    if not video:
        report["best_of"] = args.best_of
    if args.record:
        record_in_card(engine.name, {"bench": args.bench, **report})
    print(json.dumps(report, indent=2))
    return 0


def record_in_card(name: str, entry: dict) -> None:
    """Append a benchmark result to a bundled-format model's card, dated."""
    import datetime as dt

    from lanterna.engines import weights

    card = weights.read_card(name)
    card.setdefault("benchmarks", []).append({"date": dt.date.today().isoformat(), **entry})
    weights.write_card(name, card)


def run_samplers(args: argparse.Namespace) -> int:
    from lanterna.engines.samplers import SAMPLERS
    from lanterna.evaluation import geneval

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    engine, scorer = load(args, "t2i")
    rows = []
    for sampler in args.samplers or list(SAMPLERS):
        for steps in args.step_counts:
            start = time.perf_counter()
            scores = geneval.run_geneval(image_generator(engine, args, scorer, 1, sampler, steps),
                                         prompts_per_task=args.prompts_per_task,
                                         images_per_prompt=args.images_per_prompt)
            rows.append({"sampler": sampler, "steps": steps, "overall": scores["overall"],
                         "seconds": round(time.perf_counter() - start, 1)})
            log.info("%s", rows[-1])
    report = {"model": engine.name, "weights": engine.weights_hash, "shift": shift_of(engine),
              "composition": composition_report(engine), "prompts_per_task": args.prompts_per_task,
              "images_per_prompt": args.images_per_prompt, "rows": rows}
    if args.record:
        record_in_card(engine.name, {"bench": "samplers", **report})
    print(json.dumps(report, indent=2))
    return 0
