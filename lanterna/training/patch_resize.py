"""Start a patch-embedding net at a larger patch size from weights trained at a smaller one.

Going from patch p to patch k p keeps the token grid when the latent grows k-fold (a 32x32 video
model continued at 64x64). The new patch embedding reads a k p x k p patch as the old one read
its k x k average pool, and the final layer paints each old output pixel over a k x k block, so
the resized net computes exactly `upsample(old_net(avg_pool(x)))` before it trains on. (FlexiViT,
Beyer et al. 2023, resizes patch embeddings for one input at many patch sizes; here the input
itself is larger, so pooling, not its pseudo-inverse, is the match.)
"""

from __future__ import annotations

import torch

from lanterna.training.common import WeightsDoNotFit

PATCH_EMBED = "patch_embed.weight"
FINAL_WEIGHT, FINAL_BIAS = "final_layer.linear.weight", "final_layer.linear.bias"


def patch_size_of(state: dict[str, torch.Tensor]) -> int | None:
    return state[PATCH_EMBED].shape[-1] if PATCH_EMBED in state else None


def blocks(x: torch.Tensor, k: int, dims: tuple[int, int]) -> torch.Tensor:
    """Each entry along `dims` repeated k times: nearest-neighbour upsampling of a patch."""
    return x.repeat_interleave(k, dim=dims[0]).repeat_interleave(k, dim=dims[1])


def resize_patches(state: dict[str, torch.Tensor], new_patch: int) -> dict[str, torch.Tensor]:
    """`state` of a patch-p net as weights of the same net at patch `new_patch` (a multiple of p)."""
    old_patch = patch_size_of(state)
    if old_patch is None or old_patch == new_patch:
        return state
    if new_patch % old_patch:
        raise WeightsDoNotFit(f"patch size {new_patch} is not a multiple of the saved {old_patch}")
    k = new_patch // old_patch
    resized = dict(state)
    resized[PATCH_EMBED] = blocks(state[PATCH_EMBED], k, (2, 3)) / (k * k)
    # The final layer's outputs are ordered (row, column, channel) within a patch (see unpatchify).
    weight = state[FINAL_WEIGHT].reshape(old_patch, old_patch, -1, state[FINAL_WEIGHT].shape[-1])
    resized[FINAL_WEIGHT] = blocks(weight, k, (0, 1)).reshape(-1, weight.shape[-1])
    bias = state[FINAL_BIAS].reshape(old_patch, old_patch, -1)
    resized[FINAL_BIAS] = blocks(bias, k, (0, 1)).reshape(-1)
    return resized
