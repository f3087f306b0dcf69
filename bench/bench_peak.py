"""The machine's measured matmul peak (fp32 and bf16 GFLOP/s): the physical limit the denoiser
benchmarks are compared with.

    .venv/bin/python bench/bench_peak.py [--runs 7] [--threads N]

Square matmuls of a few sizes through torch (MKL for fp32, oneDNN for bf16); for each dtype the
best size's median over the runs is the peak. Also the helpers the other benchmarks share: the
median timer and a note of the machine and its load (other jobs may share the cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

SIZES = (512, 1024, 2048)


def median_seconds(fn: Callable[[], object], runs: int = 7, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], runs: int = 7, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function, timed in rounds that call every function once (in a
    rotating order), so that a load from other processes falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def load_average() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_note() -> dict:
    from lanterna.engines.onnx import physical_cores

    return {"cpu": cpu_model(), "physical_cores": physical_cores(), "logical_cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average_1_5_15": [round(x, 2) for x in load_average()]}


def matmul_gflops(n: int, dtype: torch.dtype, runs: int) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    seconds = median_seconds(lambda: torch.mm(a, b), runs=runs)
    return 2 * n**3 / seconds / 1e9


def native_bf16() -> bool:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return True  # unknown: measure every size
    return "avx512_bf16" in flags or "amx_bf16" in flags


def measure_peak(runs: int = 7, sizes: tuple[int, ...] = SIZES,
                 dtypes: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, dict]:
    """{'fp32': {'gflops': best median, 'by_size': {...}}, 'bf16': ...}."""
    out = {}
    with torch.inference_mode():
        for name in dtypes:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
            # Without native bf16 (AVX512-BF16, AMX) a 2048^3 bf16 matmul takes tens of seconds.
            usable = sizes if name == "fp32" or native_bf16() else tuple(n for n in sizes if n <= 1024)
            by_size = {n: round(matmul_gflops(n, dtype, runs), 1) for n in usable}
            out[name] = {"gflops": max(by_size.values()), "by_size": by_size}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch threads (default: physical cores)")
    args = parser.parse_args()
    from lanterna.engines.onnx import physical_cores

    torch.set_num_threads(args.threads or physical_cores())
    before = machine_note()
    peak = measure_peak(args.runs)
    print(json.dumps({"machine": before, "native_bf16": native_bf16(), "load_after": [round(x, 2) for x in load_average()],
                      "runs": args.runs, "peak": peak}, indent=2))


if __name__ == "__main__":
    main()
