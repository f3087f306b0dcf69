"""Samplers: plain functions walking a denoiser down a sigma schedule, in the style of
k-diffusion's sampling.py.

Every VE sampler works over `denoise(x, sigma) -> x0_hat` with x = x0 + sigma * eps
(see `schedules.py` for wrapping discrete-time and flow models). `sample_flow_euler` works over a
flow denoiser `denoise(x_t, t) -> x0_hat` with x_t = (1 - t) x0 + t eps and t from 1 down to 0.

Common signature:
    sample_x(denoise, x, sigmas, *, callback=None, cancelled=None, noise_sampler=None, **options)
- sigmas: 1-D, strictly decreasing, ending in 0; len(sigmas) - 1 steps. The denoiser is called
  with sigma as a (B,) tensor.
- callback(i, total, x, x0_hat) after every step, i counting from 1.
- cancelled() is polled before every step; True raises GenerationCancelled.
- noise_sampler(sigma, sigma_next) -> the standard normal draw of a stochastic step, shaped
  like x; `default_noise_sampler` builds one from torch generators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from lanterna.engines.base import GenerationCancelled

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SamplerCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


def default_noise_sampler(x: torch.Tensor, generator: Generators = None) -> NoiseSampler:
    """Standard normal noise shaped like x. With a list of generators (one per batch row) each
    row draws from its own stream, so image i of a batch equals its seed generated alone."""
    if isinstance(generator, Sequence):
        generators = list(generator)
        if len(generators) != x.shape[0]:
            raise ValueError(f"generator: one generator per batch row needed, got {len(generators)} "
                             f"for a batch of {x.shape[0]}")

        def draw_rows(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
            rows = [torch.randn(x.shape[1:], generator=g, dtype=x.dtype, device=g.device)
                    for g in generators]
            return torch.stack(rows).to(x.device)

        return draw_rows

    def draw(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        if generator is None:
            return torch.randn_like(x)
        return torch.randn(x.shape, generator=generator, dtype=x.dtype,
                           device=generator.device).to(x.device)

    return draw


# -- shared checks and bookkeeping --------------------------------------------------------------

def checked_sigmas(x: torch.Tensor, sigmas: torch.Tensor, max_sigma: float | None = None) -> torch.Tensor:
    """sigmas in x's dtype and device, after the checks every sampler relies on."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: must be a floating-point tensor with a batch axis first, got {shape}")
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1:
        shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(f"sigmas: must be a 1-D tensor, got {shape}")
    if len(sigmas) < 2:
        raise ValueError(f"sigmas: needs at least 2 values (steps >= 1) ending in 0, got {len(sigmas)}")
    if not torch.isfinite(sigmas).all():
        raise ValueError("sigmas: must all be finite")
    if sigmas[-1] != 0:
        raise ValueError(f"sigmas: must end in 0, got {float(sigmas[-1])}")
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError("sigmas: must be strictly decreasing")
    if max_sigma is not None and sigmas[0] > max_sigma:
        raise ValueError(f"sigmas: flow times must lie in [0, {max_sigma}], got {float(sigmas[0])}")
    return sigmas.to(dtype=x.dtype, device=x.device)


def check_eta(eta: float) -> float:
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta: must be a finite number >= 0, got {eta!r}")
    return float(eta)


def stop_if_cancelled(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise GenerationCancelled("cancelled")


def evaluate(denoise: Denoiser, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    x0 = denoise(x, sigma.expand(x.shape[0]))
    if x0.shape != x.shape:
        raise ValueError(f"denoise: returned shape {tuple(x0.shape)}, expected x's {tuple(x.shape)}")
    return x0


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a step to sigma_next into a deterministic move to sigma_down and fresh noise of size
    sigma_up, sigma_down^2 + sigma_up^2 = sigma_next^2. At eta = 1 this is the DDPM posterior;
    it is also DDIM's sigma_t(eta) (Song et al. 2021, eq. 16) rewritten in VE sigmas."""
    if eta == 0:
        return sigma_next, torch.zeros_like(sigma_next)
    variance = sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2
    sigma_up = torch.minimum(sigma_next, eta * variance.sqrt())
    return (sigma_next**2 - sigma_up**2).sqrt(), sigma_up


# -- VE samplers ---------------------------------------------------------------------------------

def sample_euler(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                 callback: SamplerCallback | None = None, cancelled: Callable[[], bool] | None = None,
                 noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Euler on the probability-flow ODE dx/dsigma = (x - x0_hat) / sigma (Karras et al. 2022)."""
    sigmas = checked_sigmas(x, sigmas)
    total = len(sigmas) - 1
    for i in range(total):
        stop_if_cancelled(cancelled)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = evaluate(denoise, x, sigma)
        x = x + (x - x0) / sigma * (sigma_next - sigma)
        if callback is not None:
            callback(i + 1, total, x, x0)
    return x


def sample_euler_ancestral(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                           callback: SamplerCallback | None = None,
                           cancelled: Callable[[], bool] | None = None,
                           noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                           s_noise: float = 1.0) -> torch.Tensor:
    """Euler down to sigma_down, then fresh noise of size eta-scaled sigma_up."""
    sigmas = checked_sigmas(x, sigmas)
    eta = check_eta(eta)
    noise_sampler = noise_sampler or default_noise_sampler(x)
    total = len(sigmas) - 1
    for i in range(total):
        stop_if_cancelled(cancelled)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = evaluate(denoise, x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x + (x - x0) / sigma * (sigma_down - sigma)
        if sigma_next > 0 and sigma_up > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
        if callback is not None:
            callback(i + 1, total, x, x0)
    return x


def sample_heun(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                callback: SamplerCallback | None = None, cancelled: Callable[[], bool] | None = None,
                noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """EDM's deterministic sampler (Karras et al. 2022, Alg. 1 without churn): Heun's 2nd-order
    method, and a plain Euler step for the last step, where the slope at sigma 0 is undefined.
    The same formulas integrate a rectified flow when `sigmas` are flow times and `denoise`
    returns x0_hat at time t: (x - x0_hat) / t is then the velocity."""
    sigmas = checked_sigmas(x, sigmas)
    total = len(sigmas) - 1
    for i in range(total):
        stop_if_cancelled(cancelled)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = evaluate(denoise, x, sigma)
        slope = (x - x0) / sigma
        x_euler = x + slope * (sigma_next - sigma)
        if sigma_next == 0:
            x = x_euler
        else:
            slope_next = (x_euler - evaluate(denoise, x_euler, sigma_next)) / sigma_next
            x = x + (slope + slope_next) / 2 * (sigma_next - sigma)
        if callback is not None:
            callback(i + 1, total, x, x0)
    return x


def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                    callback: SamplerCallback | None = None, cancelled: Callable[[], bool] | None = None,
                    noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), in lambda = -log sigma.

    The first step is first order (no history yet), and so is the last: its target lambda is
    infinite and the step lands on x0_hat exactly.
    """
    sigmas = checked_sigmas(x, sigmas)
    total = len(sigmas) - 1
    x0_prev: torch.Tensor | None = None
    h_prev: torch.Tensor | None = None
    for i in range(total):
        stop_if_cancelled(cancelled)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = evaluate(denoise, x, sigma)
        if sigma_next == 0:
            x = x0
        else:
            h = sigma.log() - sigma_next.log()
            x0_mix = x0
            if x0_prev is not None:
                r = h_prev / h
                x0_mix = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (sigma_next / sigma) * x - torch.expm1(-h) * x0_mix
            h_prev = h
        x0_prev = x0
        if callback is not None:
            callback(i + 1, total, x, x0)
    return x


def sample_ddim(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                callback: SamplerCallback | None = None, cancelled: Callable[[], bool] | None = None,
                noise_sampler: NoiseSampler | None = None, eta: float = 0.0) -> torch.Tensor:
    """DDIM (Song et al. 2021) in VE space: keep x0_hat, rescale the implied eps to sigma_down,
    add fresh noise of size sigma_up. eta = 0 is deterministic (and equals Euler in this space);
    eta = 1 samples the DDPM posterior."""
    sigmas = checked_sigmas(x, sigmas)
    eta = check_eta(eta)
    noise_sampler = noise_sampler or default_noise_sampler(x)
    total = len(sigmas) - 1
    for i in range(total):
        stop_if_cancelled(cancelled)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = evaluate(denoise, x, sigma)
        eps = (x - x0) / sigma
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = x0 + sigma_down * eps
        if sigma_next > 0 and sigma_up > 0:
            x = x + sigma_up * noise_sampler(sigma, sigma_next)
        if callback is not None:
            callback(i + 1, total, x, x0)
    return x


def sample_ddpm(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                callback: SamplerCallback | None = None, cancelled: Callable[[], bool] | None = None,
                noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Ancestral sampling from the DDPM posterior q(x_next | x, x0 = x0_hat) (Ho et al. 2020).

    In VE space the forward process from sigma_next to sigma adds variance sigma^2 - sigma_next^2,
    so the posterior is Gaussian with mean x0 + (sigma_next / sigma)^2 (x - x0) and variance
    sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2: diffusers' "fixed_small" variance.
    """
    sigmas = checked_sigmas(x, sigmas)
    noise_sampler = noise_sampler or default_noise_sampler(x)
    total = len(sigmas) - 1
    for i in range(total):
        stop_if_cancelled(cancelled)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = evaluate(denoise, x, sigma)
        keep = (sigma_next / sigma) ** 2
        x = x0 + keep * (x - x0)
        if sigma_next > 0:
            x = x + (sigma_next**2 * (1 - keep)).sqrt() * noise_sampler(sigma, sigma_next)
        if callback is not None:
            callback(i + 1, total, x, x0)
    return x


# -- flow sampler ----------------------------------------------------------------------------------

def sample_flow_euler(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                      callback: SamplerCallback | None = None,
                      cancelled: Callable[[], bool] | None = None,
                      noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Euler on a rectified flow: `denoise(x_t, t) -> x0_hat`, `sigmas` are flow times in [0, 1].
    The velocity is v = eps - x0 = (x_t - x0_hat) / t (Liu et al. 2023; Esser et al. 2024)."""
    sigmas = checked_sigmas(x, sigmas, max_sigma=1.0)
    total = len(sigmas) - 1
    for i in range(total):
        stop_if_cancelled(cancelled)
        t, t_next = sigmas[i], sigmas[i + 1]
        x0 = evaluate(denoise, x, t)
        x = x + (x - x0) / t * (t_next - t)
        if callback is not None:
            callback(i + 1, total, x, x0)
    return x


# -- registry ----------------------------------------------------------------------------------------

ScheduleKind = Literal["model", "karras", "flow"]


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fn: Callable[..., torch.Tensor]
    schedule: ScheduleKind  # "model": the model's own VE sigmas; "karras"; "flow": flow times
    stochastic: bool
    evals_per_step: int
    description: str

    def evaluations(self, steps: int) -> int:
        """Model evaluations of a run; 2nd-order samplers take a single one on the last step."""
        return steps * self.evals_per_step - (self.evals_per_step - 1)


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("ddpm", sample_ddpm, "model", True, 1, "ancestral DDPM posterior sampling"),
        SamplerSpec("ddim", sample_ddim, "model", False, 1, "DDIM, deterministic at eta 0"),
        SamplerSpec("euler", sample_euler, "model", False, 1, "Euler on the probability-flow ODE"),
        SamplerSpec("euler-a", sample_euler_ancestral, "model", True, 1, "Euler ancestral"),
        # In flow time, as diffusers' FlowMatchHeunDiscreteScheduler: on the VE side t = 1 is
        # sigma = inf, and a trapezoid across the stand-in first step amplifies the denoiser's
        # error by about sigma_max / (2 sigma_next), drawing noise at 4-8 steps.
        SamplerSpec("heun", sample_heun, "flow", False, 2, "Heun, 2nd order (EDM's, on flow time)"),
        SamplerSpec("dpmpp-2m", sample_dpmpp_2m, "model", False, 1, "DPM-Solver++(2M)"),
        SamplerSpec("dpmpp-2m-karras", sample_dpmpp_2m, "karras", False, 1,
                    "DPM-Solver++(2M) on Karras sigmas"),
        SamplerSpec("flow-euler", sample_flow_euler, "flow", False, 1, "Euler on a rectified flow"),
    )
}


def get_sampler(name: str) -> SamplerSpec:
    spec = SAMPLERS.get(name)
    if spec is None:
        raise ValueError(f"sampler: unknown {name!r}; allowed: {', '.join(SAMPLERS)}")
    return spec
