"""Best-of-K reranking with several scorers, on the same candidates.

For ShapesGenEval's prompts (one benchmark seed each, as `lanterna bench geneval --best-of K
--images-per-prompt 1`), generates the K candidates once, judges every one, and reports per task:
`first` (best-of-1: the benchmark seed's image), `any` (some candidate passes: what a perfect
scorer would reach) and, for each scorer, the pass rate of the candidate it scores highest, with
the prompts it turns from failed to passed and back against best-of-1 (`gained`, `lost`: the
discordant pairs a paired test of the difference rests on). Every scorer ranks the same images,
so their difference is free of the generator's sampling noise.
A scorer is a directory holding `shapes-clip` weights.

    python bench/bench_rerank.py --model shapes-dit --scorers DIR [DIR ...] [--k 4]
        [--prompts-per-task 50] [--backend torch] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lanterna.bench_cli import candidate_seeds  # noqa: E402
from lanterna.engines.base import GenerationRequest  # noqa: E402
from lanterna.engines.bundled import default_registry  # noqa: E402
from lanterna.evaluation import geneval  # noqa: E402
from lanterna.evaluation.clip_score import ShapesCLIPScorer  # noqa: E402


def candidates(engine, prompt: geneval.Prompt, k: int, backend: str) -> list:
    seed = geneval.seeds_for(prompt.task, prompt.index, 1)[0]
    result = engine.run(GenerationRequest(task="t2i", prompt=prompt.text, seeds=candidate_seeds(seed, k),
                                          backend=backend))
    return result.images


def rates(passed: dict[str, list[bool]]) -> dict[str, float]:
    out = {task: round(float(np.mean(v)), 4) for task, v in passed.items()}
    out["overall"] = round(float(np.mean(list(out.values()))), 4)
    return out


def swaps(first: dict[str, list[bool]], picked: dict[str, list[bool]], gained: bool) -> int:
    """Prompts whose verdict the reranking changed: failed to passed (gained) or passed to failed."""
    return sum(p == gained and f != gained for task in first for f, p in zip(first[task], picked[task]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes-dit")
    p.add_argument("--scorers", nargs="+", type=Path, required=True)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--prompts-per-task", type=int, default=50)
    p.add_argument("--backend", default="torch")
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    engine = default_registry().get(args.model, "t2i")
    scorers = {str(d): ShapesCLIPScorer.from_bundled(d) for d in args.scorers}
    first, any_, picked = {}, {}, {name: {} for name in scorers}
    for task in geneval.TASKS:
        first[task], any_[task] = [], []
        for name in scorers:
            picked[name][task] = []
        for prompt in geneval.prompt_set(task, args.prompts_per_task):
            images = candidates(engine, prompt, args.k, args.backend)
            passed = [v.passed for v in geneval.judge_images(images, [prompt.requirements] * len(images))]
            first[task].append(passed[0])
            any_[task].append(any(passed))
            for name, scorer in scorers.items():
                scores = scorer.clip_scores(images, [prompt.text] * len(images))
                picked[name][task].append(passed[int(np.argmax(scores))])
    report = {"model": args.model, "weights": engine.weights_hash, "k": args.k,
              "prompts_per_task": args.prompts_per_task, "backend": args.backend,
              "first": rates(first), "any": rates(any_),
              "picked": {name: rates(v) for name, v in picked.items()},
              "gained": {name: swaps(first, v, True) for name, v in picked.items()},
              "lost": {name: swaps(first, v, False) for name, v in picked.items()},
              "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
