"""`edit`: change an existing image with a prompt (img2img) or repaint a masked region (inpaint)."""

from __future__ import annotations

import hashlib
from typing import Literal

import anyio.to_thread
from PIL import Image
from pydantic import BaseModel, Field, model_validator

from lanterna.engines.base import GenerationRequest
from lanterna.server.inputs import ACCEPTED, read_image
from lanterna.server.jobs import Job
from lanterna.server.runtime import Runtime
from lanterna.tools import common
from lanterna.tools.common import GenerationReport, Outcome, ProgressReport
from lanterna.tools.generate_image import image_job

NAME = "edit"
DESCRIPTION = f"""Edit an image with a text prompt.

mode 'img2img' redraws the whole image toward the prompt; strength sets how far (0 = unchanged,
1 = ignore the input). mode 'inpaint' repaints only where the mask is white and keeps the black
part. image and mask are each {ACCEPTED}. The input is resized to the model's native size.
Returns previews, resource links and seeds like generate_image."""


class EditArgs(BaseModel):
    image: str = Field(min_length=1, description=f"The image to edit: {ACCEPTED}.")
    prompt: str = common.prompt_field()
    mode: Literal["img2img", "inpaint"] = Field("img2img", description="'img2img' or 'inpaint' (needs mask).")
    mask: str | None = Field(None, min_length=1, description="inpaint only: white = repaint, black = keep; "
                             "same size as the image. Same sources as image.")
    strength: float = Field(0.6, ge=0.0, le=1.0, description="How much to change: 0 keeps the input, 1 ignores it.")
    negative_prompt: str = common.negative_field()
    steps: int | None = common.steps_field()
    guidance: float | None = common.guidance_field()
    seed: int = common.seed_field()
    model: str | None = common.model_field("image")
    num_images: int = Field(1, ge=1, le=8, description="How many variations to return (seed, seed+1, ...).")
    backend: common.Backend | None = common.backend_field()
    wait_seconds: float = common.wait_field()

    @model_validator(mode="after")
    def _mask_matches_mode(self) -> EditArgs:
        if self.mode == "inpaint" and self.mask is None:
            raise ValueError("mask: mode 'inpaint' needs a mask (white = repaint, black = keep)")
        if self.mode == "img2img" and self.mask is not None:
            raise ValueError("mask: only used with mode 'inpaint'; drop it or set mode='inpaint'")
        return self


async def edit(args: EditArgs, rt: Runtime, report: ProgressReport | None = None) -> Outcome:
    task = "i2i" if args.mode == "img2img" else "inpaint"
    name, engine = common.pick_engine(rt, args.model, task)
    image = await anyio.to_thread.run_sync(read_image, args.image, "image", rt.rules, rt.store)
    mask = None
    if args.mask is not None:
        mask = await anyio.to_thread.run_sync(read_image, args.mask, "mask", rt.rules, rt.store)
        if mask.size != image.size:
            raise common.ArgumentError(f"mask: size {mask.size[0]}x{mask.size[1]} must equal the image's "
                                       f"{image.size[0]}x{image.size[1]}")
        mask = mask.convert("L")
    request = GenerationRequest(
        task=task, prompt=args.prompt, seeds=common.resolve_seeds(args.seed, args.num_images),
        negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance,
        init_image=image.convert("RGB"), mask=mask, strength=args.strength,
        backend=common.request_backend(engine, args.backend))
    skeleton = GenerationReport(status="running", job_id="", kind="edit", model=name,
                                weights_hash=common.safe_weights_hash(engine),
                                warnings=common.prompt_warnings(engine, args.prompt))

    inputs = {"input_image": source_note(args.image, image)}
    if mask is not None and args.mask is not None:
        inputs["input_mask"] = source_note(args.mask, mask)

    def work(job: Job) -> Outcome:
        return image_job(rt, name, request, args.num_images, False, False, skeleton, job, NAME, inputs)

    # img2img runs only the last `strength` share of the schedule; the engine reports the real count.
    total = max(1, round((args.steps or engine.defaults.steps) * max(args.strength, 0.01)))
    return await common.submit_and_wait(rt, name, skeleton, total, work, args.wait_seconds, report)


def source_note(source: str, image: Image.Image) -> str:
    """How the sidecar records an input: its resource URI, or a hash of its pixels."""
    if source.startswith("lanterna://"):
        return source
    return f"pixels-sha256:{hashlib.sha256(image.tobytes()).hexdigest()[:16]} ({image.width}x{image.height})"
