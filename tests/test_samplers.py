"""Samplers and schedules against diffusers' schedulers.

Both sides run the same model from the same initial noise for the same number of steps. The
model is the exact (ideal) denoiser E[x0 | x] of an equal mixture of a few narrow Gaussians, wrapped as
an eps- or v-prediction net conditioned on a timestep the way a U-Net is, so every difference
comes from the schedule or the update rule. Stochastic samplers draw their noise from
generators seeded alike on both sides.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from lanterna.engines import samplers, schedules
from lanterna.engines.base import GenerationCancelled

TOL = 1e-4
SHAPE = (2, 3, 4, 4)
SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
CENTRES = torch.rand((5, *SHAPE[1:]), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
SPREAD = 0.3  # std of each mixture component; > 0 so samples do not snap onto the centres


def ideal_x0(x: torch.Tensor, scale: torch.Tensor | float, std: torch.Tensor | float) -> torch.Tensor:
    """E[x0 | x] for x = scale * x0 + std * eps, x0 ~ an equal mixture of N(centre_k, SPREAD^2 I).

    Given component k, x ~ N(scale * centre_k, (scale^2 SPREAD^2 + std^2) I) and
    E[x0 | x, k] = centre_k + scale SPREAD^2 / var * (x - scale * centre_k).
    """
    b = x.shape[0]
    scale = torch.as_tensor(scale, dtype=x.dtype).reshape(-1, 1).expand(b, 1)
    std = torch.as_tensor(std, dtype=x.dtype).reshape(-1, 1).expand(b, 1)
    var = scale**2 * SPREAD**2 + std**2  # b x 1
    centres = CENTRES.reshape(len(CENTRES), -1).to(x.dtype)
    offset = x.reshape(b, 1, -1) - scale[:, :, None] * centres[None]  # b x k x d
    weights = torch.softmax(-(offset**2).sum(-1) / (2 * var), dim=1)  # b x k
    per_component = centres[None] + (scale * SPREAD**2 / var)[:, :, None] * offset
    return (weights[:, :, None] * per_component).sum(1).reshape(x.shape)


def ve_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return ideal_x0(x, 1.0, sigma)


def flow_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ideal_x0(x, 1 - torch.as_tensor(t, dtype=x.dtype), t)


class DiscreteModel:
    """An exact eps- or v-prediction net over a discrete VP schedule, called as model(x_t, t)."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str = "epsilon") -> None:
        a = alphas_cumprod.double().numpy()
        self.sigmas = np.sqrt((1 - a) / a)
        self.prediction = prediction

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).double().reshape(-1).expand(x.shape[0])
        sigma = torch.from_numpy(np.interp(t.numpy(), np.arange(len(self.sigmas)), self.sigmas))
        alpha = (1 / (1 + sigma**2).sqrt()).view(-1, 1, 1, 1)
        std = sigma.view(-1, 1, 1, 1) * alpha
        x0 = ideal_x0(x, alpha, std)
        eps = (x - alpha * x0) / std
        return alpha * eps - std * x0 if self.prediction == "v_prediction" else eps


def noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def generators(seed: int = 100) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(SHAPE[0])]


def run_diffusers(scheduler, model, x: torch.Tensor, **step_kwargs) -> torch.Tensor:
    """The loop of diffusers' pipelines; flow schedulers have no input scaling."""
    scale_input = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    for t in scheduler.timesteps:
        out = model(scale_input(x, t), t)
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# -- schedules -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, betas", [("linear", (0.0001, 0.02)), ("scaled_linear", (0.00085, 0.012)),
                                         ("squaredcos_cap_v2", (0.0001, 0.02))])
def test_alphas_cumprod_equal_diffusers(kind: str, betas: tuple[float, float]) -> None:
    ours = schedules.VPSchedule.from_betas(kind, 1000, *betas).alphas_cumprod
    theirs = DDPMScheduler(beta_schedule=kind, beta_start=betas[0], beta_end=betas[1]).alphas_cumprod
    assert torch.equal(ours.float(), theirs)


@pytest.mark.parametrize("spacing, offset, karras", [("linspace", 0, False), ("leading", 1, False),
                                                     ("trailing", 0, False), ("linspace", 0, True)])
def test_euler_sigmas_and_timesteps_equal_diffusers(spacing: str, offset: int, karras: bool) -> None:
    theirs = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=offset,
                                    use_karras_sigmas=karras)
    theirs.set_timesteps(13)
    schedule = schedules.VPSchedule.from_betas("scaled_linear", 1000, 0.00085, 0.012)
    if karras:
        sigmas = schedule.karras_sigmas(13)
        timesteps = schedule.sigma_to_timestep(sigmas[:-1], "log")
    else:
        timesteps = schedule.timesteps(13, spacing, offset)
        sigmas = schedule.sigmas_at(timesteps)
    assert torch.allclose(sigmas, theirs.sigmas.double(), rtol=1e-6, atol=0)
    assert torch.allclose(timesteps, theirs.timesteps.double(), rtol=0, atol=1e-3)
    assert sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_spacings_give_n_decreasing_timesteps(spacing: str) -> None:
    for n in (1, 7, 61, 1000):  # np.arange alone gives 62 trailing steps for 61
        t = schedules.spaced_timesteps(1000, n, spacing)
        assert len(t) == n and (t[1:] < t[:-1]).all() and 0 <= t.min() and t.max() <= 999


def test_sigma_timestep_round_trip() -> None:
    schedule = schedules.VPSchedule.from_betas("scaled_linear", 1000, 0.00085, 0.012)
    t = torch.tensor([0.0, 3.25, 500.5, 998.9, 999.0], dtype=torch.float64)
    for interpolation in ("linear", "log"):
        sigma = schedule.timestep_to_sigma(t, interpolation)
        assert torch.allclose(schedule.sigma_to_timestep(sigma, interpolation), t, atol=1e-8)


def test_flow_sigma_conversions() -> None:
    t = schedules.flow_sigmas(8, shift=3.0)
    assert t[0] == 1 and t[-1] == 0 and (t[1:] < t[:-1]).all()
    sigma = schedules.flow_time_to_sigma(t, sigma_max=1e3)
    assert sigma[0] == 1e3 and torch.isfinite(sigma).all()
    assert torch.allclose(schedules.sigma_to_flow_time(sigma[1:]), t[1:], atol=1e-12)
    assert schedules.sigma_to_flow_time(torch.tensor(float("inf"))) == 1


def test_flow_model_under_ve_euler_equals_flow_euler() -> None:
    """Euler is invariant under x_ve = x_t / (1 - t), sigma = t / (1 - t): both routes agree."""
    t = schedules.flow_sigmas(10, shift=2.0)[2:]  # start below t = 1, where sigma is finite
    x_t = (1 - t[0]) * CENTRES[:2] + t[0] * noise()
    flow = samplers.sample_flow_euler(flow_denoiser, x_t, t)
    ve = samplers.sample_euler(schedules.flow_to_ve_denoiser(flow_denoiser), x_t / (1 - t[0]),
                               schedules.flow_time_to_sigma(t))
    assert max_diff(flow, ve) < 1e-10


# -- samplers vs diffusers ------------------------------------------------------------------------

@pytest.mark.parametrize("eta, prediction", [(0.0, "epsilon"), (0.0, "v_prediction"), (0.6, "epsilon")])
def test_ddim_matches_diffusers(eta: float, prediction: str) -> None:
    theirs = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                           timestep_spacing="leading", prediction_type=prediction)
    theirs.set_timesteps(15)
    schedule = schedules.VPSchedule.from_betas("scaled_linear", 1000, 0.00085, 0.012)
    sigmas = schedule.sigmas_for(15, "leading", steps_offset=1)
    model = DiscreteModel(theirs.alphas_cumprod, prediction)
    reference = run_diffusers(theirs, model, noise(), eta=eta,
                              generator=generators() if eta > 0 else None)
    x = noise() * (1 + sigmas[0] ** 2).sqrt()
    ours = samplers.sample_ddim(schedules.vp_to_ve_denoiser(model, schedule, prediction), x, sigmas,
                                eta=eta, noise_sampler=samplers.default_noise_sampler(x, generators()))
    assert max_diff(ours, reference) <= TOL


def test_ddpm_matches_diffusers() -> None:
    theirs = DDPMScheduler(beta_schedule="linear", clip_sample=False, timestep_spacing="leading")
    theirs.set_timesteps(20)
    schedule = schedules.VPSchedule.from_betas("linear", 1000)
    sigmas = schedule.sigmas_for(20, "leading")
    model = DiscreteModel(theirs.alphas_cumprod)
    reference = run_diffusers(theirs, model, noise(), generator=generators())
    x = noise() * (1 + sigmas[0] ** 2).sqrt()
    ours = samplers.sample_ddpm(schedules.vp_to_ve_denoiser(model, schedule), x, sigmas,
                                noise_sampler=samplers.default_noise_sampler(x, generators()))
    assert max_diff(ours, reference) <= TOL
    deterministic = samplers.sample_ddim(schedules.vp_to_ve_denoiser(model, schedule), x, sigmas)
    assert max_diff(ours, deterministic) > 10 * TOL  # the noise draws matter


@pytest.mark.parametrize("spacing, offset, karras", [("leading", 1, False), ("linspace", 0, False),
                                                     ("trailing", 0, False), ("linspace", 0, True)])
def test_euler_matches_diffusers(spacing: str, offset: int, karras: bool) -> None:
    theirs = EulerDiscreteScheduler(**SD_BETAS, timestep_spacing=spacing, steps_offset=offset,
                                    use_karras_sigmas=karras)
    theirs.set_timesteps(13)
    schedule = schedules.VPSchedule.from_betas("scaled_linear", 1000, 0.00085, 0.012)
    sigmas = schedule.karras_sigmas(13) if karras else schedule.sigmas_for(13, spacing, offset)
    model = DiscreteModel(theirs.alphas_cumprod)
    x = noise() * sigmas[0]
    reference = run_diffusers(theirs, model, x.clone())
    # diffusers gives the model the linspace timesteps whose sigmas it interpolated linearly
    denoise = schedules.vp_to_ve_denoiser(model, schedule, interpolation="log" if karras else "linear")
    assert max_diff(samplers.sample_euler(denoise, x, sigmas), reference) <= TOL


def test_euler_ancestral_matches_diffusers() -> None:
    theirs = EulerAncestralDiscreteScheduler(**SD_BETAS, timestep_spacing="linspace")
    theirs.set_timesteps(13)
    schedule = schedules.VPSchedule.from_betas("scaled_linear", 1000, 0.00085, 0.012)
    sigmas = schedule.sigmas_for(13, "linspace")
    model = DiscreteModel(theirs.alphas_cumprod)
    x = noise() * sigmas[0]
    reference = run_diffusers(theirs, model, x.clone(), generator=generators())
    ours = samplers.sample_euler_ancestral(
        schedules.vp_to_ve_denoiser(model, schedule, interpolation="linear"), x, sigmas,
        noise_sampler=samplers.default_noise_sampler(x, generators()))
    assert max_diff(ours, reference) <= TOL


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_heun_matches_diffusers(spacing: str) -> None:
    theirs = HeunDiscreteScheduler(**SD_BETAS, timestep_spacing=spacing)
    theirs.set_timesteps(10)
    schedule = schedules.VPSchedule.from_betas("scaled_linear", 1000, 0.00085, 0.012)
    sigmas = schedule.sigmas_for(10, spacing)
    model = DiscreteModel(theirs.alphas_cumprod)
    x = noise() * sigmas[0]
    reference = run_diffusers(theirs, model, x.clone())
    ours = samplers.sample_heun(schedules.vp_to_ve_denoiser(model, schedule, interpolation="linear"),
                                x, sigmas)
    assert max_diff(ours, reference) <= TOL


@pytest.mark.parametrize("steps", [8, 16])
@pytest.mark.parametrize("karras", [False, True])
def test_dpmpp_2m_matches_diffusers(karras: bool, steps: int) -> None:
    theirs = DPMSolverMultistepScheduler(**SD_BETAS, algorithm_type="dpmsolver++", solver_order=2,
                                         use_karras_sigmas=karras)
    theirs.set_timesteps(steps)
    schedule = schedules.VPSchedule.from_betas("scaled_linear", 1000, 0.00085, 0.012)
    if karras:
        sigmas = schedule.karras_sigmas(steps)
    else:  # DPM-Solver spaces steps + 1 points and drops t = 0
        sigmas = schedule.sigmas_at(schedules.spaced_timesteps(1000, steps + 1, "linspace", integer=True)[:-1])
    assert torch.allclose(sigmas, theirs.sigmas.double(), rtol=1e-6, atol=0)
    model = DiscreteModel(theirs.alphas_cumprod)
    reference = run_diffusers(theirs, model, noise())
    # with Karras sigmas diffusers feeds the model the nearest integer timestep
    denoise = schedules.vp_to_ve_denoiser(model, schedule, round_timesteps=karras)
    ours = samplers.sample_dpmpp_2m(denoise, noise() * (1 + sigmas[0] ** 2).sqrt(), sigmas)
    assert max_diff(ours, reference) <= TOL


@pytest.mark.parametrize("shift, explicit_sigmas", [(1.0, False), (3.0, True)])
def test_flow_euler_matches_diffusers(shift: float, explicit_sigmas: bool) -> None:
    steps = 12
    theirs = FlowMatchEulerDiscreteScheduler(shift=shift)
    if explicit_sigmas:
        theirs.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
        sigmas = schedules.flow_sigmas(steps, shift)
    else:
        theirs.set_timesteps(steps)
        sigmas = schedules.flow_sigmas(steps, shift, t_last=1 / 1000)
    assert torch.allclose(sigmas, theirs.sigmas.double(), rtol=1e-6, atol=0)

    def velocity(x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep.double() / 1000
        return (x - flow_denoiser(x, t)) / t

    reference = run_diffusers(theirs, velocity, noise())
    ours = samplers.sample_flow_euler(flow_denoiser, noise(), sigmas)
    assert max_diff(ours, reference) <= TOL


# -- contract: callback, cancellation, errors, batches ---------------------------------------------

def start(name: str, steps: int, seed: int = 0) -> tuple[samplers.Denoiser, torch.Tensor, torch.Tensor]:
    if samplers.get_sampler(name).schedule == "flow":
        return flow_denoiser, noise(seed), schedules.flow_sigmas(steps, shift=2.0)
    sigmas = schedules.karras_sigmas(steps, 0.02, 20.0)
    return ve_denoiser, noise(seed) * sigmas[0], sigmas


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_callback_once_per_step(name: str) -> None:
    spec = samplers.get_sampler(name)
    denoise, x, sigmas = start(name, 5)
    evaluations, seen = [], []

    def counting(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        evaluations.append(float(sigma[0]))
        return denoise(x, sigma)

    def callback(i: int, total: int, x_i: torch.Tensor, x0: torch.Tensor) -> None:
        assert x_i.shape == x0.shape == x.shape
        seen.append((i, total, x_i))

    out = spec.fn(counting, x, sigmas, callback=callback,
                  noise_sampler=samplers.default_noise_sampler(x, torch.Generator().manual_seed(1)))
    assert [(i, total) for i, total, _ in seen] == [(i, 5) for i in range(1, 6)]
    assert torch.equal(seen[-1][2], out)
    assert len(evaluations) == spec.evaluations(5)
    assert evaluations[0] == float(sigmas[0]) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(samplers.SAMPLERS))
def test_cancelled_stops_before_the_next_step(name: str) -> None:
    denoise, x, sigmas = start(name, 6)
    done = []
    with pytest.raises(GenerationCancelled):
        samplers.get_sampler(name).fn(denoise, x, sigmas, callback=lambda i, *_: done.append(i),
                                      cancelled=lambda: len(done) >= 2)
    assert done == [1, 2]


def test_unknown_sampler_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="sampler") as info:
        samplers.get_sampler("lms")
    for name in ("ddpm", "ddim", "euler", "euler-a", "heun", "dpmpp-2m", "dpmpp-2m-karras", "flow-euler"):
        assert name in str(info.value)


def test_registry_specs() -> None:
    spec = samplers.SAMPLERS
    assert spec["dpmpp-2m-karras"].schedule == "karras" and spec["flow-euler"].schedule == "flow"
    assert {n for n, s in spec.items() if s.stochastic} == {"ddpm", "euler-a"}
    assert spec["heun"].evals_per_step == 2 and spec["heun"].evaluations(10) == 19


@pytest.mark.parametrize("make", [
    lambda: schedules.karras_sigmas(0, 0.02, 80.0),
    lambda: schedules.flow_sigmas(0),
    lambda: schedules.VPSchedule.from_betas("linear").sigmas_for(0),
    lambda: schedules.spaced_timesteps(1000, -3),
])
def test_steps_below_one_rejected(make) -> None:
    with pytest.raises(ValueError, match=r"n: .*>= 1"):
        make()


@pytest.mark.parametrize("sigmas, message", [
    (torch.tensor([0.0]), r"sigmas: needs at least 2 values \(steps >= 1\)"),
    (torch.tensor([3.0, float("nan"), 0.0]), "sigmas: must all be finite"),
    (torch.tensor([[3.0, 0.0]]), "sigmas: must be a 1-D tensor"),
    (torch.tensor([3.0, 1.0]), "sigmas: must end in 0"),
    (torch.tensor([1.0, 3.0, 0.0]), "sigmas: must be strictly decreasing"),
])
def test_bad_sigmas_rejected(sigmas: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        samplers.sample_euler(ve_denoiser, noise(), sigmas)


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ValueError, match=r"sigmas: flow times must lie in \[0, 1"):
        samplers.sample_flow_euler(flow_denoiser, noise(), torch.tensor([2.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="eta: must be a finite number >= 0"):
        samplers.sample_ddim(ve_denoiser, noise(), schedules.karras_sigmas(3, 0.1, 10.0), eta=-1.0)
    with pytest.raises(ValueError, match="generator: one generator per batch row"):
        samplers.default_noise_sampler(noise(), [torch.Generator()])
    with pytest.raises(ValueError, match="denoise: returned shape"):
        samplers.sample_euler(lambda x, s: x[:1], noise(), schedules.karras_sigmas(2, 0.1, 10.0))
    with pytest.raises(ValueError, match="kind: unknown beta schedule"):
        schedules.VPSchedule.from_betas("sigmoid")
    with pytest.raises(ValueError, match="spacing: unknown"):
        schedules.spaced_timesteps(1000, 10, "uniform")


@pytest.mark.parametrize("name, options", [("ddpm", {}), ("euler-a", {}), ("ddim", {"eta": 0.7})])
def test_per_row_generators_make_images_independent_of_the_batch(name: str, options: dict) -> None:
    fn = samplers.get_sampler(name).fn
    sigmas = schedules.karras_sigmas(6, 0.02, 20.0)

    def generate(seeds: list[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        x = torch.stack([torch.randn(SHAPE[1:], generator=g, dtype=torch.float64) for g in gens])
        return fn(ve_denoiser, x * sigmas[0], sigmas,
                  noise_sampler=samplers.default_noise_sampler(x, gens), **options)

    seeds = [3, 5, 7]
    batch = generate(seeds)
    for i, seed in enumerate(seeds):
        assert max_diff(batch[i], generate([seed])[0]) < 1e-12
    # the per-step draws matter: the same start with other noise draws ends elsewhere
    x = noise(0) * sigmas[0]
    a = fn(ve_denoiser, x, sigmas, noise_sampler=samplers.default_noise_sampler(x, generators(1)), **options)
    b = fn(ve_denoiser, x, sigmas, noise_sampler=samplers.default_noise_sampler(x, generators(50)), **options)
    assert max_diff(a, b) > 1e-3
