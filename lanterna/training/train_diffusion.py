"""Train the latent diffusion models (`shapes-dit`, `shapes-unet`, `shapes-video`: a video DiT, or a
video U-Net started from `shapes-unet`).

Rectified flow (Liu et al. 2022; Esser et al. 2024): x_t = (1 - t) x0 + t eps, the net predicts
the velocity eps - x0 (or x0 itself), t drawn logit-normally, which Esser et al. found best
among the timestep samplers they compared. `extra.shift` moves both the training timesteps and the
sampling schedule (the card's `shift`) toward high noise by one map, the resolution shift of
Esser et al. 2024 (eq. 23); `extra.sampling_shift` sets the sampling schedule's apart from it.
The VAE and the CLIP text tower are frozen (as in latent diffusion); captions are dropped 10 % of
the time so classifier-free guidance works. `extra.task_mix` sets each training task's share of an
image batch, e.g. to weight the tasks a model fails most. `extra.frame_difference` (video) adds that
weight times the loss on the frame-to-frame differences of the prediction's error, and
`extra.frame_noise` (video U-Net) gives that share of the videos a noise level per frame.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lanterna.engines import bundled
from lanterna.engines.schedules import shift_flow_time
from lanterna.engines.nets import build_net
from lanterna.engines.nets.text import ShapesTokenizer, text_conditioner, text_context_of
from lanterna.engines.nets.vae import AutoencoderKL
from lanterna.training import binding, data
from lanterna.training.binding import BindingContrast
from lanterna.training.common import (EMA, Recipe, RecipeError, Run, Trainable, WeightsDoNotFit, autocast, load_widened,
                                      make_optimizer, optimizer_step, run_loop)
from lanterna.world import sampling

log = logging.getLogger("lanterna.training.diffusion")

CAPTION_DROPOUT = 0.1
NET_FOR_MODEL = {"dit": "dit", "unet": "unet", "video": "video_dit"}


def net_kind(recipe: Recipe) -> str:
    """The model's net: `extra.net_kind` picks the video model's (video_dit, the default, or video_unet)."""
    from lanterna.engines.nets import VIDEO_NET_KINDS

    kind = recipe.extra.get("net_kind", NET_FOR_MODEL[recipe.model])
    allowed = VIDEO_NET_KINDS if recipe.model == "video" else (NET_FOR_MODEL[recipe.model],)
    if kind not in allowed:
        raise RecipeError(f"net_kind: {recipe.model} trains {' or '.join(allowed)}, not {kind!r}")
    return kind


def start_from_image_net(trainable: Trainable, recipe: Recipe) -> None:
    """`extra.spatial_from`: a fresh video U-Net run takes its image layers from exported image
    U-Net weights (its temporal layers keep their identity start), so it begins by drawing every
    frame as that model draws an image."""
    from lanterna.engines import weights

    name = recipe.extra["spatial_from"]
    if net_kind(recipe) != "video_unet":
        raise RecipeError(f"spatial_from: only a video_unet starts from image weights, "
                          f"this run trains {net_kind(recipe)}")
    if recipe.extra.get("init_from"):
        raise RecipeError("spatial_from starts a new video run; --init-from continues one: give one of them")
    card = weights.read_card(name)
    if card["net"] != "unet" or text_context_of(card) != text_context_of(recipe.extra):
        raise RecipeError(f"spatial_from: {name} is a {card['net']} reading {text_context_of(card)!r}; "
                          f"this run needs a unet reading {text_context_of(recipe.extra)!r}")
    state = weights.load_state(name)
    try:
        for model in (trainable.model, *([trainable.ema.model] if trainable.ema is not None else [])):
            load_widened(model, state)
    except WeightsDoNotFit as error:
        raise RecipeError(f"spatial_from: {name} does not fit this run's net ({error})") from error
    log.info("video U-Net starts from %s (step %d)", name, card.get("steps", 0))


def build_denoiser(recipe: Recipe, text_dim: int) -> nn.Module:
    from lanterna.engines.nets import NET_SIZES

    kind = net_kind(recipe)
    config = dict(NET_SIZES[kind][recipe.size])
    config.update(recipe.extra.get("net", {}))
    config["context_dim"] = text_dim
    return build_net(kind, config)


def sample_t(n: int, shift: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal(0, 1) timesteps, shifted toward t = 1 (noise) when shift > 1."""
    return shift_flow_time(torch.sigmoid(torch.randn(n, generator=generator)), shift)


@dataclass
class Noised:
    x_t: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor


def noised(z0: torch.Tensor, prediction: str, shift: float = 1.0, frame_noise: float = 0.0) -> Noised:
    t = sample_t(z0.shape[0], shift)
    if frame_noise:
        t = noise_per_frame(t, z0.shape[2], shift, frame_noise)
    eps = torch.randn_like(z0)
    t_b = t.view(t.shape[0], 1, -1, *([1] * (z0.dim() - 3)))  # B x 1 x (F or 1) x ...: over channels
    return Noised((1 - t_b) * z0 + t_b * eps, t, eps - z0 if prediction == "v" else z0)


def noise_per_frame(t: torch.Tensor, frames: int, shift: float, share: float) -> torch.Tensor:
    """B x F noise levels: each video's t in all its frames, but for `share` of the videos a t
    drawn for each frame (Diffusion Forcing, Chen et al. 2024).

    With one noise level a frame cannot show where the others' objects are, so a motion word
    moves the loss by a fraction of a percent (bench/bench_word_use.py). A clear frame next to
    noisy ones asks the net where the object has gone by then, which only the word tells."""
    own = sample_t(t.shape[0] * frames, shift).view(-1, frames)
    chosen = torch.rand(t.shape[0]) < share
    return torch.where(chosen[:, None], own, t[:, None].expand(-1, frames))


def net_input(x_t: torch.Tensor, layout: torch.Tensor | None) -> torch.Tensor:
    """The noisy latent, with a grounded net's layout map as more channels."""
    return x_t if layout is None else torch.cat([x_t, layout.to(x_t)], dim=1)


def flow_loss(net: nn.Module, z0: torch.Tensor, context: torch.Tensor, mask: torch.Tensor,
              pooled: torch.Tensor, prediction: str, shift: float = 1.0,
              frame_difference: float = 0.0, frame_noise: float = 0.0,
              layout: torch.Tensor | None = None) -> torch.Tensor:
    n = noised(z0, prediction, shift, frame_noise)
    output = net(net_input(n.x_t, layout), n.t, context, mask, pooled).float()
    loss = F.mse_loss(output, n.target)
    return loss if not frame_difference else loss + frame_difference * frame_difference_loss(output, n.target)


def frame_difference_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean square of the prediction error's change from each frame to the next (B x C x F x H x W).

    An object drawn in the wrong place in every frame makes the same error in each, which the
    differences cancel; one that does not move as asked makes an error that grows frame by
    frame. In the plain loss a wrong trajectory is a few pixels next to the appearance of whole
    frames; here it is what is left."""
    error = prediction - target
    return (error[:, :, 1:] - error[:, :, :-1]).pow(2).mean()


def flow_loss_with_binding(net: nn.Module, z0: torch.Tensor, cond: tuple[torch.Tensor, ...],
                           negatives: tuple[torch.Tensor, ...] | None, rows: list[int],
                           prediction: str, shift: float, contrast: BindingContrast,
                           layout: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The flow loss plus the binding term over `rows`, whose near-miss condition is `negatives`."""
    n = noised(z0, prediction, shift)
    x_in = net_input(n.x_t, layout)
    error = binding.per_sample_error(net(x_in, n.t, *cond), n.target)
    loss = error.mean()
    if not rows:
        return loss, {"flow_loss": float(loss.detach())}
    negative_error = binding.per_sample_error(net(x_in[rows], n.t[rows], *negatives), n.target[rows])
    term = binding.contrast_term(error[rows], negative_error, contrast.margin)
    held = float((negative_error.detach() > error[rows].detach()).float().mean())
    return loss + contrast.weight * term, {"flow_loss": float(loss.detach()), "binding_term": float(term.detach()),
                                           "binding_held": held, "binding_rows": len(rows)}


def latent_targets(recipe: Recipe) -> str:
    """'sample' (a posterior draw) or 'mean' (the posterior mean) as the clean latent.

    shapes-vae's posterior std is ~0.28 of the posterior means' std (bench/bench_word_use.py),
    so a draw carries noise the denoiser can neither predict nor needs (the decoder reads the
    mean as well).
    Runs recorded before the choice existed trained on draws.
    """
    latents = recipe.extra.get("latents", "sample")
    if latents not in ("sample", "mean"):
        raise RecipeError(f"latents: must be 'sample' or 'mean', got {latents!r}")
    return latents


def training_mix(recipe: Recipe) -> dict[str, float] | None:
    """`extra.task_mix`: each training task's share of an image batch (None: the world's default)."""
    mix = recipe.extra.get("task_mix")
    if mix is None:
        return None
    if not isinstance(mix, dict):
        raise RecipeError(f"task_mix: must map task names to shares, got {mix!r}")
    try:
        sampling.mix_tasks(np.random.default_rng(0), 1, mix)
    except (ValueError, TypeError) as error:
        raise RecipeError(f"task_mix: {error}") from error
    return mix


def drop_captions(captions: list[str], rng: np.random.Generator) -> list[str]:
    return [c if rng.random() >= CAPTION_DROPOUT else "" for c in captions]


@torch.no_grad()
def encode_captions(clip: nn.Module, tokenizer: ShapesTokenizer,
                    captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens = tokenizer.encode(captions)
    context, pooled = clip.encode_text_tokens(tokens.ids, tokens.mask)
    return context.float(), tokens.mask, pooled.float()


def extra_number(recipe: Recipe, name: str, wanted: str, low: float = 0.0, high: float = math.inf) -> float:
    """`extra[name]` (0 when absent), a number from `low` to `high`; `wanted` words the range for the error."""
    value = recipe.extra.get(name, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RecipeError(f"{name}: {wanted}, got {value!r}")
    return float(value)


def frame_difference_weight(recipe: Recipe) -> float:
    """`extra.frame_difference` (video models only): the weight of frame_difference_loss."""
    weight = extra_number(recipe, "frame_difference", "a weight >= 0")
    if weight and recipe.model != "video":
        raise RecipeError("frame_difference: video models only (an image has one frame)")
    return weight


def frame_noise_share(recipe: Recipe) -> float:
    """`extra.frame_noise` (video U-Net only): the share of videos given a noise level per frame."""
    share = extra_number(recipe, "frame_noise", "a share from 0 to 1", high=1.0)
    if share and (recipe.model != "video" or net_kind(recipe) != "video_unet"):
        raise RecipeError("frame_noise: the video U-Net only (the video DiT takes one noise level a video)")
    return share


def binding_contrast(recipe: Recipe) -> BindingContrast | None:
    """`extra.binding_contrast` (image models only): see lanterna.training.binding."""
    try:
        contrast = BindingContrast.from_extra(recipe.extra.get("binding_contrast"))
    except ValueError as error:
        raise RecipeError(str(error)) from error
    if contrast is not None and recipe.model == "video":
        raise RecipeError("binding_contrast: image models only (motion captions have no binding near miss)")
    return contrast


def layout_map_kind(recipe: Recipe) -> str:
    """`extra.grounding.map`: the layout map kind a grounded net trains on (grounding.DEFAULT_MAP_KIND by default)."""
    from lanterna.world.grounding import DEFAULT_MAP_KIND, check_map_kind

    kind = recipe.extra.get("grounding", {}).get("map", DEFAULT_MAP_KIND)
    try:
        return check_map_kind(kind)
    except ValueError as e:
        raise RecipeError(f"grounding.map: {e}") from None


def layout_channels(recipe: Recipe, net: nn.Module) -> int:
    """The net's layout channels (`net.layout_channels`): 0, or the Shapes World map's."""
    from lanterna.world.grounding import LAYOUT_CHANNELS

    channels = getattr(net.config, "layout_channels", 0)
    if channels not in (0, LAYOUT_CHANNELS):
        raise RecipeError(f"net.layout_channels: 0 or {LAYOUT_CHANNELS} (the layout map's channels), got {channels}")
    if channels and net_kind(recipe) == "video_dit":
        raise RecipeError("net.layout_channels: the DiT, U-Net and video U-Net read a layout, not the video DiT")
    return channels


@torch.no_grad()
def encode_images(vae: AutoencoderKL, pixels: torch.Tensor, latents: str = "sample") -> torch.Tensor:
    return vae.encode_latents(pixels, deterministic=latents == "mean")


@torch.no_grad()
def encode_videos(vae: AutoencoderKL, videos: torch.Tensor, latents: str = "sample") -> torch.Tensor:
    b, c, f, h, w = videos.shape
    frames = videos.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    z = vae.encode_latents(frames, deterministic=latents == "mean")
    return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4)


def train(run_dir: str, recipe: Recipe, max_steps: int | None, max_minutes: float | None,
          eval_every: int = 2000,
          evaluate: Callable[[nn.Module, int], dict] | None = None) -> tuple[nn.Module, Run]:
    torch.manual_seed(recipe.seed)
    np_rng = np.random.default_rng(recipe.seed)
    vae = bundled.load_vae().eval().requires_grad_(False)
    clip = text_conditioner(bundled.load_clip().eval().requires_grad_(False),
                            text_context_of(recipe.extra))
    tokenizer = ShapesTokenizer()
    net = build_denoiser(recipe, clip.context_width)
    trainable = Trainable(net, make_optimizer(net, recipe), EMA(net, recipe.ema))
    run = Run(run_dir)
    if recipe.extra.get("spatial_from") and not run.has_checkpoint():
        start_from_image_net(trainable, recipe)
    prediction = recipe.extra.get("prediction", "v")
    frames = recipe.extra.get("frames", 16)
    size = recipe.extra.get("size", 64)
    latents = latent_targets(recipe)
    shift = float(recipe.extra.get("shift", 1.0))
    task_mix = training_mix(recipe)
    contrast = binding_contrast(recipe)
    difference_weight = frame_difference_weight(recipe)
    noise_share = frame_noise_share(recipe)

    grounded = layout_channels(recipe, net)
    map_kind = layout_map_kind(recipe)

    def step_fn(step: int) -> dict:
        if recipe.model == "video":
            videos, captions, scenes = data.video_batch_with_scenes(np_rng, recipe.batch, frames, size)
            z0 = encode_videos(vae, videos, latents)
        else:
            pixels, captions, scenes = data.image_batch_with_scenes(np_rng, recipe.batch, task_mix)
            z0 = encode_images(vae, pixels, latents)
        layout = (data.layout_batch(np_rng, scenes, z0.shape[-1], frames if recipe.model == "video" else None,
                                    kind=map_kind) if grounded else None)
        captions = drop_captions(captions, np_rng)
        cond = encode_captions(clip, tokenizer, captions)
        parts: dict = {}
        if contrast is None:
            with autocast(recipe.bf16):
                loss = flow_loss(net, z0, *cond, prediction, shift, difference_weight, noise_share, layout)
        else:
            requirements = [s.requirements for s in scenes]
            rows, texts = binding.binding_negatives(captions, requirements, np_rng)
            negatives = encode_captions(clip, tokenizer, texts) if rows else None
            with autocast(recipe.bf16):
                loss, parts = flow_loss_with_binding(net, z0, cond, negatives, rows, prediction, shift, contrast,
                                                     layout)
        grad = optimizer_step(trainable, loss, recipe, step)
        return {"loss": float(loss.detach()), "grad_norm": grad, **parts}

    def evaluate_ema(step: int) -> dict:
        return {} if evaluate is None else evaluate(trainable.inference_model, step)

    run_loop(run, trainable, recipe, np_rng, step_fn, evaluate_ema, max_steps, max_minutes, eval_every)
    return trainable.inference_model, run
