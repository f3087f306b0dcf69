"""Sample sheets written beside a run's log: what the model makes at each evaluation."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def grid(images: list[Image.Image], columns: int) -> Image.Image:
    """Images (all the size of the first) in rows of `columns`, left to right, top to bottom."""
    w, h = images[0].size
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * w, rows * h))
    for i, image in enumerate(images):
        sheet.paste(image.convert("RGB"), ((i % columns) * w, (i // columns) * h))
    return sheet


def save_sheet(directory: Path, step: int, images: list[Image.Image], columns: int,
               captions: list[str] | None = None) -> Path:
    """samples/step-NNNNNNN.png, and the captions in reading order beside it when given."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:07d}.png"
    grid(images, columns).save(path)
    if captions is not None:
        path.with_suffix(".json").write_text(json.dumps(captions, indent=1))
    return path
