"""The model registry file: which models the server offers beside the bundled ones, and the scorer.

One TOML file (`--config FILE` or $LANTERNA_CONFIG) holds the server settings at its top level
(keys of `lanterna.config.Settings`) and these tables:

    [models.sd15]                          # a diffusers folder (it has model_index.json)
    path = "~/models/stable-diffusion-v1-5"
    steps = 25                             # defaults for requests that leave them out
    guidance = 7.0
    sampler = "dpmpp-2m-karras"
    size = 512                             # or width = ..., height = ...
    dtype = "float16"                      # auto | float32 | float16 | bfloat16
    device = "cuda"                        # auto | cpu | cuda | cuda:1 | mps
    default = true                         # the default model for what it can do

    [models.my-shapes]                     # bundled-format weights: my-shapes.json + .safetensors
    path = "~/lanterna-weights"
    kind = "shapes"

    [scorer]                               # a CLIP folder in transformers format
    path = "~/models/clip-vit-base-patch32"

`--model NAME=PATH` adds a model from the command line, `--scorer PATH` sets the scorer.
Entries are checked here; folders are read only when a model is first listed or used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from lanterna.config import Settings
    from lanterna.engines.base import Engine
    from lanterna.engines.registry import ModelRegistry

log = logging.getLogger("lanterna.config")

ModelKind = Literal["diffusers", "shapes"]


def read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ModuleNotFoundError:
        import tomli as tomllib  # the `tomli; python_version < '3.11'` dependency
    with path.open("rb") as f:
        return tomllib.load(f)


def as_path_entry(value: Any) -> Any:
    """A bare path (`--model NAME=PATH`, `models = {name = "path"}`) stands for `{path = ...}`."""
    return {"path": value} if isinstance(value, (str, Path)) else value


class ModelEntry(BaseModel):
    """One `[models.NAME]` table."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="the model folder (diffusers: the folder holding model_index.json), "
                                   "or a hub id 'owner/name' where the machine has network")
    kind: ModelKind | None = Field(None, description="'diffusers' or 'shapes'; default: from the folder")
    steps: int | None = Field(None, ge=1, le=200)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    sampler: str | None = Field(None, min_length=1)
    size: int | None = Field(None, ge=8, le=4096, description="square default size (width and height)")
    width: int | None = Field(None, ge=8, le=4096)
    height: int | None = Field(None, ge=8, le=4096)
    max_size: int | None = Field(None, ge=8, le=8192)
    frames: int | None = Field(None, ge=1, le=1024)
    max_frames: int | None = Field(None, ge=1, le=1024)
    fps: int | None = Field(None, ge=1, le=120)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    variant: str | None = Field(None, description="weight file variant, e.g. 'fp16'")
    default: bool = Field(False, description="make this the default model for each task it can do")

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, value: Any) -> Any:
        return as_path_entry(value)

    @model_validator(mode="after")
    def _size_shorthand(self) -> ModelEntry:
        if self.size is not None:
            self.width = self.width or self.size
            self.height = self.height or self.size
        return self


class ScorerEntry(BaseModel):
    """The `[scorer]` table: a CLIP model in transformers format scoring every engine's output."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    name: str | None = Field(None, min_length=1, description="default: the folder's name")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, value: Any) -> Any:
        return as_path_entry(value)

    @property
    def scorer_name(self) -> str:
        return self.name or self.path.expanduser().name or "clip"


# ---- from entries to engines ----

def model_kind(name: str, entry: ModelEntry) -> ModelKind:
    """The entry's kind, or the folder's: bundled-format weights named after the model are Shapes."""
    if entry.kind is not None:
        return entry.kind
    folder = entry.path.expanduser()
    if not (folder / "model_index.json").exists() and (folder / f"{name}.json").exists():
        return "shapes"
    return "diffusers"


def make_engine(name: str, entry: ModelEntry) -> Engine:
    if model_kind(name, entry) == "shapes":
        return shapes_engine(name, entry)
    from lanterna.engines.diffusers import DiffusersEngine, DiffusersOptions

    options = DiffusersOptions(
        steps=entry.steps, guidance=entry.guidance, sampler=entry.sampler, width=entry.width,
        height=entry.height, frames=entry.frames, fps=entry.fps, max_frames=entry.max_frames,
        max_size=entry.max_size, dtype=entry.dtype, device=entry.device, variant=entry.variant)
    return DiffusersEngine(name, entry.path, options)


def engine_factory(name: str, entry: ModelEntry):
    """Builds the entry's engine. An entry that is no local folder (a hub id that could not be
    resolved, a typo) fails again at once: list_models must not retry the network every time."""
    failures: list[Exception] = []

    def build() -> Engine:
        if failures:
            raise failures[0]
        try:
            return make_engine(name, entry)
        except Exception as e:
            if not entry.path.expanduser().exists():
                failures.append(e)
            raise

    return build


def shapes_engine(name: str, entry: ModelEntry) -> Engine:
    """A Shapes model trained here, from a folder of bundled-format weights (`NAME.json` card)."""
    from dataclasses import replace

    from lanterna.engines.shapes import ShapesEngine

    for key in ("width", "height", "max_size", "dtype", "variant"):
        if getattr(entry, key) not in (None, "auto"):
            raise ValueError(f"models.{name}.{key}: Shapes models draw at their native size in float32; "
                             "leave it out")
    engine = ShapesEngine(name, entry.path.expanduser())
    changes = {k: getattr(entry, k) for k in ("steps", "guidance", "sampler", "frames", "fps")
               if getattr(entry, k) is not None}
    if changes:
        engine.defaults = replace(engine.defaults, **changes)
    return engine


def make_scorer(entry: ScorerEntry):
    from lanterna.engines.diffusers import pick_device
    from lanterna.evaluation.clip_score import TransformersCLIPScorer

    return TransformersCLIPScorer(entry.path, device=str(pick_device(entry.device)))


# ---- the registry ----

def bundled_registry() -> ModelRegistry:
    """The bundled models, or an empty registry where they are unavailable (a valid state)."""
    from lanterna.engines.registry import ModelRegistry

    try:
        from lanterna.engines.bundled import default_registry

        return default_registry()
    except Exception as e:
        log.warning("bundled models unavailable (%s: %s); serving no built-in models", type(e).__name__, e)
        return ModelRegistry()


def build_registry(settings: Settings, base: ModelRegistry | None = None) -> ModelRegistry:
    """`base` (default: the bundled models) plus the configured models and scorer.

    Engines are built lazily; only a model marked `default`, or the first able one when the base
    has no default for a task, is described at start-up (from its JSON files) to learn its tasks.
    """
    registry = bundled_registry() if base is None else base
    for name, entry in settings.models.items():
        registry.add_engine(name, engine_factory(name, entry))
    choose_defaults(registry, settings.models)
    if settings.scorer is not None:
        scorer = settings.scorer
        if not (scorer.path.expanduser() / "config.json").exists():
            log.warning("scorer %s: no CLIP checkpoint (config.json) in %s", scorer.scorer_name, scorer.path)
        registry.add_scorer(scorer.scorer_name, lambda: make_scorer(scorer))
        registry.default_scorer = scorer.scorer_name
    return registry


def choose_defaults(registry: ModelRegistry, models: dict[str, ModelEntry]) -> None:
    marked = [n for n, e in models.items() if e.default]
    if len(marked) > 1:
        log.warning("several models are marked default (%s); each task takes the first that can do it",
                    ", ".join(marked))
    for task, attribute in (("t2i", "default_image_model"), ("t2v", "default_video_model")):
        candidates = marked + ([n for n in models if n not in marked] if getattr(registry, attribute) is None else [])
        for name in candidates:
            if task in engine_tasks(registry, name):
                setattr(registry, attribute, name)
                break


def engine_tasks(registry: ModelRegistry, name: str) -> frozenset[str]:
    try:
        return registry.engine(name).capabilities
    except Exception as e:  # a broken entry is reported by list_models and on use, not fatal here
        log.warning("model %s cannot be used: %s", name, e)
        return frozenset()
