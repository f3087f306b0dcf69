"""Local diffusers checkpoints and a local CLIP behind the MCP tools.

Tiny random-weight pipelines are built from configs (the way diffusers' own tests build them),
saved with `save_pretrained`, named on the command line (`--model NAME=PATH`, `--scorer PATH`)
or in a TOML registry file, and driven through the tools with the in-memory client. Pixels are
compared with the same diffusers pipeline called directly.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from pathlib import Path

import anyio
import numpy as np
import pytest
import torch
from mcp import Client
from PIL import Image

from lanterna import cli
from lanterna.engines.base import GenerationRequest, InvalidRequest
from lanterna.server.app import create_server

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from lanterna.engines.diffusers import DiffusersEngine, ModelFolderError, image_grid  # noqa: E402

WORDS = ["a", "red", "blue", "green", "circle", "square", "on", "white", "of", "photo"]
SIZE = 32


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny nets gain nothing from threads, and on a busy 2-core machine two threads spin-wait.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- tiny models ----

def write_clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer over WORDS, written as vocab.json + merges.txt."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for c in sorted(set("".join(WORDS))):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[str] = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def clip_text_config(tokenizer, **extra):
    from transformers import CLIPTextConfig

    n = len(tokenizer)
    return CLIPTextConfig(vocab_size=n, bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1, hidden_size=8,
                          intermediate_size=16, num_attention_heads=2, num_hidden_layers=1,
                          max_position_embeddings=16, **extra)


def t5_parts():
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS] + [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                      num_heads=2, relative_attention_num_buckets=8))
    return tokenizer, encoder


def save_tiny_sd(folder: Path, scratch: Path) -> Path:
    """Stable Diffusion 1.x layout: U-Net + AutoencoderKL + CLIP text encoder, DDIM."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer = write_clip_tokenizer(scratch / "sd-tokenizer")
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=SIZE // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=2)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=2, sample_size=SIZE)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=CLIPTextModel(clip_text_config(tokenizer)),
                                   tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def save_tiny_sd3(folder: Path, scratch: Path) -> Path:
    """Stable Diffusion 3 layout: MMDiT transformer, two CLIPs and a T5, flow matching."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(1)
    tokenizer = write_clip_tokenizer(scratch / "sd3-tokenizer")
    t5_tokenizer, t5 = t5_parts()
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 2, patch_size=2, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=4,
        num_attention_heads=2, caption_projection_dim=8, joint_attention_dim=16, pooled_projection_dim=16)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=16,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=2, sample_size=SIZE, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.06, scaling_factor=1.5)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=CLIPTextModelWithProjection(clip_text_config(tokenizer, projection_dim=8)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(clip_text_config(tokenizer, projection_dim=8)),
        tokenizer_2=tokenizer, text_encoder_3=t5, tokenizer_3=t5_tokenizer)
    pipe.save_pretrained(folder)
    return folder


def save_tiny_cogvideox(folder: Path) -> Path:
    """CogVideoX layout: 3D transformer, causal video VAE (4x in time), T5."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(2)
    tokenizer, t5 = t5_parts()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=16, num_layers=1, sample_width=SIZE // 4, sample_height=SIZE // 4, sample_frames=9,
        patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 3,
        up_block_types=("CogVideoXUpBlock3D",) * 3, block_out_channels=(8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=t5, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler(prediction_type="v_prediction"))
    pipe.save_pretrained(folder)
    return folder


def save_tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(3)
    tokenizer = write_clip_tokenizer(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    text = clip_text_config(tokenizer).to_dict()
    config = CLIPConfig(text_config=text, vision_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                                             num_attention_heads=2, image_size=32, patch_size=8),
                        projection_dim=8)
    CLIPModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diffusers-models")
    scratch = root / "scratch"
    made = {"sd": save_tiny_sd(root / "sd", scratch), "sd3": save_tiny_sd3(root / "sd3", scratch),
            "cog": save_tiny_cogvideox(root / "cogvideox"), "clip": save_tiny_clip(root / "clip")}
    # Broken folders: no model_index.json; a listed component gone; a component without weights.
    (root / "not-a-pipeline").mkdir()
    (root / "not-a-pipeline" / "config.json").write_text("{}")
    shutil.copytree(made["sd"], root / "no-vae")
    shutil.rmtree(root / "no-vae" / "vae")
    shutil.copytree(made["sd"], root / "no-unet-weights")
    for weights in (root / "no-unet-weights" / "unet").glob("*.safetensors"):
        weights.unlink()
    made.update({"not-a-pipeline": root / "not-a-pipeline", "no-vae": root / "no-vae",
                 "no-unet-weights": root / "no-unet-weights"})
    return made


# ---- the server, built the way `lanterna serve` builds it ----

def serve_args(tmp_path: Path, folders: dict[str, Path], *extra: str) -> list[str]:
    models = [f"{name}={folders[name]}" for name in ("sd", "sd3", "cog", "not-a-pipeline", "no-vae",
                                                     "no-unet-weights")]
    return ["serve", *[a for m in models for a in ("--model", m)], "--scorer", str(folders["clip"]),
            "--output-dir", str(tmp_path / "out"), *extra]


def server_from_cli(argv: list[str]):
    args = cli.build_parser(with_hooks=False).parse_args(argv)
    settings = cli.settings_from(args)
    return create_server(settings, cli.build_registry(settings))


@pytest.fixture
def no_bundled(tmp_path, monkeypatch):
    monkeypatch.setenv("LANTERNA_WEIGHTS_DIR", str(tmp_path / "no-bundled-weights"))


@pytest.fixture
def server(folders, tmp_path, no_bundled):
    server = server_from_cli(serve_args(tmp_path, folders))
    yield server
    server.runtime.close()


async def read_png(client: Client, uri: str) -> np.ndarray:
    result = await client.read_resource(uri)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(result.contents[0].blob))).convert("RGB"))


async def read_sidecar(client: Client, uri: str) -> dict:
    result = await client.read_resource(uri.rsplit(".", 1)[0] + ".json")
    content = result.contents[0]
    return json.loads(content.text if hasattr(content, "text") else base64.b64decode(content.blob))


def as_pixels(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def input_image() -> Image.Image:
    x = np.linspace(0, 255, SIZE, dtype=np.float32)
    pixels = np.stack([np.add.outer(x, x) / 2, np.add.outer(x, 255 - x) / 2, np.full((SIZE, SIZE), 90.0)], -1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


# ---- tests ----

@pytest.mark.anyio
async def test_models_are_listed_with_capabilities_from_their_folders(server, folders):
    async with Client(server) as client:
        listed = (await client.call_tool("list_models", {})).structured_content
    models = {m["name"]: m for m in listed["models"]}
    sd, sd3, cog = models["sd"], models["sd3"], models["cog"]
    assert sd["kind"] == "diffusers" and sd["capabilities"] == ["i2i", "inpaint", "t2i"]
    assert sd["default_for"] == ["t2i"] and cog["default_for"] == ["t2v"]
    assert (sd["native_width"], sd["size_multiple"], sd["default_steps"], sd["default_guidance"]) == (32, 2, 50, 7.5)
    assert sd["default_sampler"] == "ddim" and "euler-a" in sd["samplers"] and "flow-euler" not in sd["samplers"]
    assert sd3["capabilities"] == ["i2i", "inpaint", "t2i"] and sd3["samplers"] == ["default", "flow-euler"]
    assert (sd3["size_multiple"], sd3["default_steps"], sd3["default_sampler"]) == (4, 28, "flow-euler")
    assert cog["capabilities"] == ["t2v"] and (cog["default_frames"], cog["max_frames"], cog["default_fps"]) == (9, 9, 8)
    assert cog["default_sampler"] == "default" and cog["native_width"] == 32 and cog["size_multiple"] == 8
    assert sd["prompt_note"].startswith("open vocabulary") and not any(m["loaded"] for m in (sd, sd3, cog))
    assert "model_index.json" in models["not-a-pipeline"]["error"]
    assert "'vae'" in models["no-vae"]["error"] and "missing" in models["no-vae"]["error"]
    assert "weights" in models["no-unet-weights"]["error"]
    assert listed["scorers"] == [{"name": "clip", "default": True}]
    # The sizes read from the configs are the ones the loaded pipelines enforce.
    for name in ("sd", "sd3", "cog"):
        engine = server.runtime.registry.get(name)
        assert image_grid(engine.pipelines[engine.plan.root_task]) == models[name]["size_multiple"]


@pytest.mark.anyio
async def test_generate_image_matches_diffusers_with_progress_and_reproducible_seeds(server, folders):
    updates = []

    async def on_progress(progress, total, message):
        updates.append(message)

    async with Client(server, mode="legacy") as client:
        result = await client.call_tool("generate_image", {"prompt": "a red circle", "seed": 5, "num_images": 2,
                                                           "steps": 2}, progress_callback=on_progress)
        report = result.structured_content
        assert report["status"] == "done" and report["model"] == "sd" and [im["seed"] for im in report["images"]] == [5, 6]
        assert report["params"]["scheduler"] == "DDIMScheduler" and report["params"]["pipeline"] == "StableDiffusionPipeline"
        assert [m for m in updates if m.startswith("step")] == ["step 1/2", "step 2/2"]
        stored = [await read_png(client, im["uri"]) for im in report["images"]]
        sidecar = await read_sidecar(client, report["images"][1]["uri"])
        assert sidecar["seed"] == 6 and sidecar["params"]["scheduler"] == "DDIMScheduler"
        assert sidecar["kind"] == "diffusers" and sidecar["weights_hash"] == report["weights_hash"]

        again = (await client.call_tool("generate_image", {"prompt": "a red circle", "seed": 6, "steps": 2})
                 ).structured_content
        alone = await read_png(client, again["images"][0]["uri"])
    assert np.abs(alone.astype(int) - stored[1].astype(int)).max() <= 1  # seed 6 alone = seed 6 in a batch
    assert not np.array_equal(stored[0], stored[1])

    from diffusers import StableDiffusionPipeline

    direct = StableDiffusionPipeline.from_pretrained(folders["sd"])
    direct.set_progress_bar_config(disable=True)
    expected = direct("a red circle", num_inference_steps=2, guidance_scale=7.5, height=SIZE, width=SIZE,
                      num_images_per_prompt=2, output_type="np",
                      generator=[torch.Generator().manual_seed(s) for s in (5, 6)]).images
    np.testing.assert_array_equal(np.stack(stored), as_pixels(expected))


@pytest.mark.anyio
async def test_sampler_swaps_reach_the_pipeline_and_misfits_are_refused(server):
    async with Client(server) as client:
        picks = {}
        for sampler in ("euler-a", "dpmpp-2m-karras"):
            report = (await client.call_tool("generate_image", {"prompt": "a blue square", "seed": 3, "steps": 3,
                                                                "sampler": sampler})).structured_content
            sidecar = await read_sidecar(client, report["images"][0]["uri"])
            picks[sampler] = (report["params"]["scheduler"], sidecar["params"]["scheduler"],
                              await read_png(client, report["images"][0]["uri"]))
        karras = server.runtime.registry.get("sd").pipelines["t2i"].scheduler
        flow = (await client.call_tool("generate_image", {"prompt": "a blue square", "model": "sd3", "steps": 2,
                                                          "sampler": "flow-euler"})).structured_content
        refused = await client.call_tool("generate_image", {"prompt": "a blue square", "model": "sd3",
                                                            "sampler": "ddim"})
        bad_size = await client.call_tool("generate_image", {"prompt": "a blue square", "model": "sd3", "width": 34})
        long = (await client.call_tool("generate_image", {"prompt": "a red circle on a white square " * 3,
                                                          "steps": 1})).structured_content
    assert picks["euler-a"][:2] == ("EulerAncestralDiscreteScheduler",) * 2
    assert picks["dpmpp-2m-karras"][:2] == ("DPMSolverMultistepScheduler",) * 2
    assert karras.config.use_karras_sigmas and karras.config.algorithm_type == "dpmsolver++"
    assert not np.array_equal(picks["euler-a"][2], picks["dpmpp-2m-karras"][2])
    assert flow["params"]["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert refused.is_error and "ddim" in refused.content[0].text and "flow-euler" in refused.content[0].text
    assert bad_size.is_error and "multiples of 4" in bad_size.content[0].text
    assert any("longer than the 16 tokens" in w for w in long["warnings"])

    engine = server.runtime.registry.get("sd3")
    with pytest.raises(InvalidRequest, match="flow-matching"):
        engine.run(GenerationRequest(task="t2i", prompt="a red circle", seeds=[1], sampler="ddim"))
    with pytest.raises(InvalidRequest, match="multiples of 4"):
        engine.run(GenerationRequest(task="t2i", prompt="a red circle", seeds=[1], width=30))


@pytest.mark.anyio
async def test_edit_img2img_and_inpaint_match_diffusers(server, folders):
    source = input_image()
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))
    updates = []

    async def on_progress(progress, total, message):
        updates.append(message)

    async with Client(server, mode="legacy") as client:
        i2i = (await client.call_tool("edit", {"image": data_url(source), "prompt": "a green square", "seed": 9,
                                               "steps": 4, "strength": 0.5}, progress_callback=on_progress)
               ).structured_content
        inpaint = (await client.call_tool("edit", {"image": data_url(source), "mask": data_url(mask),
                                                   "mode": "inpaint", "prompt": "a green square", "seed": 9,
                                                   "steps": 4, "strength": 0.75})).structured_content
        sd3 = (await client.call_tool("edit", {"image": data_url(source), "mask": data_url(mask), "mode": "inpaint",
                                               "prompt": "a green square", "model": "sd3", "steps": 2,
                                               "strength": 1.0})).structured_content
        edited = await read_png(client, i2i["images"][0]["uri"])
        repainted = await read_png(client, inpaint["images"][0]["uri"])
    assert i2i["params"]["pipeline"] == "StableDiffusionImg2ImgPipeline"
    assert inpaint["params"]["pipeline"] == "StableDiffusionInpaintPipeline"
    assert sd3["status"] == "done" and sd3["params"]["pipeline"] == "StableDiffusion3InpaintPipeline"
    assert [m for m in updates if m.startswith("step")][-2:] == ["step 1/2", "step 2/2"]  # int(4 * 0.5) steps

    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    base = AutoPipelineForText2Image.from_pretrained(folders["sd"])
    img2img, inpainting = AutoPipelineForImage2Image.from_pipe(base), AutoPipelineForInpainting.from_pipe(base)
    for pipe in (img2img, inpainting):
        pipe.set_progress_bar_config(disable=True)
    expected = img2img("a green square", image=source, strength=0.5, num_inference_steps=4, output_type="np",
                       generator=[torch.Generator().manual_seed(9)]).images
    np.testing.assert_array_equal(edited, as_pixels(expected)[0])
    expected = inpainting("a green square", image=source, mask_image=mask, strength=0.75, num_inference_steps=4,
                          height=SIZE, width=SIZE, output_type="np", generator=[torch.Generator().manual_seed(9)]).images
    np.testing.assert_array_equal(repainted, as_pixels(expected)[0])


@pytest.mark.anyio
async def test_generate_video_through_the_folders_pipeline_class(server, folders):
    updates = []

    async def on_progress(progress, total, message):
        updates.append(message)

    async with Client(server, mode="legacy") as client:
        result = await client.call_tool("generate_video", {"prompt": "a red circle", "frames": 9, "steps": 2,
                                                           "seed": 4}, progress_callback=on_progress)
        wrong = await client.call_tool("generate_video", {"prompt": "a red circle", "frames": 5, "steps": 2})
        image_model = await client.call_tool("generate_video", {"prompt": "a red circle", "model": "sd"})
    report = result.structured_content
    assert report["status"] == "done" and report["model"] == "cog"
    video = report["videos"][0]
    assert (video["frames"], video["width"], video["height"], video["seed"]) == (9, SIZE, SIZE, 4)
    assert report["params"]["scheduler"] == "CogVideoXDDIMScheduler" and report["params"]["pipeline"] == "CogVideoXPipeline"
    assert [m for m in updates if m.startswith("step")] == ["step 1/2", "step 2/2"]
    assert any(getattr(b, "type", "") == "image" for b in result.content)  # the contact sheet preview
    failed = wrong.structured_content
    assert failed["status"] == "failed" and "8k+1" in failed["error"]
    assert image_model.is_error and "cannot do t2v" in image_model.content[0].text

    from diffusers import CogVideoXPipeline

    engine = server.runtime.registry.get("cog")
    made = engine.run(GenerationRequest(task="t2v", prompt="a red circle", seeds=[4], steps=2, frames=9))
    direct = CogVideoXPipeline.from_pretrained(folders["cog"])
    direct.set_progress_bar_config(disable=True)
    expected = direct("a red circle", num_frames=9, num_inference_steps=2, height=SIZE, width=SIZE, output_type="np",
                      generator=[torch.Generator().manual_seed(4)]).frames[0]
    np.testing.assert_array_equal(np.stack([np.asarray(f) for f in made.videos[0]]), as_pixels(expected))


@pytest.mark.anyio
async def test_cancel_stops_the_pipeline_between_steps(server):
    async with Client(server) as client:
        running = (await client.call_tool("generate_image", {"prompt": "a red circle", "steps": 200,
                                                             "wait_seconds": 0})).structured_content
        job_id = running["job_id"]
        job = server.runtime.jobs.get(job_id)
        deadline = time.monotonic() + 30
        while job.step < 1 and time.monotonic() < deadline:
            await anyio.sleep(0.01)
        cancelled = (await client.call_tool("cancel_job", {"job_id": job_id})).structured_content
        assert cancelled["status"] == "cancelled" and cancelled["was_running"]
        state = (await client.call_tool("get_job", {"job_id": job_id, "wait_seconds": 10})).structured_content
        assert state["status"] == "cancelled" and 1 <= job.step < 200
        pipe = server.runtime.registry.get("sd").pipelines["t2i"]
        assert pipe.interrupt  # the pipeline's own flag was raised
        after = (await client.call_tool("generate_image", {"prompt": "a red circle", "steps": 2})).structured_content
    assert after["status"] == "done" and not pipe.interrupt


@pytest.mark.anyio
async def test_nan_output_is_an_error_not_a_black_image(server):
    engine = server.runtime.registry.get("sd")
    weight = engine.pipelines["t2i"].vae.decoder.conv_out.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(float("nan"))
        with pytest.raises(FloatingPointError, match="NaN"):
            engine.run(GenerationRequest(task="t2i", prompt="a red circle", seeds=[1], steps=2))
        async with Client(server) as client:
            report = (await client.call_tool("generate_image", {"prompt": "a red circle", "steps": 2})
                      ).structured_content
        assert report["status"] == "failed" and "NaN" in report["error"] and not report["images"]
    finally:
        with torch.no_grad():
            weight.copy_(saved)


@pytest.mark.anyio
async def test_broken_folders_are_answered_with_what_is_missing(server, folders):
    async with Client(server) as client:
        answers = {name: await client.call_tool("generate_image", {"prompt": "a red circle", "model": name})
                   for name in ("not-a-pipeline", "no-vae", "no-unet-weights")}
    assert all(a.is_error for a in answers.values())
    assert "no model_index.json" in answers["not-a-pipeline"].content[0].text
    assert "component 'vae'" in answers["no-vae"].content[0].text and "missing" in answers["no-vae"].content[0].text
    assert "component 'unet'" in answers["no-unet-weights"].content[0].text
    assert "weights" in answers["no-unet-weights"].content[0].text

    with pytest.raises(ModelFolderError, match="no such folder"):
        DiffusersEngine("x", folders["sd"] / "nowhere")
    index = json.loads((folders["sd"] / "model_index.json").read_text())
    index["vae"] = [None, None]
    broken = folders["sd"].parent / "null-vae"
    shutil.copytree(folders["sd"], broken)
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="needs component 'vae'"):
        DiffusersEngine("x", broken)


@pytest.mark.anyio
async def test_local_clip_scores_any_engine(server, folders):
    from lanterna.evaluation.clip_score import TransformersCLIPScorer

    async with Client(server) as client:
        report = (await client.call_tool("generate_image", {"prompt": "a photo of a red circle", "steps": 2,
                                                            "seed": 11, "score": True})).structured_content
        image = Image.fromarray(await read_png(client, report["images"][0]["uri"]))
    expected = TransformersCLIPScorer(folders["clip"]).clip_scores([image], ["a photo of a red circle"])[0]
    assert report["images"][0]["clip_score"] == pytest.approx(expected, rel=1e-4, abs=1e-4)


@pytest.mark.anyio
async def test_registry_file_sets_models_defaults_and_scorer(folders, tmp_path, monkeypatch, no_bundled):
    from tests.tiny_models import save_tiny_bundle

    shapes = save_tiny_bundle(tmp_path / "shapes", kinds=("dit",))
    config = tmp_path / "lanterna.toml"
    config.write_text(f"""
output_dir = "{tmp_path / 'out'}"

[models.sd]
path = "{folders['sd']}"

[models.sd3]
path = "{folders['sd3']}"
steps = 3
guidance = 2.5
size = 32
dtype = "float32"
device = "cpu"
default = true

[models.shapes-dit]
path = "{shapes}"
steps = 2

[models.sd3-ddim]
path = "{folders['sd3']}"
sampler = "ddim"

[scorer]
path = "{folders['clip']}"
name = "tiny-clip"
""")
    monkeypatch.setenv("LANTERNA_CONFIG", str(config))
    server = server_from_cli(["serve", "--model", f"cog={folders['cog']}"])  # the file via $LANTERNA_CONFIG
    try:
        registry = server.runtime.registry
        assert (registry.default_image_model, registry.default_video_model) == ("sd3", "cog")
        assert registry.default_scorer == "tiny-clip" and server.runtime.settings.output_dir == tmp_path / "out"
        async with Client(server) as client:
            listed = {m["name"]: m for m in (await client.call_tool("list_models", {})).structured_content["models"]}
            report = (await client.call_tool("generate_image", {"prompt": "a red circle", "seed": 2})
                      ).structured_content
            shapes_report = (await client.call_tool("generate_image", {"prompt": "a red circle",
                                                                       "model": "shapes-dit"})).structured_content
        assert (listed["sd3"]["default_steps"], listed["sd3"]["default_guidance"]) == (3, 2.5)
        assert listed["shapes-dit"]["kind"] == "shapes-dit" and listed["shapes-dit"]["default_steps"] == 2
        assert "flow-matching" in listed["sd3-ddim"]["error"]
        assert report["model"] == "sd3" and report["params"]["steps"] == 3 and report["params"]["guidance"] == 2.5
        assert shapes_report["status"] == "done" and shapes_report["params"]["steps"] == 2
    finally:
        server.runtime.close()
