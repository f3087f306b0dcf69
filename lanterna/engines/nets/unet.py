"""Latent U-Net, conditioned on text: the convolutional alternative to the DiT.

The layout of latent diffusion's U-Net (Rombach et al., CVPR 2022), scaled down: residual blocks
that take the timestep (+ pooled text) embedding as a GroupNorm scale and shift (the
"scale-shift norm" of Dhariwal & Nichol 2021), transformer blocks (self-attention,
cross-attention to the text tokens, MLP) at the lower resolutions, skip connections from every
encoder stage to the decoder, and zero-initialised last convolutions, so that every residual
branch starts at zero and the output is 0 at init.

For a 16 x 16 latent and three levels the resolutions are 16, 8 and 4; attention runs where
`attention_levels` says (by default at 8 x 8 and 4 x 4, and in the middle block, which
`extra_mid_stages` can deepen).

`context_layers` puts self-attention blocks over the text tokens before any cross-attention,
trained with the denoiser while the text tower stays frozen. Cross-attention reads the tokens as
a set; the blocks let a noun's token take in its own adjectives ("a yellow circle and a red
triangle": which colour goes with which shape), with a learned position embedding added for them
and taken off after, so that they start as the identity on trained weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lanterna.engines.nets.layers import (MLP, Attention, SelfAttentionBlock, TimestepEmbedder,
                                         batch_timesteps, sincos_1d, sincos_2d)


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    channels: tuple[int, ...] = (32, 64, 128)  # one entry per resolution level
    attention_levels: tuple[bool, ...] = (False, True, True)
    res_blocks: int = 1  # per level in the encoder; the decoder has one more
    extra_mid_stages: int = 0  # residual + transformer stages after the middle block's two
    heads: int = 4
    context_dim: int = 128
    context_layers: int = 0  # self-attention blocks over the text tokens, before cross-attention
    context_length: int = 24  # tokens the mixer's position embedding covers (the tokenizer's max_length)
    norm_groups: int = 16
    frequency_dim: int = 256
    time_scale: float = 1000.0
    # Input channels read beside the latent and not predicted: a layout map (lanterna/world/
    # grounding.py), concatenated to the noisy latent as an inpainting model reads its mask.
    layout_channels: int = 0

    def __post_init__(self) -> None:
        # JSON turns tuples into lists; keep the config hashable and comparable.
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "attention_levels", tuple(bool(a) for a in self.attention_levels))
        if len(self.channels) != len(self.attention_levels):
            raise ValueError("channels and attention_levels need one entry per level each")


UNET_SIZES: dict[str, dict] = {
    "tiny": dict(in_channels=4, channels=(16, 32), attention_levels=(False, True), res_blocks=1,
                 heads=2, context_dim=32, norm_groups=8, frequency_dim=32),
    # 4.1 M parameters, 0.25 GFLOP a forward pass on a 16x16x4 latent (the DiT's: 3.0 M, 0.25),
    # so the two compete at equal compute; attention at 8x8 and 4x4.
    "default": dict(in_channels=4, channels=(32, 64, 128), attention_levels=(False, True, True),
                    res_blocks=1, heads=4, context_dim=128, norm_groups=16),
}


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class TransformerBlock(nn.Module):
    """GroupNorm, then on the pixels as tokens: self-attention, cross-attention, MLP (pre-LN)."""

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.proj_in = nn.Linear(channels, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = Attention(channels, heads)
        self.norm2 = nn.LayerNorm(channels)
        self.cross_attn = Attention(channels, heads, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(channels)
        self.mlp = MLP(channels, 4 * channels)
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        tokens = tokens + self.attn(self.norm1(tokens))
        tokens = tokens + self.cross_attn(self.norm2(tokens), context, context_mask)
        tokens = tokens + self.mlp(self.norm3(tokens))
        return x + self.proj_out(tokens).transpose(1, 2).reshape(b, c, h, w)


class TemporalAttention(nn.Module):
    """Self-attention across the frames at each latent pixel (the temporal layers of Video LDM,
    Blattmann et al. 2023), with a fixed sin-cos frame embedding added for the block and taken
    off after, so that it starts as the identity and a video net begins as the image net.

    With `context_dim`, each pixel of each frame first reads the prompt (cross-attention, also
    starting as the identity). The image layers read the prompt without knowing which frame they
    draw, and plain temporal attention knows the frame but not the prompt; "moving right" needs
    both at once."""

    def __init__(self, channels: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.block = SelfAttentionBlock(channels, heads, 2.0).starting_as_identity()
        self.text: TextReader | None = TextReader(channels, heads, context_dim) if context_dim else None

    def forward(self, x: torch.Tensor, frames: int, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        bf, c, h, w = x.shape
        b = bf // frames
        tokens = x.reshape(b, frames, c, h * w).permute(0, 3, 1, 2)  # b, pixels, frames, c
        position = sincos_1d(c, torch.arange(frames, device=x.device)).to(x.dtype)
        tokens = tokens + position
        if self.text is not None:
            tokens = self.text(tokens.reshape(b, h * w * frames, c), context[::frames],
                               context_mask[::frames]).reshape(b, h * w, frames, c)
        tokens = self.block(tokens.reshape(b * h * w, frames, c)) - position
        return tokens.reshape(b, h * w, frames, c).permute(0, 2, 3, 1).reshape(bf, c, h, w)


class TextReader(nn.Module):
    """x + cross-attention(LN(x), prompt), starting as the identity. Every token of a video reads
    the same prompt, so the video's tokens are one query sequence (not one per pixel)."""

    def __init__(self, channels: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = Attention(channels, heads, context_dim=context_dim)
        nn.init.zeros_(self.attn.out.weight)
        nn.init.zeros_(self.attn.out.bias)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        return tokens + self.attn(self.norm(tokens), context, context_mask)


class SpaceTimeAttention(nn.Module):
    """A transformer block (self-attention, cross-attention to the text, MLP) over every pixel of
    every frame at once, with sin-cos frame and pixel embeddings added for the block and taken
    off after; it starts as the identity.

    Temporal attention only compares a pixel with itself in the other frames, and it never reads
    the prompt, so "moving right" has to reach it through the image layers. Here a pixel of frame
    f can attend to another pixel of frame 0 and to the motion words in the same block. Cheap at
    the 4 x 4 middle of the U-Net: 128 tokens for 8 frames (the video DiT's full attention, which
    learnt some motion, ran on that same grid)."""

    def __init__(self, channels: int, heads: int, context_dim: int, groups: int) -> None:
        super().__init__()
        self.block = TransformerBlock(channels, heads, context_dim, groups)

    def forward(self, x: torch.Tensor, frames: int, context: torch.Tensor,
                context_mask: torch.Tensor) -> torch.Tensor:
        bf, c, h, w = x.shape
        b = bf // frames
        position = (sincos_1d(c, torch.arange(frames, device=x.device))[:, :, None, None]
                    + sincos_2d(c, h, w).to(x.device).T.reshape(1, c, h, w)).to(x.dtype)
        video = x.reshape(b, frames, c, h, w) + position
        # Frames stacked into one tall image: the block's attention sees every pixel of every frame.
        tall = video.transpose(1, 2).reshape(b, c, frames * h, w)
        out = self.block(tall, context[::frames], context_mask[::frames])
        return (out.reshape(b, c, frames, h, w).transpose(1, 2) - position).reshape(bf, c, h, w)


class Stage(nn.Module):
    """A residual block, optionally followed by a transformer block, and in a video net by
    temporal attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, config: UNetConfig, attention: bool) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, config.norm_groups)
        self.attn = (TransformerBlock(out_ch, config.heads, config.context_dim, config.norm_groups)
                     if attention else None)
        self.temporal = (TemporalAttention(out_ch, config.heads,
                                           config.context_dim if getattr(config, "temporal_text", False) else None)
                         if getattr(config, "max_frames", 0) else None)
        self.spacetime: SpaceTimeAttention | None = None  # a video net may add one

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor, frames: int = 1) -> torch.Tensor:
        x = self.res(x, emb)
        x = x if self.attn is None else self.attn(x, context, context_mask)
        x = x if self.temporal is None else self.temporal(x, frames, context, context_mask)
        return x if self.spacetime is None else self.spacetime(x, frames, context, context_mask)


class ContextMixer(nn.Module):
    """Self-attention blocks over the text tokens, each starting as the identity."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.randn(config.context_length, config.context_dim) * 0.02)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(config.context_dim, config.heads, 4.0).starting_as_identity()
            for _ in range(config.context_layers))

    def forward(self, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = context.shape[1]
        if length > self.position.shape[0]:
            raise ValueError(f"text is {length} tokens, the mixer covers {self.position.shape[0]}")
        position = self.position[:length].to(context.dtype)
        x = context + position
        for block in self.blocks:
            x = block(x, mask)
        return x - position


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        emb_dim = 4 * ch[0]
        self.t_embedder = TimestepEmbedder(emb_dim, config.frequency_dim, config.time_scale)
        self.pooled_embedder = nn.Sequential(
            nn.Linear(config.context_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.context_mixer = ContextMixer(config) if config.context_layers else None
        self.conv_in = nn.Conv2d(config.in_channels + config.layout_channels, ch[0], 3, padding=1)

        # Encoder: every stage's output (and conv_in's, and each downsample's) is a skip.
        self.down = nn.ModuleList()
        skips = [ch[0]]
        current = ch[0]
        for level, (out_ch, attention) in enumerate(zip(ch, config.attention_levels)):
            for _ in range(config.res_blocks):
                self.down.append(Stage(current, out_ch, emb_dim, config, attention))
                current = out_ch
                skips.append(current)
            if level < len(ch) - 1:
                self.down.append(Downsample(current))
                skips.append(current)

        self.mid = nn.ModuleList([
            Stage(current, current, emb_dim, config, attention=True),
            Stage(current, current, emb_dim, config, attention=False),
            *(Stage(current, current, emb_dim, config, attention=True)
              for _ in range(config.extra_mid_stages)),
        ])

        # Decoder: each stage takes one skip, concatenated on channels.
        self.up = nn.ModuleList()
        for level in reversed(range(len(ch))):
            for _ in range(config.res_blocks + 1):
                self.up.append(Stage(current + skips.pop(), ch[level], emb_dim, config,
                                     config.attention_levels[level]))
                current = ch[level]
            if level > 0:
                self.up.append(Upsample(current))

        self.norm_out = nn.GroupNorm(config.norm_groups, current)
        self.conv_out = nn.Conv2d(current, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def optional_prefixes(self) -> tuple[str, ...]:
        # Extra middle stages start as the identity (both residual branches end in a zero layer),
        # so a run may add them to trained weights: the grown net computes what the saved one
        # did, then learns, with the most global view of the scene. So does the text mixer.
        return (*(f"mid.{i}." for i in range(2, len(self.mid))), "context_mixer.")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.config.channels) - 1)

    def check_size(self, x: torch.Tensor) -> None:
        if x.shape[-1] % self.downsampling or x.shape[-2] % self.downsampling:
            raise ValueError(f"latent size {tuple(x.shape[-2:])} is not divisible by {self.downsampling}")

    def embed(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
              pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The timestep + pooled text embedding, and the text tokens (mixed, if the net mixes them)."""
        emb = self.t_embedder(batch_timesteps(t, x.shape[0], x.device)) + self.pooled_embedder(pooled)
        if self.context_mixer is not None:
            context = self.context_mixer(context, context_mask)
        return emb, context

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        self.check_size(x)
        emb, context = self.embed(x, t, context, context_mask, pooled)
        return self.body(x, emb, context, context_mask)

    def body(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
             frames: int = 1) -> torch.Tensor:
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h) if isinstance(layer, Downsample) else layer(h, emb, context, context_mask, frames)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb, context, context_mask, frames)
        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)
            else:
                h = layer(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask, frames)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass(frozen=True)
class VideoUNetConfig(UNetConfig):
    max_frames: int = 16
    spacetime_mid: bool = False  # space-time attention after each stage of the middle block
    temporal_text: bool = False  # the temporal layers read the prompt too


VIDEO_UNET_SIZES: dict[str, dict] = {
    "tiny": dict(UNET_SIZES["tiny"], max_frames=16),
    # The image U-Net's default, its stages each followed by temporal attention (+0.79 M parameters).
    "default": dict(UNET_SIZES["default"], max_frames=16),
}


class VideoUNet(UNet):
    """The U-Net over B x C x F x H x W video latents: every frame goes through the image net's
    layers (its text, timestep and weights shared by the frames), and after every stage temporal
    attention mixes the frames at each latent pixel. The temporal layers start as the identity, so
    a video net can start from a trained image U-Net's weights and first draws each frame as that
    net would, then learns motion (the recipe of Video LDM, Blattmann et al. 2023).
    `spacetime_mid` adds space-time attention (with the text) to the middle block's stages, and
    `temporal_text` lets every temporal layer read the prompt; both start as the identity, so they
    can be added to trained video weights."""

    config: VideoUNetConfig

    def __init__(self, config: VideoUNetConfig) -> None:
        super().__init__(config)
        if config.spacetime_mid:
            for stage in self.mid:
                stage.spacetime = SpaceTimeAttention(config.channels[-1], config.heads,
                                                     config.context_dim, config.norm_groups)

    @property
    def optional_prefixes(self) -> tuple[str, ...]:
        stages = [name for name, m in self.named_modules() if isinstance(m, Stage)]
        return (*super().optional_prefixes, *(f"{name}.temporal." for name in stages),
                *(f"{name}.spacetime." for name in stages))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"a video latent is B x C x F x H x W, got shape {tuple(x.shape)}")
        b, c, f, h, w = x.shape
        if not 1 <= f <= self.config.max_frames:
            raise ValueError(f"frames: 1 to {self.config.max_frames}, got {f}")
        self.check_size(x)
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        context_mask = context_mask.repeat_interleave(f, 0)
        emb, context = self.embed(frames, frame_timesteps(t, b, f, x.device), context.repeat_interleave(f, 0),
                                  context_mask, pooled.repeat_interleave(f, 0))
        out = self.body(frames, emb, context, context_mask, f)
        return out.reshape(b, f, -1, h, w).permute(0, 2, 1, 3, 4)  # c includes a layout's channels


def frame_timesteps(t: torch.Tensor | float, batch: int, frames: int, device: torch.device) -> torch.Tensor:
    """(B * F,) noise levels, frame by frame: a video's t in each of its frames, or, for t of
    B x F, each frame's own (Diffusion Forcing, Chen et al. 2024, trains so)."""
    t = torch.as_tensor(t, dtype=torch.float32, device=device)
    if t.dim() == 2:
        if tuple(t.shape) != (batch, frames):
            raise ValueError(f"per-frame t must be {batch} x {frames} (videos x frames), got {tuple(t.shape)}")
        return t.reshape(-1)
    return batch_timesteps(t, batch, device).repeat_interleave(frames)
