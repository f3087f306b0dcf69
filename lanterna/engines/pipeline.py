"""Latent diffusion: text -> classifier-free-guided denoising -> VAE decode; img2img, inpaint, video.

The in-repo denoisers are rectified-flow models (x_t = (1 - t) x0 + t eps). Every sampler runs
on them: flow samplers directly, the k-diffusion-style ones through the change of variables
x_ve = x_t / (1 - t), sigma = t / (1 - t), under which x_ve = x0 + sigma eps.

A prompt naming several objects can also be guided, while the noise is high, by each object's own
caption within that object's box of the canvas (`Composition`), which binds each colour to its own
shape and puts each object on its side. A grounded denoiser (`Grounding`) reads a layout planned
from the prompt beside the noisy latent instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lanterna.engines import samplers, schedules
from lanterna.engines.base import CancelFlag, StepCallback
from lanterna.engines.nets.text import ShapesCLIP, ShapesTokenizer
from lanterna.engines.nets.vae import AutoencoderKL

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

KARRAS_SIGMA_RANGE = (0.02, 80.0)  # EDM's sigma_max; sigma_min near the last flow step


@dataclass
class TextCondition:
    context: torch.Tensor  # B x L x D
    mask: torch.Tensor  # B x L bool
    pooled: torch.Tensor  # B x D
    unknown_words: list[list[str]]
    truncated: list[bool]
    # A grounded denoiser's layout map, read beside the latent: B x C x (F x) h x w.
    layout: torch.Tensor | None = None

    def rows(self, start: int, stop: int | None = None) -> "TextCondition":
        return TextCondition(self.context[start:stop], self.mask[start:stop], self.pooled[start:stop],
                             self.unknown_words[start:stop], self.truncated[start:stop],
                             None if self.layout is None else self.layout[start:stop])

    def repeat(self, n: int) -> "TextCondition":
        return TextCondition(
            self.context.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0),
            self.pooled.repeat_interleave(n, 0), self.unknown_words * n, self.truncated * n,
            None if self.layout is None else self.layout.repeat_interleave(n, 0),
        )

    def with_layout(self, layout: torch.Tensor) -> "TextCondition":
        return TextCondition(self.context, self.mask, self.pooled, self.unknown_words, self.truncated, layout)


@dataclass(frozen=True)
class Composition:
    """Regional composable guidance over the prompt's objects, at high noise.

    Composable diffusion (Liu et al. 2022, eq. 10) adds each object caption's direction (its
    conditional output - the unconditional one) to the whole prompt's guided output; here each
    direction counts only inside its object's box, as in region-based MultiDiffusion (Bar-Tal et
    al. 2023), and only while the flow time is at least `from_t`: the layout and which colour
    goes with which shape are settled at high noise, and after that the whole prompt alone
    finishes the shapes.
    """

    weight: float
    from_t: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"composition weight: must be a finite number >= 0, got {self.weight!r}")
        if not 0 <= self.from_t <= 1:
            raise ValueError(f"composition from_t: must be a flow time in [0, 1], got {self.from_t!r}")


def composition_of(card: dict) -> Composition | None:
    """A model card's `composition` ({"weight", "from_t"}), or None where it has none."""
    spec = card.get("composition")
    return None if spec is None else Composition(float(spec["weight"]), float(spec["from_t"]))


class PromptPart(Protocol):
    caption: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the canvas


PromptSplitter = Callable[[str, int], Sequence[PromptPart]]  # (prompt, seed) -> one part per object
# (prompt, seed, canvas px, latent cells, frames or None) -> C x (F x) cells x cells, None where none.
LayoutPlanner = Callable[[str, int, int, int, "int | None"], "np.ndarray | None"]


@dataclass(frozen=True)
class Grounding:
    """A denoiser that reads a layout map beside the noisy latent (its first `channels` input
    channels after the latent's), planned from the prompt and the seed by `plan`.

    A prompt the planner has no layout for, and every edit (whose layout is the input image's),
    gets the empty map, which the net was trained to read as "no layout". `unconditional`: the
    guidance's unconditional pass reads the layout too, so guidance pushes toward the text alone,
    not toward the layout as well."""

    channels: int
    plan: LayoutPlanner
    unconditional: bool = True


@dataclass
class PartConditions:
    """The object captions' conditions, part-major (part j of image i at row j * B + i), and each
    part's box as a latent mask, K x B x 1 x (F x) h x w."""

    text: TextCondition
    masks: torch.Tensor


def box_mask(box: tuple[float, float, float, float], height: int, width: int) -> torch.Tensor:
    x0, y0, x1, y1 = box
    mask = torch.zeros(height, width)
    mask[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)] = 1.0
    return mask


@dataclass
class SamplingOptions:
    # No schedule shift here: it belongs to the model (the pipeline's `shift`, from its card).
    steps: int
    guidance: float
    sampler: str


def check_options(options: SamplingOptions) -> None:
    if not isinstance(options.steps, int) or options.steps < 1:
        raise ValueError(f"steps: must be an integer >= 1, got {options.steps!r}")
    if not math.isfinite(options.guidance) or options.guidance < 0:
        raise ValueError(f"guidance: must be a finite number >= 0, got {options.guidance!r}")
    samplers.get_sampler(options.sampler)  # raises with the allowed names


def pil_to_pixels(images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """PIL images -> B x 3 x H x W in [-1, 1]; every image must already have `size` (w, h)."""
    arrays = []
    for i, image in enumerate(images):
        if image.size != size:
            raise ValueError(f"image {i}: size {image.size} does not match the requested {size}")
        arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def pixels_to_pil(x: torch.Tensor) -> list[Image.Image]:
    x8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in x8]


def check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"the model produced NaN or Inf values in the {what}")


class LatentDiffusionPipeline:
    def __init__(self, denoiser: nn.Module, vae: AutoencoderKL, clip: ShapesCLIP,
                 tokenizer: ShapesTokenizer, prediction: str = "v", shift: float = 1.0,
                 max_tokens: int = 24, composition: Composition | None = None,
                 split_prompt: PromptSplitter | None = None, grounding: Grounding | None = None) -> None:
        if prediction not in ("v", "x0"):
            raise ValueError(f"prediction: must be 'v' or 'x0', got {prediction!r}")
        self.denoiser = denoiser.eval()
        self.vae = vae.eval()
        self.clip = clip.eval()
        self.tokenizer = tokenizer
        self.prediction = prediction
        self.shift = shift
        self.max_tokens = max_tokens
        # Composition needs both: the weights, and what splits a prompt into its objects.
        self.composition = composition
        self.split_prompt = split_prompt
        self.grounding = grounding

    # -- text ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> TextCondition:
        tokens = self.tokenizer.encode(prompts, max_length=self.max_tokens)
        context, pooled = self.clip.encode_text_tokens(tokens.ids, tokens.mask)
        return TextCondition(context.float(), tokens.mask, pooled.float(),
                             tokens.unknown_words, list(tokens.truncated))

    # -- denoisers ----------------------------------------------------------------------------
    def flow_denoiser(self, cond: TextCondition, uncond: TextCondition, guidance: float,
                      parts: PartConditions | None = None) -> Denoiser:
        """x0-estimate of a guided flow model: denoise(x_t, t) with t a scalar or (B,) tensor;
        `parts` guide as `self.composition` says."""
        use_cfg = guidance != 1.0
        compose = self.composition if parts is not None else None

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            t_b = torch.as_tensor(t, dtype=x.dtype).reshape(-1).expand(x.shape[0])
            active = compose is not None and bool((t_b >= compose.from_t).any())
            if active:
                out = self.composed_output(x, t_b, cond, uncond, parts, guidance, compose)
            elif use_cfg:
                out_u, out_c = self.outputs_under(x, t_b, [uncond, cond])
                out = out_u + guidance * (out_c - out_u)
            else:
                out = self.outputs_under(x, t_b, [cond])[0]
            if self.prediction == "x0":
                return out
            return x - t_b.view(-1, *([1] * (x.dim() - 1))) * out

        return denoise

    def outputs_under(self, x: torch.Tensor, t_b: torch.Tensor, conditions: list[TextCondition]) -> torch.Tensor:
        """The denoiser's output for the B latents under each B rows of the conditions, in one
        batch: K x B x ... for K x B rows of condition."""
        context = torch.cat([c.context for c in conditions])
        rows = context.shape[0] // x.shape[0]
        x_in = x.repeat(rows, *([1] * (x.dim() - 1)))
        if conditions[0].layout is not None:
            x_in = torch.cat([x_in, torch.cat([c.layout for c in conditions]).to(x_in)], dim=1)
        return self.denoiser(
            x_in, t_b.repeat(rows), context,
            torch.cat([c.mask for c in conditions]), torch.cat([c.pooled for c in conditions]),
        ).float().unflatten(0, (rows, x.shape[0]))

    def composed_output(self, x: torch.Tensor, t_b: torch.Tensor, cond: TextCondition,
                        uncond: TextCondition, parts: PartConditions, guidance: float,
                        compose: Composition) -> torch.Tensor:
        """Guided output plus each part's direction inside its box, in one batch of (2 + K) x B."""
        out = self.outputs_under(x, t_b, [uncond, cond, parts.text])
        out_u = out[0]
        weight = compose.weight * (t_b >= compose.from_t).to(out.dtype)
        directions = (parts.masks * (out[2:] - out_u)).sum(0)
        return out_u + guidance * (out[1] - out_u) + weight.view(-1, *([1] * (x.dim() - 1))) * directions

    # -- schedules ----------------------------------------------------------------------------
    def sigmas_for(self, sampler: str, steps: int) -> torch.Tensor:
        """The schedule in the sampler's own space: flow times, or VE sigmas."""
        spec = samplers.get_sampler(sampler)
        if spec.schedule == "flow":
            return schedules.flow_sigmas(steps, shift=self.shift).float()
        if spec.schedule == "karras":
            lo, hi = KARRAS_SIGMA_RANGE
            return schedules.karras_sigmas(steps, lo, hi)
        t = schedules.flow_sigmas(steps, shift=self.shift)
        # t = 1 has no finite VE sigma; stand it in well above the next one so the schedule
        # keeps decreasing however fine the grid and large the shift.
        second = float(schedules.flow_time_to_sigma(t[1:2], sigma_max=1e12)) if steps > 1 else 0.0
        return schedules.flow_time_to_sigma(t, sigma_max=max(500.0, 4.0 * second)).float()

    def run_sampler(self, denoise: Denoiser, noise: torch.Tensor, x_start: torch.Tensor | None,
                    sigmas: torch.Tensor, sampler: str, generators: list[torch.Generator],
                    on_step: StepCallback | None, cancelled: CancelFlag | None) -> torch.Tensor:
        """Denoise from `sigmas[0]`; `x_start` (clean latents) is mixed in for img2img."""
        spec = samplers.get_sampler(sampler)
        total = len(sigmas) - 1
        callback = None if on_step is None else (lambda i, n, *_: on_step(i, total))
        noise_sampler = samplers.default_noise_sampler(noise, generators)
        s0 = sigmas[0]
        if spec.schedule == "flow":
            x = noise * s0 if x_start is None else (1 - s0) * x_start + s0 * noise
            return spec.fn(denoise, x, sigmas, callback=callback, cancelled=cancelled,
                           noise_sampler=noise_sampler)
        x = noise * s0 if x_start is None else x_start + s0 * noise
        ve_denoise = schedules.flow_to_ve_denoiser(denoise)
        return spec.fn(ve_denoise, x, sigmas, callback=callback, cancelled=cancelled,
                       noise_sampler=noise_sampler)

    # -- generation ---------------------------------------------------------------------------
    def latent_shape(self, height: int, width: int, frames: int | None) -> tuple[int, ...]:
        f = self.vae.config.downsample
        c = self.vae.config.latent_channels
        if frames is None:
            return (c, height // f, width // f)
        return (c, frames, height // f, width // f)

    @staticmethod
    def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Generator]]:
        """One generator per image, so image i equals the same seed generated alone."""
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
        return noise, generators

    def conditions(self, prompt: str, negative_prompt: str, seeds: list[int], latent_shape: tuple[int, ...],
                   planned: bool = True) -> tuple[TextCondition, TextCondition, PartConditions | None]:
        """The prompt's and the negative prompt's conditions for each image, and when composing,
        the object captions' with each image's boxes; a grounded net's layout maps with them
        (planned from the prompt, or empty where `planned` is false)."""
        n = len(seeds)
        split = self.prompt_parts(prompt, seeds)
        captions = [part.caption for part in split[0]] if split else []
        encoded = self.encode_prompts([prompt, negative_prompt, *captions])
        cond, uncond = encoded.rows(0, 1).repeat(n), encoded.rows(1, 2).repeat(n)
        parts = None
        if captions:
            height, width = latent_shape[-2:]
            masks = torch.stack([torch.stack([box_mask(parts[j].box, height, width) for parts in split])
                                 for j in range(len(captions))])
            masks = masks.view(len(captions), n, *([1] * (len(latent_shape) - 2)), height, width)
            parts = PartConditions(encoded.rows(2).repeat(n), masks)
        if self.grounding is None:
            return cond, uncond, parts
        layout = self.layout_maps(prompt if planned else None, seeds, latent_shape)
        empty = torch.zeros_like(layout)
        if parts is not None:  # part-major, as the part conditions' rows are
            parts = PartConditions(parts.text.with_layout(layout.repeat(len(captions), *([1] * (layout.dim() - 1)))),
                                   parts.masks)
        return (cond.with_layout(layout), uncond.with_layout(layout if self.grounding.unconditional else empty),
                parts)

    def layout_maps(self, prompt: str | None, seeds: list[int], latent_shape: tuple[int, ...]) -> torch.Tensor:
        """B x C x (F x) h x w: each seed's planned layout, the empty map where there is none."""
        assert self.grounding is not None
        channels, frames = self.grounding.channels, (latent_shape[1] if len(latent_shape) == 4 else None)
        height, width = latent_shape[-2:]
        maps = torch.zeros(len(seeds), channels, *latent_shape[1:])
        if prompt is None or height != width:  # the planner lays out square canvases
            return maps
        for i, seed in enumerate(seeds):
            planned = self.grounding.plan(prompt, seed, height * self.vae.config.downsample, height, frames)
            if planned is not None:
                maps[i] = torch.from_numpy(planned)
        return maps

    def prompt_parts(self, prompt: str, seeds: list[int]) -> list[Sequence[PromptPart]]:
        """Each image's parts (the same captions, boxes by seed); none without composition, or
        for a prompt the splitter finds one object (or no grammar) in."""
        if self.composition is None or self.composition.weight == 0 or self.split_prompt is None:
            return []
        split = [self.split_prompt(prompt, seed) for seed in seeds]
        if not split[0]:
            return []
        if any([p.caption for p in parts] != [p.caption for p in split[0]] for parts in split):
            raise ValueError("the prompt splitter gave different object captions for different seeds")
        return split

    @torch.no_grad()
    def generate_latents(self, prompt: str, seeds: list[int], options: SamplingOptions,
                         height: int, width: int, frames: int | None = None,
                         negative_prompt: str = "", x_start: torch.Tensor | None = None,
                         strength: float = 1.0, blend: tuple[torch.Tensor, torch.Tensor] | None = None,
                         on_step: StepCallback | None = None,
                         cancelled: CancelFlag | None = None) -> torch.Tensor:
        check_options(options)
        shape = self.latent_shape(height, width, frames)
        # An edit's layout is its input image's: a planned one would fight it.
        planned = x_start is None and blend is None
        cond, uncond, parts = self.conditions(prompt, negative_prompt, seeds, shape, planned)
        noise, generators = self.initial_noise(seeds, shape)
        denoise = self.flow_denoiser(cond, uncond, options.guidance, parts)
        if blend is not None:
            denoise = keep_known_region(denoise, *blend)
        sigmas = self.sigmas_for(options.sampler, options.steps)
        if x_start is not None:
            sigmas = sigmas[len(sigmas) - 1 - round(options.steps * strength):]
            if len(sigmas) == 1:
                return x_start
        latents = self.run_sampler(denoise, noise, x_start, sigmas, options.sampler, generators,
                                   on_step, cancelled)
        check_finite(latents, "latents")
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.dim() == 5:
            b, c, f, h, w = latents.shape
            frames = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
            x = torch.cat([self.vae.decode_latents(chunk) for chunk in frames.split(32)])
            x = x.reshape(b, f, *x.shape[1:])
        else:
            x = self.vae.decode_latents(latents)
        check_finite(x, "decoded pixels")
        return x.clamp(-1, 1)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode_latents(pixels, deterministic=True)

    def text_to_image(self, prompt: str, seeds: list[int], options: SamplingOptions, height: int,
                      width: int, negative_prompt: str = "", on_step: StepCallback | None = None,
                      cancelled: CancelFlag | None = None) -> list[Image.Image]:
        latents = self.generate_latents(prompt, seeds, options, height, width, None,
                                        negative_prompt, on_step=on_step, cancelled=cancelled)
        return pixels_to_pil(self.decode(latents))

    def image_to_image(self, image: Image.Image, prompt: str, seeds: list[int],
                       options: SamplingOptions, strength: float, negative_prompt: str = "",
                       on_step: StepCallback | None = None,
                       cancelled: CancelFlag | None = None) -> list[Image.Image]:
        """SDEdit (Meng et al. 2022): noise the input to t = strength, then denoise from there."""
        check_strength(strength)
        width, height = image.size
        z0 = self.encode(pil_to_pixels([image], (width, height))).repeat(len(seeds), 1, 1, 1)
        latents = self.generate_latents(prompt, seeds, options, height, width, None,
                                        negative_prompt, x_start=z0, strength=strength,
                                        on_step=on_step, cancelled=cancelled)
        return pixels_to_pil(self.decode(latents))

    def inpaint(self, image: Image.Image, mask: Image.Image, prompt: str, seeds: list[int],
                options: SamplingOptions, strength: float = 1.0, negative_prompt: str = "",
                on_step: StepCallback | None = None,
                cancelled: CancelFlag | None = None) -> list[Image.Image]:
        """Repaint where the mask is white; elsewhere the input's pixels come back unchanged."""
        check_strength(strength)
        if mask.size != image.size:
            raise ValueError(f"mask: size {mask.size} must equal the image's size {image.size}")
        width, height = image.size
        pixels = pil_to_pixels([image], (width, height))
        pixel_mask = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)
        pixel_mask = (pixel_mask > 0.5).float()[None, None]
        factor = self.vae.config.downsample
        latent_mask = F.max_pool2d(pixel_mask, factor)  # any touched latent cell is repainted
        z0 = self.encode(pixels).repeat(len(seeds), 1, 1, 1)
        latents = self.generate_latents(
            prompt, seeds, options, height, width, None, negative_prompt,
            x_start=z0 if strength < 1.0 else None, strength=strength,
            blend=(latent_mask, z0), on_step=on_step, cancelled=cancelled,
        )
        latents = latent_mask * latents + (1 - latent_mask) * z0
        out = self.decode(latents)
        out = pixel_mask * out + (1 - pixel_mask) * pixels
        return pixels_to_pil(out)

    def text_to_video(self, prompt: str, seeds: list[int], options: SamplingOptions, frames: int,
                      height: int, width: int, negative_prompt: str = "",
                      on_step: StepCallback | None = None,
                      cancelled: CancelFlag | None = None) -> list[list[Image.Image]]:
        latents = self.generate_latents(prompt, seeds, options, height, width, frames,
                                        negative_prompt, on_step=on_step, cancelled=cancelled)
        videos = self.decode(latents)
        return [pixels_to_pil(v) for v in videos]


def keep_known_region(denoise: Denoiser, latent_mask: torch.Tensor, z0: torch.Tensor) -> Denoiser:
    """Replace the x0-estimate outside the mask by the known latents at every step.

    Every sampler here moves x towards its x0-estimate, so the known region converges to z0
    exactly while the masked region is generated in context.
    """

    def denoise_blended(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x0 = denoise(x, s)
        return latent_mask * x0 + (1 - latent_mask) * z0

    return denoise_blended


def check_strength(strength: float) -> None:
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and 0 <= strength <= 1):
        raise ValueError(f"strength: must be a number in [0, 1], got {strength!r}")
