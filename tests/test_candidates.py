"""The reranker's training data (a generator's candidates, judged by the oracle) and its ranking loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lanterna.engines.base import GenerationResult
from lanterna.engines.nets.text import ShapesTokenizer
from lanterna.training import candidates, train_clip
from lanterna.training.candidates import CANDIDATE_TASKS, CandidateSet
from lanterna.training.common import Recipe, RecipeError
from lanterna.world.captions import caption_of
from lanterna.world.render import render
from lanterna.world.sampling import HELD_OUT_PAIRS, sample_scene


def test_training_prompts_leave_out_the_benchmark_and_the_held_out_compositions():
    prompts = candidates.training_prompts(40)
    texts = [text for text, _ in prompts]
    assert len(texts) == 40 * len(CANDIDATE_TASKS) == len(set(texts))
    assert not set(texts) & candidates.benchmark_captions()
    assert "novel" not in CANDIDATE_TASKS
    assert not {(o.colour, o.shape) for _, req in prompts for o in req.objects} & set(HELD_OUT_PAIRS)
    assert candidates.training_prompts(40) == prompts  # fixed by the seed
    assert candidates.training_prompts(40, seed=1) != prompts


class RendersEvenSeeds:
    """A generator that draws the asked scene for even seeds and a blank canvas for odd ones."""

    def __init__(self, scenes: dict[str, object]) -> None:
        self.scenes = scenes

    def run(self, request) -> GenerationResult:
        scene = self.scenes[request.prompt]
        images = [Image.fromarray(render(scene)) if s % 2 == 0 else Image.new("RGB", (64, 64), "gray")
                  for s in request.seeds]
        return GenerationResult(seeds=request.seeds, images=images)


def test_candidates_carry_the_judges_verdicts_and_survive_a_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    scenes = [sample_scene(rng, task) for task in CANDIDATE_TASKS]
    prompts = [(caption_of(s.requirements, rng), s.requirements) for s in scenes]
    made = candidates.generate(RendersEvenSeeds({t: s for (t, _), s in zip(prompts, scenes)}), prompts, k=4)
    assert made.images.shape == (4 * len(prompts), 64, 64, 3) and made.images.dtype == np.uint8
    assert made.group.tolist() == [g for g in range(len(prompts)) for _ in range(4)]
    assert made.passed.tolist() == [True, False, True, False] * len(prompts)
    assert made.mixed_groups().tolist() == list(range(len(prompts)))
    made.save(tmp_path / "c.npz")
    back = CandidateSet.load(tmp_path / "c.npz")
    assert back.captions == made.captions and np.array_equal(back.images, made.images)
    both = CandidateSet.concatenate([made, back])
    assert both.group.tolist() == made.group.tolist() + (made.group + len(prompts)).tolist()
    assert both.captions[both.group[-1]] == made.captions[-1]
    with pytest.raises(FileNotFoundError, match="lanterna.training.candidates"):
        CandidateSet.load(tmp_path / "missing.npz")


def random_candidates(groups: int, k: int, passed: list[bool], seed: int = 0) -> CandidateSet:
    rng = np.random.default_rng(seed)
    captions = ["a red circle", "two blue squares", "a green cross above a yellow triangle"]
    return CandidateSet(rng.integers(0, 256, (groups * k, 64, 64, 3), dtype=np.uint8),
                        [captions[g % 3] for g in range(groups)], np.repeat(np.arange(groups), k),
                        np.array(passed))


def test_the_ranking_loss_is_the_softmax_mass_left_off_the_passing_images():
    torch.manual_seed(0)
    model = train_clip.build(Recipe(model="clip", size="tiny"))
    tokenizer = ShapesTokenizer()
    cands = random_candidates(2, 3, [True, False, False, False, True, True])
    scores = train_clip.candidate_scores(model, tokenizer, cands, [0, 1])
    expected = -0.5 * (scores[0].log_softmax(0)[0] + scores[1].softmax(0)[1:].sum().log())
    assert torch.allclose(train_clip.ranking_loss(model, tokenizer, cands, [0, 1]), expected)
    before = train_clip.rerank_accuracy(model, tokenizer, cands, np.array([0, 1]), k=3)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(40):
        loss = train_clip.ranking_loss(model, tokenizer, cands, [0, 1])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = train_clip.rerank_accuracy(model, tokenizer, cands, np.array([0, 1]), k=3)
    assert before["first"] == after["first"] == 0.5 and after["any"] == 1.0 and after["groups"] == 2
    assert after["picked"] == 1.0
    assert float(loss.detach()) < float(expected.detach())


def test_the_held_out_tenth_and_unmixed_groups_are_not_trained_on():
    passed = []
    for g in range(25):  # groups 3, 7 and 21 all pass; 12 all fail
        passed += [True, True] if g in (3, 7, 21) else [False, False] if g == 12 else [True, False]
    train, held = train_clip.split_groups(random_candidates(25, 2, passed))
    assert held.tolist() == [0, 10, 20]
    assert train.tolist() == [g for g in range(25) if g not in (0, 10, 20, 3, 7, 21, 12)]


def test_a_scorer_run_on_candidates_logs_the_ranking_and_evaluates_best_of_4(tmp_path, monkeypatch):
    from lanterna.training import export

    monkeypatch.setenv("LANTERNA_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setattr(train_clip, "EVAL_PER_TASK", 8)
    clip, run = train_clip.train(str(tmp_path / "a"), Recipe(model="clip", size="tiny", batch=8, warmup=1),
                                 max_steps=1, max_minutes=None, eval_every=100)
    export.export_clip(clip, run, Recipe(model="clip", size="tiny"), tmp_path / "w")
    random_candidates(12, 4, [True, False, True, False] * 12).save(tmp_path / "c.npz")
    extra = {"init_from": "shapes-clip", "part": "scorer", "candidates": [str(tmp_path / "c.npz")],
             "rank_groups": 3}
    tuned = Recipe(model="clip", size="tiny", batch=8, lr=1e-3, warmup=1, extra=extra)
    ranked, run = train_clip.train(str(tmp_path / "b"), tuned, max_steps=2, max_minutes=None, eval_every=2)
    unranked, _ = train_clip.train(str(tmp_path / "b0"), Recipe(**{**vars(tuned), "extra": {**extra, "rank_weight": 0.0}}),
                                   max_steps=2, max_minutes=None, eval_every=100)
    assert not torch.equal(ranked.image_projection.weight, unranked.image_projection.weight)
    rerank = run.records("eval")[-1]["rerank"]
    assert rerank["groups"] == 2 and rerank["first"] == 1.0 and rerank["any"] == 1.0
    cands = train_clip.load_candidates(extra["candidates"])  # the record is the trained scorer's
    assert rerank == train_clip.rerank_accuracy(ranked, ShapesTokenizer(), cands, train_clip.split_groups(cands)[1])
    random_candidates(12, 4, [True] * 48).save(tmp_path / "c.npz")
    with pytest.raises(RecipeError, match="both a passing and a failing"):
        train_clip.train(str(tmp_path / "c"), tuned, max_steps=2, max_minutes=None, eval_every=2)
