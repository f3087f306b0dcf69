"""`list_models`: what this server can draw with, and how to ask each model for it."""

from __future__ import annotations

from pydantic import BaseModel, Field

from lanterna.server.runtime import Runtime
from lanterna.tools.common import engine_samplers, safe_weights_hash

NAME = "list_models"
DESCRIPTION = """List the installed models: what each can do (t2i = text to image, i2i = img2img,
inpaint, t2v = text to video), its native size and size limits, default steps / sampler /
guidance, the samplers it accepts, and which words its text encoder understands (small models
only know a fixed vocabulary: words outside it are ignored). Also the CLIP scorers. Call this
before generating."""

OPEN_VOCABULARY_NOTE = ("open vocabulary: understands free English prompts; describe subject, style, "
                        "composition and lighting")


class ModelInfo(BaseModel):
    name: str
    kind: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    default_for: list[str] = Field(default_factory=list, description="tasks this model is the default for")
    native_width: int | None = None
    native_height: int | None = None
    size_multiple: int | None = None
    max_size: int | None = None
    default_steps: int | None = None
    default_guidance: float | None = None
    default_sampler: str | None = None
    samplers: list[str] | None = None
    default_frames: int | None = None
    max_frames: int | None = None
    default_fps: int | None = None
    vocabulary: list[str] | None = Field(None, description="every word the model knows (closed-vocabulary models)")
    prompt_note: str | None = Field(None, description="what prompts the model understands")
    weights_hash: str | None = None
    loaded: bool = False
    queued_jobs: int = 0
    error: str | None = Field(None, description="why the model cannot be used, when it cannot")


class ScorerInfo(BaseModel):
    name: str
    default: bool


class ModelList(BaseModel):
    models: list[ModelInfo]
    scorers: list[ScorerInfo]
    note: str | None = None


def describe(rt: Runtime, name: str) -> ModelInfo:
    registry = rt.registry
    info = ModelInfo(name=name, loaded=registry.is_loaded(name), queued_jobs=rt.jobs.pending(name))
    try:
        engine = registry.engine(name)
    except Exception as e:
        info.error = f"{type(e).__name__}: {e}"
        return info
    d = engine.defaults
    info.kind = getattr(engine, "kind", None)
    info.capabilities = sorted(engine.capabilities)
    info.default_for = [task for task, default in (("t2i", registry.default_image_model),
                                                   ("t2v", registry.default_video_model)) if default == name]
    info.native_width, info.native_height = d.width, d.height
    info.size_multiple, info.max_size = engine.size_multiple, engine.max_size
    info.default_steps, info.default_guidance, info.default_sampler = d.steps, d.guidance, d.sampler
    info.samplers = engine_samplers(engine)
    info.default_frames, info.default_fps = d.frames, d.fps
    info.max_frames = getattr(engine, "max_frames", None)
    try:
        vocabulary = engine.vocabulary()
    except Exception:
        vocabulary = None
    if vocabulary is None:
        info.prompt_note = OPEN_VOCABULARY_NOTE
    else:
        info.vocabulary = [w for w in vocabulary if not (w.startswith("<") and w.endswith(">"))]
        info.prompt_note = (f"closed vocabulary of {len(info.vocabulary)} words: write prompts only with these "
                            "words; anything else is ignored (generate_image warns about it)")
    info.weights_hash = safe_weights_hash(engine)
    return info


def list_models(rt: Runtime) -> ModelList:
    registry = rt.registry
    models = [describe(rt, name) for name in registry.names()]
    scorers = [ScorerInfo(name=n, default=n == registry.default_scorer) for n in registry.scorers]
    note = None
    if not models:
        note = ("No models are installed on this server. The bundled Shapes models ship with the package once "
                "trained; other models can be added with `lanterna serve --model NAME=PATH`.")
    return ModelList(models=models, scorers=scorers, note=note)
