"""FID over 2,000 64 x 64 Shapes-like images (1,000 reference + 1,000 generated) with shapes-clip
features: lanterna.evaluation against torchmetrics' FrechetInceptionDistance on the same feature
module, same machine, median of 5 interleaved runs. Writes the "## FID" section of BENCHMARKS.md.

    .venv/bin/python bench/bench_fid.py [--runs 5] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from lanterna.engines import weights
from lanterna.evaluation import sets
from lanterna.evaluation.features import ShapesCLIPFeatures, load_bundled_clip
from lanterna.evaluation.set_metrics import FeatureStats, frechet_distance

ROOT = Path(__file__).resolve().parent.parent
BACKGROUNDS = [(245, 245, 245), (15, 15, 15), (128, 128, 128)]
COLOURS = [(220, 40, 40), (40, 170, 70), (40, 90, 220), (235, 205, 40), (140, 60, 190), (240, 130, 30)]


def rendered_like(n: int, seed: int, colours=COLOURS, size: int = 64) -> torch.Tensor:
    """1-3 filled squares and discs a canvas on a Shapes World background, uint8 N x 3 x H x W."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        out[i] = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        for _ in range(rng.integers(1, 4)):
            colour = colours[rng.integers(len(colours))]
            side = int(rng.integers(10, 27))
            x0, y0 = rng.integers(1, size - side - 1, size=2)
            if rng.integers(2):
                out[i, y0:y0 + side, x0:x0 + side] = colour
            else:
                r = side / 2
                out[i][(yy - y0 - r) ** 2 + (xx - x0 - r) ** 2 <= r * r] = colour
    return nchw(out)


def image_sets() -> tuple[torch.Tensor, torch.Tensor, str]:
    """Shapes World renders when lanterna.world is there (a training mix against counting scenes),
    else the numpy stand-in above."""
    try:
        from lanterna.world import sampling
    except ImportError:
        return (rendered_like(1000, seed=1), rendered_like(1000, seed=2, colours=COLOURS[:4]),
                "Shapes-like (numpy-drawn squares and discs)")
    ref, _, _ = sampling.sample_batch(np.random.default_rng(1), 1000)
    gen, _, _ = sampling.sample_task(np.random.default_rng(2), "counting", 1000)
    return nchw(ref), nchw(gen), "Shapes World renders (training mix vs counting scenes)"


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def shapes_clip() -> tuple[ShapesCLIPFeatures, str]:
    if weights.has_weights("shapes-clip"):
        model, digest = load_bundled_clip()
        return ShapesCLIPFeatures(model, fingerprint=digest), f"bundled shapes-clip ({digest})"
    from lanterna.engines.nets.text import CLIP_SIZES, ShapesCLIP, ShapesCLIPConfig

    size = "default" if "default" in CLIP_SIZES else next(iter(CLIP_SIZES))
    torch.manual_seed(0)
    model = ShapesCLIP(ShapesCLIPConfig(**CLIP_SIZES[size]))
    return ShapesCLIPFeatures(model), f"random-init ShapesCLIP, size {size!r} (weights not bundled yet)"


class AsModule(torch.nn.Module):
    """The extractor as the nn.Module torchmetrics takes."""

    def __init__(self, extractor) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = extractor.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)


class Identity(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def torchmetrics_fid(module: torch.nn.Module, ref: torch.Tensor, gen: torch.Tensor, batch: int) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=module)
    with torch.no_grad():
        for b in ref.split(batch):
            metric.update(b, real=True)
        for b in gen.split(batch):
            metric.update(b, real=False)
        return float(metric.compute())


def timed(fn) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(runs: int, batch: int) -> dict:
    extractor, described = shapes_clip()
    ref, gen, images = image_sets()
    module = AsModule(extractor)
    with torch.no_grad():
        f_ref = torch.cat([extractor(b) for b in ref.split(batch)])
        f_gen = torch.cat([extractor(b) for b in gen.split(batch)])
    # Inception's width, to show the distance step where it costs most (random features).
    g = torch.Generator().manual_seed(0)
    wide_ref = torch.randn(1000, 2048, generator=g)
    wide_gen = torch.randn(1000, 2048, generator=g) * 1.1 + 0.1
    cases = {
        f"end to end (images -> FID), {extractor.dim}-d": (
            lambda: sets.compute_fid(ref, gen, extractor, cache=False, batch_size=batch),
            lambda: torchmetrics_fid(module, ref, gen, batch)),
        f"distance only (features given), {extractor.dim}-d": (
            lambda: frechet_distance(FeatureStats.of(f_ref), FeatureStats.of(f_gen)),
            lambda: torchmetrics_fid(Identity(extractor.dim), f_ref, f_gen, batch)),
        "distance only, 2048-d random features": (
            lambda: frechet_distance(FeatureStats.of(wide_ref), FeatureStats.of(wide_gen)),
            lambda: torchmetrics_fid(Identity(2048), wide_ref, wide_gen, batch)),
    }
    rows = []
    load_before = os.getloadavg()[0]
    for label, (ours_fn, theirs_fn) in cases.items():
        ours_t, theirs_t, values = [], [], []
        for _ in range(runs):  # interleaved, so load from other work on the machine hits both
            t, ours = timed(ours_fn)
            ours_t.append(t)
            t, theirs = timed(theirs_fn)
            theirs_t.append(t)
            values.append((ours, theirs))
        rows.append({"case": label, "ours": ours_t, "torchmetrics": theirs_t, "fid": values[-1]})
    return {"features": described, "images": images, "rows": rows, "runs": runs, "batch": batch,
            "load": (load_before, os.getloadavg()[0])}


def seconds(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})"


def markdown(result: dict) -> str:
    intro = (
        f"`bench/bench_fid.py`: FID between 1,000 reference and 1,000 generated 64 x 64 images "
        f"(2,000 in all; {result['images']}) with features from a {result['features']}; "
        f"batch {result['batch']}; "
        f"median (and range) of {result['runs']} interleaved runs, seconds; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}; 1-minute load average "
        f"{result['load'][0]:.1f} before and {result['load'][1]:.1f} after (other jobs shared the "
        f"2 cores).")
    lines = ["## FID", "", *textwrap.wrap(intro, 100), "",
             "| case | lanterna | torchmetrics | speed-up | FID lanterna | FID torchmetrics |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        ours, theirs = row["fid"]
        speedup = statistics.median(row["torchmetrics"]) / statistics.median(row["ours"])
        lines.append(f"| {row['case']} | {seconds(row['ours'])} | {seconds(row['torchmetrics'])} | "
                     f"{speedup:.2f}x | {ours:.6f} | {theirs:.6f} |")
    notes = (
        "Both sides run the same feature module on the same images, so end to end the shared "
        "feature extraction dominates, and the gap there is mostly the machine's noise (runs are "
        "interleaved so that both sides meet the same load; lanterna also runs the extractor "
        "under inference mode). The distance step differs: lanterna accumulates mean and "
        "covariance in float64 batch by batch and takes tr sqrt(S1 S2) as the nuclear norm of "
        "F2^T F1 for factors F F^T = S: Cholesky factors when S has full rank (the 128-d rows), "
        "the centred features themselves when a set is no larger than the feature size (the "
        "2048-d row: 1,000 features a side, so no d x d decomposition at all); torchmetrics takes "
        "the eigenvalues of the non-symmetric 2048 x 2048 product S1 S2.")
    return "\n".join([*lines, "", *textwrap.wrap(notes, 100), ""])


def write_section(section: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace (or append) only the "## FID" section, leaving every other section as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(r"^## FID\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    section = markdown(measure(args.runs, args.batch))
    print(section)
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
