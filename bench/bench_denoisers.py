"""Time per denoising step of each in-repo denoiser, against the machine's peak and diffusers' classes.

    .venv/bin/python bench/bench_denoisers.py [--kinds dit unet video_dit] [--batches 1 8]
        [--runs 7] [--no-compile] [--no-diffusers] [--forms native decomposed]

For every net at its "default" size (random weights: timing does not depend on them) and batch:
- torch eager (inference mode), torch.compile (inductor; its compile time and any failure are
  reported), ONNX Runtime on the CPU provider for each attention form of the export;
- FLOPs of one step counted with torch.utils.flop_counter.FlopCounterMode, and the fraction of
  the measured fp32 matmul peak (bench_peak.py at the start, or a 1024 x 1024 matmul timed in the
  same rounds, whichever is higher) that the fastest path reaches;
- the same configuration built from diffusers' classes, timed in the same run: PixArt-alpha's
  transformer for the DiT (and class-conditional DiT, which has no text cross-attention), the
  latent-diffusion UNet2DConditionModel for the U-Net, and Latte for the video DiT (Latte
  alternates spatial and temporal blocks, each with its own MLP, so it has more FLOPs).
Medians of --runs rounds after two warm-up calls, every round calling each path once in turn (so
the load of other jobs falls on all alike); threads = physical cores for torch and ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_peak import interleaved_medians, load_average, machine_note, measure_peak  # noqa: E402

from lanterna.engines import onnx as onnx_backend  # noqa: E402
from lanterna.engines.nets import NET_SIZES, build_net, count_params  # noqa: E402
from tests.tiny_models import randomise_zero_params  # noqa: E402

CONTEXT_LENGTH = 24
LATENT = (4, 16, 16)  # a 64 x 64 image through the f = 4 VAE
FRAMES = 16
PEAK_SIZE = 1024


@dataclass
class Case:
    name: str
    module: torch.nn.Module
    call: Callable[[tuple], torch.Tensor]


def our_net(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomise_zero_params(build_net(kind, NET_SIZES[kind]["default"]), 1).eval()


def step_inputs(kind: str, context_dim: int, batch: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(batch)
    shape = (LATENT[0], FRAMES, *LATENT[1:]) if kind == "video_dit" else LATENT
    mask = torch.arange(CONTEXT_LENGTH)[None] < torch.randint(2, CONTEXT_LENGTH + 1, (batch, 1), generator=g)
    return (torch.randn(batch, *shape, generator=g), torch.rand(batch, generator=g),
            torch.randn(batch, CONTEXT_LENGTH, context_dim, generator=g), mask,
            torch.randn(batch, context_dim, generator=g))


def diffusers_twins(kind: str, net: torch.nn.Module) -> list[Case]:
    """diffusers' classes configured like `net` (same width, depth, heads, levels)."""
    import diffusers

    c = net.config
    torch.manual_seed(0)
    if kind == "dit":
        pixart = diffusers.PixArtTransformer2DModel(
            num_attention_heads=c.heads, attention_head_dim=c.width // c.heads, in_channels=c.in_channels,
            out_channels=c.in_channels, num_layers=c.depth, cross_attention_dim=c.width, sample_size=LATENT[1],
            patch_size=c.patch_size, caption_channels=c.context_dim, use_additional_conditions=False).eval()
        dit = diffusers.DiTTransformer2DModel(
            num_attention_heads=c.heads, attention_head_dim=c.width // c.heads, in_channels=c.in_channels,
            out_channels=c.in_channels, num_layers=c.depth, sample_size=LATENT[1], patch_size=c.patch_size).eval()
        return [
            Case("diffusers PixArtTransformer2DModel", pixart, lambda a: pixart(
                a[0], encoder_hidden_states=a[2], timestep=a[1] * 1000, encoder_attention_mask=a[3].float(),
                added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]),
            Case("diffusers DiTTransformer2DModel (class-conditional, no text)", dit, lambda a: dit(
                a[0], timestep=a[1] * 1000, class_labels=torch.zeros(a[0].shape[0], dtype=torch.long),
                return_dict=False)[0]),
        ]
    if kind == "unet":
        levels = len(c.channels)
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in c.attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(c.attention_levels))
        unet = diffusers.UNet2DConditionModel(
            sample_size=LATENT[1], in_channels=c.in_channels, out_channels=c.in_channels,
            block_out_channels=c.channels, down_block_types=down, up_block_types=up,
            layers_per_block=c.res_blocks, cross_attention_dim=c.context_dim,
            attention_head_dim=c.heads,  # diffusers' legacy name: the number of heads
            norm_num_groups=c.norm_groups).eval()
        assert len(unet.down_blocks) == levels
        return [Case("diffusers UNet2DConditionModel", unet, lambda a: unet(
            a[0], a[1] * 1000, encoder_hidden_states=a[2], encoder_attention_mask=a[3].float(),
            return_dict=False)[0])]
    latte = diffusers.LatteTransformer3DModel(
        num_attention_heads=c.heads, attention_head_dim=c.width // c.heads, in_channels=c.in_channels,
        out_channels=c.in_channels, num_layers=c.depth, cross_attention_dim=c.width, sample_size=LATENT[1],
        patch_size=c.patch_size, caption_channels=c.context_dim, norm_type="ada_norm_single",
        activation_fn="gelu-approximate", attention_bias=True, norm_elementwise_affine=False, norm_eps=1e-6,
        video_length=FRAMES).eval()
    # Latte repeats the text per frame but not its mask (diffusers 0.42), so it runs unmasked.
    return [Case("diffusers LatteTransformer3DModel (alternating blocks, no text mask)", latte, lambda a: latte(
        a[0], timestep=a[1] * 1000, encoder_hidden_states=a[2], return_dict=False)[0])]


def count_flops(fn: Callable[[], object]) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def compile_net(net: torch.nn.Module, inputs: tuple) -> dict:
    """torch.compile (inductor) for these input shapes: the compiled model and its compile time."""
    try:
        compiled = torch.compile(net, dynamic=False)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(*inputs)
        return {"model": compiled, "compile_seconds": round(time.perf_counter() - start, 1)}
    except Exception as e:  # report, do not hide: torch.compile needs a working C++ toolchain
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


def onnx_parts(kind: str, net: torch.nn.Module, forms: list[str], workdir: Path,
               threads: int) -> dict[str, onnx_backend.OnnxPart | str]:
    shape = (LATENT[0], FRAMES, *LATENT[1:]) if kind == "video_dit" else LATENT
    spec = onnx_backend.denoiser_spec(net, shape, CONTEXT_LENGTH, net.config.context_dim,
                                      FRAMES if kind == "video_dit" else None)
    parts = {}
    for form in forms:
        path = workdir / f"{kind}-{form}.onnx"
        try:
            info = onnx_backend.export_graph(spec, path, attention=form)
        except onnx_backend.ExportCheckFailed as e:
            parts[form] = f"export failed: {str(e)[:200]}"
            continue
        if info["attention"] != form:
            parts[form] = f"fell back to {info['attention']}"
            continue
        parts[form] = onnx_backend.OnnxPart(onnx_backend.open_session(path, ["CPUExecutionProvider"], threads))
    return parts


def bench_kind(kind: str, batches: list[int], runs: int, compile_: bool, with_diffusers: bool,
               forms: list[str], peak: float, workdir: Path, threads: int) -> list[dict]:
    net = our_net(kind)
    parts = onnx_parts(kind, net, forms, workdir, threads)
    twins = diffusers_twins(kind, net) if with_diffusers else []
    rows = []
    for batch in batches:
        inputs = step_inputs(kind, net.config.context_dim, batch)
        flops = count_flops(lambda: net(*inputs))
        row = {"net": kind, "batch": batch, "params_m": round(count_params(net) / 1e6, 2),
               "gflop_per_step": round(flops / 1e9, 3), "load_before": round(load_average()[0], 2)}
        fns = {"torch_eager_s": lambda: net(*inputs)}
        if compile_:
            row["torch_compile"] = compile_net(net, inputs)
            if "model" in row["torch_compile"]:
                compiled = row["torch_compile"].pop("model")
                fns["torch_compile_s"] = lambda: compiled(*inputs)
        for form, part in parts.items():
            if isinstance(part, str):
                row[f"onnx_{form}"] = part
            else:
                fns[f"onnx_{form}_s"] = lambda part=part: part(*inputs)
        for twin in twins:
            fns[twin.name] = lambda twin=twin: twin.call(inputs)
        a, b = torch.randn(PEAK_SIZE, PEAK_SIZE), torch.randn(PEAK_SIZE, PEAK_SIZE)
        fns["matmul"] = lambda: torch.mm(a, b)  # the peak again, under the same load
        with torch.inference_mode():
            seconds = interleaved_medians(fns, runs)
        ours = {k: v for k, v in seconds.items() if k.endswith("_s")}
        row.update({k: round(v, 5) for k, v in ours.items()})
        limit = max(peak, 2 * PEAK_SIZE**3 / seconds["matmul"] / 1e9)
        row["fp32_peak_gflops"] = round(limit, 1)
        row["best_fraction_of_fp32_peak"] = round(flops / min(ours.values()) / 1e9 / limit, 3)
        row["diffusers"] = [{"class": twin.name, "params_m": round(count_params(twin.module) / 1e6, 2),
                             "gflop_per_step": round(count_flops(lambda: twin.call(inputs)) / 1e9, 3),
                             "torch_eager_s": round(seconds[twin.name], 5)} for twin in twins]
        row["load_after"] = round(load_average()[0], 2)
        rows.append(row)
        log.info("%s", json.dumps(row))
    return rows


log = logging.getLogger("bench_denoisers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["dit", "unet", "video_dit"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--forms", nargs="+", default=["native", "decomposed"], choices=onnx_backend.ATTENTION_FORMS)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--threads", type=int, help="threads for torch and ONNX Runtime (default: physical cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    for noisy in ("onnxscript", "onnx_ir", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    threads = args.threads or onnx_backend.physical_cores()
    torch.set_num_threads(threads)
    machine = machine_note()
    peak = measure_peak(runs=5, dtypes=("fp32",))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds:
            rows += bench_kind(kind, args.batches, args.runs, not args.no_compile, not args.no_diffusers,
                               args.forms, peak["fp32"]["gflops"], Path(tmp), threads)
    print(json.dumps({"machine": machine, "peak": peak, "runs": args.runs, "threads": threads, "rows": rows},
                     indent=1))


if __name__ == "__main__":
    main()
