"""Train `shapes-vae`: the KL autoencoder that compresses 64x64x3 renders to 16x16x4 latents."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image
import torch
import torch.nn.functional as F

from lanterna.engines.nets.vae import VAE_SIZES, AutoencoderKL, VAEConfig
from lanterna.training import data
from lanterna.training.samples import save_sheet
from lanterna.training.common import (Recipe, RecipeError, Run, Trainable, autocast, make_optimizer,
                                      optimizer_step, run_loop, tuned_part)
from lanterna.world import sampling
from lanterna.world.judge import judge_batch
from lanterna.world.snap import PALETTE, snap

log = logging.getLogger("lanterna.training.vae")

KL_WEIGHT = 1e-6  # as in latent diffusion's KL-f4 autoencoders: a nudge towards N(0, 1), no more
EVAL_SEED = 10_000  # held-out renders come from a seed no training batch uses
EVAL_IMAGES = 256
CEILING_PER_TASK = 100  # held-out renders per image task for the judge's round-trip pass rate
# Softmax temperature of the palette term, in squared distance of [-1, 1] colours: the closest two
# palette colours (yellow, orange) lie 0.35 apart, so a pixel on its colour scores ~7 logits above
# the next and costs next to nothing.
PALETTE_TEMPERATURE = 0.05
PALETTE_PIXELS = torch.tensor(PALETTE / 127.5 - 1.0, dtype=torch.float32)  # 9 x 3


def build(recipe: Recipe) -> AutoencoderKL:
    vae = AutoencoderKL(VAEConfig(**(VAE_SIZES[recipe.size] | recipe.extra.get("net", {}))))
    decoder = recipe.extra.get("decoder", "continue")
    if decoder not in ("continue", "fresh"):
        raise RecipeError(f"decoder: must be 'continue' or 'fresh', got {decoder!r}")
    if decoder == "fresh":
        if trained_part(recipe) != "decoder":
            raise RecipeError("decoder 'fresh' retrains the decoder on a frozen encoder: set part 'decoder'")
        vae.fresh_prefixes = ("decoder.",)
    return vae


def trained_part(recipe: Recipe) -> str:
    """'all', or 'decoder': the encoder (and so the latent space and its scaling factor) frozen.

    A decoder-only run sharpens what every denoiser trained on this VAE's latents draws,
    without retraining them.
    """
    return tuned_part(recipe, "decoder", "the decoder of exported weights (a frozen random encoder "
                      "would make latents no denoiser was trained on)")


def reconstruction_terms(recon: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 and MSE of a reconstruction."""
    return (recon.float() - x).abs().mean(), F.mse_loss(recon.float(), x)


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator | None = None) -> dict:
    posterior = vae.encode(x)
    l1, mse = reconstruction_terms(vae.decode(posterior.sample(generator=generator)), x)
    kl = posterior.kl().mean()
    return {"loss": l1 + mse + KL_WEIGHT * kl, "l1": l1, "mse": mse, "kl": kl}


def palette_labels(x: torch.Tensor) -> torch.Tensor:
    """The oracle's palette label of every pixel of renders in [-1, 1] (N x H x W, int64)."""
    labels, _ = snap(data.from_pixels(x))
    return torch.from_numpy(labels.astype(np.int64))


def palette_term(recon: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each pixel's palette label under a softmax over its distances to the
    palette: what the oracle reads is the snapped colour, which L1 and MSE barely see at a
    blurred corner of a small shape."""
    distances = (recon.float().unsqueeze(1) - PALETTE_PIXELS[None, :, :, None, None]).square().sum(2)
    return F.cross_entropy(-distances / PALETTE_TEMPERATURE, labels)


def decoder_loss(vae: AutoencoderKL, x: torch.Tensor, palette_weight: float = 0.0) -> dict:
    """Reconstruction from the posterior mean, the latent the denoisers are trained to produce."""
    with torch.no_grad():
        z = vae.encode(x).mode()
    recon = vae.decode(z)
    l1, mse = reconstruction_terms(recon, x)
    losses = {"loss": l1 + mse, "l1": l1, "mse": mse}
    if palette_weight:
        losses["palette"] = palette_term(recon, palette_labels(x))
        losses["loss"] = losses["loss"] + palette_weight * losses["palette"]
    return losses


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Round trips through the posterior mean, as a denoiser's latents are decoded."""
    return torch.cat([vae.decode(vae.encode(part).mode()) for part in x.split(chunk)])


@torch.no_grad()
def held_out_psnr(vae: AutoencoderKL, n: int | None = None) -> float:
    vae.eval()
    x, _ = data.image_batch(np.random.default_rng(EVAL_SEED), n or EVAL_IMAGES)
    return data.psnr(reconstruct(vae, x), x)


@torch.no_grad()
def judge_round_trip(vae: AutoencoderKL, per_task: int = CEILING_PER_TASK) -> float:
    """The share of held-out renders (`per_task` of every image task) that the judge still passes
    after a round trip: the bound on what a latent model can score, averaged over the tasks."""
    vae.eval()
    rng = np.random.default_rng(EVAL_SEED + 2)
    rates = []
    for task in sampling.IMAGE_TASKS:
        images, _, scenes = sampling.sample_task(rng, task, per_task)
        decoded = data.from_pixels(reconstruct(vae, data.to_pixels(images)))
        verdicts = judge_batch(decoded, [s.requirements for s in scenes])
        rates.append(sum(v.passed for v in verdicts) / per_task)
    return float(np.mean(rates))


@torch.no_grad()
def save_reconstructions(vae: AutoencoderKL, directory, step: int, n: int = 8) -> None:
    """Held-out renders in the top row, their reconstructions below."""
    vae.eval()
    x, _ = data.image_batch(np.random.default_rng(EVAL_SEED), n)
    recon = reconstruct(vae, x)
    save_sheet(directory, step, [Image.fromarray(a) for a in data.from_pixels(torch.cat([x, recon]))], columns=n)


@torch.no_grad()
def fit_scaling_factor(vae: AutoencoderKL, n: int | None = None) -> float:
    """1 / std of the latents, so diffusion sees unit-variance inputs (Rombach et al. 2022)."""
    x, _ = data.image_batch(np.random.default_rng(EVAL_SEED + 1), n or 2 * EVAL_IMAGES)
    z = torch.cat([vae.encode(chunk).mode() for chunk in x.split(64)])
    return float(1.0 / z.std())


def train(run_dir: str, recipe: Recipe, max_steps: int | None, max_minutes: float | None,
          eval_every: int = 1000) -> tuple[AutoencoderKL, Run]:
    torch.manual_seed(recipe.seed)
    np_rng = np.random.default_rng(recipe.seed)
    vae = build(recipe)
    part = trained_part(recipe)
    if part == "decoder":
        vae.encoder.requires_grad_(False)
    palette_weight = float(recipe.extra.get("palette_weight", 0.0))
    if palette_weight and part != "decoder":
        raise RecipeError("palette_weight trains the decoder alone: set part 'decoder'")
    loss_fn = (lambda vae, x: decoder_loss(vae, x, palette_weight)) if part == "decoder" else vae_loss
    trainable = Trainable(vae, make_optimizer(vae, recipe))
    run = Run(run_dir)

    def step_fn(step: int) -> dict:
        x, _ = data.image_batch(np_rng, recipe.batch)
        with autocast(recipe.bf16):
            losses = loss_fn(vae, x)
        grad = optimizer_step(trainable, losses["loss"], recipe, step)
        return {k: float(v.detach()) for k, v in losses.items()} | {"grad_norm": grad}

    def evaluate(step: int) -> dict:
        save_reconstructions(vae, run.dir / "samples", step)
        return {"psnr_db": round(held_out_psnr(vae), 3), "judge_round_trip": round(judge_round_trip(vae), 4)}

    run_loop(run, trainable, recipe, np_rng, step_fn, evaluate, max_steps, max_minutes, eval_every)
    if part == "all":  # a frozen encoder keeps the scaling factor the denoisers were trained with
        vae.scaling_factor.fill_(fit_scaling_factor(vae))
    return vae, run
