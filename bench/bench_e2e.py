"""End to end through the Shapes engine: one 64 x 64 image at 20 steps and one 16-frame video, per backend.

    .venv/bin/python bench/bench_e2e.py [--runs 5] [--steps 20] [--backends torch onnx auto]
        [--models shapes-dit shapes-unet shapes-video]

Uses the bundled weights when lanterna/weights/ has them; otherwise random-weight models of the
nets' "default" sizes saved in a temporary folder the same way (the output says which). Times
`ShapesEngine.run` (text encoding, the guided denoising loop, VAE decoding, PIL conversion) after
one warm-up run, which also exports the ONNX graphs (cached by weights hash) and, for `auto`,
calibrates. The median of --runs rounds, each running every backend once in turn (so the load
of other jobs falls on all alike), is reported with the backend label each result carried.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_peak import interleaved_medians, load_average, machine_note  # noqa: E402

from lanterna.engines import weights  # noqa: E402
from lanterna.engines.base import GenerationRequest  # noqa: E402
from lanterna.engines.nets import NET_SIZES, build_net  # noqa: E402
from lanterna.engines.nets.text import ShapesTokenizer  # noqa: E402
from lanterna.engines.onnx import physical_cores  # noqa: E402
from lanterna.engines.shapes import ShapesEngine  # noqa: E402
from tests.tiny_models import randomise_zero_params  # noqa: E402

NETS = {"shapes-dit": "dit", "shapes-unet": "unet", "shapes-video": "video_dit"}
PROMPTS = {"shapes-dit": "a red circle to the left of a blue square",
           "shapes-unet": "a red circle to the left of a blue square",
           "shapes-video": "a red circle moving right"}

log = logging.getLogger("bench_e2e")


def save_random_default_bundle(directory: Path, steps: int) -> Path:
    """Random-weight default-size models with cards like the bundled ones."""
    torch.manual_seed(0)
    components = {"shapes-vae": ("vae", build_net("vae", NET_SIZES["vae"]["default"])),
                  "shapes-clip": ("clip", build_net("clip", dict(NET_SIZES["clip"]["default"],
                                                                 vocab_size=ShapesTokenizer().vocab_size)))}
    for name, (kind, module) in components.items():
        weights.save_module(module, name, directory)
        weights.write_card(name, {"name": name, "net": kind, "config": asdict(module.config)}, directory)
    for name, kind in NETS.items():
        net = randomise_zero_params(build_net(kind, NET_SIZES[kind]["default"]), 1)
        video = kind == "video_dit"
        card = {"name": name, "net": kind, "config": asdict(net.config), "prediction": "v",
                "components": {"vae": "shapes-vae", "text_encoder": "shapes-clip"},
                "defaults": {"steps": steps, "guidance": 4.0, "sampler": "dpmpp-2m", "width": 64, "height": 64,
                             **({"frames": 16, "fps": 8} if video else {})},
                **({"max_frames": 16} if video else {})}
        weights.save_module(net, name, directory)
        weights.write_card(name, card, directory)
    return directory


def bench_model(engine: ShapesEngine, backends: list[str], steps: int, runs: int) -> list[dict]:
    task = "t2v" if engine.is_video else "t2i"
    requests, labels, first = {}, {}, {}
    for backend in backends:
        requests[backend] = GenerationRequest(task=task, prompt=PROMPTS.get(engine.name, "a red circle"),
                                              seeds=[0], steps=steps, backend=backend)
        start = time.perf_counter()
        labels[backend] = engine.run(requests[backend]).backend  # loads, exports / calibrates once
        first[backend] = time.perf_counter() - start
    load_before = load_average()[0]
    seconds = interleaved_medians({b: lambda b=b: engine.run(requests[b]) for b in backends}, runs=runs, warmup=0)
    rows = [{"model": engine.name, "task": task, "backend": b, "label": labels[b], "steps": steps,
             "frames": engine.defaults.frames if engine.is_video else None, "median_s": round(seconds[b], 4),
             "first_run_s": round(first[b], 2), "load_before": round(load_before, 2),
             "load_after": round(load_average()[0], 2)} for b in backends]
    for row in rows:
        log.info("%s", json.dumps(row))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx", "auto"])
    parser.add_argument("--models", nargs="+", default=list(NETS))
    parser.add_argument("--threads", type=int, help="torch threads (default: physical cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch", "lanterna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads or physical_cores())
    bundled = all(weights.has_weights(m) for m in args.models)
    with tempfile.TemporaryDirectory() as tmp:
        directory = None if bundled else save_random_default_bundle(Path(tmp), args.steps)
        rows = []
        for name in args.models:
            rows += bench_model(ShapesEngine(name, directory), args.backends, args.steps, args.runs)
    print(json.dumps({"machine": machine_note(), "weights": "bundled" if bundled else "random, default sizes",
                      "runs": args.runs, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
