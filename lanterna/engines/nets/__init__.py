"""The in-repo networks, one flat file each, sized from a table of named configs.

Every net has a frozen dataclass `config`; `build_net(kind, asdict(net.config))` rebuilds it, so
weights (safetensors) and a JSON config round-trip. Sizes: "tiny" (tests) and "default" (the
bundled models).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lanterna.engines.nets.dit import DIT_SIZES, DiT, DiTConfig
from lanterna.engines.nets.text import CLIP_SIZES, ShapesCLIP, ShapesCLIPConfig
from lanterna.engines.nets.unet import UNET_SIZES, VIDEO_UNET_SIZES, UNet, UNetConfig, VideoUNet, VideoUNetConfig
from lanterna.engines.nets.vae import VAE_SIZES, AutoencoderKL, VAEConfig
from lanterna.engines.nets.video_dit import VIDEO_DIT_SIZES, VideoDiT, VideoDiTConfig

NET_KINDS = ("vae", "dit", "unet", "video_dit", "video_unet", "clip")
VIDEO_NET_KINDS = ("video_dit", "video_unet")

NET_CLASSES: dict[str, tuple[type[nn.Module], type]] = {
    "vae": (AutoencoderKL, VAEConfig),
    "dit": (DiT, DiTConfig),
    "unet": (UNet, UNetConfig),
    "video_dit": (VideoDiT, VideoDiTConfig),
    "video_unet": (VideoUNet, VideoUNetConfig),
    "clip": (ShapesCLIP, ShapesCLIPConfig),
}

NET_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "vae": VAE_SIZES,
    "dit": DIT_SIZES,
    "unet": UNET_SIZES,
    "video_dit": VIDEO_DIT_SIZES,
    "video_unet": VIDEO_UNET_SIZES,
    "clip": CLIP_SIZES,
}


def build_net(kind: str, config: dict[str, Any]) -> nn.Module:
    """A freshly initialised net of `kind` from a config dict (e.g. a model card's)."""
    if kind not in NET_CLASSES:
        raise ValueError(f"unknown net kind {kind!r}; known: {', '.join(NET_KINDS)}")
    net_class, config_class = NET_CLASSES[kind]
    try:
        parsed = config_class(**config)
    except TypeError as e:  # unknown or missing fields
        raise ValueError(f"bad {kind} config: {e}") from e
    return net_class(parsed)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
