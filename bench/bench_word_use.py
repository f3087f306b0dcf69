"""Does a denoiser read the words of its prompt?

For fresh Shapes World renders (the training mix; motion videos for a video model), the
denoiser's v-prediction loss at fixed noise levels with the true caption, and with one kind of
word swapped for another of its kind: the shape ("circle" -> "square"), the colour ("red" ->
"blue"), the motion ("moving left" -> "moving right", "growing" -> "shrinking"). A denoiser
that uses a word loses accuracy when the word is wrong; one that ignores it does not. Captions
a swap leaves unchanged, or turns into a held-out composition (or out of the grammar), are left
out of that swap. With --first-frame-t, a video's first frame is noised only to that level
and only the other frames are scored: the net then sees where an object starts, and the motion
word says where it has gone.
Prints one JSON line per model: per noise level t, the mean loss with the true captions and
the relative increase for each swap (on the same renders and noise), and for the binding near
miss of lanterna.training.binding (colours swapped between the two objects, or the relation
flipped: the same words, bound the other way). First, two lines on the
shared parts: how far apart the text tower puts captions differing in one word (pooled states)
against how far apart those words' own input embeddings are (both relative to the first's norm),
and, token by token, the states of a relation caption against the same with the objects swapped,
the relation flipped or a colour changed (mean distance over the mean norm), and the same at
the shared words of two captions whose colours are swapped between their shapes,
and the VAE posterior's std against the std of the (scaled) posterior means, the noise a
posterior draw adds to a diffusion target.

    python bench/bench_word_use.py [--weights-dir DIR] [--models NAME ...] [--renders N] [--threads N]
        [--noise-levels T ...] [--first-frame-t T]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lanterna.engines import weights  # noqa: E402
from lanterna.engines.nets.text import ShapesTokenizer, text_context_of  # noqa: E402
from lanterna.engines.pipeline import LatentDiffusionPipeline  # noqa: E402
from lanterna.engines.shapes import ShapesEngine, load_clip, load_vae  # noqa: E402
from lanterna.training import binding, data, train_diffusion  # noqa: E402
from lanterna.world.captions import try_parse  # noqa: E402
from lanterna.world.palette import HELD_OUT  # noqa: E402

SWAPS = {
    "shape": {"circle": "square", "square": "triangle", "triangle": "cross", "cross": "circle",
              "circles": "squares", "squares": "triangles", "triangles": "crosses", "crosses": "circles"},
    "colour": {"red": "blue", "blue": "green", "green": "yellow", "yellow": "red",
               "purple": "orange", "orange": "purple"},
    "motion": {"left": "right", "right": "left", "up": "down", "down": "up",
               "growing": "shrinking", "shrinking": "growing"},
}
NOISE_LEVELS = (0.5, 0.7, 0.9)
CAPTION_PAIRS = {"shape": ("a red circle", "a red square"), "colour": ("a red circle", "a blue circle"),
                 "motion": ("a red circle moving left", "a red circle moving right")}
# Pairs of equal length whose token states are compared position by position: which object a
# relation names first (the same words in another order), the relation, a colour.
RELATION = "a red circle to the left of a blue square"
ORDER_PAIRS = {"objects_swapped": (RELATION, "a blue square to the left of a red circle"),
               "relation": (RELATION, "a red circle to the right of a blue square"),
               "colour": (RELATION, "a red circle to the left of a green square")}
# Colours swapped between the shapes: the same bag of words; at the words both share (all but
# the colours), the states are all a reader of the tokens as a set has to pair colour and shape.
ATTRIBUTES_SWAPPED = ("a red circle and a blue square", "a blue circle and a red square")


def swapped(caption: str, table: dict[str, str]) -> str:
    return " ".join(table.get(word, word) for word in caption.split())


def usable(caption: str) -> bool:
    """Inside the grammar and asking for no held-out composition."""
    spec = try_parse(caption)
    return spec is not None and not any((o.colour, o.shape) in HELD_OUT for o in spec.objects)


@torch.no_grad()
def losses(pipe: LatentDiffusionPipeline, x_t, t: torch.Tensor, target, captions: list[str],
           scored: slice = slice(None)) -> torch.Tensor:
    """Per-sample loss; `t` is one level (a 0-d tensor) or one per frame, `scored` the frames scored."""
    text = pipe.encode_prompts(captions)
    out = pipe.denoiser(x_t, t.expand(len(captions), *t.shape), text.context, text.mask, text.pooled)
    if x_t.dim() == 5:
        out, target = out[:, :, scored], target[:, :, scored]
    return binding.per_sample_error(out, target)


def word_use(name: str, directory: Path | None, renders: int, seed: int,
             noise_levels: tuple[float, ...] = NOISE_LEVELS, first_frame_t: float | None = None) -> dict:
    engine = ShapesEngine(name, directory)
    engine.load()
    pipe = engine.pipeline
    rng = np.random.default_rng(seed)
    if engine.is_video:
        pixels, captions = data.video_batch(rng, renders, engine.max_frames, engine.defaults.width)
        z0 = train_diffusion.encode_videos(pipe.vae, pixels, "mean")
        near_misses = [None] * len(captions)
    else:
        pixels, captions, requirements = data.image_batch_with_requirements(rng, renders)
        z0 = train_diffusion.encode_images(pipe.vae, pixels, "mean")
        near_misses = [binding.binding_negative(c, r, rng) for c, r in zip(captions, requirements)]
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    result: dict = {"model": name, "renders": renders, "text_context": text_context_of(engine.card)}
    clear_first = engine.is_video and first_frame_t is not None
    scored = slice(1, None) if clear_first else slice(None)
    if clear_first:
        result["first_frame_t"] = first_frame_t
    for level in noise_levels:
        t = torch.full((z0.shape[2],), level) if clear_first else torch.tensor(level)
        if clear_first:
            t[0] = first_frame_t
        t_b = t.view(-1, 1, 1) if clear_first else t
        x_t = (1 - t_b) * z0 + t_b * eps
        target = eps - z0
        right = losses(pipe, x_t, t, target, captions, scored)
        row = {"loss": round(float(right.mean()), 4)}
        for kind, table in SWAPS.items():
            if kind == "motion" and not engine.is_video:
                continue
            wrong = [swapped(c, table) for c in captions]
            keep = [i for i, (c, w) in enumerate(zip(captions, wrong)) if w != c and usable(w)]
            if not keep:
                continue
            worse = losses(pipe, x_t[keep], t, target[keep], [wrong[i] for i in keep], scored)
            row[f"{kind}_swapped_increase"] = round(float(worse.mean() / right[keep].mean() - 1), 4)
            row[f"{kind}_swapped_renders"] = len(keep)
        keep = [i for i, miss in enumerate(near_misses) if miss is not None]
        if keep:
            worse = losses(pipe, x_t[keep], t, target[keep], [near_misses[i] for i in keep])
            row["binding_near_miss_increase"] = round(float(worse.mean() / right[keep].mean() - 1), 4)
            row["binding_near_miss_renders"] = len(keep)
        result[f"t={level}"] = row
    return result


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float((a - b).norm() / a.norm()), 3)


@torch.no_grad()
def text_tower_separation(clip) -> dict:
    tokenizer = ShapesTokenizer()
    row: dict = {"model": "shapes-clip"}
    for kind, pair in CAPTION_PAIRS.items():
        tokens = tokenizer.encode(list(pair))
        _, pooled = clip.encode_text_tokens(tokens.ids, tokens.mask)
        differ = (tokens.ids[0] != tokens.ids[1]).nonzero()[0, 0]
        words = clip.text.token_embedding(tokens.ids[:, differ])
        row[kind] = {"captions": pair, "pooled_state_distance": relative(pooled[0], pooled[1]),
                     "word_embedding_distance": relative(words[0], words[1])}
    for kind, pair in ORDER_PAIRS.items():
        tokens = tokenizer.encode(list(pair))
        row[f"token_states_{kind}"] = {"captions": pair, "distance": state_distance(clip, tokens, tokens.mask[0])}
    tokens = tokenizer.encode(list(ATTRIBUTES_SWAPPED))
    same_word = tokens.mask[0] & (tokens.ids[0] == tokens.ids[1])
    row["token_states_attributes_swapped"] = {"captions": ATTRIBUTES_SWAPPED, "over": "the words both share",
                                              "distance": state_distance(clip, tokens, same_word)}
    return row


def state_distance(clip, tokens, positions: torch.Tensor) -> float:
    """Mean distance of the two captions' token states at `positions`, over their mean norm."""
    states, _ = clip.encode_text_tokens(tokens.ids, tokens.mask)
    real = states[:, positions]
    return round(float((real[0] - real[1]).norm(dim=-1).mean() / real[0].norm(dim=-1).mean()), 3)


@torch.no_grad()
def posterior_noise(vae, renders: int, seed: int) -> dict:
    pixels, _ = data.image_batch(np.random.default_rng(seed), renders)
    posterior = vae.encode(pixels)
    ratio = float(posterior.std.mean() / posterior.mean.std())
    return {"model": "shapes-vae", "renders": renders, "posterior_std_over_mean_std": round(ratio, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--models", nargs="+", default=["shapes-dit", "shapes-unet", "shapes-video"])
    parser.add_argument("--renders", type=int, default=256)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--noise-levels", type=float, nargs="+", default=list(NOISE_LEVELS), metavar="T",
                        help="noise levels t in (0, 1) (default: %(default)s)")
    parser.add_argument("--first-frame-t", type=float, metavar="T",
                        help="video models: noise the first frame only to T and score the other frames")
    args = parser.parse_args()
    if not all(0 < t < 1 for t in args.noise_levels):
        parser.error(f"--noise-levels: each t in (0, 1), got {args.noise_levels}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(text_tower_separation(load_clip(directory=args.weights_dir))), flush=True)
    print(json.dumps(posterior_noise(load_vae(directory=args.weights_dir), args.renders, args.seed)), flush=True)
    for name in args.models:
        if not weights.has_weights(name, args.weights_dir):
            print(json.dumps({"model": name, "skipped": "no weights"}))
            continue
        print(json.dumps(word_use(name, args.weights_dir, args.renders, args.seed,
                                  tuple(args.noise_levels), args.first_frame_t)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
