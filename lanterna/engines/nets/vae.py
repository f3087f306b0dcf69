"""The compression network: a KL-regularised convolutional autoencoder (VAE).

Latent diffusion's first stage (Rombach et al., CVPR 2022; Kingma & Welling 2014), small: a
conv encoder of GroupNorm + SiLU residual blocks with stride-2 downsampling predicts the mean
and log-variance of a diagonal Gaussian over the latent, the decoder mirrors it with
nearest-neighbour upsampling. With channels (c0, c1, c2) the downsampling factor is 4:
64 x 64 x 3 pixels in [-1, 1] <-> 16 x 16 x 4 latents.

`scaling_factor` (a buffer, saved with the weights) is 1 / std of the latents on the training
data, so diffusion sees unit-variance inputs: `encode_latents` returns z * scaling_factor,
`decode_latents` takes such scaled latents. `encode` / `decode` work on the unscaled z.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lanterna.engines.nets.layers import Attention


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    latent_channels: int = 4
    channels: tuple[int, ...] = (16, 32, 64)  # one per resolution; factor 2 ** (levels - 1)
    res_blocks: int = 1  # per level in the encoder; the decoder has one more
    mid_attention: bool = False
    norm_groups: int = 8
    # The decoder's own widths and depth (None: the encoder's). A decoder can be retrained wider
    # on a frozen encoder's latents, which every denoiser trained on them then draws through.
    decoder_channels: tuple[int, ...] | None = None
    decoder_res_blocks: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))  # JSON gives lists
        if self.decoder_channels is not None:
            if len(self.decoder_channels) != len(self.channels):
                raise ValueError(f"decoder_channels {self.decoder_channels} must have one width per level "
                                 f"of channels {self.channels}")
            object.__setattr__(self, "decoder_channels", tuple(self.decoder_channels))

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)


VAE_SIZES: dict[str, dict] = {
    "tiny": dict(in_channels=3, latent_channels=4, channels=(8, 16, 16), res_blocks=1,
                 mid_attention=True, norm_groups=4),
    # f = 4; 0.46 M parameters, 0.49 GFLOP to encode and decode a 64x64 image (0.15 + 0.34).
    # Flat-shaded shapes need no attention in the middle; thin early levels keep a training step
    # at a third of the (32, 64, 64) coder's time.
    "default": dict(in_channels=3, latent_channels=4, channels=(16, 32, 64), res_blocks=1,
                    mid_attention=False, norm_groups=8),
}


class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)) over each latent value."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                            device=self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(posterior || N(0, I)) per sample, summed over the latent (B,)."""
        mean, var, logvar = self.mean.float(), self.var.float(), self.logvar.float()
        return 0.5 * (mean.pow(2) + var - 1.0 - logvar).flatten(1).sum(1)


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the latent grid (the middle of both coders)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = Attention(channels, heads=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        out = self.attn(self.norm(x).flatten(2).transpose(1, 2))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def middle(channels: int, config: VAEConfig) -> nn.Sequential:
    attention = AttentionBlock(channels, config.norm_groups) if config.mid_attention else nn.Identity()
    return nn.Sequential(ResBlock(channels, channels, config.norm_groups), attention)


class Encoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        ch = config.channels
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, ch[0], 3, padding=1)]
        current = ch[0]
        for level, out_ch in enumerate(ch):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(current, out_ch, config.norm_groups))
                current = out_ch
            if level < len(ch) - 1:
                layers.append(nn.Conv2d(current, current, 3, stride=2, padding=1))
        layers += [middle(current, config), nn.GroupNorm(config.norm_groups, current), nn.SiLU(),
                   nn.Conv2d(current, 2 * config.latent_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Upsample(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        ch = config.decoder_channels or config.channels
        res_blocks = config.res_blocks if config.decoder_res_blocks is None else config.decoder_res_blocks
        current = ch[-1]
        layers: list[nn.Module] = [nn.Conv2d(config.latent_channels, current, 3, padding=1),
                                   middle(current, config)]
        for level in reversed(range(len(ch))):
            for _ in range(res_blocks + 1):
                layers.append(ResBlock(current, ch[level], config.norm_groups))
                current = ch[level]
            if level > 0:
                # Halving the channels before the upsampling conv keeps the high resolutions cheap.
                layers.append(Upsample(current, ch[level - 1]))
                current = ch[level - 1]
        layers += [nn.GroupNorm(config.norm_groups, current), nn.SiLU(),
                   nn.Conv2d(current, config.in_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.register_buffer("scaling_factor", torch.tensor(1.0))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        f = self.config.downsample
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by {f}")
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def encode_latents(self, x: torch.Tensor, generator: torch.Generator | None = None,
                       deterministic: bool = False) -> torch.Tensor:
        """Pixels -> scaled latents for diffusion: a posterior sample, or its mean if deterministic."""
        posterior = self.encode(x)
        z = posterior.mode() if deterministic else posterior.sample(generator=generator)
        return z * self.scaling_factor

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z / self.scaling_factor)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A reconstruction through a posterior sample."""
        return self.decode(self.encode(x).sample(generator=generator))
