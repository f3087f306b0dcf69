"""The key server paths on the in-repo Shapes engine (tiny random-weight models saved as a bundle):
the tool answers carry the engine's real pixels, seeds, vocabulary, samplers and CLIP scores."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from mcp import Client
from PIL import Image

from lanterna.config import Settings
from lanterna.engines.base import GenerationRequest
from lanterna.server.app import create_server

pytest.importorskip("lanterna.engines.samplers")
from lanterna.engines.bundled import default_registry  # noqa: E402
from lanterna.engines.samplers import SAMPLERS  # noqa: E402
from tests.tiny_models import save_tiny_bundle  # noqa: E402


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return save_tiny_bundle(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def server(bundle, tmp_path):
    server = create_server(Settings(output_dir=tmp_path / "out"), default_registry(bundle))
    yield server
    server.runtime.close()


async def read_image(client: Client, uri: str) -> Image.Image:
    result = await client.read_resource(uri)
    return Image.open(io.BytesIO(base64.b64decode(result.contents[0].blob))).convert("RGB")


@pytest.mark.anyio
async def test_shapes_models_are_listed_with_vocabulary_and_samplers(server):
    async with Client(server) as client:
        listed = (await client.call_tool("list_models", {})).structured_content
    models = {m["name"]: m for m in listed["models"]}
    dit = models["shapes-dit"]
    assert dit["capabilities"] == ["i2i", "inpaint", "t2i"] and dit["default_for"] == ["t2i"]
    assert (dit["native_width"], dit["default_steps"], dit["default_sampler"]) == (64, 4, "dpmpp-2m")
    assert dit["samplers"] == sorted(SAMPLERS) and {"circle", "red", "triangle"} <= set(dit["vocabulary"])
    assert models["shapes-video"]["capabilities"] == ["t2v"] and models["shapes-video"]["max_frames"] == 8
    assert listed["scorers"] == [{"name": "shapes-clip", "default": True}]


@pytest.mark.anyio
async def test_generate_image_returns_the_engines_pixels_and_progress(server):
    updates = []

    async def on_progress(progress, total, message):
        updates.append(message)

    async with Client(server, mode="legacy") as client:
        result = await client.call_tool("generate_image", {"prompt": "a red circle and a unicorn", "seed": 21,
                                                           "num_images": 2}, progress_callback=on_progress)
        report = result.structured_content
        assert report["status"] == "done" and report["model"] == "shapes-dit" and report["backend"] == "torch"
        assert [im["seed"] for im in report["images"]] == [21, 22]
        assert any("unicorn" in w for w in report["warnings"])
        assert [m for m in updates if m.startswith("step")] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
        stored = [await read_image(client, im["uri"]) for im in report["images"]]
    engine = server.runtime.registry.get("shapes-dit")
    direct = engine.run(GenerationRequest(task="t2i", prompt="a red circle and a unicorn", seeds=[22]))
    difference = np.abs(np.asarray(stored[1], np.int16) - np.asarray(direct.images[0], np.int16))
    assert difference.max() <= 1


@pytest.mark.anyio
async def test_best_of_ranks_by_the_bundled_clip(server):
    async with Client(server) as client:
        result = await client.call_tool("generate_image", {"prompt": "a blue square", "seed": 5, "best_of": 4,
                                                           "steps": 2})
        report = result.structured_content
        (kept,) = report["images"]
        best = max(report["candidates"], key=lambda c: c["clip_score"])
        assert kept["seed"] == best["seed"] and kept["clip_score"] == pytest.approx(best["clip_score"], abs=1e-3)
        image = await read_image(client, kept["uri"])
    rescored = server.runtime.registry.scorer().clip_scores([image], ["a blue square"])[0]
    assert rescored == pytest.approx(kept["clip_score"], abs=0.05)


@pytest.mark.anyio
async def test_bad_sampler_size_and_cancel_on_the_real_engine(server):
    async with Client(server) as client:
        bad = await client.call_tool("generate_image", {"prompt": "a red circle", "sampler": "nope"})
        assert bad.is_error and all(name in bad.content[0].text for name in SAMPLERS)
        big = await client.call_tool("generate_image", {"prompt": "a red circle", "width": 128})
        assert big.is_error and "64" in big.content[0].text
        running = await client.call_tool("generate_image", {"prompt": "a red circle", "steps": 200, "num_images": 8,
                                                            "wait_seconds": 0.2})
        job_id = running.structured_content["job_id"]
        assert running.structured_content["status"] == "running"
        stopped = await client.call_tool("cancel_job", {"job_id": job_id})
        assert stopped.structured_content["status"] == "cancelled"
        assert server.runtime.jobs.get(job_id).step < 200
        ok = await client.call_tool("generate_image", {"prompt": "a red circle", "steps": 1})
        assert ok.structured_content["status"] == "done"


@pytest.mark.anyio
async def test_video_and_inpaint_on_the_real_engine(server):
    async with Client(server) as client:
        clip = await client.call_tool("generate_video", {"prompt": "a red circle moving right", "seed": 1,
                                                         "frames": 4, "steps": 2})
        video = clip.structured_content["videos"][0]
        assert (video["frames"], video["width"]) == (4, 64)
        assert [b.type for b in clip.content].count("image") == 1

        made = await client.call_tool("generate_image", {"prompt": "a green triangle", "seed": 2, "steps": 2})
        uri = made.structured_content["images"][0]["uri"]
        original = await read_image(client, uri)
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (0, 0, 32, 64))
        buf = io.BytesIO()
        mask.save(buf, format="PNG")
        painted = await client.call_tool("edit", {"image": uri, "mode": "inpaint", "prompt": "a blue circle",
                                                  "mask": base64.b64encode(buf.getvalue()).decode(),
                                                  "strength": 1.0, "steps": 2})
        assert not painted.is_error, painted.content[0].text
        result = await read_image(client, painted.structured_content["images"][0]["uri"])
    kept = np.abs(np.asarray(result, np.int16)[:, 40:] - np.asarray(original, np.int16)[:, 40:])
    assert kept.mean() < 12  # the unmasked side survives the VAE round trip closely
