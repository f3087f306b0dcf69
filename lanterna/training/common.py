"""What every training loop shares: resumable checkpoints, EMA, a JSONL log, LR warm-up, a clock.

A run lives in one directory: `checkpoint.pt` (model, EMA, optimiser, step, wall-clock, RNG
state), `log.jsonl` (one JSON object per logged step or evaluation) and `samples/`. Starting a
run in a directory that holds a checkpoint resumes it, so a run can be stopped at any moment and
continued later with the same command.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

log = logging.getLogger("lanterna.training")


@dataclass
class Recipe:
    """Hyper-parameters of a run; stored in the checkpoint and in the model card."""

    model: str
    size: str = "default"
    batch: int = 64
    lr: float = 3e-4
    warmup: int = 500
    weight_decay: float = 0.0
    ema: float = 0.999
    seed: int = 0
    bf16: bool = False
    grad_clip: float = 1.0
    # Linear decay of the lr to 0 over the last `cooldown` steps before step `total_steps`
    # (warmup-stable-decay); 0 keeps the lr constant after warm-up.
    cooldown: int = 0
    total_steps: int | None = None
    # The step the optimiser started at: a run continued from exported weights starts a fresh
    # Adam at the card's step count, and fresh moments want the warm-up again.
    warmup_start: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sampling_shift(self) -> float:
        """The sampling schedule's shift toward noise (the card's `shift`): `extra.sampling_shift`
        where a run chose one by measurement, else the training timesteps' `extra.shift`."""
        return float(self.extra.get("sampling_shift", self.extra.get("shift", 1.0)))


class EMA:
    """Exponential moving average of a model's parameters (buffers copied as they are)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm the average up: early on, a long memory would keep the random init around.
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach().float().to(ema_p.dtype), 1 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


def warmup_lr(step: int, base_lr: float, warmup: int) -> float:
    return base_lr * min(1.0, (step + 1) / max(1, warmup))


def scheduled_lr(step: int, recipe: Recipe) -> float:
    """Warm-up, then constant, then (with a cooldown) linear decay reaching 0 at total_steps."""
    lr = warmup_lr(step - recipe.warmup_start, recipe.lr, recipe.warmup)
    if recipe.cooldown > 0 and recipe.total_steps is not None:
        lr *= min(1.0, max(0.0, (recipe.total_steps - step) / recipe.cooldown))
    return lr


def autocast(enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


@dataclass
class RunState:
    step: int = 0
    seconds: float = 0.0  # wall-clock spent training, summed over resumptions
    rng: dict[str, Any] = field(default_factory=dict)


class Run:
    """A run directory: checkpoint save/resume and the JSONL log."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "samples").mkdir(exist_ok=True)
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self.log_path = self.dir / "log.jsonl"

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    def save(self, payload: dict[str, Any]) -> None:
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load(self) -> dict[str, Any]:
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)

    def log(self, record: dict[str, Any]) -> None:
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        rows = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r.get("kind") == kind]


def rng_state(np_rng: np.random.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np_rng.bit_generator.state}


def restore_rng(state: dict[str, Any], np_rng: np.random.Generator) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np_rng.bit_generator.state = state["numpy"]


class Clock:
    """Wall-clock of the run, carried over across resumptions."""

    def __init__(self, already: float = 0.0) -> None:
        self.already = already
        self.start = time.monotonic()

    @property
    def seconds(self) -> float:
        return self.already + time.monotonic() - self.start


def training_steps(
    start: int, max_steps: int | None, max_minutes: float | None
) -> Iterator[int]:
    """Steps from `start` until `max_steps` (total) or `max_minutes` of this invocation pass."""
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    step = start
    while (max_steps is None or step < max_steps) and (
        deadline is None or time.monotonic() < deadline
    ):
        yield step
        step += 1


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return asdict(recipe)


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


@dataclass
class Trainable:
    """A model being trained, with its optimiser and (for diffusion models) its EMA copy."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA | None = None

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self.ema.model.state_dict(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.model.load_state_dict(state["ema"])

    @property
    def inference_model(self) -> nn.Module:
        return self.model if self.ema is None else self.ema.model


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        betas=(0.9, 0.99),
    )


def optimizer_step(trainable: Trainable, loss: torch.Tensor, recipe: Recipe, step: int) -> float:
    for group in trainable.optimizer.param_groups:
        group["lr"] = scheduled_lr(step, recipe)
    trainable.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable.model.parameters(), recipe.grad_clip)
    trainable.optimizer.step()
    if trainable.ema is not None:
        trainable.ema.update(trainable.model, step)
    return float(grad_norm)


class WeightsDoNotFit(ValueError):
    """Exported weights that a run's net cannot start from."""


class RecipeError(ValueError):
    """A recipe option with a value the trainer cannot run (told to the user in one line)."""


def tuned_part(recipe: Recipe, tuned: str, what: str) -> str:
    """`extra.part`: 'all', or `tuned`, a run that tunes `what` of exported weights (needs --init-from)."""
    part = recipe.extra.get("part", "all")
    if part not in ("all", tuned):
        raise RecipeError(f"part: must be 'all' or {tuned!r}, got {part!r}")
    if part == tuned and not recipe.extra.get("init_from"):
        raise RecipeError(f"part {tuned!r} tunes {what}: give --init-from")
    return part


def load_widened(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state`, zero-filling where the model's tensors are larger (e.g. a text condition
    that gained channels): the widened model computes what the saved one did, then learns.
    """
    own = model.state_dict()
    # Parts a run retrains from scratch (a decoder of another width) drop their saved weights.
    fresh = getattr(model, "fresh_prefixes", ())
    if fresh:
        state = {k: v for k, v in state.items() if not k.startswith(fresh)}
    # Modules a net may add to saved weights keep their own start (documented where declared).
    optional = (*getattr(model, "optional_prefixes", ()), *fresh)
    state = state | {k: v for k, v in own.items() if k not in state and k.startswith(optional)}
    if set(own) != set(state):
        raise WeightsDoNotFit(f"weights do not fit the model: missing {sorted(set(own) - set(state))[:4]}, "
                         f"unexpected {sorted(set(state) - set(own))[:4]}")
    widened = {}
    for key, saved in state.items():
        target = own[key]
        if saved.shape == target.shape:
            widened[key] = saved
            continue
        if saved.dim() != target.dim() or any(s > t for s, t in zip(saved.shape, target.shape)):
            raise WeightsDoNotFit(f"{key}: saved shape {tuple(saved.shape)} does not fit {tuple(target.shape)}")
        grown = torch.zeros_like(target)
        grown[tuple(slice(0, n) for n in saved.shape)] = saved
        widened[key] = grown
    model.load_state_dict(widened)


def continue_from_weights(run: Run, trainable: Trainable, name: str) -> RunState:
    """Start a run from exported weights (when a machine has no checkpoint, only the repo).

    The optimiser starts afresh; the step count, wall-clock and learning curve carry on from
    the model card, so the card's curve stays one curve.
    """
    from lanterna.engines import weights
    from lanterna.engines.nets.text import text_context_of
    from lanterna.training.patch_resize import resize_patches

    card = weights.read_card(name)
    state = weights.load_state(name)
    patch = getattr(getattr(trainable.model, "config", None), "patch_size", None)
    if patch is not None:
        state = resize_patches(state, patch)
    try:
        load_widened(trainable.model, state)
    except WeightsDoNotFit as error:
        raise WeightsDoNotFit(
            f"{name} cannot start this run ({error}); its card has text_context "
            f"{text_context_of(card)!r} and size config {card.get('config')}: "
            "a run can widen 'states' weights to 'states+words' and those to 'states+words+order', "
            "not narrow them") from error
    if trainable.ema is not None:
        load_widened(trainable.ema.model, state)
    for point in card.get("learning_curve", []):
        run.log({"kind": "eval", **point})
    # The export of this run writes a fresh card: it carries the earlier stretches from here.
    run.log({"kind": "continued", "step": card.get("steps", 0), "seconds": card.get("train_seconds", 0.0),
             "history": card.get("history", []), "recipe": card.get("recipe", {})})
    log.info("continuing %s from exported weights at step %d", name, card.get("steps", 0))
    return RunState(step=card.get("steps", 0), seconds=card.get("train_seconds", 0.0))


def run_loop(
    run: Run,
    trainable: Trainable,
    recipe: Recipe,
    np_rng: np.random.Generator,
    train_step,
    evaluate=None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    eval_every: int = 2000,
    log_every: int = 50,
    checkpoint_minutes: float = 5.0,
) -> RunState:
    """Resume if a checkpoint exists, then train; `train_step(step) -> dict of floats`.

    `evaluate(step) -> dict` runs every `eval_every` steps and at the end; its record goes to the
    log with the wall-clock beside it (the learning curve of the model card).
    """
    state = RunState()
    if run.has_checkpoint():
        payload = run.load()
        trainable.restore(payload["trainable"])
        state = RunState(**payload["state"])
        restore_rng(state.rng, np_rng)
        log.info("resumed %s at step %d (%.0f s trained)", run.dir, state.step, state.seconds)
    elif recipe.extra.get("init_from"):
        state = continue_from_weights(run, trainable, recipe.extra["init_from"])
        recipe.warmup_start = state.step
    clock = Clock(state.seconds)
    last_checkpoint = time.monotonic()
    window: dict[str, list[float]] = {}

    def checkpoint(step: int) -> None:
        state.step, state.seconds, state.rng = step, clock.seconds, rng_state(np_rng)
        run.save({"trainable": trainable.state(), "state": asdict(state), "recipe": asdict(recipe)})

    done = state.step
    for step in training_steps(state.step, max_steps, max_minutes):
        trainable.model.train()
        metrics = train_step(step)
        for key, value in metrics.items():
            window.setdefault(key, []).append(value)
        done = step + 1
        if done % log_every == 0:
            run.log({"kind": "train", "step": done, "seconds": round(clock.seconds, 1),
                     **{k: float(np.mean(v)) for k, v in window.items()}})
            window.clear()
        if evaluate is not None and done % eval_every == 0:
            run.log({"kind": "eval", "step": done, "seconds": round(clock.seconds, 1), **evaluate(done)})
        if time.monotonic() - last_checkpoint > 60 * checkpoint_minutes:
            checkpoint(done)
            last_checkpoint = time.monotonic()
    checkpoint(done)
    # At the end, unless this step has its point already (as when the call only exports).
    evaluated = {r["step"] for r in run.records("eval")}
    if evaluate is not None and done > 0 and done not in evaluated:
        run.log({"kind": "eval", "step": done, "seconds": round(clock.seconds, 1), **evaluate(done)})
    return state
