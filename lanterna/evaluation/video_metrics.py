"""Video metrics on a clip: a list of PIL frames or a T x 3 x H x W uint8 tensor.

- temporal flicker (VBench, Huang et al. 2024): m = mean over consecutive frame pairs of the mean
  absolute pixel difference (0-255 scale); score = (255 - m) / 255. 1 = no change at all.
- motion smoothness: VBench drops the odd frames and rebuilds them with a frame interpolator;
  here the interpolator is linear: each odd frame i (with a frame i + 1) is predicted as the
  average of frames i - 1 and i + 1, e = mean absolute error of the predictions (0-255 scale),
  score = (255 - e) / 255. 1 = still, or changing at a constant rate; jitter scores lower.
- subject consistency (VBench's definition, any feature extractor in place of DINO): for every
  frame after the first, the average of max(0, cos) to the first frame's features and to the
  previous frame's features; the clip's score is the mean over those frames.
- CLIP score: the mean of the per-frame CLIP scores against one prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lanterna.engines.base import Scorer
from lanterna.evaluation.features import FeatureExtractor
from lanterna.evaluation.image_io import list_image_files, load_rgb, pil_to_uint8, uint8_to_pil

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})

Frames = Sequence[Image.Image] | torch.Tensor


def load_video(path: str | Path) -> list[Image.Image]:
    """Frames of a GIF / WebP / MP4 (and other ffmpeg formats), or of a folder of images by name."""
    import imageio.v3 as iio

    path = Path(path)
    if path.is_dir():
        return [load_rgb(p) for p in list_image_files(path)]
    if not path.is_file():
        raise FileNotFoundError(f"no such video or folder of frames: {path}")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        arrays = iio.imiter(path, plugin="FFMPEG")
    else:
        arrays = iio.imiter(path, mode="RGB")
    frames = [Image.fromarray(np.asarray(a)[..., :3], "RGB") for a in arrays]
    if not frames:
        raise ValueError(f"no frames in {path}")
    return frames


def frames_tensor(frames: Frames) -> torch.Tensor:
    """uint8 T x 3 x H x W."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be a uint8 T x 3 x H x W tensor, got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        return frames
    sizes = {im.size for im in frames}
    if len(sizes) != 1:
        raise ValueError(f"all frames must have one size, got {sorted(sizes)}")
    return pil_to_uint8(list(frames))


def temporal_flicker(frames: Frames) -> float:
    x = frames_tensor(frames).double()
    if len(x) < 2:
        raise ValueError("temporal flicker needs at least 2 frames")
    pair_means = (x[1:] - x[:-1]).abs().mean(dim=(1, 2, 3))
    return float((255.0 - pair_means.mean()) / 255.0)


def motion_smoothness(frames: Frames) -> float:
    x = frames_tensor(frames).double()
    middle = list(range(1, len(x) - 1, 2))
    if not middle:
        raise ValueError("motion smoothness needs at least 3 frames")
    predicted = (x[[i - 1 for i in middle]] + x[[i + 1 for i in middle]]) / 2
    error = (predicted - x[middle]).abs().mean()
    return float((255.0 - error) / 255.0)


def subject_consistency(frames: Frames, extractor: FeatureExtractor, batch_size: int = 32) -> float:
    x = frames_tensor(frames)
    if len(x) < 2:
        raise ValueError("subject consistency needs at least 2 frames")
    feats = torch.cat([extractor(b).detach().cpu().double() for b in x.split(batch_size)])
    to_first = F.cosine_similarity(feats[1:], feats[:1], dim=-1).clamp_min(0)
    to_previous = F.cosine_similarity(feats[1:], feats[:-1], dim=-1).clamp_min(0)
    return float(((to_first + to_previous) / 2).mean())


def frame_clip_scores(frames: Frames, prompt: str, scorer: Scorer) -> list[float]:
    images = uint8_to_pil(frames) if isinstance(frames, torch.Tensor) else list(frames)
    return scorer.clip_scores(images, [prompt])


@dataclass
class VideoReport:
    frames: int
    temporal_flicker: float
    motion_smoothness: float | None = None
    subject_consistency: float | None = None
    clip_score: float | None = None
    frame_clip_scores: list[float] = field(default_factory=list)


def evaluate_video(frames: Frames, prompt: str | None = None, scorer: Scorer | None = None,
                   extractor: FeatureExtractor | None = None) -> VideoReport:
    """Every metric the inputs allow: CLIP needs a prompt and a scorer, consistency an extractor."""
    x = frames_tensor(frames)
    report = VideoReport(frames=len(x), temporal_flicker=temporal_flicker(x))
    if len(x) >= 3:
        report.motion_smoothness = motion_smoothness(x)
    if extractor is not None:
        report.subject_consistency = subject_consistency(x, extractor)
    if prompt is not None and scorer is not None:
        report.frame_clip_scores = frame_clip_scores(x, prompt, scorer)
        report.clip_score = sum(report.frame_clip_scores) / len(report.frame_clip_scores)
    return report
