"""Video DiT: a diffusion transformer over B x C x F x H x W video latents, conditioned on text.

Each frame is patchified like an image (DiT, Peebles & Xie 2023) and gets the same fixed 2-D
sin-cos position embedding, plus a fixed 1-D sin-cos embedding of its frame index. Attention is
factorised in space and time (divided space-time attention: Bertasius et al., TimeSformer, 2021;
Latte, Ma et al. 2024): in every block, spatial self-attention within each frame, then temporal
self-attention across the frames at each spatial location, then cross-attention to the text
(all tokens at once), then the MLP. Spatial attention, temporal attention and the MLP are
adaLN-Zero-gated from c = t_emb + MLP(pooled text); the cross-attention is PixArt's (ungated, its
output projection zero-initialised). With the zero-initialised final layer the net outputs 0 at
init and every block is the identity.

The latent grid is whatever the input has (16 x 16 for 64 x 64 frames, 8 x 8 for 32 x 32): the
position embeddings are computed for it. Frames: 1 to `max_frames`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lanterna.engines.nets.dit import FinalLayer, init_transformer_linears, unpatchify, zero_init
from lanterna.engines.nets.layers import (
    MLP,
    Attention,
    TimestepEmbedder,
    batch_timesteps,
    modulate,
    sincos_1d,
    sincos_2d,
)


@dataclass(frozen=True)
class VideoDiTConfig:
    in_channels: int = 4
    patch_size: int = 2
    width: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    context_dim: int = 128
    max_frames: int = 16
    frequency_dim: int = 256
    time_scale: float = 1000.0


VIDEO_DIT_SIZES: dict[str, dict] = {
    "tiny": dict(in_channels=4, patch_size=2, width=32, depth=2, heads=2, context_dim=32,
                 max_frames=16, frequency_dim=32),
    # 16 frames of 16x16x4 latents -> 16 x 64 tokens; 3.0 M parameters, 3.6 GFLOP a forward
    # pass (a quarter of that on 32x32 frames).
    "default": dict(in_channels=4, patch_size=2, width=128, depth=6, heads=4, context_dim=128,
                    max_frames=16),
}


class VideoDiTBlock(nn.Module):
    """x: B x F x N x D tokens (F frames of N patches)."""

    def __init__(self, width: int, heads: int, context_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_spatial = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.spatial_attn = Attention(width, heads)
        self.norm_temporal = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.temporal_attn = Attention(width, heads)
        self.cross_attn = Attention(width, heads, context_dim=context_dim)
        self.norm_mlp = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(width, int(width * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor) -> torch.Tensor:
        b, f, n, d = x.shape
        (shift_s, scale_s, gate_s, shift_t, scale_t, gate_t,
         shift_m, scale_m, gate_m) = self.adaLN_modulation(c)[:, None, None].chunk(9, dim=-1)

        h = modulate(self.norm_spatial(x), shift_s, scale_s).reshape(b * f, n, d)
        x = x + gate_s * self.spatial_attn(h).reshape(b, f, n, d)

        h = modulate(self.norm_temporal(x), shift_t, scale_t).transpose(1, 2).reshape(b * n, f, d)
        x = x + gate_t * self.temporal_attn(h).reshape(b, n, f, d).transpose(1, 2)

        x = x + self.cross_attn(x.reshape(b, f * n, d), context, context_mask).reshape(b, f, n, d)
        return x + gate_m * self.mlp(modulate(self.norm_mlp(x), shift_m, scale_m))


class VideoDiT(nn.Module):
    def __init__(self, config: VideoDiTConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.patch_embed = nn.Conv2d(config.in_channels, w, config.patch_size, stride=config.patch_size)
        self.t_embedder = TimestepEmbedder(w, config.frequency_dim, config.time_scale)
        self.pooled_embedder = nn.Sequential(nn.Linear(config.context_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(
            VideoDiTBlock(w, config.heads, config.context_dim, config.mlp_ratio) for _ in range(config.depth))
        self.final_layer = FinalLayer(w, config.patch_size, config.in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        init_transformer_linears(self)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for mlp in (self.t_embedder.mlp, self.pooled_embedder):
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)
        zeroed = [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for block in self.blocks:
            zeroed += [block.adaLN_modulation[-1], block.cross_attn.out]
        zero_init(zeroed)

    def condition(self, t: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.t_embedder(t) + self.pooled_embedder(pooled)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x F x H x W -> B x F x N x D tokens with space and time positions."""
        b, c, f, h, w = x.shape
        p = self.config.patch_size
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        tokens = self.patch_embed(frames).flatten(2).transpose(1, 2)
        tokens = tokens + sincos_2d(self.config.width, h // p, w // p).to(tokens)
        tokens = tokens.reshape(b, f, -1, self.config.width)
        return tokens + sincos_1d(self.config.width, torch.arange(f))[None, :, None].to(tokens)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"video latents must be B x C x F x H x W, got shape {tuple(x.shape)}")
        b, _, f, h, w = x.shape
        p = self.config.patch_size
        if h % p or w % p:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {p}")
        if not 1 <= f <= self.config.max_frames:
            raise ValueError(f"frames: 1 to {self.config.max_frames}, got {f}")
        tokens = self.embed(x)
        c = self.condition(batch_timesteps(t, b, x.device), pooled)
        for block in self.blocks:
            tokens = block(tokens, c, context, context_mask)
        out = self.final_layer(tokens.reshape(b, f * tokens.shape[2], -1), c)
        out = unpatchify(out.reshape(b * f, -1, out.shape[-1]), h // p, w // p, p)
        return out.reshape(b, f, *out.shape[1:]).transpose(1, 2)
