"""Why position prompts fail: the objects, or the relation between them?

For ShapesGenEval's position prompts (its seeds; the model card's sampler, steps and guidance,
as `lanterna bench geneval` runs them), each image falls in one class:
- objects wrong: an asked object is missing, doubled, or an extra object is there;
- relation right: both objects, on the asked side (the judge passes it);
- relation reversed: both objects, on the opposite side;
- too close: both objects, on the asked side by less than the judge's margin.
"right given both found" near 0.5 says the model draws the pair but not the relation; the same
by relation word shows a side the model prefers whatever is asked. (Images of one prompt are not
independent: the standard error printed treats them as if they were.)

    python bench/bench_relations.py --model shapes-unet [--weights-dir DIR] [--prompts 50] [--images 1]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lanterna.engines.base import GenerationRequest  # noqa: E402
from lanterna.engines.shapes import ShapesEngine  # noqa: E402
from lanterna.evaluation import geneval  # noqa: E402
from lanterna.world.judge import Verdict, relation_gap, the_one  # noqa: E402
from lanterna.world.spec import Requirements  # noqa: E402


def classify(verdict: Verdict, req: Requirements) -> str:
    if not all(c.passed for c in verdict.checks if c.kind in ("count", "extras")):
        return "objects wrong"
    if verdict.passed:
        return "relation right"
    r = req.relation  # the counts passed: each of the two is there once
    subject, reference = (the_one(verdict.objects, req.objects[i]) for i in (r.subject, r.reference))
    return "relation reversed" if relation_gap(subject, reference, r.relation) < 0 else "too close"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-unet")
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--images", type=int, default=1, help="images a prompt")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = ShapesEngine(args.model, args.weights_dir)
    pairs = geneval.jobs(["position"], args.prompts, args.images)
    images = [engine.run(GenerationRequest(task="t2i", prompt=p.text, seeds=[seed])).images[0] for p, seed in pairs]
    requirements = [p.requirements for p, _ in pairs]
    verdicts = geneval.judge_images(images, requirements)
    by_relation: dict[str, Counter] = {}
    for verdict, req in zip(verdicts, requirements):
        by_relation.setdefault(req.relation.relation, Counter())[classify(verdict, req)] += 1
    print(json.dumps({"model": args.model, **summary(sum(by_relation.values(), Counter())),
                      "by relation": {r: summary(c) for r, c in sorted(by_relation.items())}}))
    return 0


def summary(classes: Counter) -> dict:
    both = sum(classes.values()) - classes["objects wrong"]
    right = classes["relation right"] / both if both else float("nan")
    return {"images": sum(classes.values()),
            **{k: classes[k] for k in ("objects wrong", "relation right", "relation reversed", "too close")},
            "right given both found": round(right, 3),
            "standard error": round(math.sqrt(right * (1 - right) / both), 3) if both else None}


if __name__ == "__main__":
    raise SystemExit(main())
