"""`generate_video`: text to a short clip, returned as MP4 + GIF links and a keyframe contact sheet."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from lanterna.engines.base import GenerationRequest
from lanterna.server import media
from lanterna.server.jobs import Job
from lanterna.server.runtime import Runtime
from lanterna.tools import common
from lanterna.tools.common import GenerationReport, Outcome, ProgressReport, Timings, VideoOutput

NAME = "generate_video"
DESCRIPTION = """Generate a short video from a text prompt.

Returns a contact sheet (evenly spaced keyframes in a grid, read left to right, top to bottom)
as an inline image so you can see the motion, and resource links to the video as MP4 and as an
animated GIF, plus the seed, size, frame count and timings. Describe motion in words the model
knows (list_models shows them). Long jobs: after wait_seconds you get status 'running' and a
job_id; call get_job."""


class GenerateVideoArgs(BaseModel):
    prompt: str = common.prompt_field()
    negative_prompt: str = common.negative_field()
    frames: int | None = Field(None, ge=1, le=256, description="Number of frames; default: the model's "
                               "(list_models shows it and the maximum).")
    fps: int = Field(8, ge=1, le=60, description="Frames per second of the MP4 and GIF.")
    width: int | None = common.size_field("width")
    height: int | None = common.size_field("height")
    steps: int | None = common.steps_field()
    guidance: float | None = common.guidance_field()
    seed: int = common.seed_field()
    model: str | None = common.model_field("video")
    score: bool = Field(False, description="Also return the mean per-frame CLIP score against the prompt.")
    backend: common.Backend | None = common.backend_field()
    wait_seconds: float = common.wait_field()


async def generate_video(args: GenerateVideoArgs, rt: Runtime, report: ProgressReport | None = None) -> Outcome:
    name, engine = common.pick_engine(rt, args.model, "t2v")
    common.check_size(name, engine, args.width, args.height)
    common.check_frames(name, engine, args.frames)
    if args.score and rt.registry.default_scorer is None:
        raise common.ArgumentError("score: no CLIP scorer is installed on this server; leave it out")
    request = GenerationRequest(
        task="t2v", prompt=args.prompt, seeds=common.resolve_seeds(args.seed, 1),
        negative_prompt=args.negative_prompt, width=args.width, height=args.height, steps=args.steps,
        guidance=args.guidance, frames=args.frames,
        backend=common.request_backend(engine, args.backend))
    skeleton = GenerationReport(status="running", job_id="", kind="video", model=name,
                                weights_hash=common.safe_weights_hash(engine),
                                warnings=common.prompt_warnings(engine, args.prompt))

    def work(job: Job) -> Outcome:
        return video_job(rt, name, request, args.fps, args.score, skeleton, job)

    total = args.steps or engine.defaults.steps
    return await common.submit_and_wait(rt, name, skeleton, total, work, args.wait_seconds, report)


def video_job(rt: Runtime, name: str, request: GenerationRequest, fps: int, score: bool, skeleton: GenerationReport,
              job: Job) -> Outcome:
    """Runs on the engine's worker: generate, check, encode MP4 + GIF + contact sheet, store, preview."""
    timings = Timings(queue=round(job.queue_seconds, 4))
    engine = common.loaded_engine(rt, name, timings)
    result = common.run_engine(engine, request, job, timings)
    if len(result.videos) != len(request.seeds):
        raise common.JobFailure(f"the engine returned {len(result.videos)} videos for {len(request.seeds)} seeds")
    for frames in result.videos:
        if not frames:
            raise common.JobFailure("the engine returned a video without frames")
        common.check_outputs(frames, len(frames), "frames", black_each=False)
    job.raise_if_cancelled()

    report = skeleton.model_copy(deep=True)
    report.job_id = job.id
    report.status = "done"
    report.backend = result.backend
    report.params = {k: v for k, v in {**result.params, "fps": fps}.items() if v is not None}
    report.warnings = list(dict.fromkeys([*report.warnings, *result.warnings]))

    scores = []
    if score:
        start = time.monotonic()
        for frames in result.videos:
            per_frame = rt.clip_scores(frames, request.prompt) or []
            scores.append(sum(per_frame) / len(per_frame) if per_frame else None)
        timings.score = round(time.monotonic() - start, 4)

    start = time.monotonic()
    sheets, links, kept = [], [], set()
    for i, (frames, seed) in enumerate(zip(result.videos, result.seeds)):
        meta = common.file_metadata("generate_video", name, engine, request, seed, report.params, result.backend)
        side = {**meta, "job_id": job.id}
        mp4 = rt.store.save(media.mp4_bytes(frames, fps), "mp4", side, keep=kept)
        gif = rt.store.save(media.gif_bytes(frames, fps), "gif", side, keep=kept | {mp4.name})
        sheet_image = media.contact_sheet(frames)
        sheet = rt.store.save(media.png_bytes(sheet_image, {**meta, "contact_sheet_of": mp4.name}), "png",
                              {**side, "contact_sheet_of": mp4.name}, keep=kept | {mp4.name, gif.name})
        kept |= {mp4.name, gif.name, sheet.name}
        clip = common.finite_or_none(scores[i]) if i < len(scores) else None
        w, h = frames[0].size
        report.videos.append(VideoOutput(uri=mp4.uri, gif_uri=gif.uri, contact_sheet_uri=sheet.uri, seed=seed,
                                         width=w, height=h, frames=len(frames), fps=fps, clip_score=clip))
        desc = f"{w}x{h}, {len(frames)} frames at {fps} fps, seed {seed}"
        links += [common.link(mp4, f"MP4 video, {desc}"), common.link(gif, f"animated GIF, {desc}"),
                  common.link(sheet, f"contact sheet of keyframes, {desc}")]
        sheets.append(sheet_image)
    content = common.preview_blocks(rt, sheets, report.warnings)
    timings.encode = round(time.monotonic() - start, 4)
    report.timings = timings
    return Outcome(report, [common.summary_text(report), *content, *links])
