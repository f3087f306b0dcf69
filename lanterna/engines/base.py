"""The Engine protocol: what every generator (in-repo or diffusers) offers the server.

Engines know nothing of MCP. The server builds a `GenerationRequest`, calls `Engine.run` on a
worker thread, and gets a `GenerationResult` back. Progress goes out through `on_step`,
cancellation comes in through `cancelled`, which the engine polls once per denoising step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, runtime_checkable

from PIL import Image

Task = Literal["t2i", "i2i", "inpaint", "t2v"]
StepCallback = Callable[[int, int], None]  # (steps done, total steps)
CancelFlag = Callable[[], bool]


class GenerationCancelled(Exception):
    """Raised by an engine when its cancel flag was set; the job ends as `cancelled`."""


class InvalidRequest(ValueError):
    """A request the engine cannot serve; the message says what is allowed."""


@dataclass(frozen=True)
class EngineDefaults:
    steps: int
    guidance: float
    sampler: str
    width: int
    height: int
    frames: int | None = None
    fps: int | None = None


@dataclass
class GenerationRequest:
    task: Task
    prompt: str
    seeds: list[int]
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    frames: int | None = None
    init_image: Image.Image | None = None
    mask: Image.Image | None = None  # white = repaint, black = keep
    strength: float = 0.6
    backend: str = "torch"


@dataclass
class GenerationResult:
    """Images for t2i/i2i/inpaint; `videos` (each a list of frames) for t2v; one seed per output."""

    seeds: list[int]
    images: list[Image.Image] = field(default_factory=list)
    videos: list[list[Image.Image]] = field(default_factory=list)
    params: dict = field(default_factory=dict)  # resolved steps, guidance, sampler, size, scheduler...
    warnings: list[str] = field(default_factory=list)
    backend: str = "torch"


@runtime_checkable
class Engine(Protocol):
    name: str
    kind: str  # "shapes-dit", "shapes-unet", "shapes-video", "diffusers", ...
    capabilities: frozenset[str]  # subset of {"t2i", "i2i", "inpaint", "t2v"}
    defaults: EngineDefaults
    size_multiple: int  # width and height must be multiples of this
    max_size: int

    @property
    def weights_hash(self) -> str: ...

    def vocabulary(self) -> list[str] | None:
        """The words the text encoder knows, or None for an open-vocabulary model."""

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of `prompt` the model has never seen (empty for open-vocabulary models)."""

    def load(self) -> None:
        """Load weights (idempotent; the registry calls it once, lazily)."""

    def run(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        cancelled: CancelFlag | None = None,
    ) -> GenerationResult: ...


@runtime_checkable
class Scorer(Protocol):
    """A CLIP-style model scoring how well images match a text (torchmetrics' 100*max(cos,0))."""

    name: str

    def clip_scores(self, images: list[Image.Image], prompts: list[str]) -> list[float]: ...
