"""Encoding results to files: PNG with its parameters in a text chunk, MP4, animated GIF, contact sheets."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

PNG_TEXT_KEY = "lanterna"


def png_bytes(image: Image.Image, metadata: dict[str, Any] | None = None) -> bytes:
    """PNG with every parameter as JSON in a `lanterna` text chunk (readable with `Image.open(...).text`)."""
    info = PngInfo()
    if metadata:
        info.add_text(PNG_TEXT_KEY, json.dumps(metadata, sort_keys=True, default=str))
    info.add_text("Software", "lanterna")
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info, compress_level=6)
    return out.getvalue()


def gif_bytes(frames: list[Image.Image], fps: int) -> bytes:
    out = io.BytesIO()
    rgb = [f.convert("RGB") for f in frames]
    rgb[0].save(out, format="GIF", save_all=True, append_images=rgb[1:], loop=0,
                duration=max(20, round(1000 / fps)), optimize=False)
    return out.getvalue()


def even_size(frame: Image.Image) -> Image.Image:
    """H.264 in yuv420p needs even sides; pad by one pixel (edge colour) where needed."""
    w, h = frame.size
    if w % 2 == 0 and h % 2 == 0:
        return frame
    padded = Image.new("RGB", (w + w % 2, h + h % 2))
    padded.paste(frame, (0, 0))
    return padded


def mp4_bytes(frames: list[Image.Image], fps: int) -> bytes:
    """H.264 MP4 through the ffmpeg binary that imageio-ffmpeg ships."""
    import imageio_ffmpeg

    rgb = [even_size(f.convert("RGB")) for f in frames]
    size = rgb[0].size
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            path, size, fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            macro_block_size=1, quality=8, ffmpeg_log_level="error",
            output_params=["-movflags", "+faststart"])
        writer.send(None)
        for frame in rgb:
            writer.send(np.ascontiguousarray(np.asarray(frame, dtype=np.uint8)).tobytes())
        writer.close()
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def keyframe_indices(count: int, wanted: int) -> list[int]:
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def contact_sheet(frames: list[Image.Image], max_frames: int = 8, columns: int = 4,
                  gap: int = 2) -> Image.Image:
    """Evenly spaced keyframes in a grid, first frame top left, so one image shows the motion."""
    picks = [frames[i].convert("RGB") for i in keyframe_indices(len(frames), max_frames)]
    columns = min(columns, len(picks))
    rows = math.ceil(len(picks) / columns)
    w, h = picks[0].size
    sheet = Image.new("RGB", (columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap), (255, 255, 255))
    for i, frame in enumerate(picks):
        sheet.paste(frame, ((i % columns) * (w + gap), (i // columns) * (h + gap)))
    return sheet
