"""Noise schedules: the sigma sequences samplers walk down, and the changes of variables between
the three ways a diffusion model can describe its noisy states.

- VE ("k-diffusion") space, where every sampler in `samplers.py` but flow-euler works:
  x = x0 + sigma * eps, sigma in [0, inf).
- Discrete VP (DDPM) space: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for t = 0 .. T-1.
  Then sigma_t = sqrt((1 - abar_t) / abar_t) and x_ve = x_t / sqrt(abar_t) = x_t * sqrt(1 + sigma^2).
- Rectified flow: x_t = (1 - t) x0 + t eps, t in [0, 1]. Dividing by (1 - t) gives
  x_ve = x_t / (1 - t) with sigma = t / (1 - t); back again t = sigma / (1 + sigma),
  x_t = x_ve / (1 + sigma).

So a model of any of the three kinds runs under the VE samplers once wrapped as a VE denoiser
`denoise(x_ve, sigma) -> x0_hat`: `vp_to_ve_denoiser` for discrete-time models, `flow_to_ve_denoiser`
for flow models. Sigma schedules are returned in float64, descending and ending in 0; samplers
cast them to the dtype of their state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
TimestepSpacing = Literal["linspace", "leading", "trailing"]
Interpolation = Literal["linear", "log"]
Prediction = Literal["epsilon", "v_prediction", "sample"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
DEFAULT_FLOW_SIGMA_MAX = 500.0  # stands for t = 1; x0's share of the starting state is then 1/501


def check_steps(n: object, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name}: the number of steps must be an integer >= 1, got {n!r}")
    return int(n)


def check_positive(value: float, name: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return float(value)


# -- discrete VP schedules ---------------------------------------------------------------------

def cosine_alpha_bar(t: float) -> float:
    """abar(t) of the improved-DDPM cosine schedule (Nichol & Dhariwal 2021, s = 0.008)."""
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def vp_betas(kind: BetaSchedule = "linear", num_train_timesteps: int = 1000,
             beta_start: float = 0.0001, beta_end: float = 0.02) -> torch.Tensor:
    """Per-step betas, in float32 as diffusers computes them, so a diffusers-trained model's
    sigmas come back bit for bit. Stable Diffusion uses scaled_linear with 0.00085 .. 0.012."""
    steps = check_steps(num_train_timesteps, "num_train_timesteps")
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float32) ** 2
    if kind == "squaredcos_cap_v2":
        # betas from the ratio of consecutive abar values, capped at 0.999 so abar never reaches 0
        betas = [min(1 - cosine_alpha_bar((i + 1) / steps) / cosine_alpha_bar(i / steps), 0.999)
                 for i in range(steps)]
        return torch.tensor(betas, dtype=torch.float32)
    raise ValueError(f"kind: unknown beta schedule {kind!r}; allowed: {', '.join(BETA_SCHEDULES)}")


def spaced_timesteps(num_train_timesteps: int, n: int, spacing: TimestepSpacing = "leading",
                     steps_offset: int = 0, integer: bool = False) -> torch.Tensor:
    """The n timesteps (descending, float64) that diffusers' schedulers pick for n steps.

    Spacings as in Lin et al. 2024 ("Common diffusion noise schedules are flawed"), Table 2:
    - linspace: n points evenly from T-1 to 0, fractional (Euler, Heun); `integer=True` rounds
      them as DDIM and DDPM do.
    - leading: 0, T//n, 2 T//n, ... reversed, plus steps_offset (Stable Diffusion uses 1).
    - trailing: T-1, T-1-T/n, ... rounded; reaches the last trained step exactly.
    DPMSolverMultistepScheduler spaces n + 1 points and drops the last for linspace and leading:
    `spaced_timesteps(T, n + 1, spacing, integer=True)[:-1]`.
    """
    total = check_steps(num_train_timesteps, "num_train_timesteps")
    n = check_steps(n)
    if n > total:
        raise ValueError(f"n: at most num_train_timesteps ({total}) steps, got {n}")
    if spacing == "linspace":
        t = np.linspace(0, total - 1, n)[::-1]
        if integer:
            t = t.round()
    elif spacing == "leading":
        t = (np.arange(0, n) * (total // n)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        # diffusers' own arange; for some n (61, 103, ...) rounding makes it one longer
        t = np.round(np.arange(total, 0, -total / n)[:n]) - 1
    else:
        raise ValueError(f"spacing: unknown {spacing!r}; allowed: {', '.join(TIMESTEP_SPACINGS)}")
    return torch.from_numpy(np.array(t, dtype=np.float64))  # a copy: reversed views have negative strides


def interpolate(t: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear table[t] for fractional t in [0, len - 1] (np.interp over an arange)."""
    t = t.clamp(0, len(table) - 1)
    low = t.floor().long().clamp(max=len(table) - 2)
    w = t - low
    return (1 - w) * table[low] + w * table[low + 1]


def invert_interpolation(values: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Fractional index where an ascending `table` takes `values` (clamped to the table's range)."""
    low = (torch.searchsorted(table, values, right=True) - 1).clamp(0, len(table) - 2)
    w = (values - table[low]) / (table[low + 1] - table[low])
    return low + w.clamp(0, 1)


@dataclass(frozen=True, eq=False)
class VPSchedule:
    """A discrete variance-preserving schedule, indexed by trained timestep t = 0 .. T-1."""

    alphas_cumprod: torch.Tensor  # (T,), float64, decreasing in t

    @classmethod
    def from_betas(cls, kind: BetaSchedule = "linear", num_train_timesteps: int = 1000,
                   beta_start: float = 0.0001, beta_end: float = 0.02) -> "VPSchedule":
        betas = vp_betas(kind, num_train_timesteps, beta_start, beta_end)
        return cls(torch.cumprod(1.0 - betas, dim=0).double())  # float32 product, as diffusers

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sigmas(self) -> torch.Tensor:
        """The VE sigma of every trained timestep, ascending in t."""
        a = self.alphas_cumprod
        return ((1 - a) / a).sqrt()

    def timestep_to_sigma(self, t: torch.Tensor, interpolation: Interpolation = "linear") -> torch.Tensor:
        """Sigma at (fractional) timesteps. diffusers' Euler, Heun and DPM-Solver interpolate
        sigma linearly; k-diffusion's discrete wrappers interpolate log sigma."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if interpolation == "linear":
            return interpolate(t, self.sigmas)
        if interpolation == "log":
            return interpolate(t, self.sigmas.log()).exp()
        raise ValueError(f"interpolation: unknown {interpolation!r}; allowed: linear, log")

    def sigma_to_timestep(self, sigma: torch.Tensor, interpolation: Interpolation = "log") -> torch.Tensor:
        """The (fractional) timestep of a sigma, the inverse of `timestep_to_sigma`. "log" is what
        diffusers does for Karras sigmas; "linear" gives back exactly the fractional linspace
        timesteps of Euler and Heun, whose sigmas were interpolated linearly."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if interpolation == "linear":
            return invert_interpolation(sigma, self.sigmas)
        if interpolation == "log":
            return invert_interpolation(sigma.clamp_min(1e-10).log(), self.sigmas.log())
        raise ValueError(f"interpolation: unknown {interpolation!r}; allowed: linear, log")

    def timesteps(self, n: int, spacing: TimestepSpacing = "leading", steps_offset: int = 0,
                  integer: bool = False) -> torch.Tensor:
        return spaced_timesteps(self.num_train_timesteps, n, spacing, steps_offset, integer)

    def sigmas_at(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The sampler's sigmas for these timesteps, with the final 0 appended."""
        return torch.cat([self.timestep_to_sigma(timesteps), timesteps.new_zeros(1, dtype=torch.float64)])

    def sigmas_for(self, n: int, spacing: TimestepSpacing = "leading", steps_offset: int = 0,
                   integer: bool = False) -> torch.Tensor:
        """n + 1 sigmas (descending, final 0) for an n-step run, as diffusers builds them."""
        return self.sigmas_at(self.timesteps(n, spacing, steps_offset, integer))

    def karras_sigmas(self, n: int, rho: float = 7.0) -> torch.Tensor:
        """Karras sigmas spanning the trained range (diffusers' use_karras_sigmas)."""
        s = self.sigmas
        return karras_sigmas(n, float(s.min()), float(s.max()), rho)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """n + 1 sigmas of Karras et al. 2022 (EDM), eq. 5: evenly spaced in sigma^(1/rho), then 0."""
    n = check_steps(n)
    sigma_min = check_positive(sigma_min, "sigma_min")
    sigma_max = check_positive(sigma_max, "sigma_max")
    rho = check_positive(rho, "rho")
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min: must be <= sigma_max ({sigma_max}), got {sigma_min}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


# -- rectified flow ----------------------------------------------------------------------------

def shift_flow_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift (Esser et al. 2024, eq. 23): shift > 1 spends more steps at high noise."""
    return shift * t / (1 + (shift - 1) * t)


def flow_sigmas(n: int, shift: float = 1.0, t_last: float | None = None) -> torch.Tensor:
    """n + 1 flow times from 1 down to 0 (descending, final 0), shifted by `shift`.

    Unshifted, the n nonzero times are linspace(1, t_last, n). The default t_last = 1/n makes
    the final 0 continue the even spacing (Flux's pipelines pass exactly these sigmas).
    diffusers' FlowMatchEulerDiscreteScheduler left to itself uses t_last = the shifted
    1 / num_train_timesteps.
    """
    n = check_steps(n)
    shift = check_positive(shift, "shift")
    t_last = 1.0 / n if t_last is None else t_last
    if not (isinstance(t_last, (int, float)) and 0 < t_last <= 1):
        raise ValueError(f"t_last: must be a number in (0, 1], got {t_last!r}")
    t = torch.linspace(1.0, t_last, n, dtype=torch.float64)
    return torch.cat([shift_flow_time(t, shift), t.new_zeros(1)])


def flow_time_to_sigma(t: torch.Tensor, sigma_max: float = DEFAULT_FLOW_SIGMA_MAX) -> torch.Tensor:
    """VE sigma of flow time t: t / (1 - t). t = 1 is infinite sigma, so sigmas are clamped to
    sigma_max; pick it above the second sigma of the schedule to keep the schedule decreasing."""
    sigma_max = check_positive(sigma_max, "sigma_max")
    t = torch.as_tensor(t, dtype=torch.float64)
    return (t / (1 - t).clamp_min(1 / (1 + sigma_max))).clamp_max(sigma_max)


def sigma_to_flow_time(sigma: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma)
    return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))


# -- denoiser wrappers -------------------------------------------------------------------------

def per_row(scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) tensor shaped to broadcast over x's non-batch axes."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    return scale if scale.dim() == 0 else scale.view(-1, *([1] * (x.dim() - 1)))


def flow_to_ve_denoiser(flow_denoise: Denoiser) -> Denoiser:
    """Run a flow model under the VE samplers.

    `flow_denoise(x_t, t) -> x0_hat` with x_t = (1 - t) x0 + t eps becomes
    `denoise(x_ve, sigma) -> x0_hat`: t = sigma / (1 + sigma), x_t = x_ve / (1 + sigma). The
    x0 estimate is the same in both spaces. Start the VE sampler from x = noise * sigmas[0], with
    sigmas[0] = flow_time_to_sigma(1) standing in for pure noise.
    """

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return flow_denoise(x / per_row(1 + sigma, x), sigma / (1 + sigma))

    return denoise


def vp_to_ve_denoiser(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      schedule: VPSchedule, prediction: Prediction = "epsilon",
                      interpolation: Interpolation = "log", round_timesteps: bool = False) -> Denoiser:
    """Run a discrete-time model `model(x_t, t)` (t a float tensor of timesteps) under the VE samplers.

    The model sees x_t = x_ve / sqrt(1 + sigma^2) at the timestep of sigma; its output (eps, v or
    x0, as `prediction` says) is turned into x0_hat. `interpolation` picks how a sigma between
    trained timesteps maps to t (see `VPSchedule.sigma_to_timestep`); diffusers'
    DPMSolverMultistep with Karras sigmas also rounds t to an integer (`round_timesteps`) while
    stepping with the exact sigma.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction: unknown {prediction!r}; allowed: {', '.join(PREDICTIONS)}")

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        t = schedule.sigma_to_timestep(sigma.detach().cpu().double(), interpolation)
        if round_timesteps:
            t = t.round()
        t = t.reshape(-1).expand(x.shape[0]).to(device=x.device, dtype=x.dtype)
        alpha = per_row(1 / (1 + sigma**2).sqrt(), x)  # sqrt(abar)
        out = model(x * alpha, t)
        if prediction == "epsilon":
            return x - per_row(sigma, x) * out
        if prediction == "v_prediction":
            # VP: x0 = sqrt(abar) x_t - sqrt(1 - abar) v, with x_t = alpha x and sqrt(1 - abar) = sigma alpha
            return alpha**2 * x - per_row(sigma, x) * alpha * out
        return out

    return denoise
