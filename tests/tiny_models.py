"""Tiny random-weight Shapes models, built from the nets' "tiny" configs, for tests.

Zero-initialised output layers are re-drawn at random: a denoiser that outputs 0 everywhere
would make every sampler trivially agree and hide real differences.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from lanterna.engines import weights
from lanterna.engines.nets import NET_SIZES, VIDEO_NET_KINDS, build_net
from lanterna.engines.nets.text import ShapesTokenizer, text_conditioner
from lanterna.engines.pipeline import LatentDiffusionPipeline


def randomise_zero_params(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 0 and torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return module


def tiny_clip() -> nn.Module:
    torch.manual_seed(1)
    config = dict(NET_SIZES["clip"]["tiny"], vocab_size=ShapesTokenizer().vocab_size)
    return build_net("clip", config).eval()


def tiny_vae() -> nn.Module:
    torch.manual_seed(2)
    return build_net("vae", NET_SIZES["vae"]["tiny"]).eval()


def tiny_denoiser(kind: str, text_context: str = "states", **config) -> nn.Module:
    context_dim = text_conditioner(tiny_clip(), text_context).context_width  # draws with its own seed
    torch.manual_seed(3)
    net = build_net(kind, {**NET_SIZES[kind]["tiny"], "context_dim": context_dim, **config})
    return randomise_zero_params(net, 4).eval()


def tiny_pipeline(kind: str = "dit") -> LatentDiffusionPipeline:
    return LatentDiffusionPipeline(tiny_denoiser(kind), tiny_vae(), tiny_clip(), ShapesTokenizer())


def save_tiny_bundle(directory: Path, kinds: tuple[str, ...] = ("dit", "video_dit"),
                     text_context: str = "states", **config) -> Path:
    """Write tiny shapes-vae, shapes-clip and denoisers with model cards, like the bundled ones.

    `config` overrides the denoisers' tiny net configs (e.g. context_layers=1 for the U-Net).
    """
    names = {"dit": "shapes-dit", "unet": "shapes-unet", "video_dit": "shapes-video", "video_unet": "shapes-video"}
    for name, module, net in (("shapes-vae", tiny_vae(), "vae"), ("shapes-clip", tiny_clip(), "clip")):
        weights.save_module(module, name, directory)
        weights.write_card(name, {"name": name, "net": net, "config": asdict(module.config)}, directory)
    for kind in kinds:
        net = tiny_denoiser(kind, text_context, **config)
        video = kind in VIDEO_NET_KINDS
        card = {
            "name": names[kind], "net": kind, "config": asdict(net.config), "prediction": "v",
            "text_context": text_context,
            "components": {"vae": "shapes-vae", "text_encoder": "shapes-clip"},
            "defaults": {"steps": 4, "guidance": 3.0, "sampler": "dpmpp-2m", "width": 64,
                         "height": 64, **({"frames": 4, "fps": 8} if video else {})},
            **({"max_frames": 8} if video else {}),
        }
        weights.save_module(net, names[kind], directory)
        weights.write_card(names[kind], card, directory)
    return directory
