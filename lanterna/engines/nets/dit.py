"""DiT: a diffusion transformer over VAE latents, conditioned on text.

Peebles & Xie, "Scalable Diffusion Models with Transformers" (ICCV 2023): patchify, fixed 2-D
sin-cos positions, adaLN-Zero blocks whose shift / scale / gate come from a conditioning vector,
a zero-initialised final layer, so that at init every block is the identity and the output is 0.
Text enters twice, as in PixArt-alpha (Chen et al. 2024): the pooled text embedding is added to the
timestep embedding in the conditioning vector c, and every block cross-attends to the text
tokens between its self-attention and its MLP. That cross-attention is PixArt's: not modulated,
its output projection zero-initialised. The block equals diffusers' `BasicTransformerBlock`
with `norm_type="ada_norm_single"` given our per-block adaLN output as its `timestep`.

The net predicts whatever it is trained on (flow velocity or x0); its output is shaped like x.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lanterna.engines.nets.layers import MLP, Attention, TimestepEmbedder, batch_timesteps, modulate, sincos_2d


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 4
    patch_size: int = 2
    width: int = 128
    depth: int = 8
    heads: int = 4
    mlp_ratio: float = 4.0
    context_dim: int = 128  # the text encoder's width (tokens and pooled)
    frequency_dim: int = 256
    time_scale: float = 1000.0  # t in [0, 1] is embedded as t * time_scale
    layout_channels: int = 0  # read beside the latent, not predicted (lanterna/world/grounding.py)


DIT_SIZES: dict[str, dict] = {
    "tiny": dict(in_channels=4, patch_size=2, width=32, depth=2, heads=2, context_dim=32, frequency_dim=32),
    # 16x16x4 latents -> 64 tokens; 3.0 M parameters, 0.25 GFLOP a forward pass. Narrow and
    # deep rather than wide (192 x 6: 5.0 M, 0.41 GFLOP) because CPU training time is the budget.
    "default": dict(in_channels=4, patch_size=2, width=128, depth=8, heads=4, context_dim=128),
}


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention, cross-attention to the text, adaLN-Zero MLP."""

    def __init__(self, width: int, heads: int, context_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.cross_attn = Attention(width, heads, context_dim=context_dim)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(width, int(width * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1))
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + self.cross_attn(x, context, context_mask)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map of each token to its patch."""

    def __init__(self, width: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def unpatchify(tokens: torch.Tensor, grid_h: int, grid_w: int, patch: int) -> torch.Tensor:
    """B x (h * w) x (p * p * C) -> B x C x (h * p) x (w * p)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, grid_h, grid_w, patch, patch, -1)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, -1, grid_h * patch, grid_w * patch)


def zero_init(layers: list[nn.Linear]) -> None:
    for layer in layers:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


def init_transformer_linears(module: nn.Module) -> None:
    """DiT's init: Xavier-uniform linears with zero bias (the zeroing comes after)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DiT(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.patch_embed = nn.Conv2d(config.in_channels + config.layout_channels, w, config.patch_size,
                                     stride=config.patch_size)
        self.t_embedder = TimestepEmbedder(w, config.frequency_dim, config.time_scale)
        self.pooled_embedder = nn.Sequential(nn.Linear(config.context_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(
            DiTBlock(w, config.heads, config.context_dim, config.mlp_ratio) for _ in range(config.depth))
        self.final_layer = FinalLayer(w, config.patch_size, config.in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        init_transformer_linears(self)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for mlp in (self.t_embedder.mlp, self.pooled_embedder):
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)
        # The zero part of adaLN-Zero, and PixArt's zero cross-attention output.
        zeroed = [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for block in self.blocks:
            zeroed += [block.adaLN_modulation[-1], block.cross_attn.out]
        zero_init(zeroed)

    def condition(self, t: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.t_embedder(t) + self.pooled_embedder(pooled)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.config.patch_size
        if h % p or w % p:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {p}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = tokens + sincos_2d(self.config.width, h // p, w // p).to(tokens)
        c = self.condition(batch_timesteps(t, b, x.device), pooled)
        for block in self.blocks:
            tokens = block(tokens, c, context, context_mask)
        return unpatchify(self.final_layer(tokens, c), h // p, w // p, p)
