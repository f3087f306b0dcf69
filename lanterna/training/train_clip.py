"""Train `shapes-clip`: contrastive text and image towers (Radford et al. 2021) on Shapes renders.

Its text tower later conditions the diffusion models (frozen) and the pair is the default scorer.
Options (`extra`): `near_misses: true` fills half of each batch with renders of near misses of the
other half's captions (hard negatives: one fact changed); `part: "scorer"` continues exported
weights with the text transformer frozen, so the denoisers conditioned on it stay valid while the
image tower, both projections and any scorer-only text blocks (`net: {"score_layers": N}`, added
as the identity) learn. `candidates: [FILE, ...]` (files of `lanterna.training.candidates`: a
generator's images of training captions, judged by the oracle) adds a ranking loss: for
`rank_groups` captions a step (default 8) whose images both pass and fail, the softmax of the
caption's scores over its images must put its mass on the passing ones (weight `rank_weight`,
default 1). Every tenth caption is held out; the evaluation reports best-of-4 on those.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lanterna.engines.nets.text import CLIP_SIZES, ShapesCLIP, ShapesCLIPConfig, ShapesTokenizer
from lanterna.training import data
from lanterna.training.candidates import CandidateSet
from lanterna.training.common import Recipe, RecipeError, Run, Trainable, autocast, make_optimizer, optimizer_step, run_loop, tuned_part
from lanterna.world import sampling
from lanterna.world.near_miss import near_miss_renders

EVAL_SEED = 20_000
EVAL_PER_TASK = 64
HELD_OUT_EVERY = 10  # candidate groups g with g % 10 == 0 are for evaluation only
RANK_K = 4  # the evaluation's best-of-K
IMAGE_TASKS = ("single_object", "two_objects", "counting", "colors", "position", "color_attr", "novel")


def build(recipe: Recipe) -> ShapesCLIP:
    config = dict(CLIP_SIZES[recipe.size], vocab_size=ShapesTokenizer().vocab_size) | recipe.extra.get("net", {})
    return ShapesCLIP(ShapesCLIPConfig(**config))


def trained_part(recipe: Recipe) -> str:
    """'all', or 'scorer': everything but the text transformer, which conditions the denoisers."""
    return tuned_part(recipe, "scorer", "exported weights around their text transformer")


def contrastive_loss(model: ShapesCLIP, pixels: torch.Tensor, ids: torch.Tensor,
                     mask: torch.Tensor, captions: list[str]) -> torch.Tensor:
    logits_per_image, logits_per_text = model(pixels, ids, mask)
    # Identical captions in one batch are true pairs too: share the target among them.
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    targets = same / same.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits_per_image.float(), targets)
                  + F.cross_entropy(logits_per_text.float(), targets))


def candidate_scores(model: ShapesCLIP, tokenizer: ShapesTokenizer, candidates: CandidateSet,
                     groups: list[int]) -> list[torch.Tensor]:
    """Per group: exp(logit_scale) * cos(caption, image) for each of its images."""
    members = [candidates.members(g) for g in groups]
    pixels = data.to_pixels(candidates.images[np.concatenate(members)])
    tokens = tokenizer.encode([candidates.captions[g] for g in groups])
    image = F.normalize(model.encode_image(pixels).float(), dim=-1)
    text = F.normalize(model.encode_text(tokens.ids, tokens.mask).float(), dim=-1)
    cos = (image * text.repeat_interleave(torch.tensor([len(m) for m in members]), dim=0)).sum(-1)
    return list((model.logit_scale.exp() * cos).split([len(m) for m in members]))


def ranking_loss(model: ShapesCLIP, tokenizer: ShapesTokenizer, candidates: CandidateSet,
                 groups: list[int]) -> torch.Tensor:
    """-log of the softmax mass a caption puts on its passing images, over its images (listwise)."""
    losses = []
    for g, scores in zip(groups, candidate_scores(model, tokenizer, candidates, groups)):
        passed = torch.from_numpy(candidates.passed[candidates.members(g)])
        losses.append(torch.logsumexp(scores, 0) - torch.logsumexp(scores[passed], 0))
    return torch.stack(losses).mean()


def split_groups(candidates: CandidateSet) -> tuple[np.ndarray, np.ndarray]:
    """(mixed groups to train on, groups held out for evaluation)."""
    held = np.arange(len(candidates.captions)) % HELD_OUT_EVERY == 0
    mixed = np.zeros_like(held)
    mixed[candidates.mixed_groups()] = True
    return np.flatnonzero(mixed & ~held), np.flatnonzero(held)


@torch.no_grad()
def rerank_accuracy(model: ShapesCLIP, tokenizer: ShapesTokenizer, candidates: CandidateSet,
                    groups: np.ndarray, k: int = RANK_K) -> dict[str, float]:
    """On held-out captions' first k images: pass rate of the first, of the one scored highest, of any."""
    model.eval()
    first, picked, any_ = [], [], []
    for start in range(0, len(groups), 32):
        chunk = [int(g) for g in groups[start:start + 32]]
        for g, scores in zip(chunk, candidate_scores(model, tokenizer, candidates, chunk)):
            passed = candidates.passed[candidates.members(g)][:k]
            first.append(passed[0])
            picked.append(passed[int(scores[:k].argmax())])
            any_.append(passed.any())
    return {"first": float(np.mean(first)), "picked": float(np.mean(picked)), "any": float(np.mean(any_)),
            "groups": len(first)}


def load_candidates(paths: str | Path | list[str | Path] | None) -> CandidateSet | None:
    """The candidate files (one path or several) as one set; None for none."""
    if not paths:
        return None
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return CandidateSet.concatenate([CandidateSet.load(p) for p in paths])


@torch.no_grad()
def retrieval_accuracy(model: ShapesCLIP, tokenizer: ShapesTokenizer, per_task: int | None = None,
                       group: int = 16) -> dict[str, float]:
    """Zero-shot: for each held-out render, pick its caption among `group` captions of the same task."""
    model.eval()
    per_task = per_task or EVAL_PER_TASK
    rng = np.random.default_rng(EVAL_SEED)
    scores = {}
    for task in IMAGE_TASKS:
        images, captions, _ = sampling.sample_task(rng, task, per_task)
        pixels = data.to_pixels(images)
        hits = 0
        for start in range(0, per_task, group):
            chunk = slice(start, start + group)
            tokens = tokenizer.encode(captions[chunk])
            img = F.normalize(model.encode_image(pixels[chunk]).float(), dim=-1)
            txt = F.normalize(model.encode_text(tokens.ids, tokens.mask).float(), dim=-1)
            sims = img @ txt.T
            # Captions repeated within a group count as right too.
            picked = sims.argmax(1).tolist()
            hits += sum(captions[chunk][i] == captions[chunk][p] for i, p in enumerate(picked))
        scores[task] = hits / per_task
    scores["mean"] = float(np.mean([scores[t] for t in IMAGE_TASKS]))
    return scores


@torch.no_grad()
def near_miss_accuracy(model: ShapesCLIP, tokenizer: ShapesTokenizer, per_task: int | None = None
                       ) -> dict[str, dict[str, float]]:
    """For held-out renders and renders of a near miss of each (one fact changed):

    `images`: how often a caption scores its own render above the near miss's render (the choice
    best-of-N reranking makes); `captions`: how often a render scores its caption above the near
    miss's caption.
    """
    model.eval()
    per_task = per_task or 2 * EVAL_PER_TASK
    rng = np.random.default_rng(EVAL_SEED + 1)
    images_right, captions_right = {}, {}
    for task in IMAGE_TASKS:
        images, captions, scenes = sampling.sample_task(rng, task, per_task)
        miss_images, miss_captions = near_miss_renders(rng, scenes)
        img = F.normalize(model.encode_image(data.to_pixels(np.concatenate([images, miss_images]))).float(), dim=-1)
        tokens = tokenizer.encode(captions + miss_captions)
        txt = F.normalize(model.encode_text(tokens.ids, tokens.mask).float(), dim=-1)
        own, miss_img, miss_txt = img[:per_task], img[per_task:], txt[per_task:]
        right = (own * txt[:per_task]).sum(1)
        images_right[task] = float((right > (miss_img * txt[:per_task]).sum(1)).float().mean())
        captions_right[task] = float((right > (own * miss_txt).sum(1)).float().mean())
    for scores in (images_right, captions_right):
        scores["mean"] = float(np.mean([scores[t] for t in IMAGE_TASKS]))
    return {"images": images_right, "captions": captions_right}


def train(run_dir: str, recipe: Recipe, max_steps: int | None, max_minutes: float | None,
          eval_every: int = 1000) -> tuple[ShapesCLIP, Run]:
    torch.manual_seed(recipe.seed)
    np_rng = np.random.default_rng(recipe.seed)
    model = build(recipe)
    if trained_part(recipe) == "scorer":
        model.text.requires_grad_(False)
    batch_of = data.near_miss_batch if recipe.extra.get("near_misses") else data.image_batch
    tokenizer = ShapesTokenizer()
    trainable = Trainable(model, make_optimizer(model, recipe))
    run = Run(run_dir)
    candidates = load_candidates(recipe.extra.get("candidates"))
    if candidates is not None:
        train_groups, held_out = split_groups(candidates)
        if not len(train_groups):
            raise RecipeError("candidates: no caption outside the held-out tenth has both a passing "
                              "and a failing image to rank")
    rank_groups = int(recipe.extra.get("rank_groups", 8))
    rank_weight = float(recipe.extra.get("rank_weight", 1.0))

    def step_fn(step: int) -> dict:
        pixels, captions = batch_of(np_rng, recipe.batch)
        tokens = tokenizer.encode(captions)
        metrics = {}
        with autocast(recipe.bf16):
            loss = contrastive_loss(model, pixels, tokens.ids, tokens.mask, captions)
            if candidates is not None:
                groups = np_rng.choice(train_groups, min(rank_groups, len(train_groups)), replace=False)
                rank = ranking_loss(model, tokenizer, candidates, [int(g) for g in groups])
                metrics["rank_loss"] = float(rank.detach())
                loss = loss + rank_weight * rank
        grad = optimizer_step(trainable, loss, recipe, step)
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        return metrics | {"loss": float(loss.detach()), "grad_norm": grad,
                          "logit_scale": float(model.logit_scale.detach().exp())}

    def evaluate(step: int) -> dict:
        record = {"retrieval": retrieval_accuracy(model, tokenizer), "near_miss": near_miss_accuracy(model, tokenizer)}
        if candidates is not None:
            record["rerank"] = rerank_accuracy(model, tokenizer, candidates, held_out)
        return record

    run_loop(run, trainable, recipe, np_rng, step_fn, evaluate, max_steps, max_minutes, eval_every)
    return model, run
