"""`generate_image`: text to images, optionally keeping the best of several candidates by CLIP score."""

from __future__ import annotations

import math
import time

from pydantic import BaseModel, Field, model_validator

from lanterna.engines.base import GenerationRequest
from lanterna.server import media
from lanterna.server.jobs import Job
from lanterna.server.runtime import Runtime
from lanterna.tools import common
from lanterna.tools.common import (
    ArgumentError,
    Candidate,
    GenerationReport,
    ImageOutput,
    Outcome,
    ProgressReport,
    Timings,
)

NAME = "generate_image"
DESCRIPTION = """Generate images from a text prompt.

Returns small inline previews you can look at, a lanterna://outputs/... resource link per
full-size PNG, and structured content with the seed of every image (reuse it to reproduce or
vary an image), the model, timings and warnings (e.g. prompt words the model does not know).
best_of > num_images makes best_of candidates and keeps the num_images with the highest CLIP
score. Long jobs: after wait_seconds you get status 'running' and a job_id; call get_job.
Call list_models first to see the models, their native sizes and the words they understand."""


class GenerateImageArgs(BaseModel):
    prompt: str = common.prompt_field()
    negative_prompt: str = common.negative_field()
    width: int | None = common.size_field("width")
    height: int | None = common.size_field("height")
    steps: int | None = common.steps_field()
    guidance: float | None = common.guidance_field()
    seed: int = common.seed_field()
    sampler: str | None = Field(None, min_length=1, max_length=64,
                                description="Sampler name; default: the model's. list_models shows the choices.")
    model: str | None = common.model_field("image")
    num_images: int = Field(1, ge=1, le=8, description="How many images to return.")
    best_of: int | None = Field(None, ge=1, le=16, description="Generate this many candidates and keep the "
                                "num_images with the highest CLIP score against the prompt (needs a scorer).")
    score: bool = Field(False, description="Also return each image's CLIP score against the prompt.")
    backend: common.Backend | None = common.backend_field()
    wait_seconds: float = common.wait_field()

    @model_validator(mode="after")
    def _best_of_covers_batch(self) -> GenerateImageArgs:
        if self.best_of is not None and self.best_of < self.num_images:
            raise ValueError(f"best_of ({self.best_of}) must be at least num_images ({self.num_images})")
        return self


async def generate_image(args: GenerateImageArgs, rt: Runtime, report: ProgressReport | None = None) -> Outcome:
    name, engine = common.pick_engine(rt, args.model, "t2i")
    common.check_size(name, engine, args.width, args.height)
    common.check_sampler(name, engine, args.sampler)
    ranking = args.best_of is not None and args.best_of > args.num_images
    if (ranking or args.score) and rt.registry.default_scorer is None:
        raise ArgumentError("best_of/score: no CLIP scorer is installed on this server; leave them out")
    count = args.best_of if ranking else args.num_images
    request = GenerationRequest(
        task="t2i", prompt=args.prompt, seeds=common.resolve_seeds(args.seed, count),
        negative_prompt=args.negative_prompt, width=args.width, height=args.height, steps=args.steps,
        guidance=args.guidance, sampler=args.sampler,
        backend=common.request_backend(engine, args.backend))
    skeleton = GenerationReport(status="running", job_id="", kind="image", model=name,
                                weights_hash=common.safe_weights_hash(engine),
                                warnings=common.prompt_warnings(engine, args.prompt))

    def work(job: Job) -> Outcome:
        return image_job(rt, name, request, args.num_images, ranking, args.score, skeleton, job, NAME)

    total = args.steps or engine.defaults.steps
    return await common.submit_and_wait(rt, name, skeleton, total, work, args.wait_seconds, report)


def image_job(rt: Runtime, name: str, request: GenerationRequest, keep: int, ranking: bool, score: bool,
              skeleton: GenerationReport, job: Job, tool: str, extra_meta: dict | None = None) -> Outcome:
    """Runs on the engine's worker: generate, check, rank, store, preview."""
    timings = Timings(queue=round(job.queue_seconds, 4))
    engine = common.loaded_engine(rt, name, timings)
    result = common.run_engine(engine, request, job, timings)
    common.check_outputs(result.images, len(request.seeds))
    job.raise_if_cancelled()

    scores: list[float] | None = None
    if ranking or score:
        start = time.monotonic()
        scores = rt.clip_scores(result.images, request.prompt)
        timings.score = round(time.monotonic() - start, 4)
    order = list(range(len(result.images)))
    if ranking and scores is not None:
        order = sorted(order, key=lambda i: -scores[i] if math.isfinite(scores[i]) else math.inf)[:keep]
    report = skeleton.model_copy(deep=True)
    report.job_id = job.id
    report.status = "done"
    report.backend = result.backend
    report.params = {k: v for k, v in result.params.items() if v is not None}
    report.warnings = list(dict.fromkeys([*report.warnings, *result.warnings]))
    if ranking and scores is not None:
        report.candidates = [Candidate(seed=s, clip_score=common.finite_or_none(scores[i]), kept=i in order)
                             for i, s in enumerate(result.seeds)]

    start = time.monotonic()
    kept_images = [result.images[i] for i in order]
    content = []
    links = []
    saved_names: set[str] = set()
    for i in order:
        image, seed = result.images[i], result.seeds[i]
        meta = {**common.file_metadata(tool, name, engine, request, seed, report.params, result.backend),
                **(extra_meta or {})}
        stored = rt.store.save(media.png_bytes(image.convert("RGB"), meta), "png",
                               {**meta, "job_id": job.id, "clip_score": scores[i] if scores else None},
                               keep=saved_names)
        saved_names.add(stored.name)
        clip = common.finite_or_none(scores[i]) if scores else None
        report.images.append(ImageOutput(uri=stored.uri, seed=seed, width=image.width, height=image.height,
                                         clip_score=clip))
        score_note = f", CLIP {clip:.1f}" if clip is not None else ""
        links.append(common.link(stored, f"{image.width}x{image.height} PNG, seed {seed}{score_note}"))
    content.extend(common.preview_blocks(rt, kept_images, report.warnings))
    timings.encode = round(time.monotonic() - start, 4)
    report.timings = timings
    return Outcome(report, [common.summary_text(report), *content, *links])
