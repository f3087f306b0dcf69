"""A training signal for attribute binding: the caption must explain the image better than its
binding near miss does.

ShapesGenEval's two-object tasks fail mostly by drawing the asked colours and shapes paired the
wrong way round (bench/bench_relations.py), and no amount of guidance away from the swapped caption
mends it: a denoiser trained on the denoising loss alone predicts nearly the same under "a red
circle and a blue square" as under "a blue circle and a red square". Both captions are the same bag
of words, so the plain loss rewards reading the pairing only through the few images where it
decides the colour of a pixel.

The term here asks for it directly, in the way a diffusion model classifies captions by their
denoising error (Li et al. 2023, "Your Diffusion Model is Secretly a Zero-Shot Classifier"): at the
same noised latent and time, the error under the caption must fall below the error under the
caption with its colours swapped between the two objects (or its relation flipped) by a margin,
log err(caption) + margin <= log err(near miss). The near miss differs from the caption only in
what goes with what, so the net can only meet the margin by reading the binding. The log makes
the margin a ratio, the same at every noise level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lanterna.world.captions import try_parse
from lanterna.world.near_miss import flipped_relation, swapped_colours
from lanterna.world.palette import article
from lanterna.world.spec import Requirements

RELATION_WORDS = {"left": "right", "right": "left", "above": "below", "below": "above"}


@dataclass(frozen=True)
class BindingContrast:
    weight: float
    margin: float  # in log error: 0.1 asks the near miss's error to be 10.5 % above the caption's

    @classmethod
    def from_extra(cls, value) -> "BindingContrast | None":
        """`extra.binding_contrast`: {"weight": w, "margin": m}, or absent."""
        if value is None:
            return None
        if not isinstance(value, dict) or set(value) - {"weight", "margin"}:
            raise ValueError(f"binding_contrast: must be {{'weight': w, 'margin': m}}, got {value!r}")
        weight, margin = float(value.get("weight", 0.1)), float(value.get("margin", 0.1))
        if not (weight > 0 and margin >= 0):
            raise ValueError(f"binding_contrast: weight must be > 0 and margin >= 0, got {value!r}")
        return cls(weight, margin)


def reworded(caption: str, words: dict[str, str]) -> str:
    """`caption` with each word in `words` replaced, and the article before it agreeing again
    ("an orange circle" -> "a yellow circle"): a wrong article would tell the captions apart."""
    out = caption.split(" ")
    for i, word in enumerate(out):
        if word in words:
            out[i] = words[word]
            if i > 0 and out[i - 1] in ("a", "an"):
                out[i - 1] = article(out[i])
    return " ".join(out)


def binding_negative(caption: str, req: Requirements, rng: np.random.Generator) -> str | None:
    """The caption in its own wording with the two objects' colours swapped or the relation
    flipped (one at random where both apply); None where neither applies or the caption was dropped.

    Rewording the caption, rather than writing the near miss afresh, keeps the template, so the
    two captions differ in the binding alone. The result is checked by parsing it back.
    """
    if not caption:
        return None
    options = []
    swapped = swapped_colours(rng, req)
    if swapped is not None:
        a, b = req.objects
        options.append((swapped, {a.colour: b.colour, b.colour: a.colour}))
    flipped = flipped_relation(rng, req)
    if flipped is not None:
        options.append((flipped, RELATION_WORDS))
    if not options:
        return None
    miss, words = options[int(rng.integers(len(options)))]
    text = reworded(caption, words)
    return text if try_parse(text) == miss else None


def binding_negatives(captions: list[str], requirements: list[Requirements],
                      rng: np.random.Generator) -> tuple[list[int], list[str]]:
    """The rows of a batch that have a binding near miss, and the near misses."""
    found = [(i, binding_negative(c, r, rng)) for i, (c, r) in enumerate(zip(captions, requirements))]
    found = [(i, text) for i, text in found if text is not None]
    return [i for i, _ in found], [text for _, text in found]


def per_sample_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.float(), target, reduction="none").flatten(1).mean(1)


def contrast_term(error: torch.Tensor, negative_error: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean hinge on log errors; `error` is the caption's, `negative_error` the near miss's, per sample."""
    return F.relu(error.log() - negative_error.log() + margin).mean()
