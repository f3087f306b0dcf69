"""The engine over a diffusers pipeline: SD 1.x/2.x, SDXL, SD3, PixArt, Flux, CogVideoX, LTX, Wan, ...

A model is a folder as `save_pretrained` writes it (or a hub id, where the machine has network).
Its model_index.json names the pipeline class; what the model can do follows from diffusers'
AutoPipeline tables: a text-to-image class brings img2img and inpainting where its family has
them, built with `from_pipe` so the weights load once; a pipeline whose `__call__` takes
`num_frames` (and no input image or video) makes videos. The folder's JSON files describe the model
(native size, VAE factor, scheduler) without loading any weights, so listing models stays cheap.

Samplers are diffusers schedulers swapped in with `from_config`; each is offered only where the
checkpoint's own scheduler lists it as compatible and its noise process (flow matching or not) fits.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lanterna.engines.base import (
    CancelFlag,
    EngineDefaults,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    StepCallback,
)

log = logging.getLogger("lanterna.engines.diffusers")

MAX_IMAGES_PER_RUN = 16
DEFAULT_MAX_SIZE = 2048
DEFAULT_FPS = 8
DEFAULT_SAMPLER = "default"  # the scheduler the checkpoint ships with
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
FINGERPRINT_BYTES = 64 * 1024
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class ModelFolderError(ValueError):
    """A folder that is not a usable diffusers pipeline; the message names what is missing."""


@dataclass(frozen=True)
class SamplerSpec:
    scheduler: str  # diffusers scheduler class
    options: dict[str, Any] = field(default_factory=dict)
    flow: bool = False  # for flow-matching models (SD3, Flux, LTX, Wan) rather than DDPM-style ones


SAMPLERS: dict[str, SamplerSpec] = {
    "ddim": SamplerSpec("DDIMScheduler"),
    "euler": SamplerSpec("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "euler-a": SamplerSpec("EulerAncestralDiscreteScheduler"),
    "heun": SamplerSpec("HeunDiscreteScheduler", {"use_karras_sigmas": False}),
    "dpmpp-2m": SamplerSpec("DPMSolverMultistepScheduler",
                            {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False}),
    "dpmpp-2m-karras": SamplerSpec("DPMSolverMultistepScheduler",
                                   {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "flow-euler": SamplerSpec("FlowMatchEulerDiscreteScheduler", flow=True),
}


@dataclass(frozen=True)
class DiffusersOptions:
    """What a registry entry may set; None keeps what the pipeline itself defaults to."""

    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    fps: int | None = None
    max_frames: int | None = None
    max_size: int | None = None
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    variant: str | None = None  # e.g. "fp16" for folders holding *.fp16.safetensors


# ---- device and precision ----

def pick_device(requested: str = "auto") -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it (fp16 overflows in Flux, SD3 and video transformers), else fp16;
    fp16 on Apple silicon; fp32 on CPU, where half precision is slow or unsupported."""
    if requested != "auto":
        dtype = getattr(torch, requested, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"dtype: unknown {requested!r}; allowed: auto, float32, float16, bfloat16")
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def dtype_keyword() -> str:
    """diffusers 0.42 renamed from_pretrained's `torch_dtype` to `dtype` (the old name still works, warning)."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype"


# ---- the folder: model_index.json and the components' configs ----

class PipelineSource:
    """A pipeline folder on disk, or a hub repository read file by file (JSON only until loaded)."""

    def __init__(self, location: str | Path) -> None:
        path = Path(location).expanduser()
        self.repo_id: str | None = None
        if path.exists():
            if not path.is_dir():
                raise ModelFolderError(f"{path} is a file; a diffusers model is a folder with model_index.json")
            self.root = path.resolve()
        elif HUB_ID.match(str(location)):
            self.repo_id = str(location)
            self.root = Path(str(location))
        else:
            raise ModelFolderError(f"{path}: no such folder (nor a hub id like 'owner/name')")

    @property
    def is_local(self) -> bool:
        return self.repo_id is None

    def location(self) -> str:
        return self.repo_id or str(self.root)

    def read_json(self, relative: str) -> dict[str, Any] | None:
        if self.is_local:
            path = self.root / relative
            return json.loads(path.read_text()) if path.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

        try:
            return json.loads(Path(hf_hub_download(self.repo_id, relative)).read_text())
        except LocalEntryNotFoundError:
            raise ModelFolderError(f"{self.repo_id}: the hub cannot be reached and nothing is cached; download it "
                                   f"once with `hf download {self.repo_id} --local-dir DIR` and name DIR") from None
        except EntryNotFoundError:
            return None

    def fingerprint(self) -> str:
        """A hash of every config and of each weight file's size, first and last 64 KiB.

        Not a full content hash: reading gigabytes of weights at start-up would take minutes, and
        safetensors files begin with a header naming every tensor's shape and offset.
        """
        if not self.is_local:
            from huggingface_hub import hf_hub_download

            snapshot = Path(hf_hub_download(self.repo_id, "model_index.json")).parent.name
            return hashlib.sha256(f"{self.repo_id}@{snapshot}".encode()).hexdigest()[:16]
        digest = hashlib.sha256()
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            relative = path.relative_to(self.root).as_posix()
            if relative.startswith("."):
                continue
            digest.update(relative.encode())
            if path.suffix in WEIGHT_SUFFIXES:
                size = path.stat().st_size
                digest.update(str(size).encode())
                with path.open("rb") as f:
                    digest.update(f.read(FINGERPRINT_BYTES))
                    f.seek(max(0, size - FINGERPRINT_BYTES))
                    digest.update(f.read())
            elif path.suffix in (".json", ".txt", ".model"):
                digest.update(path.read_bytes())
        return digest.hexdigest()[:16]


def component_entries(index: dict[str, Any]) -> dict[str, tuple[str | None, str | None]]:
    """model_index.json's components: name -> (library, class); (None, None) marks an absent one."""
    entries = {}
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        entries[key] = (value[0], value[1])
    return entries


def required_components(pipeline_cls: type) -> list[str]:
    optional = set(getattr(pipeline_cls, "_optional_components", []) or [])
    parameters = inspect.signature(pipeline_cls.__init__).parameters
    return [n for n, p in parameters.items()
            if n != "self" and p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in optional]


def check_components(source: PipelineSource, index: dict[str, Any], pipeline_cls: type) -> None:
    """Every component the pipeline needs is listed and present on disk, with its config and weights."""
    entries = component_entries(index)
    where = source.location()
    for name in required_components(pipeline_cls):
        if name not in entries:
            raise ModelFolderError(f"{where}: {pipeline_cls.__name__} needs component {name!r}, "
                                   "which model_index.json does not list")
        if entries[name][1] is None:
            raise ModelFolderError(f"{where}: {pipeline_cls.__name__} needs component {name!r}, "
                                   "which model_index.json leaves empty (null)")
    if not source.is_local:
        return
    for name, (library, class_name) in entries.items():
        if class_name is None:
            continue
        folder = source.root / name
        what = f"component {name!r} ({library} {class_name})"
        if not folder.is_dir():
            raise ModelFolderError(f"{where}: model_index.json lists {what}, but the folder {folder} is missing")
        if missing := missing_files(folder, class_name):
            raise ModelFolderError(f"{where}: {what} has no {missing} in {folder}")


def missing_files(folder: Path, class_name: str) -> str | None:
    """What a component folder lacks, judged by the kind of class it holds."""
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if class_name.endswith("Scheduler"):
        return None if "scheduler_config.json" in files else "scheduler_config.json"
    if "Tokenizer" in class_name or "Processor" in class_name or "FeatureExtractor" in class_name:
        return None if files else "tokenizer or processor files"
    if "config.json" not in files:
        return "config.json"
    if not any(f.endswith(WEIGHT_SUFFIXES) for f in files):
        return "weights (*.safetensors or *.bin)"
    return None


def pipeline_class(name: str) -> type:
    import diffusers

    try:
        cls = getattr(diffusers, name)
    except AttributeError:
        raise ModelFolderError(f"model_index.json names {name!r}, which this diffusers "
                               f"({diffusers.__version__}) does not have; a newer diffusers may") from None
    return cls


# ---- what a pipeline class can do ----

@dataclass(frozen=True)
class PipelinePlan:
    """Which class loads the folder, and which task each of our tasks runs through."""

    root_task: str  # the task the folder is loaded for: "t2i", "i2i", "inpaint" or "t2v"
    root_class: type  # the pipeline class that serves `root_task`
    capabilities: frozenset[str]


def auto_pipeline(task: str) -> Any:
    import diffusers

    return {"t2i": diffusers.AutoPipelineForText2Image, "i2i": diffusers.AutoPipelineForImage2Image,
            "inpaint": diffusers.AutoPipelineForInpainting}[task]


def family_of(mapping: dict[str, type], class_name: str) -> str | None:
    return next((family for family, cls in mapping.items() if cls.__name__ == class_name), None)


def plan_pipeline(folder_class: type) -> PipelinePlan:
    from diffusers.pipelines import auto_pipeline as auto

    name = folder_class.__name__
    tables = {"t2i": auto.AUTO_TEXT2IMAGE_PIPELINES_MAPPING, "i2i": auto.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
              "inpaint": auto.AUTO_INPAINT_PIPELINES_MAPPING}
    for task in ("t2i", "i2i", "inpaint"):
        family = family_of(tables[task], name)
        if family is None:
            continue
        if "control" in family:
            break  # needs a control image; not a plain text-to-image model
        if task == "inpaint":
            # Dedicated inpainting checkpoints (9-channel U-Nets) cannot draw from text alone.
            return PipelinePlan("inpaint", folder_class, frozenset({"inpaint"}))
        tasks = frozenset(t for t, table in tables.items() if family in table)
        root = "t2i" if "t2i" in tasks else task
        return PipelinePlan(root, tables[root][family], tasks)
    if is_text_to_video(folder_class):
        return PipelinePlan("t2v", folder_class, frozenset({"t2v"}))
    raise ModelFolderError(f"{name} is neither a text-to-image nor a text-to-video pipeline; lanterna drives "
                           "those (with img2img and inpainting where diffusers' AutoPipeline has them)")


def is_text_to_video(cls: type) -> bool:
    from diffusers.pipelines import auto_pipeline as auto

    videos = getattr(auto, "AUTO_TEXT2VIDEO_PIPELINES_MAPPING", {})
    if any(c.__name__ == cls.__name__ for c in videos.values()):
        return True
    parameters = call_parameters(cls)
    return "num_frames" in parameters and "prompt" in parameters and not {"image", "video"} & set(parameters)


def call_parameters(cls: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(cls.__call__).parameters)


def call_default(cls: type, name: str) -> Any:
    parameter = call_parameters(cls).get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


# ---- sizes from configs ----

def vae_factors(vae: dict[str, Any]) -> tuple[int, int]:
    """(spatial, temporal) downsampling of a VAE config, the way the models compute them."""
    spatial = vae.get("scale_factor_spatial") or vae.get("spatial_compression_ratio")
    temporal = vae.get("scale_factor_temporal") or vae.get("temporal_compression_ratio")
    if "spatio_temporal_scaling" in vae:  # LTX-Video, when the ratios are left to the model
        scale = 2 ** sum(bool(x) for x in vae["spatio_temporal_scaling"])
        spatial = spatial or (vae.get("patch_size") or 1) * scale
        temporal = temporal or (vae.get("patch_size_t") or 1) * scale
    if "temperal_downsample" in vae:  # Wan (the key is spelled so in diffusers)
        spatial = spatial or 2 ** len(vae["temperal_downsample"])
        temporal = temporal or 2 ** sum(bool(x) for x in vae["temperal_downsample"])
    if not spatial and vae.get("block_out_channels"):
        spatial = 2 ** (len(vae["block_out_channels"]) - 1)
    return int(spatial or 8), int(temporal or 1)


def spatial_patch(denoiser: dict[str, Any], vae: dict[str, Any]) -> int:
    """Latent pixels per token side: the transformer's patch size, or 2 for Flux-style 2x2 packing."""
    if "patch_size" not in denoiser:  # a U-Net
        return 1
    patch = denoiser["patch_size"] or 1
    if isinstance(patch, (list, tuple)):
        patch = patch[-1]
    latent_channels = vae.get("latent_channels") or vae.get("z_dim")
    if patch == 1 and latent_channels and denoiser.get("in_channels") == 4 * latent_channels:
        patch = 2
    return int(patch)


def native_side(denoiser: dict[str, Any], key: str, spatial: int) -> int | None:
    value = denoiser.get(f"sample_{key}") or denoiser.get("sample_size")
    if isinstance(value, (list, tuple)):
        value = value[0] if key == "height" else value[-1]
    return int(value) * spatial if isinstance(value, (int, float)) and value else None


def image_grid(pipe: Any) -> int:
    """The size multiple a loaded pipeline needs (its own VAE factor times the patch size)."""
    spatial = (getattr(pipe, "vae_scale_factor_spatial", None) or getattr(pipe, "vae_spatial_compression_ratio", None)
               or getattr(pipe, "vae_scale_factor", None) or 8)
    processor = getattr(pipe, "image_processor", None) or getattr(pipe, "video_processor", None)
    processor_factor = getattr(getattr(processor, "config", None), "vae_scale_factor", None) or spatial
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    vae = getattr(pipe, "vae", None)
    patch = spatial_patch(dict(denoiser.config), dict(vae.config)) if denoiser is not None and vae is not None else 1
    return math.lcm(int(processor_factor), int(spatial) * patch)


# ---- samplers ----

def is_flow_model(scheduler: Any) -> bool:
    config = scheduler.config
    return (type(scheduler).__name__.startswith("FlowMatch") or config.get("prediction_type") == "flow_prediction"
            or bool(config.get("use_flow_sigmas")))


def compatible_samplers(scheduler: Any) -> list[str]:
    """Our sampler names the checkpoint's scheduler can be swapped for."""
    compatible = {cls.__name__ for cls in scheduler.compatibles} | {type(scheduler).__name__}
    flow = is_flow_model(scheduler)
    return [name for name, spec in SAMPLERS.items() if spec.flow == flow and (spec.flow or spec.scheduler in compatible)]


def sampler_name_of(scheduler: Any) -> str:
    """Our name for a checkpoint's own scheduler when it is one of ours exactly, else 'default'."""
    cls, config = type(scheduler).__name__, scheduler.config
    for name, spec in SAMPLERS.items():
        if spec.scheduler == cls and all(config.get(k, v) == v for k, v in spec.options.items()):
            return name
    return DEFAULT_SAMPLER


def build_scheduler(base: Any, sampler: str) -> Any:
    """A fresh scheduler: the checkpoint's own for 'default', else ours from its config."""
    import diffusers

    if sampler == DEFAULT_SAMPLER:
        return type(base).from_config(base.config)
    spec = SAMPLERS[sampler]
    options = dict(spec.options)
    if spec.flow and "flow_shift" in base.config and "shift" not in base.config:
        options["shift"] = base.config["flow_shift"]  # Wan's UniPC names FlowMatch's `shift` so
    return getattr(diffusers, spec.scheduler).from_config(base.config, **options)


def sampler_error(name: str, sampler: str, scheduler: Any, allowed: list[str]) -> str:
    if sampler in SAMPLERS:
        process = "a flow-matching model" if is_flow_model(scheduler) else "a DDPM-style (noise-prediction) model"
        why = f"{name} is {process} (it ships {type(scheduler).__name__})"
        return f"sampler: {sampler!r} does not fit {name}: {why}; allowed: {', '.join(allowed)}"
    return f"sampler: unknown {sampler!r}; {name} allows: {', '.join(allowed)}"


# ---- the engine ----

class DiffusersEngine:
    """Text-to-image (with img2img and inpainting where the family has them) or text-to-video."""

    kind = "diffusers"

    def __init__(self, name: str, location: str | Path, options: DiffusersOptions | None = None) -> None:
        self.name = name
        self.options = options or DiffusersOptions()
        self.source = PipelineSource(location)
        index = self.source.read_json("model_index.json")
        if index is None:
            raise ModelFolderError(f"{self.source.location()} is not a diffusers pipeline: no model_index.json "
                                   "(save one with `pipeline.save_pretrained(folder)` or download a full "
                                   "repository with `hf download`)")
        if "_class_name" not in index:
            raise ModelFolderError(f"{self.source.location()}/model_index.json has no _class_name")
        self.folder_class = pipeline_class(index["_class_name"])
        check_components(self.source, index, self.folder_class)
        self.vae_class = component_entries(index).get("vae", (None, None))[1]
        self.plan = plan_pipeline(self.folder_class)
        self.capabilities = self.plan.capabilities
        self.is_video = self.plan.root_task == "t2v"
        self.base_scheduler = self.read_scheduler()
        self.samplers = [DEFAULT_SAMPLER, *compatible_samplers(self.base_scheduler)]
        self.device = pick_device(self.options.device)
        self.dtype = pick_dtype(self.options.dtype, self.device)
        self.describe_sizes()
        self.defaults = self.read_defaults()
        if self.defaults.sampler not in self.samplers:
            raise ValueError(sampler_error(name, self.defaults.sampler, self.base_scheduler, self.samplers))
        self.max_size = self.options.max_size or max(DEFAULT_MAX_SIZE, self.defaults.width, self.defaults.height)
        self.max_frames = (self.options.max_frames or self.defaults.frames) if self.is_video else None
        self.pipelines: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._hash: str | None = None

    # -- description (no weights) --

    def read_scheduler(self) -> Any:
        import diffusers

        config = self.source.read_json("scheduler/scheduler_config.json")
        if config is None:
            raise ModelFolderError(f"{self.source.location()}: no scheduler/scheduler_config.json")
        cls = getattr(diffusers, config.get("_class_name", ""), None)
        if cls is None:
            raise ModelFolderError(f"{self.source.location()}: unknown scheduler {config.get('_class_name')!r}")
        return cls.from_config(config)

    def describe_sizes(self) -> None:
        self.denoiser_config = (self.source.read_json("transformer/config.json")
                                or self.source.read_json("unet/config.json") or {})
        vae = self.source.read_json("vae/config.json") or {}
        self.vae_factor, self.frame_factor = vae_factors(vae)
        # CogVideoX's VAE decodes an even number of latent frames to 4 per latent, an odd one to
        # 4 per latent but the first: only odd latent counts give back 8k+1 frames, as asked.
        self.frame_step = self.frame_factor * (2 if self.vae_class == "AutoencoderKLCogVideoX" else 1)
        self.patch = spatial_patch(self.denoiser_config, vae)
        self.size_multiple = self.vae_factor * self.patch

    def read_defaults(self) -> EngineDefaults:
        o, cls, spatial = self.options, self.plan.root_class, self.vae_factor
        sample_size = getattr(cls, "default_sample_size", None)
        fallback = sample_size * spatial if isinstance(sample_size, int) else (480 if self.is_video else 1024)
        width = (o.width or call_default(cls, "width") or native_side(self.denoiser_config, "width", spatial)
                 or fallback)
        height = (o.height or call_default(cls, "height") or native_side(self.denoiser_config, "height", spatial)
                  or fallback)
        frames = fps = None
        if self.is_video:
            frames = o.frames or call_default(cls, "num_frames") or self.denoiser_config.get("sample_frames") or 16
            fps = o.fps or call_default(cls, "frame_rate") or DEFAULT_FPS
        steps = o.steps or call_default(cls, "num_inference_steps") or 30
        guidance = call_default(cls, "guidance_scale") if o.guidance is None else o.guidance
        return EngineDefaults(
            steps=int(steps), guidance=float(5.0 if guidance is None else guidance),
            sampler=o.sampler or sampler_name_of(self.base_scheduler),
            width=round_to(int(width), self.size_multiple), height=round_to(int(height), self.size_multiple),
            frames=int(frames) if frames else None, fps=int(fps) if fps else None)

    @property
    def weights_hash(self) -> str:
        if self._hash is None:
            self._hash = self.source.fingerprint()
        return self._hash

    def vocabulary(self) -> list[str] | None:
        return None

    def unknown_words(self, prompt: str) -> list[str]:
        return []

    # -- weights --

    def load(self) -> None:
        with self._lock:
            if self.plan.root_task in self.pipelines:
                return
            options: dict[str, Any] = {dtype_keyword(): self.dtype}
            if self.options.variant:
                options["variant"] = self.options.variant
            pipe = self.root_loader().from_pretrained(self.source.location(), **options)
            pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            grid = image_grid(pipe)
            if grid != self.size_multiple:
                log.info("%s: sizes must be multiples of %d (estimated %d from the configs)", self.name, grid,
                         self.size_multiple)
                self.size_multiple = grid
            self.pipelines[self.plan.root_task] = pipe
            log.info("loaded %s (%s on %s, %s)", self.name, type(pipe).__name__, self.device, self.dtype)

    def root_loader(self) -> Any:
        return self.folder_class if self.is_video else auto_pipeline(self.plan.root_task)

    def pipeline_for(self, task: str) -> Any:
        """The loaded pipeline for `task`; img2img and inpainting share the root's components."""
        self.load()
        with self._lock:
            if task not in self.pipelines:
                pipe = auto_pipeline(task).from_pipe(self.pipelines[self.plan.root_task])
                pipe.set_progress_bar_config(disable=True)
                self.pipelines[task] = pipe
            return self.pipelines[task]

    # -- requests --

    def resolve(self, request: GenerationRequest) -> dict[str, Any]:
        """Checked and completed settings of a request; InvalidRequest says what is allowed."""
        if request.task not in self.capabilities:
            raise InvalidRequest(f"model {self.name!r} cannot do {request.task!r}; it supports "
                                 f"{sorted(self.capabilities)}")
        if not 1 <= len(request.seeds) <= MAX_IMAGES_PER_RUN:
            raise InvalidRequest(f"seeds: 1 to {MAX_IMAGES_PER_RUN} outputs a run")
        d = self.defaults
        width = d.width if request.width is None else request.width
        height = d.height if request.height is None else request.height
        m = self.size_multiple
        for side, value in (("width", width), ("height", height)):
            if not (isinstance(value, int) and m <= value <= self.max_size and value % m == 0):
                raise InvalidRequest(
                    f"{side}: {self.name} accepts multiples of {m} (VAE factor {self.vae_factor} x patch "
                    f"{self.patch}) from {m} to {self.max_size}; got {value}")
        steps = d.steps if request.steps is None else request.steps
        if not (isinstance(steps, int) and steps >= 1):
            raise InvalidRequest(f"steps: must be an integer >= 1, got {steps!r}")
        guidance = d.guidance if request.guidance is None else request.guidance
        if not (math.isfinite(guidance) and guidance >= 0):
            raise InvalidRequest(f"guidance: must be a finite number >= 0, got {guidance!r}")
        sampler = request.sampler or d.sampler
        if sampler not in self.samplers:
            raise InvalidRequest(sampler_error(self.name, sampler, self.base_scheduler, self.samplers))
        settings = {"steps": steps, "guidance": float(guidance), "sampler": sampler, "width": width,
                    "height": height}
        if request.task == "t2v":
            settings["frames"] = self.check_frames(d.frames if request.frames is None else request.frames)
        if request.task in ("i2i", "inpaint") and not 1 <= int(steps * request.strength) <= steps:
            # diffusers runs the last int(steps * strength) steps of the schedule
            raise InvalidRequest(f"strength: {request.strength} of {steps} steps leaves no step to run; use "
                                 f"a strength from {1 / steps:.3g} to 1, or more steps")
        return settings

    def check_frames(self, frames: int) -> int:
        limit, t = self.max_frames or frames, self.frame_step
        if not 1 <= frames <= limit or (frames - 1) % t:
            allowed = f"1 to {limit}" if t == 1 else f"{t}k+1 frames (1, {1 + t}, {1 + 2 * t}, ... up to {limit})"
            raise InvalidRequest(f"frames: {self.name} makes {allowed}; got {frames}")
        return frames

    def run(self, request: GenerationRequest, on_step: StepCallback | None = None,
            cancelled: CancelFlag | None = None) -> GenerationResult:
        settings = self.resolve(request)
        if cancelled is not None and cancelled():
            raise GenerationCancelled(f"{self.name}: cancelled before it started")
        pipe = self.pipeline_for(request.task)
        self.check_size_loaded(settings)
        pipe.scheduler = build_scheduler(self.base_scheduler, settings["sampler"])
        arguments, warnings = self.call_arguments(pipe, request, settings)
        accepted = call_parameters(type(pipe))
        if "callback_on_step_end" in accepted:
            arguments["callback_on_step_end"] = step_callback(on_step, cancelled)
        else:
            log.warning("%s cannot report steps or stop early (no callback_on_step_end)", type(pipe).__name__)
        output = pipe(**arguments)
        if cancelled is not None and cancelled():
            raise GenerationCancelled(f"{self.name}: cancelled")
        result = GenerationResult(seeds=list(request.seeds), warnings=warnings)
        if request.task == "t2v":
            result.videos = [[to_image(frame) for frame in video] for video in finite(output.frames, "video")]
            made = min(len(v) for v in result.videos)
            if made != settings["frames"]:
                result.warnings.append(f"{self.name} made {made} frames for the {settings['frames']} asked")
                settings["frames"] = made
        else:
            self.check_safety(output, request.seeds)
            result.images = [to_image(image) for image in finite(output.images, "image")]
        result.params = {**settings, "scheduler": type(pipe.scheduler).__name__, "pipeline": type(pipe).__name__,
                         "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device)}
        return result

    def check_size_loaded(self, settings: dict[str, Any]) -> None:
        m = self.size_multiple  # exact once loaded
        if settings["width"] % m or settings["height"] % m:
            raise InvalidRequest(f"width/height: {self.name} accepts multiples of {m}; got "
                                 f"{settings['width']}x{settings['height']}")

    def call_arguments(self, pipe: Any, request: GenerationRequest,
                       settings: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        accepted = call_parameters(type(pipe))
        count = len(request.seeds)
        width, height = settings["width"], settings["height"]
        arguments: dict[str, Any] = {
            "prompt": request.prompt, "num_inference_steps": settings["steps"],
            "guidance_scale": settings["guidance"], "width": width, "height": height, "output_type": "np",
            # One generator per output: seed s gives the same picture alone or in a batch.
            "generator": [torch.Generator("cpu").manual_seed(int(s)) for s in request.seeds],
        }
        arguments["num_videos_per_prompt" if request.task == "t2v" else "num_images_per_prompt"] = count
        warnings = []
        if request.negative_prompt:
            if "negative_prompt" in accepted:
                arguments["negative_prompt"] = request.negative_prompt
            else:
                warnings.append(f"{self.name} takes no negative prompt; it was ignored")
        if request.task == "t2v":
            arguments["num_frames"] = settings["frames"]
            if "frame_rate" in accepted:
                arguments["frame_rate"] = self.defaults.fps
        if request.task in ("i2i", "inpaint"):
            if request.init_image is None:
                raise InvalidRequest("image: this mode needs an input image")
            arguments["image"] = request.init_image.convert("RGB").resize((width, height), Image.BICUBIC)
            arguments["strength"] = request.strength
        if request.task == "inpaint":
            if request.mask is None:
                raise InvalidRequest("mask: inpainting needs a mask (white = repaint)")
            if request.mask.size != request.init_image.size:
                raise InvalidRequest(f"mask: size {request.mask.size} must equal the image's "
                                     f"size {request.init_image.size}")
            arguments["mask_image"] = request.mask.convert("L").resize((width, height), Image.NEAREST)
        if cut := prompt_cut(pipe, request.prompt):
            warnings.append(cut)
        unknown = [k for k in arguments if k not in accepted]
        for key in unknown:
            arguments.pop(key)
        return arguments, warnings

    def check_safety(self, output: Any, seeds: list[int]) -> None:
        flagged = getattr(output, "nsfw_content_detected", None) or []
        hit = [seed for seed, flag in zip(seeds, flagged) if flag]
        if hit:
            raise InvalidRequest(f"the checkpoint's safety checker flagged the image for seed(s) "
                                 f"{', '.join(map(str, hit))} and blanked it; try another prompt or seed")


def round_to(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


def prompt_cut(pipe: Any, prompt: str) -> str | None:
    tokenizer = getattr(pipe, "tokenizer", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer is None or not isinstance(limit, int) or limit > 100_000:
        return None
    if len(tokenizer(prompt).input_ids) > limit:
        return f"the prompt is longer than the {limit} tokens the first text encoder reads; the rest was cut there"
    return None


def step_callback(on_step: StepCallback | None, cancelled: CancelFlag | None):
    def callback(pipe: Any, step_index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            on_step(step_index + 1, int(getattr(pipe, "num_timesteps", 0) or step_index + 1))
        if cancelled is not None and cancelled():
            # The flag stops pipelines that poll it; raising also skips the VAE decode of a dead run.
            pipe._interrupt = True
            raise GenerationCancelled(f"cancelled at step {step_index + 1}")
        return tensors

    return callback


def finite(array: Any, what: str) -> np.ndarray:
    values = array.float().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if not np.isfinite(values).all():
        raise FloatingPointError(
            f"the model produced NaN or Inf values; no {what} was made (in float16 this is often an overflow: "
            "set dtype = \"float32\" or \"bfloat16\" for this model, or try another seed or a lower guidance)")
    return values


def to_image(pixels: np.ndarray) -> Image.Image:
    """A float HxWx3 array in [0, 1] (as diffusers' output_type='np' gives) to an RGB image."""
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255.0).round().astype(np.uint8), "RGB")
