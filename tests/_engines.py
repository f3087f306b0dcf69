"""Test doubles for the MCP server's own logic (queues, progress, cancellation, storage, previews).

`PatternEngine` implements the Engine protocol with real but cheap generation: each seed draws
a seeded numpy pattern (a background and a coloured rectangle whose colour follows the prompt),
sleeping a little on every step so that waiting, progress and cancellation can be observed.
`ColourScorer` is a cheap CLIP-score stand-in: the share of pixels near the colour the prompt
names. Neither says anything about image quality; the real engines have their own tests.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import numpy as np
from PIL import Image

from lanterna.engines.base import (
    EngineDefaults,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
)
from lanterna.engines.registry import ModelRegistry

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 90, 220), "yellow": (235, 205, 40)}
VOCABULARY = ["<pad>", "<unk>", "a", "an", "and", "on", "background", "small", "large", *COLOURS,
              "circle", "square", "moving", "left", "right", "white", "black"]


def step_seconds() -> float:
    return float(os.environ.get("LANTERNA_TEST_STEP_SECONDS", "0.01"))


class PatternEngine:
    """A test double for the server's own logic: seeded numpy patterns, a sleep per step."""

    size_multiple = 8
    max_size = 128
    samplers = ("euler", "heun")

    def __init__(self, name: str = "pattern", capabilities=("t2i", "i2i", "inpaint"), failure: str | None = None,
                 seconds_per_step: float | None = None) -> None:
        self.name = name
        self.kind = "test-pattern"
        self.capabilities = frozenset(capabilities)
        video = "t2v" in self.capabilities
        self.defaults = EngineDefaults(steps=4, guidance=3.0, sampler="euler", width=64, height=64,
                                       frames=8 if video else None, fps=8 if video else None)
        self.max_frames = 16 if video else None
        self.failure = failure
        self.seconds_per_step = step_seconds() if seconds_per_step is None else seconds_per_step
        self.loads = 0
        self.runs = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    @property
    def weights_hash(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()[:16]

    def vocabulary(self) -> list[str]:
        return list(VOCABULARY)

    def unknown_words(self, prompt: str) -> list[str]:
        return [w for w in prompt.lower().replace(",", " ").split() if w not in VOCABULARY]

    def load(self) -> None:
        self.loads += 1

    def run(self, request: GenerationRequest, on_step=None, cancelled=None) -> GenerationResult:
        if request.task not in self.capabilities:
            raise InvalidRequest(f"{self.name} cannot do {request.task}")
        width, height = request.width or self.defaults.width, request.height or self.defaults.height
        steps = request.steps or self.defaults.steps
        if request.task in ("i2i", "inpaint"):
            steps = max(1, round(steps * request.strength))
        with self._lock:
            self.active += 1
            self.runs += 1
            self.max_active = max(self.max_active, self.active)
        try:
            for i in range(steps):
                if cancelled is not None and cancelled():
                    raise GenerationCancelled("cancelled")
                time.sleep(self.seconds_per_step)
                if on_step is not None:
                    on_step(i + 1, steps)
        finally:
            with self._lock:
                self.active -= 1
        if self.failure == "crash":
            raise RuntimeError("simulated engine crash")
        result = GenerationResult(seeds=list(request.seeds), backend="numpy",
                                  params={"steps": steps, "guidance": request.guidance or self.defaults.guidance,
                                          "sampler": request.sampler or self.defaults.sampler,
                                          "width": width, "height": height})
        if self.failure == "black":  # what NaN becomes once cast to uint8
            result.images = [Image.new("RGB", (width, height)) for _ in request.seeds]
            return result
        if self.failure == "nan":
            bad = np.full((height, width), np.nan, dtype=np.float32)
            result.images = [Image.fromarray(bad, mode="F") for _ in request.seeds]
            return result
        if request.task == "t2v":
            frames = request.frames or self.defaults.frames
            result.videos = [video(seed, request.prompt, width, height, frames) for seed in request.seeds]
            result.params["frames"] = frames
            return result
        images = [pattern(seed, request.prompt, width, height) for seed in request.seeds]
        if request.task in ("i2i", "inpaint"):
            images = [blend(request, im) for im in images]
        result.images = images
        return result


def prompt_colour(prompt: str) -> tuple[int, int, int]:
    for word in prompt.lower().split():
        if word in COLOURS:
            return COLOURS[word]
    return (128, 128, 128)


def pattern_array(seed: int, prompt: str, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    w, h = rng.integers(width // 8, width // 2 + 1), rng.integers(height // 8, height // 2 + 1)
    x, y = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
    image[y:y + h, x:x + w] = prompt_colour(prompt)
    return image


def pattern(seed: int, prompt: str, width: int, height: int) -> Image.Image:
    return Image.fromarray(pattern_array(seed, prompt, width, height))


def video(seed: int, prompt: str, width: int, height: int, frames: int) -> list[Image.Image]:
    base = pattern_array(seed, prompt, width, height)
    return [Image.fromarray(np.roll(base, 2 * t, axis=1)) for t in range(frames)]


def blend(request: GenerationRequest, image: Image.Image) -> Image.Image:
    init = np.asarray(request.init_image.convert("RGB").resize(image.size), np.float32)
    new = np.asarray(image, np.float32)
    if request.task == "inpaint":
        mask = np.asarray(request.mask.convert("L").resize(image.size), np.float32)[..., None] / 255.0
        out = init * (1 - mask) + new * mask
    else:
        out = init * (1 - request.strength) + new * request.strength
    return Image.fromarray(out.round().astype(np.uint8))


class ColourScorer:
    """Stand-in for a CLIP scorer: 100 x the share of pixels within 60 of the prompt's colour."""

    name = "colour-share"

    def __init__(self) -> None:
        self.calls = 0

    def clip_scores(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        self.calls += 1
        if len(prompts) == 1:
            prompts = prompts * len(images)
        return [colour_share(im, p) for im, p in zip(images, prompts)]


def colour_share(image: Image.Image, prompt: str) -> float:
    pixels = np.asarray(image.convert("RGB"), np.int32)
    target = np.array(prompt_colour(prompt), np.int32)
    return float(100.0 * (np.abs(pixels - target).max(axis=-1) < 60).mean())


def test_registry() -> ModelRegistry:
    """The registry the server tests (and the stdio / HTTP subprocesses) serve."""
    registry = ModelRegistry()
    registry.add_engine("pattern", lambda: PatternEngine("pattern"))
    registry.add_engine("pattern-video", lambda: PatternEngine("pattern-video", capabilities=("t2v",)))
    registry.add_engine("nan-engine", lambda: PatternEngine("nan-engine", failure="nan"))
    registry.add_engine("black-engine", lambda: PatternEngine("black-engine", failure="black"))
    registry.add_engine("crashy", lambda: PatternEngine("crashy", failure="crash"))
    registry.add_scorer("colour-share", ColourScorer)
    registry.default_image_model = "pattern"
    registry.default_video_model = "pattern-video"
    registry.default_scorer = "colour-share"
    return registry


test_registry.__test__ = False  # not a pytest test, despite the name
