"""ShapesGenEval verdicts for `evaluate`: does an image (or video) show what a Shapes World caption asks?

The caption grammar and the oracle live in lanterna.world (shared WORLD.md). They are imported on
first use: without them, or for a prompt outside the grammar, there is no verdict and the caller
adds a warning instead.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from pydantic import BaseModel, Field


class Check(BaseModel):
    requirement: str = Field(description="what the prompt asks, e.g. '1 red circle', 'red circle left of ...'")
    passed: bool
    reason: str = Field(description="what the oracle saw")


class Verdict(BaseModel):
    passed: bool = Field(description="every requirement of the prompt holds and nothing extra of an asked kind "
                         "is there (GenEval's rule)")
    failures: list[str] = Field(default_factory=list, description="'requirement: reason' for each failed check")
    checks: list[Check] = Field(default_factory=list)
    background: str | None = None
    objects: list[str] = Field(default_factory=list, description="what the oracle found (the first frame of a "
                               "video): colour, shape and centroid")


class VerdictUnavailable(Exception):
    """No verdict for this prompt or input; the message says why (for a warning)."""


def requirements_of(prompt: str) -> Any:
    """The parsed caption, or VerdictUnavailable."""
    try:
        from lanterna.world import parse_caption
    except ImportError:
        raise VerdictUnavailable("no ShapesGenEval verdicts: the Shapes World oracle (lanterna.world) is not "
                                 "installed") from None
    try:
        return parse_caption(prompt)
    except ValueError as e:
        raise VerdictUnavailable(f"no ShapesGenEval verdict: {e}") from None


def verdict(media: Image.Image | list[Image.Image], requirements: Any) -> Verdict:
    """The oracle's verdict on one image, or on a video given as its frames."""
    from lanterna.world import judge

    if isinstance(media, Image.Image):
        if requirements.is_video:
            raise VerdictUnavailable("no ShapesGenEval verdict for a still image: the prompt asks for motion")
        media = media.convert("RGB")
    else:
        media = [frame.convert("RGB") for frame in media]
    result = judge(media, requirements)
    return Verdict(
        passed=bool(result.passed), failures=list(result.failures),
        checks=[Check(requirement=c.requirement, passed=bool(c.passed), reason=c.reason) for c in result.checks],
        background=result.background,
        objects=[f"{o.name} at ({o.centroid[0]:.0f}, {o.centroid[1]:.0f})" for o in result.objects])
