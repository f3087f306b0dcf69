"""Image sets for the metrics: a folder, a list of files or PIL images, or a uint8 tensor.

Everything reaches a feature extractor as uint8 B x 3 x H x W tensors (torchmetrics' input
convention), read lazily in batches so a large folder never sits in memory at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

ImageLike = Union[str, Path, Image.Image]
ImageSource = Union[str, Path, Sequence[ImageLike], torch.Tensor, np.ndarray, "ImageSet"]


def list_image_files(folder: str | Path) -> list[Path]:
    """The images directly inside `folder`, sorted by name (the order frames and hashes use)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"not a folder of images: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def load_rgb(item: ImageLike) -> Image.Image:
    if isinstance(item, Image.Image):
        return item if item.mode == "RGB" else item.convert("RGB")
    try:
        with Image.open(item) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for unknown or broken files
        raise ValueError(f"cannot read {item} as an image: {e}") from None


def pil_to_uint8(images: Sequence[Image.Image]) -> torch.Tensor:
    """Same-size PIL images -> uint8 B x 3 x H x W."""
    arrays = [np.asarray(load_rgb(im), dtype=np.uint8) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def uint8_to_pil(images: torch.Tensor) -> list[Image.Image]:
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in array]


def as_uint8_batch(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A uint8 B x 3 x H x W tensor from a tensor or array in that layout or in B x H x W x 3."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (0-255), got {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"images must be B x 3 x H x W, got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise ValueError(f"images must have 3 channels (RGB), got shape {tuple(x.shape)}")
    return x.contiguous()


@dataclass
class ImageSet:
    """A set of images read in batches; either `items` (paths / PIL images) or a `tensor`."""

    items: list[ImageLike] | None = None
    tensor: torch.Tensor | None = None

    @classmethod
    def of(cls, source: ImageSource) -> ImageSet:
        if isinstance(source, ImageSet):
            return source
        if isinstance(source, (torch.Tensor, np.ndarray)):
            return cls(tensor=as_uint8_batch(source))
        if isinstance(source, (str, Path)):
            path = Path(source)
            return cls(items=list(list_image_files(path)) if path.is_dir() else [path])
        items = list(source)
        if not items:
            raise ValueError("an image set needs at least one image")
        return cls(items=items)

    def __len__(self) -> int:
        return len(self.tensor) if self.tensor is not None else len(self.items or [])

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """uint8 batches of at most `batch_size`; images of another size start a new batch."""
        if self.tensor is not None:
            yield from self.tensor.split(batch_size)
            return
        pending: list[Image.Image] = []
        for item in self.items or []:
            image = load_rgb(item)
            if pending and (len(pending) == batch_size or image.size != pending[0].size):
                yield pil_to_uint8(pending)
                pending = []
            pending.append(image)
        if pending:
            yield pil_to_uint8(pending)

    def content_hash(self) -> str:
        """sha256 of the images' bytes: file bytes for files, pixel bytes for images in memory."""
        digest = hashlib.sha256()
        if self.tensor is not None:
            digest.update(f"tensor{tuple(self.tensor.shape)}".encode())
            digest.update(self.tensor.cpu().contiguous().numpy().tobytes())
            return digest.hexdigest()
        for item in self.items or []:
            if isinstance(item, Image.Image):
                data = item.convert("RGB").tobytes()
                digest.update(f"pil{item.size}:{len(data)}:".encode())
            else:
                data = Path(item).read_bytes()
                digest.update(f"file:{len(data)}:".encode())
            digest.update(data)
        return digest.hexdigest()
