"""Write a trained model as bundled weights: safetensors + a model card with recipe and curve."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lanterna.engines import weights
from lanterna.engines.nets.text import text_context_of
from lanterna.training.common import Recipe, Run
from lanterna.training.train_diffusion import layout_map_kind, net_kind

log = logging.getLogger("lanterna.training.export")

FRESH_DATA = ("rendered fresh for every batch; the held-out compositions purple triangle and orange "
              "cross never appear.")
DATA_NOTE = f"Shapes World v1 renders (64x64, anti-aliased and not), {FRESH_DATA}"
VIDEO_DATA_NOTE = "Shapes World v1 motion videos ({frames} frames of {size}x{size}, anti-aliased and not), " + FRESH_DATA


def learning_curve(run: Run) -> list[dict[str, Any]]:
    """One point per evaluated step (the first, if a step was evaluated twice)."""
    points: dict[int, dict[str, Any]] = {}
    for record in run.records("eval"):
        points.setdefault(record["step"], {k: v for k, v in record.items() if k != "kind"})
    return list(points.values())


def schedule_text(recipe: dict[str, Any], ended_at: int | None = None) -> str:
    """A recipe in one line: batch, lr schedule and options; `ended_at`, the step the stretch
    reached, tells a finished cooldown from one cut short."""
    text = f"batch {recipe.get('batch')}, lr {recipe.get('lr'):g}, warm-up {recipe.get('warmup')}"
    end = recipe.get("total_steps")
    if recipe.get("cooldown") and ended_at is not None and end and ended_at < end:
        text += (f", stopped at step {ended_at:,} of a schedule cooling to 0 over the last "
                 f"{recipe['cooldown']:,} before step {end:,}")
    elif recipe.get("cooldown"):
        text += f", cooled to 0 over the last {recipe['cooldown']:,}"
    options = {k: v for k, v in recipe.get("extra", {}).items() if k != "init_from"}
    return text + (f"; options {options}" if options else "")


def recorded_stretch(start: dict[str, Any]) -> list[str]:
    """What a card without a history says of its training: its recipe, from the step it began at."""
    recipe = start["recipe"]
    first = recipe.get("warmup_start", 0)
    if not first:
        return [f"steps 0-{start['step']:,} ({start['seconds'] / 60:.0f} min): {schedule_text(recipe)}"]
    return [f"steps 0-{first:,}: not in the card", f"steps {first:,}-{start['step']:,}: {schedule_text(recipe)}"]


def history(run: Run, recipe: Recipe, state: dict[str, Any]) -> list[str]:
    """When this run continued exported weights: their stretches of training, then this one's."""
    continued = run.records("continued")
    if not continued:
        return []
    start = continued[0]
    earlier = start["history"] or recorded_stretch(start)
    minutes = (state["seconds"] - start["seconds"]) / 60
    return [*earlier, f"steps {start['step']:,}-{state['step']:,} ({minutes:.0f} min): continued from the "
                      f"exported {recipe.extra.get('init_from')}, fresh optimiser; {schedule_text(asdict(recipe), state['step'])}"]


def base_card(name: str, net: str, module: nn.Module, run: Run, recipe: Recipe) -> dict[str, Any]:
    state = run.load()["state"] if run.has_checkpoint() else {"step": 0, "seconds": 0.0}
    curve = learning_curve(run)
    stretches = history(run, recipe, state)
    return {
        "name": name,
        "net": net,
        "config": asdict(module.config),
        "parameters": sum(p.numel() for p in module.parameters()),
        "data": DATA_NOTE,
        "recipe": asdict(recipe),
        "steps": state["step"],
        "train_seconds": round(state["seconds"], 1),
        "trained_on": "2-core CPU, torch " + torch.__version__,
        "exported": dt.date.today().isoformat(),
        "metrics": curve[-1] if curve else {},
        "learning_curve": curve,
        **({"history": stretches} if stretches else {}),
    }


def write(name: str, module: nn.Module, card: dict[str, Any], directory: Path | None,
          half: bool) -> None:
    card["dtype"] = "float16" if half else "float32"
    weights.save_module(module, name, directory, half=half)
    weights.write_card(name, card, directory)
    log.info("exported %s to %s", name, weights.tensors_path(name, directory))


def export_vae(vae: nn.Module, run: Run, recipe: Recipe, directory: Path | None = None,
               half: bool = False) -> None:
    write("shapes-vae", vae, base_card("shapes-vae", "vae", vae, run, recipe), directory, half)


def export_clip(clip: nn.Module, run: Run, recipe: Recipe, directory: Path | None = None,
                half: bool = False) -> None:
    write("shapes-clip", clip, base_card("shapes-clip", "clip", clip, run, recipe), directory, half)


def export_denoiser(net: nn.Module, run: Run, recipe: Recipe, directory: Path | None = None,
                    half: bool = False) -> None:
    name = {"dit": "shapes-dit", "unet": "shapes-unet", "video": "shapes-video"}[recipe.model]
    kind = net_kind(recipe)
    card = base_card(name, kind, net, run, recipe)
    video = recipe.model == "video"
    size = recipe.extra.get("size", 64)
    card.update({
        "prediction": recipe.extra.get("prediction", "v"),
        "shift": recipe.sampling_shift,
        "text_context": text_context_of(recipe.extra),
        "components": {"vae": "shapes-vae", "text_encoder": "shapes-clip"},
        "defaults": {"steps": 20, "guidance": recipe.extra.get("guidance", 4.0),
                     "sampler": "dpmpp-2m", "width": size, "height": size,
                     **({"frames": recipe.extra.get("frames", 16), "fps": 8} if video else {})},
    })
    if getattr(net.config, "layout_channels", 0):
        card["grounding"] = {"unconditional": bool(recipe.extra.get("grounding", {}).get("unconditional", True)),
                             "map": layout_map_kind(recipe)}
    if video:
        card["max_frames"] = recipe.extra.get("frames", 16)
        card["data"] = VIDEO_DATA_NOTE.format(frames=card["max_frames"], size=size)
        if (card["max_frames"], size) != (16, 64):
            card["note"] = (f"Trained and evaluated at {card['max_frames']} frames of {size}x{size}, "
                            "smaller than the Shapes World's 16 frames of 64x64, to fit CPU training.")
    write(name, net, card, directory, half)
