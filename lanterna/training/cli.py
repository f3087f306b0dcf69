"""`lanterna train vae|clip|dit|unet|video`: resumable training runs and their export as bundled weights."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from lanterna.training.common import Recipe, RecipeError, Run, WeightsDoNotFit, set_threads

log = logging.getLogger("lanterna.training")

DEFAULT_LR = {"vae": 1e-3, "clip": 5e-4, "dit": 5e-4, "unet": 5e-4, "video": 5e-4}
DEFAULT_BATCH = {"vae": 32, "clip": 128, "dit": 64, "unet": 64, "video": 8}
# New diffusion runs read the prompt through the words as well as the CLIP states, and learn the
# VAE posterior means (see train_diffusion.latent_targets, nets.text.WordAwareText), also when
# continued from weights whose card says otherwise; a resumed run keeps what its recipe says, and
# recipes from before these options trained without them.
DIFFUSION_EXTRA = {"latents": "mean", "text_context": "states+words"}
MODEL_NAME = {"vae": "shapes-vae", "clip": "shapes-clip", "dit": "shapes-dit",
              "unet": "shapes-unet", "video": "shapes-video"}


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a bundled Shapes model (resumable)")
    p.add_argument("model", choices=sorted(MODEL_NAME))
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<model>)")
    p.add_argument("--size", default="default", help="size name from the net's config table")
    p.add_argument("--steps", type=int, help="stop at this total step count")
    p.add_argument("--minutes", type=float, help="stop after this many minutes of this invocation")
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true",
                   help="train under bf16 autocast (fast only on CPUs with native bf16, e.g. AVX512-BF16 "
                        "or AMX; emulated bf16 on AVX2 ran a DiT step 10x slower than fp32)")
    p.add_argument("--cooldown", type=int, default=0, metavar="N",
                   help="decay the lr linearly to 0 over the last N steps before --steps "
                        "(also on a resumed run)")
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--threads", type=int)
    p.add_argument("--extra", type=json_object, default={}, help="JSON of model-specific options "
                   '(e.g. {"prediction": "v", "net": {"depth": 8}})')
    p.add_argument("--export", action="store_true",
                   help="after training, write the weights and model card to the weights dir")
    p.add_argument("--export-only", action="store_true",
                   help="export the run's current checkpoint without training")
    p.add_argument("--weights-dir", type=Path, help="where --export writes (default: bundled)")
    p.add_argument("--half", action="store_true",
                   help="export the weights in fp16 (check with bench/bench_half.py that nothing "
                        "measurable is lost)")
    p.add_argument("--init-from", metavar="NAME",
                   help="with no checkpoint in the run dir, continue from these exported weights "
                        "(e.g. shapes-dit from the weights dir)")
    p.set_defaults(func=run_command)


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"latents\": \"mean\"}'")
    return value


def card_extra(name: str) -> dict:
    """The model-specific options exported weights were trained with ({} if there is no card).

    A run continued from them keeps these (e.g. the video model's frames and canvas size) unless
    --extra or the defaults for new runs say otherwise.
    """
    from lanterna.engines import weights

    try:
        card = weights.read_card(name)
    except weights.MissingWeights:
        return {}  # loading the weights will say what is missing
    # Where the weights came from belongs to the run that began from them (the card's history keeps it).
    return {k: v for k, v in card.get("recipe", {}).get("extra", {}).items() if k not in ("init_from", "spatial_from")}


def recipe_from_args(args: argparse.Namespace, continued: dict | None = None) -> Recipe:
    """The recipe: `continued` (a card's options), then the defaults for new runs, then --extra."""
    extra = dict(continued or {})
    if args.model in ("dit", "unet", "video"):
        extra.update(DIFFUSION_EXTRA)
    extra.update(args.extra)
    return Recipe(
        model=args.model, size=args.size, batch=args.batch or DEFAULT_BATCH[args.model],
        lr=args.lr or DEFAULT_LR[args.model], warmup=args.warmup, seed=args.seed,
        bf16=args.bf16, extra=extra,
    )


def run_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    set_threads(args.threads)
    run_dir = args.run_dir or Path("runs") / args.model
    run = Run(run_dir)
    resuming = run.has_checkpoint()
    continued = card_extra(args.init_from) if args.init_from and not resuming else None
    recipe = recipe_from_args(args, continued)
    if args.init_from:
        recipe.extra["init_from"] = args.init_from
    if resuming:
        saved = Recipe(**run.load()["recipe"])
        if (saved.size, saved.model) != (recipe.size, recipe.model):
            print(f"error: {run_dir} holds a {saved.model}/{saved.size} run", file=sys.stderr)
            return 2
        recipe = saved  # a resumed run keeps its recipe, all but the schedule's end
    if args.cooldown and args.steps is None:
        print("error: --cooldown needs --steps (the step the lr reaches 0)", file=sys.stderr)
        return 2
    # A cooldown belongs to the invocation that trains: a later resume without one trains at the
    # full lr, not at the 0 an earlier cooldown ended on. Exporting only keeps the schedule the
    # checkpoint was trained with, for the card.
    if not args.export_only:
        recipe.cooldown, recipe.total_steps = (args.cooldown, args.steps) if args.cooldown else (0, None)
    try:
        train_and_export(args, recipe, run_dir)
    except (WeightsDoNotFit, RecipeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    log.info("done: %s", asdict(recipe))
    return 0


def train_and_export(args: argparse.Namespace, recipe: Recipe, run_dir: Path) -> None:
    max_steps = 0 if args.export_only else args.steps
    minutes = None if args.export_only else args.minutes
    from lanterna.training import export

    if args.model == "vae":
        from lanterna.training import train_vae

        model, run = train_vae.train(str(run_dir), recipe, max_steps, minutes, args.eval_every)
        if args.export or args.export_only:
            export.export_vae(model, run, recipe, args.weights_dir, half=args.half)
    elif args.model == "clip":
        from lanterna.training import train_clip

        model, run = train_clip.train(str(run_dir), recipe, max_steps, minutes, args.eval_every)
        if args.export or args.export_only:
            export.export_clip(model, run, recipe, args.weights_dir, half=args.half)
    else:
        from lanterna.training import train_diffusion
        from lanterna.training.progress_eval import quick_geneval

        model, run = train_diffusion.train(str(run_dir), recipe, max_steps, minutes,
                                           args.eval_every, evaluate=quick_geneval(recipe, run_dir / "samples"))
        if args.export or args.export_only:
            export.export_denoiser(model, run, recipe, args.weights_dir, half=args.half)
