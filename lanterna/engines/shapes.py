"""The engine over the in-repo latent diffusion models (`shapes-dit`, `shapes-unet`, `shapes-video`).

A model is described by its card (lanterna/engines/weights.py): the denoiser's net kind and
config, its prediction type, and the names of the VAE and CLIP it was trained with.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from lanterna.engines import weights
from lanterna.engines.base import (
    CancelFlag,
    EngineDefaults,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    StepCallback,
)
from lanterna.engines.nets import VIDEO_NET_KINDS, build_net
from lanterna.engines.nets.text import ShapesCLIP, ShapesCLIPConfig, ShapesTokenizer, text_conditioner, text_context_of
from lanterna.engines.nets.vae import AutoencoderKL, VAEConfig
from lanterna.engines.pipeline import Grounding, LatentDiffusionPipeline, SamplingOptions, composition_of
from lanterna.engines.samplers import SAMPLERS
from lanterna.world.grounding import DEFAULT_MAP_KIND, LAYOUT_CHANNELS, CaptionPlanner, planned_objects
from lanterna.world.regions import object_regions

log = logging.getLogger("lanterna.engines.shapes")

MAX_IMAGES_PER_RUN = 16


def load_vae(name: str = "shapes-vae", directory: Path | None = None) -> AutoencoderKL:
    card = weights.read_card(name, directory)
    vae = AutoencoderKL(VAEConfig(**card["config"]))
    vae.load_state_dict(weights.load_state(name, directory))
    return vae.eval()


def load_clip(name: str = "shapes-clip", directory: Path | None = None) -> ShapesCLIP:
    card = weights.read_card(name, directory)
    clip = ShapesCLIP(ShapesCLIPConfig(**card["config"]))
    clip.load_state_dict(weights.load_state(name, directory))
    return clip.eval()


def load_denoiser(name: str, directory: Path | None = None) -> torch.nn.Module:
    card = weights.read_card(name, directory)
    net = build_net(card["net"], card["config"])
    net.load_state_dict(weights.load_state(name, directory))
    return net.eval()


def grounding_of(card: dict) -> Grounding | None:
    """A grounded denoiser's layout input (its config's `layout_channels`), planned from the
    caption by the Shapes World's scene sampler; the card's `grounding.map` names the map kind the
    net trained on (default: grounding.DEFAULT_MAP_KIND) and `grounding.unconditional` says whether guidance's
    unconditional pass reads the layout too (default yes)."""
    channels = card["config"].get("layout_channels", 0)
    if not channels:
        return None
    if channels != LAYOUT_CHANNELS:
        raise ValueError(f"{card.get('name')}: layout_channels {channels}, but the Shapes World's layout "
                         f"map has {LAYOUT_CHANNELS}")
    grounding = card.get("grounding", {})
    return Grounding(channels, CaptionPlanner(grounding.get("map", DEFAULT_MAP_KIND)),
                     bool(grounding.get("unconditional", True)))


class ShapesEngine:
    """Text-to-image (plus img2img and inpainting) or text-to-video on a bundled Shapes model."""

    def __init__(self, name: str, directory: Path | None = None) -> None:
        self.name = name
        self.directory = directory
        self.card = weights.read_card(name, directory)
        self.kind = f"shapes-{self.card['net']}"
        self.is_video = self.card["net"] in VIDEO_NET_KINDS
        self.capabilities = frozenset({"t2v"} if self.is_video else {"t2i", "i2i", "inpaint"})
        d = self.card["defaults"]
        self.defaults = EngineDefaults(
            steps=d["steps"], guidance=d["guidance"], sampler=d["sampler"], width=d["width"],
            height=d["height"], frames=d.get("frames"), fps=d.get("fps"),
        )
        self.size_multiple = self.card.get("size_multiple", self.defaults.width)
        self.max_size = self.defaults.width
        self.max_frames = self.card.get("max_frames", self.defaults.frames)
        self.tokenizer = ShapesTokenizer()
        self.pipeline: LatentDiffusionPipeline | None = None
        self._lock = threading.Lock()
        # Backends (torch, or ONNX Runtime through lanterna/engines/onnx.py): the card's default,
        # and the pipelines built for the others, with the label each result carries.
        self.default_backend: str = self.card.get("backend", "torch")
        self.backends: dict[str, tuple[LatentDiffusionPipeline, str]] = {}

    @property
    def weights_hash(self) -> str:
        parts = [self.name, self.card["components"]["vae"], self.card["components"]["text_encoder"]]
        return "-".join(weights.weights_hash(p, self.directory)[:8] for p in parts)

    def vocabulary(self) -> list[str]:
        return self.tokenizer.vocabulary()

    def unknown_words(self, prompt: str) -> list[str]:
        return self.tokenizer.encode([prompt]).unknown_words[0]

    def load(self) -> None:
        with self._lock:
            if self.pipeline is not None:
                return
            components = self.card["components"]
            self.pipeline = LatentDiffusionPipeline(
                load_denoiser(self.name, self.directory),
                load_vae(components["vae"], self.directory),
                text_conditioner(load_clip(components["text_encoder"], self.directory),
                                 text_context_of(self.card)),
                self.tokenizer,
                prediction=self.card.get("prediction", "v"),
                shift=self.card.get("shift", 1.0),
                composition=composition_of(self.card),
                split_prompt=object_regions,
                grounding=grounding_of(self.card),
            )
            log.info("loaded %s", self.name)

    def resolve(self, request: GenerationRequest) -> tuple[SamplingOptions, int, int]:
        task = request.task
        if task not in self.capabilities:
            raise InvalidRequest(f"model {self.name!r} cannot do {task!r}; it supports "
                                 f"{sorted(self.capabilities)}")
        width = self.defaults.width if request.width is None else request.width
        height = self.defaults.height if request.height is None else request.height
        if (width, height) != (self.defaults.width, self.defaults.height):
            raise InvalidRequest(
                f"width/height: {self.name} draws {self.defaults.width}x{self.defaults.height} "
                f"only, got {width}x{height}")
        sampler = request.sampler or self.defaults.sampler
        if sampler not in SAMPLERS:
            raise InvalidRequest(f"sampler: unknown {sampler!r}; allowed: {', '.join(SAMPLERS)}")
        if not 1 <= len(request.seeds) <= MAX_IMAGES_PER_RUN:
            raise InvalidRequest(f"seeds: 1 to {MAX_IMAGES_PER_RUN} images a run")
        if options_error := self.check_numbers(request):
            raise InvalidRequest(options_error)
        options = SamplingOptions(
            steps=self.defaults.steps if request.steps is None else request.steps,
            guidance=self.defaults.guidance if request.guidance is None else request.guidance,
            sampler=sampler,
        )
        return options, width, height

    def run(self, request: GenerationRequest, on_step: StepCallback | None = None,
            cancelled: CancelFlag | None = None) -> GenerationResult:
        options, width, height = self.resolve(request)
        self.load()
        p, backend = self.pipeline_for_backend(request.backend)
        result = GenerationResult(seeds=list(request.seeds), backend=backend)
        try:
            if request.task == "t2i":
                result.images = p.text_to_image(request.prompt, request.seeds, options, height, width,
                                                request.negative_prompt, on_step, cancelled)
            elif request.task == "i2i":
                result.images = p.image_to_image(self.require_image(request, width, height),
                                                 request.prompt, request.seeds, options,
                                                 request.strength, request.negative_prompt,
                                                 on_step, cancelled)
            elif request.task == "inpaint":
                if request.init_image is None:
                    raise InvalidRequest("image: inpainting needs an input image")
                if request.mask is None:
                    raise InvalidRequest("mask: inpainting needs a mask (white = repaint)")
                if request.mask.size != request.init_image.size:
                    raise InvalidRequest(f"mask: size {request.mask.size} must equal the image's "
                                         f"size {request.init_image.size}")
                image = self.require_image(request, width, height)
                mask = request.mask.convert("L").resize(image.size, Image.NEAREST)
                result.images = p.inpaint(image, mask, request.prompt, request.seeds, options,
                                          request.strength, request.negative_prompt, on_step,
                                          cancelled)
            else:
                frames = self.defaults.frames if request.frames is None else request.frames
                if not 1 <= frames <= self.max_frames:
                    raise InvalidRequest(f"frames: 1 to {self.max_frames} for {self.name}, got {frames}")
                result.videos = p.text_to_video(request.prompt, request.seeds, options, frames,
                                                height, width, request.negative_prompt, on_step,
                                                cancelled)
        except ValueError as e:
            if isinstance(e, InvalidRequest):
                raise
            raise InvalidRequest(str(e)) from e
        result.params = {"steps": options.steps, "guidance": options.guidance,
                         "sampler": options.sampler, "width": width, "height": height,
                         "frames": request.frames or self.defaults.frames if self.is_video else None,
                         "scheduler": f"lanterna.samplers.{options.sampler}"}
        if split := p.prompt_parts(request.prompt, request.seeds):
            result.params["composition"] = {
                **asdict(p.composition),
                "parts": [{"prompt": part.caption, "boxes": [list(parts[j].box) for parts in split]}
                          for j, part in enumerate(split[0])]}
        if layout := self.planned_layout(p, request, width, height):
            result.params["layout"] = layout
        result.warnings = self.warnings(request.prompt)
        return result

    def planned_layout(self, p: LatentDiffusionPipeline, request: GenerationRequest,
                       width: int, height: int) -> dict | None:
        """What a grounded model was shown for each seed: the objects its plan placed (None for a
        seed whose prompt has no plan); nothing for edits, ungrounded models, non-square sizes, or
        a pipeline whose planner is not the caption planner this report recomputes."""
        if p.grounding is None or request.task not in ("t2i", "t2v") or width != height:
            return None
        if not isinstance(p.grounding.plan, CaptionPlanner):
            return None
        plans = [planned_objects(request.prompt, seed, width, self.is_video) for seed in request.seeds]
        return {"planned": plans} if any(plan is not None for plan in plans) else None

    def pipeline_for_backend(self, backend: str | None) -> tuple[LatentDiffusionPipeline, str]:
        """The pipeline running `backend` and the label results carry ("torch", "onnx:<provider>")."""
        assert self.pipeline is not None
        backend = backend or self.default_backend
        if backend == "torch":
            return self.pipeline, "torch"
        from lanterna.engines import onnx as onnx_backend

        return onnx_backend.pipeline_for(self, backend)

    @staticmethod
    def check_numbers(request: GenerationRequest) -> str | None:
        if request.steps is not None and not (isinstance(request.steps, int) and request.steps >= 1):
            return f"steps: must be an integer >= 1, got {request.steps!r}"
        if request.guidance is not None and not (math.isfinite(request.guidance) and request.guidance >= 0):
            return f"guidance: must be a finite number >= 0, got {request.guidance!r}"
        return None

    @staticmethod
    def require_image(request: GenerationRequest, width: int, height: int) -> Image.Image:
        if request.init_image is None:
            raise InvalidRequest("image: this mode needs an input image")
        image = request.init_image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height))
        return image

    def warnings(self, prompt: str) -> list[str]:
        tokens = self.tokenizer.encode([prompt])
        notes = []
        if tokens.unknown_words[0]:
            notes.append(f"words this model does not know (ignored): {', '.join(tokens.unknown_words[0])}")
        if tokens.truncated[0]:
            notes.append("the prompt was longer than the model reads and was cut")
        return notes
