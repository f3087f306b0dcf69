"""A bundled generator's own candidates, judged by the oracle: training data for the reranker.

Best-of-K picks among one prompt's K images; the failures a scorer must see through there are the
generator's (one object too many, a colour on the wrong shape, a circle drawn for a square), not
the near misses of renders. This module samples training captions of every task but novel (whose
compositions are held out), leaves out every caption of ShapesGenEval's prompt sets, generates K
images of each with the engine's card settings, and stores them with the judge's verdicts:

    python -m lanterna.training.candidates --model shapes-dit --out runs/candidates-dit.npz
        [--prompts-per-task 100] [--k 8] [--threads N]

The file (`CandidateSet.save`) holds `images` (uint8 N x H x W x 3), `captions` (one per group),
`group` (the caption each image belongs to) and `passed`; `lanterna train clip --extra
'{"part": "scorer", "candidates": [FILE]}'` trains the scorer to pick the passing ones.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lanterna.evaluation import geneval
from lanterna.world.sampling import distinct_captions
from lanterna.world.spec import Requirements

log = logging.getLogger("lanterna.training")

CANDIDATE_TASKS = tuple(t for t in geneval.TASKS if t != "novel")
CANDIDATE_SEED = 31_337  # captions; far from geneval.PROMPT_SEED's
FIRST_IMAGE_SEED = 70_000_000  # far above every benchmark seed and best-of-K's candidate seeds


@dataclass
class CandidateSet:
    images: np.ndarray  # uint8 N x H x W x 3
    captions: list[str]  # one per group
    group: np.ndarray  # int, N: the caption each image is of
    passed: np.ndarray  # bool, N

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, images=self.images, captions=np.array(self.captions),
                            group=self.group, passed=self.passed)

    @classmethod
    def load(cls, path: str | Path) -> CandidateSet:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no candidate file {path} (make one with "
                                    "`python -m lanterna.training.candidates`)")
        with np.load(path) as f:
            return cls(f["images"], [str(c) for c in f["captions"]], f["group"], f["passed"])

    @classmethod
    def concatenate(cls, sets: list[CandidateSet]) -> CandidateSet:
        offsets = np.cumsum([0] + [len(s.captions) for s in sets[:-1]])
        return cls(np.concatenate([s.images for s in sets]), [c for s in sets for c in s.captions],
                   np.concatenate([s.group + o for s, o in zip(sets, offsets)]),
                   np.concatenate([s.passed for s in sets]))

    def mixed_groups(self) -> np.ndarray:
        """Groups holding both a passing and a failing image: the ones a ranking can learn from."""
        passes = np.bincount(self.group, weights=self.passed, minlength=len(self.captions))
        sizes = np.bincount(self.group, minlength=len(self.captions))
        return np.flatnonzero((passes > 0) & (passes < sizes))

    def members(self, g: int) -> np.ndarray:
        return np.flatnonzero(self.group == g)


def benchmark_captions() -> set[str]:
    return {p.text for task in geneval.TASKS + geneval.VIDEO_TASKS for p in geneval.task_prompts(task)}


def training_prompts(per_task: int, seed: int = CANDIDATE_SEED) -> list[tuple[str, Requirements]]:
    """`per_task` distinct captions of each candidate task, none of them a benchmark prompt."""
    excluded = benchmark_captions()
    return [pair for index, task in enumerate(CANDIDATE_TASKS)
            for pair in distinct_captions(np.random.default_rng([seed, index]), task, per_task, excluded).items()]


def generate(engine, prompts: list[tuple[str, Requirements]], k: int, backend: str = "torch",
             first_seed: int = FIRST_IMAGE_SEED) -> CandidateSet:
    from lanterna.engines.base import GenerationRequest

    images, group, passed = [], [], []
    start = time.perf_counter()
    for g, (text, req) in enumerate(prompts):
        seeds = [first_seed + g * k + j for j in range(k)]
        result = engine.run(GenerationRequest(task="t2i", prompt=text, seeds=seeds, backend=backend))
        verdicts = geneval.judge_images(result.images, [req] * k)
        images.extend(geneval.as_uint8(im) for im in result.images)
        group.extend([g] * k)
        passed.extend(v.passed for v in verdicts)
        if (g + 1) % 25 == 0:
            log.info("%d/%d prompts, %.0f s, %.3f passed", g + 1, len(prompts),
                     time.perf_counter() - start, np.mean(passed))
    return CandidateSet(np.stack(images), [text for text, _ in prompts], np.array(group), np.array(passed))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes-dit")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompts-per-task", type=int, default=100)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--seed", type=int, default=CANDIDATE_SEED)
    p.add_argument("--backend", default="torch")
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from lanterna.engines.bundled import default_registry

    engine = default_registry().get(args.model, "t2i")
    prompts = training_prompts(args.prompts_per_task, args.seed)
    candidates = generate(engine, prompts, args.k, args.backend)
    candidates.save(args.out)
    log.info("wrote %s: %d images of %d captions, %.3f passed, %d mixed groups", args.out,
             len(candidates.passed), len(candidates.captions), candidates.passed.mean(),
             len(candidates.mixed_groups()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
