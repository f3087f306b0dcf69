"""ONNX export of the in-repo models, and the ONNX Runtime backend of the Shapes engine.

Three parts of a model are exported: the denoiser (DiT, U-Net, video DiT or video U-Net), the text encoder
(`ShapesCLIP.encode_text_tokens`) and the VAE decoder. Each gets a dynamic batch axis (the video
denoiser a dynamic frame axis too), is checked with onnx's checker and against torch on random
inputs at batch 1 and 3, and only then written, into a folder named after the weights hash
(default ~/.cache/lanterna/onnx/<model>-<hash>/), so a new checkpoint is exported anew.

Attention is exported as ONNX's own `Attention` operator (opset 23), which onnxruntime 1.32 runs
on the CPU. Its CPU kernel does not broadcast the mask over the query axis, so the B x 1 x 1 x L
key masks our attention layers pass are expanded to B x 1 x Lq x L after export. Where the
native form cannot be exported or run (no onnxscript, an older onnxruntime), the TorchScript
exporter's decomposed form (MatMul + Softmax, opset 18) is used instead.

At run time `OnnxDenoiser`, `OnnxTextEncoder` and `OnnxVAE` stand in for the torch modules in the
same `LatentDiffusionPipeline`, with the same call signatures; the VAE encoder (img2img,
inpainting) stays in torch. Providers: TensorRT (engine cache in the model's folder), CUDA, then
CPU, where present. `backend="auto"` times a guided denoiser step on each backend once per
machine and model and keeps the faster (cached in calibration.json beside the exports).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from lanterna.engines.base import InvalidRequest
from lanterna.engines.nets.layers import batch_timesteps
from lanterna.engines.nets.text import PAD, SPECIALS
from lanterna.engines.pipeline import LatentDiffusionPipeline

if TYPE_CHECKING:
    from lanterna.engines.shapes import ShapesEngine

log = logging.getLogger("lanterna.engines.onnx")

INSTALL_HINT = "pip install 'lanterna[onnx]'"
BACKENDS = ("torch", "onnx", "auto")
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
NATIVE_ATTENTION_OPSET = 23  # the opset that introduced the Attention operator
DECOMPOSED_OPSET = 18
ATTENTION_FORMS = ("native", "decomposed")
PARTS = ("denoiser", "text_encoder", "vae_decoder")
MANIFEST = "manifest.json"
CALIBRATION_FILE = "calibration.json"
CHECK_BATCHES = (1, 3)
CHECK_TOLERANCE = 1e-3  # max abs difference, relative to max(1, max |torch output|)
MAX_BATCH = 1024


class OnnxUnavailable(ImportError):
    """onnx / onnxruntime / onnxscript is not installed; the message names the extra to install."""


class ExportCheckFailed(RuntimeError):
    """The exported graph does not compute what the torch module computes."""


def require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise OnnxUnavailable(f"the ONNX backend needs the {module!r} package, which is not "
                              f"installed ({e}); install it with: {INSTALL_HINT}") from e


def onnxruntime() -> Any:
    return require("onnxruntime")


# ---- providers and sessions ----

def choose_providers(available: Sequence[str]) -> list[str]:
    """The execution providers to use, most preferred first: TensorRT > CUDA > CPU, where present."""
    return [p for p in PROVIDER_PREFERENCE if p in available]


def provider_options(providers: Sequence[str], cache_dir: Path) -> list[tuple[str, dict[str, str]]]:
    """Per-provider settings; TensorRT keeps its built engines so they are built once per model."""
    options: list[tuple[str, dict[str, str]]] = []
    for name in providers:
        if name == "TensorrtExecutionProvider":
            engines = cache_dir / "tensorrt"
            engines.mkdir(parents=True, exist_ok=True)
            options.append((name, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(engines),
                                   "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(engines)}))
        else:
            options.append((name, {}))
    return options


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads share a core's matmul units)."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        package = core = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                package = value.strip()
            elif key == "core id":
                core = value.strip()
                cores.add((package, core))
    except OSError:
        pass
    return max(1, min(len(cores) or allowed, allowed))


def session_options(threads: int | None = None) -> Any:
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Between two denoiser calls the sampler runs in torch; spinning ORT threads would take the
    # cores from it (and from every other process on a shared machine).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def open_session(path: Path, providers: Sequence[str] | None = None, threads: int | None = None) -> Any:
    ort = onnxruntime()
    chosen = list(providers) if providers is not None else choose_providers(ort.get_available_providers())
    if not chosen:
        raise OnnxUnavailable(f"onnxruntime offers none of {', '.join(PROVIDER_PREFERENCE)}; "
                              f"reinstall it with: {INSTALL_HINT}")
    return ort.InferenceSession(str(path), session_options(threads),
                                providers=provider_options(chosen, path.parent))


class OnnxPart:
    """One ONNX Runtime session: torch tensors in (by position), torch tensors out."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def __call__(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        feed = {name: np.ascontiguousarray(t.detach().cpu().numpy())
                for name, t in zip(self.input_names, tensors)}
        return [torch.from_numpy(a) for a in self.session.run(None, feed)]


class OnnxDenoiser(nn.Module):
    """A denoising net run by ONNX Runtime, called like the torch net: (x, t, context, mask, pooled)."""

    def __init__(self, part: OnnxPart) -> None:
        super().__init__()
        self.part = part

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        t = batch_timesteps(t, x.shape[0], x.device)
        (out,) = self.part(x.float(), t, context.float(), context_mask.bool(), pooled.float())
        return out.to(x.device)


class OnnxTextEncoder(nn.Module):
    """ShapesCLIP's text tower run by ONNX Runtime: `encode_text_tokens(ids, mask)` as in torch."""

    def __init__(self, part: OnnxPart) -> None:
        super().__init__()
        self.part = part

    def encode_text_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, pooled = self.part(ids.long(), mask.bool())
        return tokens, pooled

    forward = encode_text_tokens


class OnnxVAE(nn.Module):
    """The VAE with its decoder run by ONNX Runtime; encoding (img2img, inpainting) stays in torch."""

    def __init__(self, decoder: OnnxPart, vae: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.vae = vae

    @property
    def config(self) -> Any:
        return self.vae.config

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        (pixels,) = self.decoder(z.float())
        return pixels.to(z.device)

    def encode_latents(self, x: torch.Tensor, generator: torch.Generator | None = None,
                       deterministic: bool = False) -> torch.Tensor:
        return self.vae.encode_latents(x, generator=generator, deterministic=deterministic)


# ---- what is exported ----

class TextEncoderGraph(nn.Module):
    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clip.encode_text_tokens(ids, mask)


class VAEDecoderGraph(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode_latents(latents)


InputMaker = Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]


@dataclass
class GraphSpec:
    """A module to export: its inputs (made at any batch size), names, and dynamic axes."""

    module: nn.Module
    make_inputs: InputMaker
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic: dict[str, dict[int, str]]  # input or output name -> axis -> dimension name
    dim_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # dimension -> (min, max)
    # Other dynamic axes than the batch: the example inputs changed along them, checked too.
    variants: list[Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]] = field(default_factory=list)


def random_mask(batch: int, length: int, g: torch.Generator) -> torch.Tensor:
    """Real tokens first, 2 to `length` of them (at least <bos> and <eos>) per row."""
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    return torch.arange(length)[None] < lengths[:, None]


def denoiser_spec(net: nn.Module, latent_shape: tuple[int, ...], context_length: int, context_dim: int,
                  max_frames: int | None = None) -> GraphSpec:
    video = len(latent_shape) == 4

    def make(batch: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        mask = random_mask(batch, context_length, g)
        return (torch.randn(batch, *latent_shape, generator=g), torch.rand(batch, generator=g),
                torch.randn(batch, context_length, context_dim, generator=g) * mask[..., None], mask,
                torch.randn(batch, context_dim, generator=g))

    names = ("x", "t", "context", "context_mask", "pooled")
    dynamic = {name: {0: "batch"} for name in (*names, "out")}
    ranges = {"batch": (1, MAX_BATCH)}
    variants = []
    if video and (max_frames or 1) > 1:
        dynamic["x"][2] = dynamic["out"][2] = "frames"
        ranges["frames"] = (1, int(max_frames))  # type: ignore[arg-type]
        fewer = max(1, latent_shape[1] // 2)
        variants.append(lambda inputs: (inputs[0][:, :, :fewer].contiguous(), *inputs[1:]))
    return GraphSpec(net, make, names, ("out",), dynamic, ranges, variants)


def text_encoder_spec(clip: nn.Module, length: int) -> GraphSpec:
    vocab = clip.config.vocab_size

    def make(batch: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        mask = random_mask(batch, length, g)
        ids = torch.randint(len(SPECIALS), vocab, (batch, length), generator=g)
        return ids.masked_fill(~mask, PAD), mask

    dynamic = {name: {0: "batch"} for name in ("ids", "mask", "tokens", "pooled")}
    return GraphSpec(TextEncoderGraph(clip).eval(), make, ("ids", "mask"), ("tokens", "pooled"), dynamic,
                     {"batch": (1, MAX_BATCH)})


def vae_decoder_spec(vae: nn.Module, latent_shape: tuple[int, int, int]) -> GraphSpec:
    def make(batch: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.randn(batch, *latent_shape, generator=g),)

    dynamic = {"latents": {0: "batch"}, "pixels": {0: "batch"}}
    return GraphSpec(VAEDecoderGraph(vae).eval(), make, ("latents",), ("pixels",), dynamic,
                     {"batch": (1, MAX_BATCH)})


# ---- export ----

def export_native(spec: GraphSpec, example: tuple[torch.Tensor, ...]) -> Any:
    """torch.export + the dynamo ONNX exporter at opset 23: attention as ONNX `Attention`."""
    require("onnxscript")
    dims = {name: torch.export.Dim(name, min=lo, max=hi) for name, (lo, hi) in spec.dim_ranges.items()}
    shapes = tuple({axis: dims[dim] for axis, dim in spec.dynamic.get(name, {}).items()}
                   for name in spec.input_names)
    program = torch.onnx.export(spec.module, example, dynamo=True, opset_version=NATIVE_ATTENTION_OPSET,
                                dynamic_shapes=shapes, input_names=list(spec.input_names),
                                output_names=list(spec.output_names), verbose=False)
    return expand_attention_masks(program.model_proto)


def export_decomposed(spec: GraphSpec, example: tuple[torch.Tensor, ...]) -> Any:
    """The TorchScript exporter at opset 18: attention as MatMul + Softmax."""
    onnx = require("onnx")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "graph.onnx"
        torch.onnx.export(spec.module, example, str(path), dynamo=False, opset_version=DECOMPOSED_OPSET,
                          input_names=list(spec.input_names), output_names=list(spec.output_names),
                          dynamic_axes=spec.dynamic)
        return onnx.load(str(path))


def expand_attention_masks(model: Any) -> Any:
    """Give every Attention mask the query axis (B x H x 1 x L -> B x H x Lq x L), in place.

    ONNX lets the mask broadcast over it; onnxruntime 1.32's CPU kernel rejects such masks.
    """
    onnx = require("onnx")
    helper = onnx.helper
    graph = model.graph
    masked = [n.op_type == "Attention" and n.domain in ("", "ai.onnx") and len(n.input) > 3 and bool(n.input[3])
              for n in graph.node]
    if not any(masked):
        return model
    graph.initializer.extend([
        helper.make_tensor("attention_mask_lead", onnx.TensorProto.INT64, [2], [1, 1]),
        helper.make_tensor("attention_mask_tail", onnx.TensorProto.INT64, [1], [1]),
    ])
    nodes = []
    for i, (node, has_mask) in enumerate(zip(graph.node, masked)):
        if has_mask:
            prefix = f"attention_mask_{i}"
            nodes += [
                helper.make_node("Shape", [node.input[0]], [f"{prefix}_queries"], start=2, end=3),
                helper.make_node("Concat", ["attention_mask_lead", f"{prefix}_queries", "attention_mask_tail"],
                                 [f"{prefix}_shape"], axis=0),
                helper.make_node("Expand", [node.input[3], f"{prefix}_shape"], [f"{prefix}_full"]),
            ]
            node.input[3] = f"{prefix}_full"
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def check_against_torch(model: Any, spec: GraphSpec, seed: int = 0) -> float:
    """Run the graph on the CPU provider at batch 1 and 3 (and the variants); the largest scaled error."""
    onnx = require("onnx")
    onnx.checker.check_model(model)
    ort = onnxruntime()
    session = ort.InferenceSession(model.SerializeToString(), session_options(),
                                   providers=["CPUExecutionProvider"])
    part = OnnxPart(session)
    g = torch.Generator().manual_seed(seed)
    checks = [spec.make_inputs(batch, g) for batch in CHECK_BATCHES]
    checks += [vary(spec.make_inputs(2, g)) for vary in spec.variants]
    worst = 0.0
    for inputs in checks:
        with torch.inference_mode():
            expected = spec.module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for name, want, got in zip(spec.output_names, expected, part(*inputs)):
            if tuple(want.shape) != tuple(got.shape):
                raise ExportCheckFailed(f"{name}: shape {tuple(got.shape)} from ONNX, {tuple(want.shape)} from torch")
            scale = max(1.0, float(want.abs().max()))
            error = float((want.float() - got.float()).abs().max()) / scale
            if not error <= CHECK_TOLERANCE:
                raise ExportCheckFailed(f"{name}: ONNX and torch differ by {error:.3g} (x {scale:.3g}) on "
                                        f"inputs shaped {tuple(inputs[0].shape)}; allowed {CHECK_TOLERANCE}")
            worst = max(worst, error)
    return worst


def export_graph(spec: GraphSpec, path: Path, attention: str = "native") -> dict[str, Any]:
    """Export, check, then write `path` atomically; falls back to the decomposed form if needed."""
    if attention not in ATTENTION_FORMS:
        raise ValueError(f"attention: {attention!r}; allowed: {', '.join(ATTENTION_FORMS)}")
    onnx = require("onnx")
    onnxruntime()
    spec.module.eval()
    example = spec.make_inputs(2, torch.Generator().manual_seed(1))  # batch 2: no 0/1 specialisation
    forms = ATTENTION_FORMS[ATTENTION_FORMS.index(attention):]
    start = time.perf_counter()
    fallbacks: list[str] = []
    for form in forms:
        try:
            with torch.no_grad():
                model = export_native(spec, example) if form == "native" else export_decomposed(spec, example)
            error = check_against_torch(model, spec)
        except Exception as e:  # the exporter's or the runtime's limits, or a failed check
            if form == forms[-1]:
                if isinstance(e, (ExportCheckFailed, OnnxUnavailable)):
                    raise
                raise ExportCheckFailed(f"ONNX export failed ({form} attention): {type(e).__name__}: {e}") from e
            log.warning("%s attention: %s: %s; trying the next form", form, type(e).__name__, e)
            fallbacks.append(f"{form}: {type(e).__name__}: {str(e)[:300]}")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".onnx.tmp")
        onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        return {"file": path.name, "attention": form, "opset": int(opset), "max_abs_error": error,
                "inputs": list(spec.input_names), "outputs": list(spec.output_names),
                "dynamic": {k: {str(a): d for a, d in v.items()} for k, v in spec.dynamic.items()},
                "seconds": round(time.perf_counter() - start, 2), "fallbacks": fallbacks}
    raise AssertionError("unreachable: the last form returns or raises")


# ---- a model's exports ----

def cache_root() -> Path:
    return Path(os.environ.get("LANTERNA_ONNX_CACHE", Path.home() / ".cache" / "lanterna" / "onnx"))


def export_dir(engine: ShapesEngine, root: Path | None = None) -> Path:
    return (root or cache_root()) / f"{engine.name}-{engine.weights_hash}"


def graph_specs(engine: ShapesEngine) -> dict[str, GraphSpec]:
    engine.load()
    p = engine.pipeline
    assert p is not None
    frames = engine.defaults.frames if engine.is_video else None
    latent = p.latent_shape(engine.defaults.height, engine.defaults.width, frames)
    max_frames = engine.max_frames if engine.is_video else None
    # A grounded denoiser reads its layout map as more input channels after the latent's.
    net_input = (latent[0] + (p.grounding.channels if p.grounding else 0), *latent[1:])
    return {
        "denoiser": denoiser_spec(p.denoiser, net_input, p.max_tokens, p.clip.context_width, max_frames),
        "text_encoder": text_encoder_spec(p.clip, p.max_tokens),
        "vae_decoder": vae_decoder_spec(p.vae, p.latent_shape(engine.defaults.height, engine.defaults.width, None)),
    }


def read_manifest(directory: Path, weights_hash: str) -> dict[str, Any] | None:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("weights_hash") != weights_hash:
        return None
    if not all((directory / manifest["parts"].get(part, {}).get("file", "?")).exists() for part in PARTS):
        return None
    return manifest


def export_model(engine: ShapesEngine, out_dir: Path | None = None, force: bool = False,
                 attention: str = "native") -> tuple[Path, dict[str, Any]]:
    """The model's three ONNX graphs in `out_dir` (default: the cache folder of its weights hash)."""
    directory = out_dir or export_dir(engine)
    if not force and (manifest := read_manifest(directory, engine.weights_hash)) is not None:
        return directory, manifest
    log.info("exporting %s to ONNX in %s", engine.name, directory)
    specs = graph_specs(engine)
    parts = {part: export_graph(spec, directory / f"{part}.onnx", attention) for part, spec in specs.items()}
    onnx, ort = require("onnx"), onnxruntime()
    manifest = {
        "model": engine.name, "net": engine.card["net"], "weights_hash": engine.weights_hash,
        "width": engine.defaults.width, "height": engine.defaults.height, "parts": parts,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }
    tmp = directory / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, directory / MANIFEST)
    return directory, manifest


def onnx_pipeline(engine: ShapesEngine, providers: Sequence[str] | None = None,
                  out_dir: Path | None = None) -> tuple[LatentDiffusionPipeline, str]:
    """The engine's pipeline with its three parts in ONNX Runtime; the backend label with the provider."""
    directory, _ = export_model(engine, out_dir)
    torch_pipeline = engine.pipeline
    assert torch_pipeline is not None
    parts = {part: OnnxPart(open_session(directory / f"{part}.onnx", providers)) for part in PARTS}
    pipeline = LatentDiffusionPipeline(
        OnnxDenoiser(parts["denoiser"]), OnnxVAE(parts["vae_decoder"], torch_pipeline.vae),
        OnnxTextEncoder(parts["text_encoder"]), torch_pipeline.tokenizer,
        prediction=torch_pipeline.prediction, shift=torch_pipeline.shift, max_tokens=torch_pipeline.max_tokens,
        composition=torch_pipeline.composition, split_prompt=torch_pipeline.split_prompt,
        grounding=torch_pipeline.grounding)
    return pipeline, f"onnx:{parts['denoiser'].provider}"


# ---- the engine's backends ----

_build_lock = threading.Lock()


def pipeline_for(engine: ShapesEngine, backend: str) -> tuple[LatentDiffusionPipeline, str]:
    """The (loaded) engine's pipeline for `backend`, built once; the label goes into the result."""
    if backend not in BACKENDS:
        raise InvalidRequest(f"backend: unknown {backend!r}; allowed: {', '.join(BACKENDS)}")
    assert engine.pipeline is not None
    with _build_lock:
        if backend == "auto":
            backend = auto_backend(engine)
        if backend == "torch":
            return engine.pipeline, "torch"
        if backend not in engine.backends:
            try:
                engine.backends[backend] = onnx_pipeline(engine)
            except OnnxUnavailable as e:
                raise InvalidRequest(f"backend: 'onnx' is not available here: {e}") from e
        return engine.backends[backend]


def machine_key() -> str:
    ort = onnxruntime()
    return "|".join([platform.machine(), cpu_model(), str(physical_cores()), f"torch {torch.__version__}",
                     f"onnxruntime {ort.__version__}", ",".join(choose_providers(ort.get_available_providers()))])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def auto_backend(engine: ShapesEngine, calibration_file: Path | None = None) -> str:
    """'onnx' or 'torch', whichever ran a guided denoiser step faster here (measured once, cached)."""
    try:
        onnxruntime()
    except OnnxUnavailable:
        return "torch"
    path = calibration_file or cache_root() / CALIBRATION_FILE
    key = f"{engine.name}-{engine.weights_hash}|{machine_key()}"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        try:
            if "onnx" not in engine.backends:
                engine.backends["onnx"] = onnx_pipeline(engine)
        except ExportCheckFailed as e:  # auto never fails where torch works
            log.warning("backend auto: the ONNX export of %s failed (%s); using torch", engine.name, e)
            return "torch"
        timings = {"torch": step_seconds(engine.pipeline.denoiser, engine),
                   "onnx": step_seconds(engine.backends["onnx"][0].denoiser, engine)}
        cached[key] = {"seconds_per_step": timings, "choice": min(timings, key=timings.get)}
        log.info("backend calibration for %s: %s", engine.name, timings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cached, indent=2) + "\n")
        os.replace(tmp, path)
    return cached[key]["choice"]


def step_seconds(denoiser: nn.Module, engine: ShapesEngine, runs: int = 5) -> float:
    """Median time of one classifier-free-guided step (batch 2) at the model's default size."""
    spec = graph_specs(engine)["denoiser"]
    inputs = spec.make_inputs(2, torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        denoiser(*inputs)
        for _ in range(runs):
            start = time.perf_counter()
            denoiser(*inputs)
            times.append(time.perf_counter() - start)
    return float(np.median(times))
