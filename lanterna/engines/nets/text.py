"""The Shapes text encoder and scorer: a word-level tokenizer and CLIP-style text + image towers.

CLIP (Radford et al., ICML 2021), small: a text transformer and a ViT (Dosovitskiy et al., ICLR
2021) trained contrastively, each projected into a joint space; `logit_scale` starts at
log(1 / 0.07) as in CLIP. The text tower's token states and pooled state condition the
diffusion models (`encode_text_tokens`); the projected embeddings score images (CLIP score).

- `ShapesTokenizer`: one id per word of shapes_vocab.txt (the Shapes World grammar is closed).
  Text is lower-cased and punctuation split off; punctuation the vocabulary lacks is ignored (the
  grammar has none), unknown words become <unk> and are reported, over-long prompts are cut and
  that is reported too. Every sequence is <bos> words <eos>, padded to `max_length`.
- `TextTransformer`: learned positions, pre-LN, bidirectional attention over the real tokens
  (padding masked out), since the whole prompt is known at once and diffusion cross-attends to
  every token state. The pooled output is the final state at the <eos> position (the last real
  token), which sees the whole prompt.
- `ImageTransformer`: a ViT over 64 x 64 pixels in [-1, 1], patch 8, pooled at a CLS token.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lanterna.engines.nets.layers import SelfAttentionBlock

DEFAULT_VOCAB = Path(__file__).resolve().parent / "shapes_vocab.txt"
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(4)
PIECE = re.compile(r"\w+(?:'\w+)*|[^\w\s]")  # a word (with inner apostrophes) or one punctuation mark


def read_vocab(path: Path) -> list[str]:
    tokens = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if tuple(tokens[:4]) != SPECIALS:
        raise ValueError(f"{path}: the first four tokens must be {' '.join(SPECIALS)}")
    return tokens


@dataclass
class TokenBatch:
    ids: torch.Tensor  # B x L long
    mask: torch.Tensor  # B x L bool, True = real token (<bos>, words, <eos>)
    unknown_words: list[list[str]]  # per text, each unknown word once, in order
    truncated: list[bool]  # per text: were words cut to fit max_length?


class ShapesTokenizer:
    def __init__(self, vocab_path: str | Path | None = None) -> None:
        self.tokens = read_vocab(Path(vocab_path) if vocab_path else DEFAULT_VOCAB)
        self.index = {token: i for i, token in enumerate(self.tokens)}

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def vocabulary(self) -> list[str]:
        """The words the models understand (no special tokens)."""
        return self.tokens[len(SPECIALS):]

    def split(self, text: str) -> list[str]:
        return PIECE.findall(text.lower())

    def encode_one(self, text: str, max_length: int) -> tuple[list[int], list[str], bool]:
        ids, unknown = [], []
        for piece in self.split(text):
            if piece in self.index:
                ids.append(self.index[piece])
            elif re.match(r"\w", piece):
                ids.append(UNK)
                if piece not in unknown:
                    unknown.append(piece)
        truncated = len(ids) > max_length - 2
        return [BOS, *ids[: max_length - 2], EOS], unknown, truncated

    def encode(self, texts: list[str], max_length: int = 24) -> TokenBatch:
        if max_length < 2:
            raise ValueError(f"max_length must leave room for <bos> and <eos>, got {max_length}")
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts")
        ids = torch.full((len(texts), max_length), PAD, dtype=torch.long)
        unknown_words, truncated = [], []
        for row, text in enumerate(texts):
            seq, unknown, cut = self.encode_one(text, max_length)
            ids[row, : len(seq)] = torch.tensor(seq)
            unknown_words.append(unknown)
            truncated.append(cut)
        return TokenBatch(ids, ids != PAD, unknown_words, truncated)

    def decode(self, ids: torch.Tensor) -> list[str]:
        """One sequence of ids -> its tokens, special tokens left out."""
        return [self.tokens[i] for i in ids.tolist() if i >= len(SPECIALS)]


@dataclass(frozen=True)
class ShapesCLIPConfig:
    vocab_size: int = 62  # the lines of shapes_vocab.txt
    max_length: int = 24
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    image_size: int = 64
    patch_size: int = 8
    image_width: int = 192
    image_layers: int = 4
    image_heads: int = 6
    embed_dim: int = 128
    mlp_ratio: float = 4.0
    score_layers: int = 0  # text blocks only the scorer reads (see ShapesCLIP)


CLIP_SIZES: dict[str, dict] = {
    "tiny": dict(vocab_size=62, max_length=24, text_width=32, text_layers=1, text_heads=2,
                 image_size=64, patch_size=16, image_width=32, image_layers=1, image_heads=2,
                 embed_dim=16),
    # ~2.6 M parameters.
    "default": dict(vocab_size=62, max_length=24, text_width=128, text_layers=4, text_heads=4,
                    image_size=64, patch_size=8, image_width=192, image_layers=4, image_heads=6,
                    embed_dim=128),
}


def at_last_token(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """B x L x W states -> B x W at each sequence's last real token (the pooled text)."""
    last = (mask.sum(1) - 1).clamp_min(0)
    return states[torch.arange(states.shape[0], device=states.device), last]


class TextTransformer(nn.Module):
    def __init__(self, config: ShapesCLIPConfig) -> None:
        super().__init__()
        self.config = config
        w = config.text_width
        self.token_embedding = nn.Embedding(config.vocab_size, w)
        self.position_embedding = nn.Parameter(torch.randn(config.max_length, w) * 0.01)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(w, config.text_heads, config.mlp_ratio) for _ in range(config.text_layers))
        self.norm = nn.LayerNorm(w)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (token states B x L x W, zero at padding; pooled B x W at the last real token)."""
        length = ids.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"token sequences are at most {self.config.max_length} long, got {length}")
        mask = mask.bool()
        x = self.token_embedding(ids) + self.position_embedding[:length]
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x) * mask[..., None]
        return x, at_last_token(x, mask)


class ImageTransformer(nn.Module):
    def __init__(self, config: ShapesCLIPConfig) -> None:
        super().__init__()
        self.config = config
        w = config.image_width
        if config.image_size % config.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        patches = (config.image_size // config.patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, w, config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(w) * w**-0.5)
        self.position_embedding = nn.Parameter(torch.randn(patches + 1, w) * w**-0.5)
        self.norm_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(w, config.image_heads, config.mlp_ratio) for _ in range(config.image_layers))
        self.norm_post = nn.LayerNorm(w)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B x 3 x S x S in [-1, 1] -> (token states B x (1 + patches) x W, pooled B x W at CLS)."""
        size = self.config.image_size
        if tuple(pixels.shape[-2:]) != (size, size):
            raise ValueError(f"images must be {size}x{size}, got {tuple(pixels.shape[-2:])}")
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.norm_pre(torch.cat([cls, x], dim=1) + self.position_embedding.to(x.dtype))
        for block in self.blocks:
            x = block(x)
        x = self.norm_post(x)
        return x, x[:, 0]


class ShapesCLIP(nn.Module):
    def __init__(self, config: ShapesCLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.text = TextTransformer(config)
        self.image = ImageTransformer(config)
        self.text_projection = nn.Linear(config.text_width, config.embed_dim, bias=False)
        self.image_projection = nn.Linear(config.image_width, config.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        # The text tower conditions the denoisers, so it stays as they were trained on; these
        # blocks on top of its states learn what scoring needs besides (word order, counts).
        # Added to exported weights, they start as the identity.
        self.score_blocks = nn.ModuleList(
            SelfAttentionBlock(config.text_width, config.text_heads, config.mlp_ratio).starting_as_identity()
            for _ in range(config.score_layers))

    # Weights exported before the scorer blocks existed lack them; a run may add them.
    optional_prefixes: tuple[str, ...] = ("score_blocks.",)

    @property
    def context_width(self) -> int:
        return self.config.text_width

    def encode_text_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text tower's states, unprojected: (B x L x text_width, pooled B x text_width)."""
        return self.text(ids, mask)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """B x embed_dim in the joint space (not normalised)."""
        states, pooled = self.text(ids, mask)
        if len(self.score_blocks):
            mask = mask.bool()
            for block in self.score_blocks:
                states = block(states, mask)
            pooled = at_last_token(states, mask)
        return self.text_projection(pooled)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """B x embed_dim in the joint space (not normalised)."""
        return self.image_projection(self.image(pixels)[1])

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine similarities times exp(logit_scale): (images x texts, texts x images)."""
        image = F.normalize(self.encode_image(pixels), dim=-1)
        text = F.normalize(self.encode_text(ids, mask), dim=-1)
        logits_per_image = self.logit_scale.exp() * image @ text.T
        return logits_per_image, logits_per_image.T


TEXT_CONTEXTS = ("states", "states+words", "states+words+order")


def text_context_of(settings: Mapping[str, Any]) -> str:
    """The text_context a model card or recipe names; those from before the field read 'states'."""
    return settings.get("text_context", "states")


class WordAwareText(nn.Module):
    """A denoiser's text condition: the CLIP text tower's states with each word's own embedding
    beside them (B x L x 2 text_width), and the pooled state with the mean of the words'
    embeddings beside it (B x 2 text_width).

    The contrastive tower keeps colours far apart but squashes the other words: in shapes-clip
    the pooled states of "a red circle" and "a red square" differ by 0.18 of their norm, those of
    "a red circle" and "a blue circle" by 1.44, while the input embeddings of "circle" and
    "square" differ by 1.33 (bench/bench_word_use.py). A denoiser conditioned on the states
    alone learned colours and ignored shapes.
    The embeddings are RMS-normalised so both halves enter at the same scale.

    With `order`, a third part carries each token's position (the tower's own learned position
    embedding, RMS-normalised; its mean in the pooled part). The words alone are a bag to
    cross-attention: "a red circle to the left of a blue square" and "a blue square to the left
    of a red circle" give the same set of words for opposite scenes, and the tower's states tell
    the two apart by 0.10 of their norm (left against right: 0.03; bench/bench_word_use.py).
    Measured on shapes-unet (BENCHMARKS.md, "Word order in the text condition"), 110 minutes of
    training with it did not place the pair better than the same training without it.
    """

    def __init__(self, clip: ShapesCLIP, order: bool = False) -> None:
        super().__init__()
        self.clip = clip
        self.order = order

    @property
    def config(self) -> ShapesCLIPConfig:
        return self.clip.config

    @property
    def context_width(self) -> int:
        return (3 if self.order else 2) * self.clip.config.text_width

    def encode_text_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, pooled = self.clip.encode_text_tokens(ids, mask)
        keep = mask[..., None].to(states.dtype)
        parts = [self.clip.text.token_embedding(ids)]
        if self.order:
            parts.append(self.clip.text.position_embedding[:ids.shape[1]].expand(ids.shape[0], -1, -1))
        context, summary = [states], [pooled]
        for part in parts:
            part = part * torch.rsqrt(part.pow(2).mean(-1, keepdim=True) + 1e-6) * keep
            context.append(part)
            summary.append(part.sum(1) / keep.sum(1).clamp_min(1.0))
        return torch.cat(context, dim=-1), torch.cat(summary, dim=-1)


def text_conditioner(clip: ShapesCLIP, text_context: str) -> nn.Module:
    """What a denoiser reads the prompt through, as its model card's `text_context` names it."""
    if text_context not in TEXT_CONTEXTS:
        raise ValueError(f"text_context: one of {TEXT_CONTEXTS}, got {text_context!r}")
    if text_context == "states":
        return clip
    return WordAwareText(clip, order=text_context == "states+words+order")
