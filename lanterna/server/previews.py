"""Inline previews: small enough for an agent's context, large enough for it to see what was made.

Each result gets a budget of base64 characters shared by its previews. A preview is at most
`max_side` pixels a side; tiny images (the Shapes models draw 64 x 64) are upscaled with
nearest-neighbour to about `min_side` so their pixels stay crisp. PNG is used when it fits (lossless,
and small for flat synthetic images), else JPEG at falling quality, then smaller sizes.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class PreviewBudget:
    max_side: int = 512
    min_side: int = 256
    total_chars: int = 100_000


@dataclass(frozen=True)
class Preview:
    data: str  # base64
    mime_type: str
    width: int
    height: int


def fit_size(image: Image.Image, budget: PreviewBudget) -> Image.Image:
    w, h = image.size
    side = max(w, h)
    if side > budget.max_side:
        scale = budget.max_side / side
        return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    if side < budget.min_side:
        factor = max(1, min(budget.min_side, budget.max_side) // side)
        if factor > 1:
            return image.resize((w * factor, h * factor), Image.NEAREST)
    return image


def encoded_chars(n_bytes: int) -> int:
    return 4 * ((n_bytes + 2) // 3)


def encode(image: Image.Image, fmt: str, quality: int | None = None) -> bytes:
    out = io.BytesIO()
    if fmt == "PNG":
        image.save(out, format="PNG", compress_level=6)
    else:
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


MIME = {"PNG": "image/png", "JPEG": "image/jpeg"}
LOSSY_STEPS = (85, 70, 50)


def attempt(candidate: Image.Image, max_chars: int) -> tuple[Preview | None, int]:
    """The best encoding of this size that fits, and the smallest size seen otherwise.

    JPEG is tried first because it is fast and tells cheaply whether lossless has a chance: when
    even JPEG at 85 does not fit, PNG (lossless, but slow on photographic content) cannot either
    in practice. Synthetic images such as the Shapes outputs stay PNG, with crisp edges.
    """
    smallest = None
    for quality in LOSSY_STEPS:
        data = encode(candidate, "JPEG", quality)
        smallest = min(smallest or len(data), len(data))
        if encoded_chars(len(data)) <= max_chars:
            if quality == LOSSY_STEPS[0]:
                png = encode(candidate, "PNG")
                if encoded_chars(len(png)) <= max_chars:
                    data, quality = png, None
            fmt = "PNG" if quality is None else "JPEG"
            return Preview(base64.b64encode(data).decode(), MIME[fmt], *candidate.size), len(data)
    return None, smallest


def preview(image: Image.Image, max_chars: int, budget: PreviewBudget) -> Preview | None:
    """One image within `max_chars` base64 characters, or None if even a 32 px version does not fit."""
    candidate = fit_size(image.convert("RGB"), budget)
    while True:
        made, smallest = attempt(candidate, max_chars)
        if made is not None:
            return made
        w, h = candidate.size
        if max(w, h) <= 32:
            return None
        # Encoded size grows roughly with the pixel count: shrink by the square root of the overshoot.
        scale = min(0.9, max(0.3, 0.95 * math.sqrt(max_chars / encoded_chars(smallest))))
        candidate = candidate.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)


def previews(images: list[Image.Image], budget: PreviewBudget) -> list[Preview | None]:
    """Previews sharing the budget; an image that did not fit leaves its share to the next ones."""
    out: list[Preview | None] = []
    remaining = budget.total_chars
    for i, image in enumerate(images):
        share = remaining // (len(images) - i)
        p = preview(image, share, budget)
        out.append(p)
        if p is not None:
            remaining -= len(p.data)
    return out
