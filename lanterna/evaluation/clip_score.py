"""CLIP score: 100 * max(cos(image embedding, text embedding), 0), torchmetrics' convention.

Two scorers implement the `Scorer` protocol (lanterna/engines/base.py):
- `ShapesCLIPScorer`: the bundled `shapes-clip` (or any `ShapesCLIP` with its tokenizer);
- `TransformersCLIPScorer`: any CLIP checkpoint in transformers format in a local folder,
  preprocessed by its own `CLIPProcessor` exactly as torchmetrics' `CLIPScore` does.
Per-image scores clamp at 0 image by image; `ClipScoreSummary.mean` is the mean of those.
(torchmetrics' `CLIPScore` clamps the batch mean instead; both agree when no cosine is negative.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from lanterna.engines.base import Scorer
from lanterna.evaluation.features import SHAPES_CLIP, clip_image_size, load_bundled_clip, shapes_clip_pixels
from lanterna.evaluation.image_io import load_rgb, pil_to_uint8


def clip_score_from_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Row-wise 100 * max(cos, 0) of paired embeddings, in float64."""
    cos = F.cosine_similarity(image_embeds.double(), text_embeds.double(), dim=-1, eps=1e-12)
    return 100 * cos.clamp_min(0)


def pair_up(images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]:
    """One prompt per image: a single prompt is shared by all images."""
    prompts = list(prompts)
    if len(prompts) == 1 and len(images) > 1:
        prompts = prompts * len(images)
    if len(prompts) != len(images):
        raise ValueError(f"need one prompt, or one per image: got {len(prompts)} prompts "
                         f"for {len(images)} images")
    return prompts


def model_output_tensor(output) -> torch.Tensor:
    """transformers >= 5 wraps `get_*_features` in a ModelOutput; older ones return the tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ShapesCLIPScorer:
    """CLIP score with a `ShapesCLIP` and its `ShapesTokenizer`; images resized to the model's size."""

    def __init__(self, model: torch.nn.Module, tokenizer, name: str = SHAPES_CLIP,
                 batch_size: int = 64) -> None:
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.image_size = clip_image_size(model)

    @classmethod
    def from_bundled(cls, directory: Path | None = None) -> ShapesCLIPScorer:
        model, _ = load_bundled_clip(directory)  # first: it says clearly when weights are missing
        from lanterna.engines.nets.text import ShapesTokenizer

        return cls(model, ShapesTokenizer())

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        # One image at a time into pixels: sizes may differ; resized as the feature extractor does.
        pixels = torch.cat([shapes_clip_pixels(pil_to_uint8([im]), self.image_size) for im in images])
        return self.model.encode_image(pixels).float()

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        max_length = getattr(getattr(self.model, "config", None), "max_length", None)
        tokens = (self.tokenizer.encode(list(prompts), max_length) if max_length
                  else self.tokenizer.encode(list(prompts)))
        return self.model.encode_text(tokens.ids, tokens.mask).float()

    def clip_scores(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return batched_scores(self, images, pair_up(images, prompts), self.batch_size)


class TransformersCLIPScorer:
    """CLIP score with a transformers `CLIPModel` + `CLIPProcessor` saved in a local folder.

    Texts longer than the model reads are truncated by the tokenizer, which keeps the end-of-text
    token the embedding is pooled from (torchmetrics cuts the ids instead, losing it).
    """

    def __init__(self, path: str | Path, batch_size: int = 32, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        path = Path(path).expanduser()
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no CLIP checkpoint (config.json) in {path}")
        self.name = path.name
        self.device = torch.device(device)
        self.model = CLIPModel.from_pretrained(str(path)).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(str(path))
        self.batch_size = batch_size
        self.max_length = self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=[load_rgb(im) for im in images], return_tensors="pt")
        out = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
        return model_output_tensor(out).float().cpu()

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.processor(text=list(prompts), return_tensors="pt", padding=True,
                                truncation=True, max_length=self.max_length)
        out = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device))
        return model_output_tensor(out).float().cpu()

    def clip_scores(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        return batched_scores(self, images, pair_up(images, prompts), self.batch_size)


def batched_scores(scorer, images: Sequence[Image.Image], prompts: Sequence[str],
                   batch_size: int) -> list[float]:
    """Per-image scores, embedding each distinct prompt once."""
    distinct = list(dict.fromkeys(prompts))
    text = torch.cat([scorer.embed_texts(distinct[i:i + batch_size])
                      for i in range(0, len(distinct), batch_size)])
    row = {p: i for i, p in enumerate(distinct)}
    scores: list[float] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        image_embeds = scorer.embed_images(chunk)
        text_embeds = text[[row[p] for p in prompts[start:start + batch_size]]]
        scores.extend(clip_score_from_embeddings(image_embeds, text_embeds).tolist())
    return scores


@dataclass
class ClipScoreSummary:
    per_image: list[float]
    mean: float


def clip_score(scorer: Scorer, images: Sequence[Image.Image], prompts: str | Sequence[str]) -> ClipScoreSummary:
    """Per-image CLIP scores and their mean; `prompts` is one prompt or one per image."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    scores = scorer.clip_scores(list(images), prompts)
    return ClipScoreSummary(scores, sum(scores) / len(scores) if scores else 0.0)


def load_scorer(path: str | Path | None = None) -> Scorer:
    """The transformers CLIP in folder `path`, or the bundled `shapes-clip` when `path` is None."""
    return ShapesCLIPScorer.from_bundled() if path is None else TransformersCLIPScorer(path)
