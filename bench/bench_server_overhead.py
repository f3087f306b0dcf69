"""What the MCP server adds to a generate_image call, over stdio, compared with calling the engine.

The server runs as a real `lanterna serve` subprocess on the test-double engine (tests/_engines.py)
with no sleep per step, so the engine itself costs well under a millisecond and the difference is
the server's own work: JSON-RPC over pipes, argument validation, the job queue and its thread
hand-offs, PNG encoding with metadata, the store's atomic writes, and the preview.

    .venv/bin/python bench/bench_server_overhead.py [--calls 20] [--size 64]

Prints a table and a JSON line. The median of `--calls` calls is reported for each path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mcp import Client, StdioServerParameters  # noqa: E402

from lanterna.engines.base import GenerationRequest  # noqa: E402
from lanterna.server.media import png_bytes  # noqa: E402
from lanterna.server.previews import PreviewBudget, previews  # noqa: E402
from tests._engines import PatternEngine  # noqa: E402

PROMPT = "a red square on a white background"


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def engine_direct(calls: int, size: int) -> float:
    engine = PatternEngine(seconds_per_step=0.0)
    times = []
    for i in range(calls + 3):
        request = GenerationRequest(task="t2i", prompt=PROMPT, seeds=[1000 + i], width=size, height=size)
        start = time.perf_counter()
        engine.run(request, on_step=lambda *_: None, cancelled=lambda: False)
        times.append(time.perf_counter() - start)
    return median_ms(times[3:])


def encode_costs(size: int) -> tuple[float, float, int]:
    """Median ms to PNG-encode the full image and to build its preview, and the preview's base64 size."""
    engine = PatternEngine(seconds_per_step=0.0)
    image = engine.run(GenerationRequest(task="t2i", prompt=PROMPT, seeds=[1], width=size, height=size)).images[0]
    png, preview = [], []
    for _ in range(20):
        start = time.perf_counter()
        png_bytes(image, {"seed": 1, "prompt": PROMPT})
        png.append(time.perf_counter() - start)
        start = time.perf_counter()
        (made,) = previews([image], PreviewBudget())
        preview.append(time.perf_counter() - start)
    return median_ms(png), median_ms(preview), len(made.data)


def large_preview_cost() -> tuple[float, int]:
    """A 512 x 512 noisy image, the worst case for the preview budget (forces WebP/JPEG)."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        (made,) = previews([image], PreviewBudget())
        times.append(time.perf_counter() - start)
    return median_ms(times), len(made.data)


async def over_stdio(calls: int, size: int, progress: bool, output_dir: str) -> tuple[float, dict]:
    command = Path(sys.executable).with_name("lanterna")
    args = ["serve", "--registry-module", "tests._engines:test_registry", "--output-dir", output_dir]
    params = StdioServerParameters(
        command=str(command) if command.exists() else sys.executable,
        args=args if command.exists() else ["-m", "lanterna.cli", *args],
        env={"PYTHONPATH": str(REPO), "LANTERNA_TEST_STEP_SECONDS": "0"}, cwd=str(REPO))
    times = []
    last = {}

    async def on_progress(progress, total, message):
        pass

    async with Client(params, read_timeout_seconds=60) as client:
        for i in range(calls + 3):  # 3 warm-up calls (first-use imports, thread start)
            arguments = {"prompt": PROMPT, "seed": 5000 + i, "width": size, "height": size}
            start = time.perf_counter()
            result = await client.call_tool("generate_image", arguments,
                                            progress_callback=on_progress if progress else None)
            times.append(time.perf_counter() - start)
            assert result.structured_content["status"] == "done", result.content
            last = result.structured_content
    return median_ms(times[3:]), last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, choices=(64, 128))
    args = parser.parse_args()
    os.environ.setdefault("LANTERNA_TEST_STEP_SECONDS", "0")

    direct = engine_direct(args.calls, args.size)
    png_ms, preview_ms, preview_chars = encode_costs(args.size)
    large_ms, large_chars = large_preview_cost()
    with tempfile.TemporaryDirectory() as out:
        plain, report = anyio.run(over_stdio, args.calls, args.size, False, out)
        with_progress, _ = anyio.run(over_stdio, args.calls, args.size, True, out)
    row = {
        "calls": args.calls, "image": f"{args.size}x{args.size}",
        "engine_direct_ms": round(direct, 3),
        "stdio_call_ms": round(plain, 2), "stdio_call_with_progress_ms": round(with_progress, 2),
        "overhead_ms": round(plain - direct, 2), "overhead_with_progress_ms": round(with_progress - direct, 2),
        "png_encode_ms": round(png_ms, 2), "preview_ms": round(preview_ms, 2), "preview_base64_chars": preview_chars,
        "large_preview_ms": round(large_ms, 1), "large_preview_base64_chars": large_chars,
        "server_timings_s": report.get("timings"),
    }
    print(f"engine alone             {direct:8.3f} ms")
    print(f"generate_image over stdio {plain:7.2f} ms   (overhead {plain - direct:.2f} ms)")
    print(f"  with progress (6 notes) {with_progress:7.2f} ms   (overhead {with_progress - direct:.2f} ms)")
    print(f"  of which PNG encode {png_ms:.2f} ms, preview {preview_ms:.2f} ms ({preview_chars} base64 chars)")
    print(f"a noisy 512x512 preview instead: {large_ms:.1f} ms to fit {large_chars} base64 chars")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
