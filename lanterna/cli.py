"""The `lanterna` command: the MCP server, and one-shot commands that run the same code as its tools.

    lanterna serve                      MCP over stdio (what Claude Desktop and other clients spawn)
    lanterna serve --http [--port N]    MCP over streamable HTTP at http://127.0.0.1:N/mcp
    lanterna generate PROMPT -o FILE    one image (or several) without a client
    lanterna video PROMPT -o FILE.mp4   one video
    lanterna edit IMAGE PROMPT -o FILE  img2img or inpaint

Other packages add commands through `register_cli(subparsers)` hooks (evaluate, train, bench,
export-onnx). Logs go to stderr; only the one-shot commands print (a JSON summary) to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("lanterna")

OWN_COMMANDS = ("serve", "generate", "video", "edit")
HOOKS = ("lanterna.evaluation.cli", "lanterna.training.cli", "lanterna.bench_cli", "lanterna.engines.onnx_cli")


# ---- settings and models ----

def parse_model_option(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}")
    return name, Path(path).expanduser()


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", type=Path, help="where outputs are stored (default $LANTERNA_OUTPUT_DIR "
                   "or ~/.local/share/lanterna/outputs)")
    p.add_argument("--allow-dir", type=Path, action="append", default=[],
                   help="a folder input images may be read from (repeatable)")
    p.add_argument("--config", type=Path, help="settings and model registry file (TOML or JSON: keys of "
                   "lanterna.config.Settings, [models.NAME] and [scorer] tables; also $LANTERNA_CONFIG)")
    p.add_argument("--scorer", type=Path, help="a CLIP folder (transformers format) to score every model's outputs")
    p.add_argument("--registry-module", metavar="MODULE:FUNCTION",
                   help="serve the ModelRegistry this function returns instead of the bundled models "
                        "(also $LANTERNA_REGISTRY)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (stderr)")


def settings_from(args: argparse.Namespace, **extra: Any):
    from lanterna.config import load_settings

    models = dict(getattr(args, "add_model", None) or [])
    return load_settings(args.config, output_dir=args.output_dir, allow_dirs=args.allow_dir, models=models,
                         registry=args.registry_module, scorer=args.scorer, **extra)


def load_object(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"expected MODULE:FUNCTION, got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


def build_registry(settings):
    """The registry to serve: a named factory's, else the bundled models; plus configured models (config_file)."""
    from lanterna.config_file import build_registry as with_configured_models
    from lanterna.engines.registry import ModelRegistry

    base = None
    if settings.registry:
        target = load_object(settings.registry)
        base = target() if callable(target) else target
        if not isinstance(base, ModelRegistry):
            raise TypeError(f"{settings.registry} gave {type(base).__name__}, not a ModelRegistry")
    return with_configured_models(settings, base)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for noisy in ("mcp", "httpx", "uvicorn.access"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


# ---- serve ----

def add_serve(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the MCP server (stdio by default)")
    p.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp instead of stdio")
    p.add_argument("--host", default=None, help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    p.add_argument("--token", default=None, help="bearer token clients must send over HTTP (or $LANTERNA_TOKEN); "
                   "required when the host is not loopback")
    p.add_argument("--allow-host", action="append", default=[], help="extra Host header value accepted over HTTP")
    p.add_argument("--model", dest="add_model", type=parse_model_option, action="append", default=[],
                   metavar="NAME=PATH", help="also serve a local diffusers model folder (repeatable)")
    add_common_options(p)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from lanterna.server.transports import InsecureBinding, check_binding

    settings = settings_from(args, host=args.host, port=args.port, token=args.token,
                             allowed_hosts=args.allow_host)
    if args.http:
        try:
            check_binding(settings)
        except InsecureBinding as e:
            log.error("%s", e)
            return 2
    from lanterna.server.app import create_server
    from lanterna.server.transports import run_http, run_stdio

    server = create_server(settings, build_registry(settings))
    try:
        if args.http:
            run_http(server, settings)
        else:
            run_stdio(server)
    except KeyboardInterrupt:
        pass
    finally:
        server.runtime.close()
    return 0


# ---- one-shot commands ----

def add_generation_options(p: argparse.ArgumentParser, video: bool = False) -> None:
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="file to write (" + (".mp4 or .gif" if video else ".png, .jpg or .webp") + ")")
    p.add_argument("--model", help="model name, or NAME=PATH to use a local diffusers folder")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--backend", choices=("torch", "onnx", "auto"),
                   help="inference backend (default: the model's); onnx needs pip install 'lanterna[onnx]'")
    add_common_options(p)


def add_one_shot(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate images from a prompt")
    p.add_argument("prompt")
    add_generation_options(p)
    p.add_argument("--sampler")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--best-of", type=int)
    p.add_argument("--score", action="store_true", help="also compute CLIP scores")
    p.set_defaults(func=run_generate)

    p = subparsers.add_parser("video", help="generate a video from a prompt")
    p.add_argument("prompt")
    add_generation_options(p, video=True)
    p.add_argument("--frames", type=int)
    p.add_argument("--fps", type=int, default=8)
    p.set_defaults(func=run_video)

    p = subparsers.add_parser("edit", help="edit an image (img2img or inpaint)")
    p.add_argument("image", help="input image file")
    p.add_argument("prompt")
    add_generation_options(p)
    p.add_argument("--mode", choices=("img2img", "inpaint"), default="img2img")
    p.add_argument("--mask", help="mask image file (white = repaint), for --mode inpaint")
    p.add_argument("--strength", type=float, default=0.6)
    p.add_argument("--num-images", type=int, default=1)
    p.set_defaults(func=run_edit)


def model_choice(args: argparse.Namespace) -> str | None:
    if args.model and "=" in args.model:
        name, path = parse_model_option(args.model)
        args.add_model = [(name, path)]
        return name
    return args.model


async def stderr_progress(progress: float, total: float | None, message: str) -> None:
    print(f"\r{message:<40}", end="", file=sys.stderr, flush=True)


def run_tool(args: argparse.Namespace, make_args, run, extra_settings: dict | None = None) -> int:
    """Validate arguments like the MCP tool does, run it to completion, write the output file."""
    import anyio
    from pydantic import ValidationError

    from lanterna.server.app import argument_message
    from lanterna.server.inputs import InputError
    from lanterna.server.jobs import QueueFull
    from lanterna.server.runtime import Runtime
    from lanterna.tools.common import ArgumentError
    from lanterna.tools.jobs import GetJobArgs, get_job

    model = model_choice(args)
    settings = settings_from(args, **(extra_settings or {}))
    try:
        tool_args = make_args(model)
    except ValidationError as e:
        log.error("%s", argument_message(e))
        return 2
    runtime = Runtime.create(settings, build_registry(settings))

    async def main():
        outcome = await run(tool_args, runtime, stderr_progress)
        while outcome.report.status == "running":
            outcome = await get_job(GetJobArgs(job_id=outcome.report.job_id, wait_seconds=600), runtime,
                                    stderr_progress)
        return outcome

    try:
        outcome = anyio.run(main)
    except (ArgumentError, InputError, QueueFull) as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        print(file=sys.stderr)
        runtime.close()
    report = outcome.report
    if report.status != "done":
        log.error("%s: %s", report.status, report.error or "")
        print(json.dumps(report.model_dump(mode="json", exclude_none=True)))
        return 1
    written = write_outputs(report, runtime.store, args.output)
    print(json.dumps({**report.model_dump(mode="json", exclude_none=True), "written": [str(p) for p in written]}))
    return 0


def numbered(path: Path, index: int, count: int) -> Path:
    return path if count == 1 else path.with_name(f"{path.stem}_{index + 1}{path.suffix}")


def write_outputs(report, store, output: Path) -> list[Path]:
    from PIL import Image

    from lanterna.server.store import name_from_uri

    output.parent.mkdir(parents=True, exist_ok=True)
    written = []
    suffix = output.suffix.lower()
    if report.videos:
        for i, video in enumerate(report.videos):
            uri = video.gif_uri if suffix == ".gif" else video.uri
            target = numbered(output, i, len(report.videos))
            shutil.copyfile(store.path(name_from_uri(uri)), target)
            written.append(target)
        return written
    for i, image in enumerate(report.images):
        source = store.path(name_from_uri(image.uri))
        target = numbered(output, i, len(report.images))
        if suffix == ".png":
            shutil.copyfile(source, target)
        else:
            with Image.open(source) as im:
                im.convert("RGB").save(target)
        written.append(target)
    return written


def run_generate(args: argparse.Namespace) -> int:
    from lanterna.tools.generate_image import GenerateImageArgs, generate_image

    def make(model):
        return GenerateImageArgs(prompt=args.prompt, negative_prompt=args.negative, width=args.width,
                                 height=args.height, steps=args.steps, guidance=args.guidance, seed=args.seed,
                                 sampler=args.sampler, model=model, num_images=args.num_images,
                                 best_of=args.best_of, score=args.score, backend=args.backend, wait_seconds=600)

    if args.output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        log.error("-o: write .png, .jpg or .webp")
        return 2
    return run_tool(args, make, generate_image)


def run_video(args: argparse.Namespace) -> int:
    from lanterna.tools.generate_video import GenerateVideoArgs, generate_video

    def make(model):
        return GenerateVideoArgs(prompt=args.prompt, negative_prompt=args.negative, frames=args.frames,
                                 fps=args.fps, width=args.width, height=args.height, steps=args.steps,
                                 guidance=args.guidance, seed=args.seed, model=model, backend=args.backend, wait_seconds=600)

    if args.output.suffix.lower() not in (".mp4", ".gif"):
        log.error("-o: write .mp4 or .gif")
        return 2
    return run_tool(args, make, generate_video)


def run_edit(args: argparse.Namespace) -> int:
    from lanterna.tools.edit import EditArgs, edit

    image = Path(args.image).expanduser().resolve()
    mask = Path(args.mask).expanduser().resolve() if args.mask else None
    # Files named on the command line are readable: allow their folders for this run.
    args.allow_dir = [*args.allow_dir, image.parent, *([mask.parent] if mask else [])]

    def make(model):
        return EditArgs(image=str(image), prompt=args.prompt, mode=args.mode, mask=str(mask) if mask else None,
                        strength=args.strength, negative_prompt=args.negative, steps=args.steps,
                        guidance=args.guidance, seed=args.seed, model=model, num_images=args.num_images,
                        backend=args.backend, wait_seconds=600)

    if args.output.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        log.error("-o: write .png, .jpg or .webp")
        return 2
    return run_tool(args, make, edit)


# ---- entry point ----

def build_parser(with_hooks: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lanterna", description="Generate, edit and judge images and videos; "
                                     "an MCP tool server for agents.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_serve(subparsers)
    add_one_shot(subparsers)
    if with_hooks:
        for module_name in HOOKS:
            try:
                module = importlib.import_module(module_name)
            except ImportError as e:
                log.debug("no commands from %s (%s)", module_name, e)
                continue
            module.register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The server's own commands skip the hooks, whose imports (torch, ...) would slow every start.
    parser = build_parser(with_hooks=not (argv and argv[0] in OWN_COMMANDS))
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
