"""Pieces the Shapes nets share: sinusoidal embeddings, attention, adaLN modulation, the MLP.

- `timestep_embedding`: the sinusoidal embedding of Vaswani et al. (2017) as DiT uses it
  (Peebles & Xie 2023): cosines first, frequencies 1 / max_period ** (i / half). It equals
  diffusers' `get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)`.
- `sincos_1d` / `sincos_2d`: fixed position embeddings over frames / a patch grid (MAE, DiT).
- `Attention`: multi-head self- or cross-attention on `F.scaled_dot_product_attention`, with a
  key mask (True = real token).
- `modulate`: adaLN's shift and scale of a normalised activation.
- `MLP`: Linear -> GELU (tanh) -> Linear, the transformer feed-forward of DiT and PixArt.
- `SelfAttentionBlock`: the pre-LN encoder block of the CLIP towers and the U-Net's text mixer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) possibly fractional timesteps -> B x dim, [cos | sin] halves, float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """N positions -> N x dim, [sin | cos] halves (MAE's 1-D embedding)."""
    half = dim // 2
    omega = 1.0 / 10_000.0 ** (torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    args = positions.float()[:, None] * omega[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def sincos_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """A height x width grid, row-major -> (height * width) x dim: half for the row, half for the column."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    return torch.cat([sincos_1d(dim // 2, rows), sincos_1d(dim // 2, cols)], dim=-1)


def batch_timesteps(t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """A scalar, (1,) or (B,) time -> (B,) float32."""
    t = torch.as_tensor(t, dtype=torch.float32, device=device).reshape(-1)
    return t.expand(batch) if t.numel() == 1 else t


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> scaled by `time_scale` -> sinusoidal features -> MLP (as DiT's)."""

    def __init__(self, width: int, frequency_dim: int = 256, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t * self.time_scale, self.frequency_dim))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: shift and scale broadcast over the token axes (callers shape them so)."""
    return x * (1 + scale) + shift


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def cpu_fp32_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       attn_mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA, in fp32 on the CPU even under bf16 autocast.

    CPU attention kernels run forward + backward two to five times faster in fp32 than in bf16
    (measured with torch 2.13), and the softmax is more accurate.
    """
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask)
    return out.to(q.dtype)


class Attention(nn.Module):
    """Multi-head attention: self-attention, or cross-attention to a context of `context_dim`.

    `mask` (B x L bool, True = real token) hides keys (the context's, or in self-attention the
    input's own) from every query. A sample whose keys are all padding attends to nothing and
    gets 0 before the output projection (a softmax over no keys is undefined).
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.is_cross = context_dim is not None
        if self.is_cross:
            self.q = nn.Linear(dim, dim, bias=bias)
            self.kv = nn.Linear(context_dim, 2 * dim, bias=bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        if self.is_cross:
            if context is None:
                raise ValueError("cross-attention needs a context")
            q = self.q(x)
            k, v = self.kv(context).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (a.unflatten(-1, (self.heads, -1)).transpose(1, 2) for a in (q, k, v))
        attn_mask = None
        empty = None
        if mask is not None:
            mask = mask.bool()
            empty = ~mask.any(dim=1)
            attn_mask = (mask | empty[:, None])[:, None, None, :]
        out = cpu_fp32_attention(q, k, v, attn_mask).transpose(1, 2).reshape(b, n, d)
        if empty is not None:
            out = out.masked_fill(empty[:, None, None], 0.0)
        return self.out(out)


class SelfAttentionBlock(nn.Module):
    """A transformer encoder block, pre-LN: x + attn(LN(x)), x + MLP(LN(x)); `mask` hides padding keys."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def starting_as_identity(self) -> SelfAttentionBlock:
        """Zero both residual branches' last layers, so that the block adds nothing until trained."""
        for layer in (self.attn.out, self.mlp.fc2):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        return self

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))
