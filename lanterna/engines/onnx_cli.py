"""`lanterna export-onnx MODEL [-o DIR]`: export a bundled model's denoiser, text encoder and VAE
decoder to ONNX (checked against torch before writing), cached by weights hash."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger("lanterna.engines.onnx_cli")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export-onnx", help="export a model to ONNX for the onnx backend")
    p.add_argument("model", help="model name, e.g. shapes-dit, shapes-unet, shapes-video")
    p.add_argument("-o", "--output", type=Path, help="folder to write (default: the cache, "
                   "$LANTERNA_ONNX_CACHE or ~/.cache/lanterna/onnx/<model>-<weights hash>/)")
    p.add_argument("--weights-dir", type=Path, help="folder of the model's weights and card "
                   "(default: the bundled weights, or $LANTERNA_WEIGHTS_DIR)")
    p.add_argument("--attention", choices=("native", "decomposed"), default="native",
                   help="ONNX Attention operator (opset 23) or MatMul + Softmax (opset 18); "
                        "native falls back to decomposed where it cannot run")
    p.add_argument("--force", action="store_true", help="export again even if the cache is current")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (stderr)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from lanterna.engines import onnx as onnx_backend
    from lanterna.engines.shapes import ShapesEngine
    from lanterna.engines.weights import MissingWeights

    try:
        onnx_backend.require("onnx")
        onnx_backend.onnxruntime()
        engine = ShapesEngine(args.model, args.weights_dir)
        start = time.perf_counter()
        directory, manifest = onnx_backend.export_model(engine, args.output, force=args.force,
                                                        attention=args.attention)
    except (onnx_backend.OnnxUnavailable, MissingWeights, onnx_backend.ExportCheckFailed) as e:
        log.error("%s", e)
        return 2
    except KeyError as e:
        log.error("%s is not a diffusion model (its card has no %s)", args.model, e)
        return 2
    summary = {"model": args.model, "directory": str(directory), "weights_hash": manifest["weights_hash"],
               "seconds": round(time.perf_counter() - start, 2),
               "parts": {part: {k: info[k] for k in ("file", "attention", "opset", "max_abs_error")}
                         for part, info in manifest["parts"].items()}}
    print(json.dumps(summary))
    return 0
