"""Shared pieces of the tools: argument fields, the result model of generation jobs, checks that
turn a bad argument into a message saying what is allowed, and the code that turns a finished
generation into stored files, previews and resource links."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from mcp.types import ContentBlock, ImageContent, ResourceLink, TextContent
from PIL import Image
from pydantic import BaseModel, Field

from lanterna.engines.base import Engine, GenerationRequest
from lanterna.engines.registry import UnknownModel
from lanterna.server.jobs import Job, JobFailure
from lanterna.server.previews import Preview, previews
from lanterna.server.runtime import Runtime
from lanterna.server.store import StoredFile, package_versions

MAX_SEED = 2**31 - 1
ProgressReport = Callable[[float, float | None, str], Awaitable[None]]
Status = Literal["done", "running", "cancelled", "failed"]


class ArgumentError(ValueError):
    """A bad argument; the message names it and says what is allowed."""


# ---- argument fields shared by several tools ----

def prompt_field() -> Any:
    return Field(min_length=1, max_length=2000, description="What to draw, in words the model knows "
                 "(list_models shows each model's vocabulary or the kind of prompt it understands).")


def negative_field() -> Any:
    return Field("", max_length=2000, description="What to steer away from (classifier-free guidance).")


def seed_field() -> Any:
    return Field(-1, ge=-1, le=MAX_SEED, description="Random seed; -1 picks one. The seed used is returned; "
                 "a batch uses seed, seed+1, ... so any image can be reproduced on its own.")


def steps_field() -> Any:
    return Field(None, ge=1, le=200, description="Denoising steps; default: the model's (see list_models). "
                 "More steps = slower, usually cleaner.")


def guidance_field() -> Any:
    return Field(None, ge=0.0, le=30.0, description="Classifier-free guidance scale; default: the model's. "
                 "Higher follows the prompt more literally.")


def model_field(kind: str) -> Any:
    return Field(None, min_length=1, max_length=200, description=f"Model name from list_models; default: the "
                 f"server's default {kind} model.")


def size_field(side: str) -> Any:
    return Field(None, ge=8, le=4096, description=f"Output {side} in pixels; default: the model's native "
                 f"{side}. Must be a multiple of the model's size_multiple and at most its max_size.")


# backend: tool argument (see lanterna/engines/onnx.py)
Backend = Literal["torch", "onnx", "auto"]


def backend_field() -> Any:
    return Field(None, description="Inference backend: 'torch', 'onnx' (ONNX Runtime; TensorRT > CUDA > CPU "
                 "where present) or 'auto' (the faster one measured on this machine); default: the model's. "
                 "Results name the backend used.")


def request_backend(engine: Engine, backend: str | None) -> str:
    return backend or getattr(engine, "default_backend", "torch")


def wait_field() -> Any:
    return Field(50.0, ge=0.0, le=600.0, description="Seconds to wait for the result. If the job is not done "
                 "by then the call returns status 'running' and a job_id; collect it with get_job. Keep it "
                 "under your client's request timeout (often 60 s).")


# ---- results ----

class ImageOutput(BaseModel):
    uri: str = Field(description="lanterna://outputs/NAME of the full-size PNG (read it as a resource)")
    seed: int
    width: int
    height: int
    clip_score: float | None = Field(None, description="CLIP score against the prompt, 0-100, higher = closer")


class VideoOutput(BaseModel):
    uri: str = Field(description="lanterna://outputs/NAME of the MP4 (H.264)")
    gif_uri: str = Field(description="the same video as an animated GIF")
    contact_sheet_uri: str = Field(description="PNG of evenly spaced keyframes, left to right, top to bottom")
    seed: int
    width: int
    height: int
    frames: int
    fps: int
    clip_score: float | None = Field(None, description="mean per-frame CLIP score against the prompt")


class Candidate(BaseModel):
    seed: int
    clip_score: float | None
    kept: bool


class Timings(BaseModel):
    queue: float = Field(description="seconds waiting for the engine")
    load: float = Field(0.0, description="seconds loading weights (first use of a model only)")
    generate: float = Field(0.0, description="seconds in the engine")
    score: float = Field(0.0, description="seconds computing CLIP scores")
    encode: float = Field(0.0, description="seconds encoding, storing and previewing files")


class JobProgress(BaseModel):
    step: int
    total_steps: int
    queue_position: int = Field(description="0 once running; otherwise the place in the model's queue")


class GenerationReport(BaseModel):
    """What a generation tool (and get_job) returns as structured content."""

    status: Status
    job_id: str
    kind: Literal["image", "video", "edit"]
    model: str
    backend: str | None = None
    weights_hash: str | None = None
    images: list[ImageOutput] = Field(default_factory=list)
    videos: list[VideoOutput] = Field(default_factory=list)
    candidates: list[Candidate] | None = Field(None, description="best_of: every candidate's seed and score")
    params: dict[str, Any] = Field(default_factory=dict, description="resolved parameters (steps, guidance, ...)")
    timings: Timings | None = None
    warnings: list[str] = Field(default_factory=list)
    progress: JobProgress | None = None
    error: str | None = None


@dataclass
class Outcome:
    """A tool's answer: structured content plus the content blocks an agent sees."""

    report: BaseModel
    content: list[ContentBlock] = field(default_factory=list)
    is_error: bool = False


# ---- argument checks against the chosen model ----

def pick_engine(rt: Runtime, model: str | None, capability: str) -> tuple[str, Engine]:
    registry = rt.registry
    if not registry.names():
        raise ArgumentError("no models are installed on this server (list_models shows what is available)")
    name = model
    if name is None:
        name = registry.default_video_model if capability == "t2v" else registry.default_image_model
        if name is None:
            able = models_with(rt, capability)
            raise ArgumentError(f"model: no default model for {capability}; pass one of: {', '.join(able) or 'none'}")
    try:
        engine = registry.engine(name, capability)
    except UnknownModel as e:
        raise ArgumentError(str(e)) from None
    except Exception as e:  # a model whose card or weights are broken must not take the server down
        raise ArgumentError(f"model: {name!r} could not be prepared ({type(e).__name__}: {e})") from None
    if capability not in engine.capabilities:
        able = models_with(rt, capability)
        raise ArgumentError(f"model: {name!r} cannot do {capability} (it does {', '.join(sorted(engine.capabilities))}); "
                            f"models that can: {', '.join(able) or 'none'}")
    return name, engine


def models_with(rt: Runtime, capability: str) -> list[str]:
    able = []
    for name in rt.registry.names():
        try:
            if capability in rt.registry.engine(name).capabilities:
                able.append(name)
        except Exception:
            continue
    return able


def engine_samplers(engine: Engine) -> list[str] | None:
    """The sampler names an engine accepts, when it says (None = it checks them itself)."""
    samplers = getattr(engine, "samplers", None)
    if samplers is None and str(getattr(engine, "kind", "")).startswith("shapes"):
        try:
            from lanterna.engines.samplers import SAMPLERS

            samplers = SAMPLERS
        except ImportError:
            return None
    return sorted(samplers) if samplers is not None else None


def check_size(name: str, engine: Engine, width: int | None, height: int | None) -> None:
    d = engine.defaults
    for side, value in (("width", width), ("height", height)):
        if value is None:
            continue
        if value > engine.max_size or value % engine.size_multiple:
            raise ArgumentError(
                f"{side}: {name} accepts multiples of {engine.size_multiple} up to {engine.max_size} "
                f"(native size {d.width}x{d.height}); got {value}")


def check_sampler(name: str, engine: Engine, sampler: str | None) -> None:
    if sampler is None:
        return
    allowed = engine_samplers(engine)
    if allowed is not None and sampler not in allowed:
        raise ArgumentError(f"sampler: {name} has no sampler {sampler!r}; allowed: {', '.join(allowed)}")


def check_frames(name: str, engine: Engine, frames: int | None) -> None:
    limit = getattr(engine, "max_frames", None)
    if frames is not None and limit is not None and frames > limit:
        raise ArgumentError(f"frames: {name} makes at most {limit} frames; got {frames}")


def resolve_seeds(seed: int, count: int) -> list[int]:
    """`seed`, `seed`+1, ...; a random start for -1 (leaving room for the batch below MAX_SEED).

    Every returned seed must be one a client can send back to reproduce its image.
    """
    if seed > MAX_SEED - count + 1:
        raise ArgumentError(f"seed: a batch of {count} uses seeds {seed}..{seed + count - 1}, past {MAX_SEED}; "
                            f"give a seed of at most {MAX_SEED - count + 1}")
    start = secrets.randbelow(MAX_SEED - 64) if seed < 0 else seed
    return [start + i for i in range(count)]


def prompt_warnings(engine: Engine, prompt: str) -> list[str]:
    try:
        unknown = engine.unknown_words(prompt)
    except Exception:
        return []
    if not unknown:
        return []
    return [f"words {name_of(engine)} does not know (they are ignored): {', '.join(unknown)}; "
            f"list_models shows its vocabulary"]


def name_of(engine: Engine) -> str:
    return getattr(engine, "name", "the model")


# ---- from an engine's result to files, previews and links ----

NON_FINITE = ("the model produced NaN or Inf values; no image was made (try another seed, fewer steps, "
              "or a lower guidance)")


def check_outputs(images: list[Image.Image], expected: int, what: str = "images", black_each: bool = True) -> None:
    """An engine must return one finite image per seed; NaN/Inf is an error, never a black picture.

    In-repo engines raise on non-finite values themselves. Others may hand back float images
    holding NaN, or images already cast to uint8, where NaN became an exact all-zero picture
    (checked per image, or with `black_each=False` for the whole set, as a video may fade to black).
    """
    if len(images) != expected:
        raise JobFailure(f"the engine returned {len(images)} {what} for {expected} seeds")
    for image in images:
        pixels = np.asarray(image)
        if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
            raise JobFailure(NON_FINITE)
        if black_each and pixels.size and not pixels.any():
            raise JobFailure(all_black(what))
    if not black_each and images and not any(np.asarray(image).any() for image in images):
        raise JobFailure(all_black(what))


def all_black(what: str) -> str:
    return (f"the model produced only all-black {what}, the mark of NaN or Inf values; "
            + NON_FINITE.split("; ", 1)[1])


def loaded_engine(rt: Runtime, name: str, timings: Timings) -> Engine:
    start = time.monotonic()
    engine = rt.registry.get(name)
    timings.load = round(time.monotonic() - start, 4)
    return engine


def run_engine(engine: Engine, request: GenerationRequest, job: Job, timings: Timings):
    start = time.monotonic()
    result = engine.run(request, on_step=job.on_step, cancelled=job.cancelled)
    timings.generate = round(time.monotonic() - start, 4)
    return result


def file_metadata(tool: str, name: str, engine: Engine, request: GenerationRequest, seed: int,
                  params: dict[str, Any], backend: str) -> dict[str, Any]:
    """Everything needed to make the file again; written into the PNG and the sidecar."""
    meta: dict[str, Any] = {
        "tool": tool, "model": name, "kind": getattr(engine, "kind", None),
        "weights_hash": safe_weights_hash(engine), "backend": backend,
        "prompt": request.prompt, "negative_prompt": request.negative_prompt, "seed": seed,
        "params": params, "versions": package_versions(),
    }
    if request.task in ("i2i", "inpaint"):
        meta["strength"] = request.strength
        meta["mode"] = request.task
    return meta


def safe_weights_hash(engine: Engine) -> str | None:
    try:
        return engine.weights_hash
    except Exception:
        return None


def image_content(preview: Preview) -> ImageContent:
    return ImageContent(type="image", data=preview.data, mime_type=preview.mime_type)


def link(stored: StoredFile, description: str) -> ResourceLink:
    return ResourceLink(type="resource_link", name=stored.name, uri=stored.uri, mime_type=stored.mime_type,
                        size=stored.size, description=description)


def preview_blocks(rt: Runtime, images: list[Image.Image], warnings: list[str]) -> list[ContentBlock]:
    blocks: list[ContentBlock] = []
    made = previews(images, rt.budget)
    for p in made:
        if p is not None:
            blocks.append(image_content(p))
    if any(p is None for p in made):
        warnings.append("some previews were left out to stay within the preview budget; read the linked files")
    return blocks


def summary_text(report: BaseModel) -> TextContent:
    """The structured content as JSON text, for clients that only read text."""
    data = report.model_dump(mode="json", exclude_none=True)
    return TextContent(type="text", text=json.dumps(data, separators=(",", ":")))


def finite_or_none(value: float | None) -> float | None:
    """A metric for JSON: None when not finite, else kept to 6 significant digits."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{float(value):.6g}")


# ---- a job's state as a tool answer ----

def job_outcome(job: Job) -> Outcome:
    """A finished job's stored answer, or its current state (running / failed / cancelled)."""
    if job.state == "done" and isinstance(job.result, Outcome):
        return job.result
    skeleton: GenerationReport = job.meta["report"]
    report = skeleton.model_copy(deep=True)
    report.timings = Timings(queue=round(job.queue_seconds, 4))
    if job.state in ("queued", "running"):
        report.status = "running"
        report.progress = JobProgress(step=job.step, total_steps=job.total_steps, queue_position=job.position)
        report.warnings.append(f"still running: call get_job(job_id={job.id!r}) to wait for it, "
                               f"or cancel_job to stop it")
        return Outcome(report, [summary_text(report)])
    if job.state == "cancelled":
        report.status = "cancelled"
        return Outcome(report, [summary_text(report)])
    report.status = "failed"
    report.error = job.error or "the job failed"
    return Outcome(report, [TextContent(type="text", text=f"{job.kind} job failed: {report.error}"),
                            summary_text(report)], is_error=True)


async def submit_and_wait(rt: Runtime, queue: str, skeleton: GenerationReport, total_steps: int,
                          work: Callable[[Job], Outcome], wait_seconds: float,
                          report: ProgressReport | None) -> Outcome:
    job = rt.jobs.submit(queue, skeleton.kind, work, total_steps, meta={"report": skeleton})
    skeleton.job_id = job.id
    await rt.jobs.wait(job, wait_seconds, report, cancel_on_abort=True)
    return job_outcome(job)
