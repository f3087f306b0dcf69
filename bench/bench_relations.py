"""Why prompts for two objects fail: the objects, their attributes, or the relation between them?

For ShapesGenEval's prompts of a two-object task (position by default; its seeds; the model
card's sampler, steps and guidance, as `lanterna bench geneval` runs them), each image falls in
one class:
- objects wrong: an asked object is missing, doubled, or an extra object is there; split into
  - attributes swapped: the asked colours and the asked shapes, paired the other way
    ("a yellow circle and a red triangle" drawn as a red circle and a yellow triangle);
  - object missing / extra object: fewer / more objects than asked;
  - other object: as many objects as asked, but a colour or shape that was not;
- passed: the judge passes it (for position: both objects, on the asked side);
- relation reversed: both objects, on the opposite side;
- too close: both objects, on the asked side by less than the judge's margin;
- size wrong: both objects (and the relation), at a size other than asked.
For position, "right given both found" near 0.5 says the model draws the pair but not the
relation; the same by relation word shows a side the model prefers whatever is asked. (Images of
one prompt are not independent: the standard error printed treats them as if they were.)

    python bench/bench_relations.py --model shapes-unet [--task position|two_objects|color_attr]
        [--weights-dir DIR] [--prompts 50] [--images 1]
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


TASKS = ("position", "two_objects", "color_attr")
OBJECT_CLASSES = ("attributes swapped", "object missing", "extra object", "other object")
CLASSES = ("passed", *OBJECT_CLASSES, "relation reversed", "too close", "size wrong")


def classify(verdict: Verdict, req: Requirements) -> str:
    if not all(c.passed for c in verdict.checks if c.kind in ("count", "extras")):
        return objects_wrong(verdict, req)
    if verdict.passed:
        return "passed"
    r = req.relation  # the counts passed: each of the two is there once
    if r is not None and not all(c.passed for c in verdict.checks if c.kind == "relation"):
        subject, reference = (the_one(verdict.objects, req.objects[i]) for i in (r.subject, r.reference))
        return "relation reversed" if relation_gap(subject, reference, r.relation) < 0 else "too close"
    return "size wrong"


def objects_wrong(verdict: Verdict, req: Requirements) -> str:
    asked = [(o.colour, o.shape) for o in req.objects for _ in range(o.count)]
    found = [(o.colour, o.shape) for o in verdict.objects]
    if len(found) != len(asked):
        return "object missing" if len(found) < len(asked) else "extra object"
    same_parts = all(sorted(p[i] for p in found) == sorted(p[i] for p in asked) for i in (0, 1))
    return "attributes swapped" if same_parts else "other object"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-unet")
    parser.add_argument("--task", choices=TASKS, default="position")
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--images", type=int, default=1, help="images a prompt")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = ShapesEngine(args.model, args.weights_dir)
    pairs = geneval.jobs([args.task], args.prompts, args.images)
    images = [engine.run(GenerationRequest(task="t2i", prompt=p.text, seeds=[seed])).images[0] for p, seed in pairs]
    requirements = [p.requirements for p, _ in pairs]
    verdicts = geneval.judge_images(images, requirements)
    classes = [classify(verdict, req) for verdict, req in zip(verdicts, requirements)]
    report = {"model": args.model, "task": args.task, **summary(Counter(classes))}
    if args.task == "position":
        by_relation: dict[str, Counter] = {}
        for kind, req in zip(classes, requirements):
            by_relation.setdefault(req.relation.relation, Counter())[kind] += 1
        report["by relation"] = {r: summary(c) for r, c in sorted(by_relation.items())}
    print(json.dumps(report))
    return 0


def summary(classes: Counter) -> dict:
    wrong = sum(classes[k] for k in OBJECT_CLASSES)
    both = sum(classes.values()) - wrong
    right = classes["passed"] / both if both else float("nan")
    return {"images": sum(classes.values()), "objects wrong": wrong, **{k: classes[k] for k in CLASSES},
            "right given both found": round(right, 3),
            "standard error": round(math.sqrt(right * (1 - right) / both), 3) if both else None}


if __name__ == "__main__":
    raise SystemExit(main())
