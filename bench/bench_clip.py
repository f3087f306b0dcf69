"""shapes-clip as a scorer: zero-shot retrieval and near-miss accuracy, and whether its text
transformer (what conditions the denoisers) is bit-identical to another copy's.

Loads the file as shipped (fp16 weights computed in fp32) and runs the evaluations its training
logs (`train_clip.retrieval_accuracy`, `train_clip.near_miss_accuracy`), so the two can be
compared; `--against DIR` names a folder with another shapes-clip (e.g. a previous version
checked out with `git show`) whose text.* tensors are compared with this one's. `--candidates
FILE ...` (files of `lanterna.training.candidates`) adds best-of-4 on their held-out tenth of
captions (`train_clip.rerank_accuracy`, as a scorer run with those files evaluates it).

    python bench/bench_clip.py [--weights-dir DIR] [--against DIR] [--candidates FILE ...] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lanterna.engines import weights  # noqa: E402
from lanterna.engines.nets.text import ShapesTokenizer  # noqa: E402
from lanterna.engines.shapes import load_clip  # noqa: E402
from lanterna.training import train_clip  # noqa: E402


def same_text_tower(a: Path | None, b: Path) -> bool:
    mine, other = weights.load_state("shapes-clip", a), weights.load_state("shapes-clip", b)
    keys = [k for k in mine if k.startswith("text.")]
    return bool(keys) and all(k in other and torch.equal(mine[k], other[k]) for k in keys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights-dir", type=Path, default=None)
    p.add_argument("--against", type=Path, help="a folder with another shapes-clip to compare text towers with")
    p.add_argument("--candidates", type=Path, nargs="+", help="candidate files to rerank the held-out tenth of")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_clip(directory=args.weights_dir).float(), ShapesTokenizer()
    result = {"steps": weights.read_card("shapes-clip", args.weights_dir).get("steps"),
              "retrieval": train_clip.retrieval_accuracy(model, tokenizer),
              "near_miss": train_clip.near_miss_accuracy(model, tokenizer)}
    if candidates := train_clip.load_candidates(args.candidates):
        held_out = train_clip.split_groups(candidates)[1]
        result["rerank"] = train_clip.rerank_accuracy(model, tokenizer, candidates, held_out)
    if args.against:
        result["text_tower_identical"] = same_text_tower(args.weights_dir, args.against)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
