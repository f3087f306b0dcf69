"""`evaluate`: score images or videos against a prompt (CLIP, ShapesGenEval verdict) and compare a set
of images with a reference set (FID, KID, precision/recall)."""

from __future__ import annotations

import logging
from typing import Literal

import anyio.to_thread
from PIL import Image
from pydantic import BaseModel, Field, model_validator

from lanterna.server.inputs import (
    ACCEPTED,
    InputError,
    InputRules,
    allowed_folder,
    read_allowed_file,
    read_frames,
)
from lanterna.server.runtime import Runtime
from lanterna.tools import verdicts
from lanterna.tools.common import ArgumentError, finite_or_none
from lanterna.tools.verdicts import Verdict, VerdictUnavailable

log = logging.getLogger("lanterna.tools.evaluate")

NAME = "evaluate"
DESCRIPTION = f"""Judge images or videos you made (or were given).

- 'clip': each image's CLIP score against the prompt (0-100; compare scores from the same scorer).
- A ShapesGenEval verdict (did the image show exactly what the caption asks: objects, colours,
  count, place, relation) is added whenever the prompt is a Shapes World caption.
- 'fid', 'kid', 'precision_recall': the set of images against `reference` images (needs a few
  dozen images per side to mean much).
- Videos (MP4 or animated GIF) get temporal flicker, motion smoothness and mean per-frame CLIP.
Each image is {ACCEPTED}; a reference entry may also be an allowed folder of images."""

Metric = Literal["clip", "verdict", "fid", "kid", "precision_recall", "video"]
SET_METRICS = ("fid", "kid", "precision_recall")
MAX_REFERENCE = 2000
# Every decoded input of one call stays in memory until it is scored: bound their sum, not just each one.
CALL_PIXELS_PER_INPUT_LIMIT = 4


class EvaluateArgs(BaseModel):
    images: list[str] = Field(min_length=1, max_length=64, description=f"Images or videos to judge: each {ACCEPTED}.")
    prompt: str | None = Field(None, min_length=1, max_length=2000,
                               description="What the images should show; needed for 'clip' and verdicts.")
    metrics: list[Metric] = Field(default_factory=lambda: ["clip"], min_length=1,
                                  description="Any of 'clip', 'verdict', 'fid', 'kid', 'precision_recall', 'video'.")
    reference: list[str] | None = Field(None, min_length=1, max_length=MAX_REFERENCE,
                                        description="Reference images (or allowed folders of them) for the set metrics.")
    features: str | None = Field(None, min_length=1, max_length=64, description="Feature extractor for set "
                                 "metrics, e.g. 'shapes-clip' (default) or 'inception-v3' when its weights are present.")

    @model_validator(mode="after")
    def _needs(self) -> EvaluateArgs:
        if any(m in SET_METRICS for m in self.metrics) and not self.reference:
            raise ValueError("reference: fid, kid and precision_recall compare against reference images; give some")
        if any(m in ("clip", "verdict") for m in self.metrics) and self.prompt is None:
            raise ValueError("prompt: 'clip' and 'verdict' judge images against a prompt; give one")
        return self


class ImageEvaluation(BaseModel):
    source: str
    width: int
    height: int
    clip_score: float | None = None
    verdict: Verdict | None = None


class VideoEvaluation(BaseModel):
    source: str
    frames: int
    temporal_flicker: float | None = None
    motion_smoothness: float | None = None
    clip_score: float | None = Field(None, description="mean per-frame CLIP score")
    verdict: Verdict | None = None


class SetMetrics(BaseModel):
    features: str
    generated_count: int
    reference_count: int
    fid: float | None = None
    kid: float | None = None
    kid_std: float | None = None
    precision: float | None = None
    recall: float | None = None


class EvaluationReport(BaseModel):
    prompt: str | None = None
    scorer: str | None = None
    images: list[ImageEvaluation] = Field(default_factory=list)
    videos: list[VideoEvaluation] = Field(default_factory=list)
    mean_clip_score: float | None = None
    verdicts_passed: int | None = Field(None, description="how many images (and videos) passed their verdict")
    set_metrics: SetMetrics | None = None
    warnings: list[str] = Field(default_factory=list)


def short(source: str) -> str:
    return source if len(source) <= 100 else source[:40] + f"...({len(source)} chars)"


def evaluate_blocking(args: EvaluateArgs, rt: Runtime) -> EvaluationReport:
    report = EvaluationReport(prompt=args.prompt)
    stills: list[tuple[str, Image.Image]] = []
    clips: list[tuple[str, list[Image.Image]]] = []
    budget = CallBudget(rt.rules)
    for i, source in enumerate(args.images):
        frames = read_frames(source, f"images[{i}]", rt.rules, rt.store)
        budget.take(frames, f"images[{i}]")
        (clips.append((short(source), frames)) if len(frames) > 1 else stills.append((short(source), frames[0])))

    requirements = None
    if args.prompt is not None:
        try:
            requirements = verdicts.requirements_of(args.prompt)
        except VerdictUnavailable as e:
            report.warnings.append(str(e))

    scorer = rt.scorer()
    want_clip = "clip" in args.metrics or "video" in args.metrics
    if want_clip and args.prompt is not None and scorer is None:
        report.warnings.append("no CLIP scorer is installed on this server; no clip scores")
    report.scorer = getattr(scorer, "name", None) if scorer is not None else None

    if stills:
        scores = rt.clip_scores([im for _, im in stills], args.prompt) if want_clip and args.prompt else None
        for j, (source, image) in enumerate(stills):
            item = ImageEvaluation(source=source, width=image.width, height=image.height,
                                   clip_score=finite_or_none(scores[j]) if scores else None)
            if requirements is not None:
                item.verdict = judge(image, requirements, report)
            report.images.append(item)
    for source, frames in clips:
        report.videos.append(evaluate_clip(source, frames, args.prompt if want_clip else None, rt,
                                           requirements, report))

    clip_values = [e.clip_score for e in [*report.images, *report.videos] if e.clip_score is not None]
    if clip_values:
        report.mean_clip_score = round(sum(clip_values) / len(clip_values), 4)
    judged = [e.verdict for e in [*report.images, *report.videos] if e.verdict is not None]
    if judged:
        report.verdicts_passed = sum(v.passed for v in judged)
    wanted_sets = [m for m in args.metrics if m in SET_METRICS]
    if wanted_sets:
        report.set_metrics = set_metrics(args, rt, [im for _, im in stills], wanted_sets, report, budget)
    report.warnings = list(dict.fromkeys(report.warnings))
    return report


class CallBudget:
    """The pixels one call may decode in all: a few times the largest single input."""

    def __init__(self, rules: InputRules) -> None:
        self.limit = rules.max_pixels * CALL_PIXELS_PER_INPUT_LIMIT
        self.pixels = 0

    def take(self, images: list[Image.Image], what: str) -> None:
        self.pixels += sum(im.width * im.height for im in images)
        if self.pixels > self.limit:
            raise InputError(f"{what}: the inputs of this call add up to more than {self.limit} pixels; "
                             f"evaluate fewer or smaller images per call")


def judge(image, requirements, report: EvaluationReport) -> Verdict | None:
    try:
        return verdicts.verdict(image, requirements)
    except VerdictUnavailable as e:
        report.warnings.append(str(e))
    except Exception as e:
        log.exception("the Shapes World oracle failed")
        report.warnings.append(f"the ShapesGenEval oracle failed on an input ({type(e).__name__}: {e})")
    return None


def evaluate_clip(source: str, frames: list[Image.Image], prompt: str | None, rt: Runtime, requirements,
                  report: EvaluationReport) -> VideoEvaluation:
    item = VideoEvaluation(source=source, frames=len(frames))
    try:
        from lanterna.evaluation.video_metrics import evaluate_video
    except ImportError:
        report.warnings.append("video metrics are unavailable (lanterna.evaluation is not installed)")
        evaluate_video = None
    if evaluate_video is not None:
        scorer = rt.scorer() if prompt else None
        with rt.scorer_lock:
            video = evaluate_video(frames, prompt=prompt, scorer=scorer)
        item.temporal_flicker = finite_or_none(video.temporal_flicker)
        item.motion_smoothness = finite_or_none(video.motion_smoothness)
        item.clip_score = finite_or_none(video.clip_score)
    elif prompt:
        per_frame = rt.clip_scores(frames, prompt)
        item.clip_score = finite_or_none(sum(per_frame) / len(per_frame)) if per_frame else None
    if requirements is not None:
        item.verdict = judge(frames, requirements, report)
    return item


def reference_images(entries: list[str], rt: Runtime, budget: CallBudget) -> list[Image.Image]:
    from lanterna.server.inputs import decode_image, read_image

    images: list[Image.Image] = []
    for i, entry in enumerate(entries):
        what = f"reference[{i}]"
        folder = allowed_folder(entry, what, rt.rules)  # never lists a folder outside the allowed ones
        if folder is not None:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
            for path in files[: MAX_REFERENCE - len(images)]:
                images.append(decode_image(read_allowed_file(str(path), what, rt.rules), what, rt.rules).convert("RGB"))
                budget.take(images[-1:], what)
        else:
            images.append(read_image(entry, what, rt.rules, rt.store).convert("RGB"))
            budget.take(images[-1:], what)
        if len(images) >= MAX_REFERENCE:
            break
    if not images:
        raise InputError("reference: no images found")
    return images


def set_metrics(args: EvaluateArgs, rt: Runtime, generated: list[Image.Image], wanted: list[str],
                report: EvaluationReport, budget: CallBudget) -> SetMetrics | None:
    reference = reference_images(args.reference or [], rt, budget)
    features = args.features or "shapes-clip"
    try:
        from lanterna.evaluation import sets
        from lanterna.evaluation.features import get_feature_extractor
    except ImportError:
        report.warnings.append("set metrics are unavailable (lanterna.evaluation is not installed)")
        return None
    if len(generated) < 2 or len(reference) < 2:
        raise ArgumentError("fid/kid/precision_recall need at least 2 still images on each side")
    try:
        extractor = get_feature_extractor(features)
    except KeyError as e:
        raise ArgumentError(f"features: {e.args[0]}") from None
    except FileNotFoundError as e:
        raise ArgumentError(f"features: {features!r} is not usable here ({e})") from None
    out = SetMetrics(features=features, generated_count=len(generated), reference_count=len(reference))
    with rt.scorer_lock:
        if "fid" in wanted:
            with sets.ill_conditioned_messages() as messages:
                out.fid = finite_or_none(sets.compute_fid(reference, generated, features=extractor, cache=False))
            report.warnings += messages
        if "kid" in wanted:
            kid = sets.compute_kid(reference, generated, features=extractor, cache=False)
            out.kid, out.kid_std = finite_or_none(kid.mean), finite_or_none(kid.std)
        if "precision_recall" in wanted:
            k = min(3, len(reference) - 1, len(generated) - 1)
            pr = sets.compute_precision_recall(reference, generated, features=extractor, k=k, cache=False)
            out.precision, out.recall = finite_or_none(pr.precision), finite_or_none(pr.recall)
    if min(len(generated), len(reference)) < 50:
        report.warnings.append("set metrics over fewer than 50 images per side are very noisy")
    return out


async def evaluate(args: EvaluateArgs, rt: Runtime) -> EvaluationReport:
    # One evaluation at a time: each may hold a few hundred megapixels while it runs.
    async with rt.evaluations.turn():
        return await anyio.to_thread.run_sync(evaluate_blocking, args, rt)
