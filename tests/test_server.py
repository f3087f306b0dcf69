"""The MCP server end to end through the SDK's client: in memory (the direct dispatcher) and over
the real JSON-RPC path (`mode="legacy"`), on the test-double engine from tests/_engines.py."""

from __future__ import annotations

import base64
import io
import json
import time

import anyio
import pytest
from mcp import Client
from PIL import Image

from lanterna.config import Settings
from lanterna.server.app import create_server
from lanterna.server.media import PNG_TEXT_KEY
from tests._engines import colour_share, pattern, test_registry

MODES = ["auto", "legacy"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def make_server(tmp_path):
    servers = []
    (tmp_path / "inputs").mkdir()

    def make(registry=None, **overrides):
        settings = Settings(output_dir=tmp_path / "outputs", allow_dirs=[tmp_path / "inputs"], **overrides)
        server = create_server(settings, registry or test_registry())
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.runtime.close()


def decode_image(block) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(block.data)))


def blocks(result, kind: str) -> list:
    return [b for b in result.content if b.type == kind]


async def read_bytes(client: Client, uri: str) -> tuple[bytes, str]:
    result = await client.read_resource(uri)
    content = result.contents[0]
    return base64.b64decode(content.blob), content.mime_type


def engine_of(server, name="pattern"):
    return server.runtime.registry.engine(name)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_tools_prompts_and_templates_are_listed_with_schemas(make_server, mode):
    async with Client(make_server(), mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == {"generate_image", "generate_video", "edit", "evaluate", "list_models", "get_job",
                              "cancel_job"}
        for tool in tools.values():
            assert tool.description and len(tool.description) > 80
            assert tool.output_schema and tool.output_schema["type"] == "object"
            assert tool.input_schema["type"] == "object"
        props = tools["generate_image"].input_schema["properties"]
        assert tools["generate_image"].input_schema["required"] == ["prompt"]
        steps = props["steps"]["anyOf"][0]
        assert (steps["minimum"], steps["maximum"]) == (1, 200)
        assert props["seed"]["default"] == -1 and "description" in props["best_of"]
        assert tools["edit"].input_schema["properties"]["mode"]["enum"] == ["img2img", "inpaint"]
        assert "images" in tools["generate_image"].output_schema["properties"]
        prompts = {p.name for p in (await client.list_prompts()).prompts}
        assert {"iterate_on_image", "storyboard", "what_can_this_model_draw"} <= prompts
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["lanterna://outputs/{name}"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_generate_image_returns_previews_links_seeds_and_progress(make_server, mode):
    server = make_server()
    updates = []

    async def on_progress(progress, total, message):
        updates.append((progress, total, message))

    async with Client(server, mode=mode) as client:
        result = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 5, "num_images": 2},
                                        progress_callback=on_progress)
        assert not result.is_error
        report = result.structured_content
        assert report["status"] == "done" and report["model"] == "pattern"
        assert [im["seed"] for im in report["images"]] == [5, 6]
        assert set(report["timings"]) >= {"queue", "generate", "encode"}

        previews = blocks(result, "image")
        assert len(previews) == 2
        assert sum(len(p.data) for p in previews) <= 100_000
        for preview in previews:
            shown = decode_image(preview)
            assert shown.size == (256, 256)  # 64 px upscaled (nearest) so it can be seen
        links = blocks(result, "resource_link")
        assert [str(link.uri) for link in links] == [im["uri"] for im in report["images"]]

        for image, seed in zip(report["images"], [5, 6]):
            data, mime = await read_bytes(client, image["uri"])
            assert mime == "image/png"
            stored = Image.open(io.BytesIO(data))
            assert stored.size == (64, 64)
            params = json.loads(stored.text[PNG_TEXT_KEY])
            assert params["seed"] == seed and params["prompt"] == "a red square"
            assert params["weights_hash"] == report["weights_hash"] and "mcp" in params["versions"]
            expected = pattern(seed, "a red square", 64, 64)
            assert stored.convert("RGB").tobytes() == expected.tobytes()
            # the preview shows the same pixels, 4x
            shown = decode_image(previews[seed - 5]).convert("RGB").resize((64, 64), Image.NEAREST)
            assert shown.tobytes() == expected.tobytes()

        sidecar_uri = report["images"][0]["uri"].replace(".png", ".json")
        sidecar, mime = await read_bytes(client, sidecar_uri)
        assert mime == "application/json"
        assert json.loads(sidecar)["job_id"] == report["job_id"]

        again = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 6})
        assert again.structured_content["images"][0]["uri"] == report["images"][1]["uri"]  # content-addressed

    steps = [u for u in updates if u[2].startswith("step")]
    assert [u[2] for u in steps] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    values = [u[0] for u in updates]
    assert values == sorted(values) and len(set(values)) == len(values)


@pytest.mark.anyio
async def test_random_seed_is_returned_and_reproduces(make_server):
    async with Client(make_server()) as client:
        first = (await client.call_tool("generate_image", {"prompt": "a blue circle"})).structured_content
        seed = first["images"][0]["seed"]
        assert 0 <= seed < 2**31
        again = (await client.call_tool("generate_image", {"prompt": "a blue circle", "seed": seed})).structured_content
        assert again["images"][0]["uri"] == first["images"][0]["uri"]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_wait_expiry_returns_a_job_that_get_job_completes(make_server, mode):
    async with Client(make_server(), mode=mode) as client:
        started = time.monotonic()
        result = await client.call_tool("generate_image", {"prompt": "a green square", "steps": 100,
                                                           "wait_seconds": 0.05})
        assert time.monotonic() - started < 0.8  # the job itself needs over a second
        report = result.structured_content
        assert not result.is_error and report["status"] == "running"
        assert report["progress"]["total_steps"] == 100 and report["images"] == []
        assert any("get_job" in w for w in report["warnings"])

        updates = []

        async def on_progress(progress, total, message):
            updates.append(message)

        done = await client.call_tool("get_job", {"job_id": report["job_id"], "wait_seconds": 20},
                                      progress_callback=on_progress)
        final = done.structured_content
        assert final["status"] == "done" and final["job_id"] == report["job_id"]
        assert len(final["images"]) == 1 and len(blocks(done, "image")) == 1
        steps = [int(m.split()[1].split("/")[0]) for m in updates if m.startswith("step")]
        assert steps == list(range(steps[0], 101))  # every step from where get_job joined
        # collecting it again returns the same stored answer
        again = await client.call_tool("get_job", {"job_id": report["job_id"], "wait_seconds": 0})
        assert again.structured_content["images"] == final["images"]


@pytest.mark.anyio
async def test_cancel_job_stops_the_engine_and_frees_the_worker(make_server):
    server = make_server()
    async with Client(server) as client:
        running = await client.call_tool("generate_image", {"prompt": "a red square", "steps": 200,
                                                            "wait_seconds": 0.1})
        job_id = running.structured_content["job_id"]
        started = time.monotonic()
        cancelled = await client.call_tool("cancel_job", {"job_id": job_id})
        assert cancelled.structured_content == {"job_id": job_id, "status": "cancelled", "was_running": True}
        assert time.monotonic() - started < 1.5  # the job alone would need 2 s
        engine = engine_of(server)
        assert engine.active == 0
        state = await client.call_tool("get_job", {"job_id": job_id, "wait_seconds": 0})
        assert state.structured_content["status"] == "cancelled"
        assert server.runtime.jobs.get(job_id).step < 200

        nxt = await client.call_tool("generate_image", {"prompt": "a red square", "wait_seconds": 10})
        assert nxt.structured_content["status"] == "done"
        missing = await client.call_tool("cancel_job", {"job_id": "job-0-nope"})
        assert missing.is_error and "no job" in missing.content[0].text


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_client_cancellation_cancels_the_job(make_server, mode):
    server = make_server()
    async with Client(server, mode=mode) as client:
        stepping = anyio.Event()

        async def on_progress(progress, total, message):
            if message.startswith("step"):
                stepping.set()

        async def call():
            await client.call_tool("generate_image", {"prompt": "a red square", "steps": 200, "wait_seconds": 30},
                                   progress_callback=on_progress)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(call)
                await stepping.wait()
                tg.cancel_scope.cancel()
            (job,) = server.runtime.jobs.jobs.values()
            while not job.finished:
                await anyio.sleep(0.02)
        assert job.state == "cancelled" and job.step < 200
        assert engine_of(server).active == 0
        nxt = await client.call_tool("generate_image", {"prompt": "a red square"})
        assert nxt.structured_content["status"] == "done"


@pytest.mark.anyio
async def test_full_queue_answers_busy_and_recovers(make_server):
    server = make_server(queue_size=1)
    async with Client(server) as client:
        slow = {"prompt": "a red square", "steps": 200, "wait_seconds": 0}
        first = (await client.call_tool("generate_image", slow)).structured_content
        second = (await client.call_tool("generate_image", slow)).structured_content
        assert second["progress"]["queue_position"] == 2
        busy = await client.call_tool("generate_image", slow)
        assert busy.is_error and "busy" in busy.content[0].text and "try again" in busy.content[0].text
        # a queued job leaves the queue at once when cancelled; the running one stops at its next step
        for job in (second, first):
            out = await client.call_tool("cancel_job", {"job_id": job["job_id"]})
            assert out.structured_content["status"] == "cancelled"
        assert engine_of(server).runs == 1  # the queued one never started
        ok = await client.call_tool("generate_image", {"prompt": "a red square"})
        assert ok.structured_content["status"] == "done"


@pytest.mark.anyio
async def test_best_of_keeps_the_candidates_with_the_highest_clip_scores(make_server):
    async with Client(make_server()) as client:
        result = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 100, "num_images": 2,
                                                           "best_of": 6})
        report = result.structured_content
        candidates = report["candidates"]
        assert [c["seed"] for c in candidates] == list(range(100, 106))
        # the test recomputes every candidate's score from its own pixels
        for c in candidates:
            assert c["clip_score"] == pytest.approx(colour_share(pattern(c["seed"], "a red square", 64, 64),
                                                                "a red square"), abs=1e-3)
        best = sorted(candidates, key=lambda c: -c["clip_score"])[:2]
        assert [im["seed"] for im in report["images"]] == [c["seed"] for c in best]
        assert {c["seed"] for c in candidates if c["kept"]} == {c["seed"] for c in best}
        assert len(set(c["clip_score"] for c in candidates)) > 2  # the ranking had something to choose
        for image in report["images"]:
            data, _ = await read_bytes(client, image["uri"])
            assert colour_share(Image.open(io.BytesIO(data)), "a red square") == pytest.approx(image["clip_score"],
                                                                                               abs=1e-3)
        assert len(blocks(result, "image")) == 2 and len(blocks(result, "resource_link")) == 2


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_bad_arguments_get_errors_that_say_what_is_allowed(make_server, tmp_path, mode):
    server = make_server(max_input_pixels=300 * 300, max_input_bytes=200_000)
    inputs = tmp_path / "inputs"
    good = png_bytes(pattern(1, "a red square", 64, 64))
    (inputs / "notes.txt").write_text("not an image at all")
    (inputs / "truncated.png").write_bytes(good[: len(good) // 2])
    (inputs / "big.png").write_bytes(png_bytes(Image.new("RGB", (400, 400))))
    (inputs / "good.png").write_bytes(good)
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(good)
    (inputs / "link.png").symlink_to(outside)

    def edit(image):
        return ("edit", {"image": image, "prompt": "a blue square"})

    cases = [
        (("generate_image", {"prompt": "a red square", "width": 10000}), ["width", "less than or equal to 4096"]),
        (("generate_image", {"prompt": "a red square", "width": 200}), ["multiples of 8 up to 128"]),
        (("generate_image", {"prompt": "a red square", "steps": 0}), ["steps", "greater than or equal to 1"]),
        (("generate_image", {"prompt": "a red square", "model": "nope"}), ["nope", "pattern", "pattern-video"]),
        (("generate_image", {"prompt": "a red square", "sampler": "bogus"}), ["bogus", "euler, heun"]),
        (("generate_image", {"prompt": "x", "model": "pattern-video"}), ["cannot do t2i", "pattern"]),
        (("generate_image", {"prompt": "a red square", "num_images": 3, "best_of": 2}), ["best_of", "num_images"]),
        (("generate_video", {"prompt": "a red square", "frames": 40}), ["at most 16 frames"]),
        (edit(str(outside)), ["outside the allowed folders", str(inputs)]),
        (edit(str(inputs / "link.png")), ["outside the allowed folders"]),
        (edit(str(inputs / "notes.txt")), ["not an image", "PNG"]),
        (edit(str(inputs / "truncated.png")), ["truncated or corrupt"]),
        (edit(str(inputs / "big.png")), ["too large", "90000 pixels"]),
        (edit(str(inputs / "missing.png")), ["no such file"]),
        (edit("https://example.com/cat.png"), ["not fetched"]),
        (edit("data:text/plain;base64,aGVsbG8="), ["only image data"]),
        (edit("data:image/png;base64," + "A" * 300_000), ["over the 200000 byte limit"]),
        (edit("lanterna://outputs/../../etc/passwd"), ["not an output name"]),
        (edit("lanterna://outputs/0123456789abcdef.png"), ["does not exist"]),
        (("edit", {"image": str(inputs / "good.png"), "prompt": "a red square", "mode": "inpaint"}),
         ["mask", "needs a mask"]),
        (("get_job", {"job_id": "job-404"}), ["no job"]),
        (("evaluate", {"images": [str(inputs / "good.png")], "metrics": ["fid"]}), ["reference"]),
    ]
    async with Client(server, mode=mode) as client:
        for (tool, arguments), needles in cases:
            result = await client.call_tool(tool, arguments)
            text = result.content[0].text
            assert result.is_error, (tool, arguments, text)
            for needle in needles:
                assert needle in text, (tool, arguments, text)
            assert "Traceback" not in text
        ok = await client.call_tool("edit", {"image": str(inputs / "good.png"), "prompt": "a blue square"})
        assert not ok.is_error and ok.structured_content["status"] == "done"
    assert engine_of(server).runs == 1  # no bad request reached the engine


@pytest.mark.anyio
async def test_engine_failures_are_reported_and_the_worker_goes_on(make_server):
    server = make_server()
    async with Client(server) as client:
        nan = await client.call_tool("generate_image", {"prompt": "a red square", "model": "nan-engine"})
        assert nan.is_error and nan.structured_content["status"] == "failed"
        assert "NaN" in nan.structured_content["error"] and nan.structured_content["images"] == []
        black = await client.call_tool("generate_image", {"prompt": "a red square", "model": "black-engine"})
        assert black.is_error and "all-black images" in black.structured_content["error"]
        for _ in range(2):  # the same worker serves again after a crash
            crash = await client.call_tool("generate_image", {"prompt": "a red square", "model": "crashy"})
            assert crash.is_error and "simulated engine crash" in crash.structured_content["error"]
            assert "Traceback" not in crash.content[0].text
        assert engine_of(server, "crashy").runs == 2
        assert list(server.runtime.store.root.glob("*.png")) == []  # no black or broken image was stored
        ok = await client.call_tool("generate_image", {"prompt": "a red square"})
        assert ok.structured_content["status"] == "done"


@pytest.mark.anyio
async def test_edit_img2img_and_inpaint_from_resources_and_base64(make_server):
    async with Client(make_server()) as client:
        source = (await client.call_tool("generate_image", {"prompt": "a red square", "seed": 3})).structured_content
        uri = source["images"][0]["uri"]
        data, _ = await read_bytes(client, uri)
        original = Image.open(io.BytesIO(data)).convert("RGB")

        img2img = await client.call_tool("edit", {"image": uri, "prompt": "a blue square", "strength": 0.5,
                                                  "seed": 9})
        out = img2img.structured_content
        assert out["kind"] == "edit" and out["images"][0]["seed"] == 9
        edited, _ = await read_bytes(client, out["images"][0]["uri"])
        meta = json.loads(Image.open(io.BytesIO(edited)).text[PNG_TEXT_KEY])
        assert meta["strength"] == 0.5 and meta["input_image"] == uri

        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (32, 0, 64, 64))  # repaint the right half only
        mask_url = "data:image/png;base64," + base64.b64encode(png_bytes(mask)).decode()
        image_b64 = base64.b64encode(data).decode()
        inpaint = await client.call_tool("edit", {"image": image_b64, "mask": mask_url, "mode": "inpaint",
                                                  "prompt": "a blue square", "strength": 1.0})
        assert not inpaint.is_error, inpaint.content[0].text
        painted_bytes, _ = await read_bytes(client, inpaint.structured_content["images"][0]["uri"])
        painted = Image.open(io.BytesIO(painted_bytes)).convert("RGB")
        assert painted.crop((0, 0, 32, 64)).tobytes() == original.crop((0, 0, 32, 64)).tobytes()
        assert painted.crop((32, 0, 64, 64)).tobytes() != original.crop((32, 0, 64, 64)).tobytes()


@pytest.mark.anyio
async def test_generate_video_returns_a_contact_sheet_and_video_links(make_server):
    async with Client(make_server()) as client:
        result = await client.call_tool("generate_video", {"prompt": "a blue square moving right", "frames": 8,
                                                           "fps": 4, "seed": 2, "score": True})
        report = result.structured_content
        assert report["status"] == "done"
        (video,) = report["videos"]
        assert (video["frames"], video["fps"], video["seed"]) == (8, 4, 2)
        assert video["clip_score"] is not None
        (sheet_preview,) = blocks(result, "image")
        sheet = decode_image(sheet_preview)
        assert sheet.width > sheet.height and max(sheet.size) <= 512
        mimes = {str(link.uri): link.mime_type for link in blocks(result, "resource_link")}
        assert mimes == {video["uri"]: "video/mp4", video["gif_uri"]: "image/gif",
                         video["contact_sheet_uri"]: "image/png"}
        mp4, mime = await read_bytes(client, video["uri"])
        assert mime == "video/mp4" and mp4[4:8] == b"ftyp"
        gif, _ = await read_bytes(client, video["gif_uri"])
        assert Image.open(io.BytesIO(gif)).n_frames == 8

        judged = await client.call_tool("evaluate", {"images": [video["uri"]], "prompt": "a blue square"})
        (clip,) = judged.structured_content["videos"]
        assert clip["frames"] == 8 and clip["temporal_flicker"] is not None


@pytest.mark.anyio
async def test_evaluate_scores_images_against_the_prompt(make_server):
    async with Client(make_server()) as client:
        made = (await client.call_tool("generate_image", {"prompt": "a red square", "seed": 11, "num_images": 3})
                ).structured_content
        uris = [im["uri"] for im in made["images"]]
        result = await client.call_tool("evaluate", {"images": uris, "prompt": "a red square"})
        assert not result.is_error
        report = result.structured_content
        expected = [colour_share(pattern(s, "a red square", 64, 64), "a red square") for s in (11, 12, 13)]
        assert [im["clip_score"] for im in report["images"]] == pytest.approx(expected, abs=1e-3)
        assert report["mean_clip_score"] == pytest.approx(sum(expected) / 3, abs=1e-3)
        assert report["scorer"] == "colour-share"


@pytest.mark.anyio
async def test_list_models_and_an_empty_registry(make_server):
    from lanterna.engines.registry import ModelRegistry

    async with Client(make_server()) as client:
        listed = (await client.call_tool("list_models", {})).structured_content
        models = {m["name"]: m for m in listed["models"]}
        assert models["pattern"]["default_for"] == ["t2i"] and models["pattern-video"]["default_for"] == ["t2v"]
        assert models["pattern"]["native_width"] == 64 and models["pattern"]["samplers"] == ["euler", "heun"]
        assert "red" in models["pattern"]["vocabulary"] and "<pad>" not in models["pattern"]["vocabulary"]
        assert models["pattern-video"]["max_frames"] == 16
        assert listed["scorers"] == [{"name": "colour-share", "default": True}]
    async with Client(make_server(ModelRegistry())) as client:
        empty = (await client.call_tool("list_models", {})).structured_content
        assert empty["models"] == [] and "No models are installed" in empty["note"]
        refused = await client.call_tool("generate_image", {"prompt": "a red square"})
        assert refused.is_error and "no models are installed" in refused.content[0].text


@pytest.mark.anyio
async def test_prompts_render_with_the_models_facts(make_server):
    async with Client(make_server()) as client:
        drawn = await client.get_prompt("what_can_this_model_draw", {"model": "pattern"})
        text = drawn.messages[0].content.text
        assert "closed vocabulary of 18 words" in text and "circle" in text and "`pattern`" in text
        iterate = await client.get_prompt("iterate_on_image", {"goal": "a red circle", "target_score": "40"})
        text = iterate.messages[0].content.text
        assert "a red circle" in text and "at least 40" in text and "evaluate" in text and "{" not in text
        story = await client.get_prompt("storyboard", {"story": "a ball rolls away"})
        assert "pattern-video" in story.messages[0].content.text


@pytest.mark.anyio
async def test_resources_list_newest_outputs(make_server):
    async with Client(make_server()) as client:
        made = (await client.call_tool("generate_image", {"prompt": "a red square", "seed": 1})).structured_content
        listed = await client.list_resources()
        assert made["images"][0]["uri"] in [str(r.uri) for r in listed.resources]


@pytest.mark.anyio
async def test_evaluate_set_metrics_match_the_evaluation_library(make_server, tmp_path):
    import torch

    from lanterna.evaluation import sets
    from lanterna.evaluation.features import ModuleFeatures, register_feature_extractor

    def colour_stats(images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), x.amax((2, 3)) - x.amin((2, 3))], dim=1)

    register_feature_extractor("test-colour-stats", lambda: ModuleFeatures("test-colour-stats", colour_stats))
    reference_dir = tmp_path / "inputs" / "reference"
    reference_dir.mkdir()
    reference = [pattern(500 + i, "a blue square", 64, 64) for i in range(10)]
    for i, image in enumerate(reference):
        image.save(reference_dir / f"{i:02d}.png")
    async with Client(make_server()) as client:
        made = (await client.call_tool("generate_image", {"prompt": "a red square", "seed": 40, "num_images": 8})
                ).structured_content
        uris = [im["uri"] for im in made["images"]]
        result = await client.call_tool("evaluate", {"images": uris, "metrics": ["fid", "kid", "precision_recall"],
                                                     "reference": [str(reference_dir)],
                                                     "features": "test-colour-stats"})
        assert not result.is_error, result.content[0].text
        got = result.structured_content["set_metrics"]
        # 8 generated images against 9 features: the report says FID needs 10 or more.
        assert any("at least 10 images" in w for w in result.structured_content["warnings"])
        generated = [Image.open(io.BytesIO((await read_bytes(client, uri))[0])).convert("RGB") for uri in uris]
    extractor = ModuleFeatures("test-colour-stats", colour_stats)
    assert (got["generated_count"], got["reference_count"]) == (8, 10)
    assert got["fid"] == pytest.approx(sets.compute_fid(reference, generated, features=extractor, cache=False),
                                       rel=1e-4, abs=1e-4)
    kid = sets.compute_kid(reference, generated, features=extractor, cache=False)
    assert got["kid"] == pytest.approx(kid.mean, rel=1e-4, abs=1e-6)
    pr = sets.compute_precision_recall(reference, generated, features=extractor, k=3, cache=False)
    assert (got["precision"], got["recall"]) == pytest.approx((pr.precision, pr.recall))
    assert got["fid"] > 0


@pytest.mark.anyio
async def test_evaluate_gives_shapes_world_verdicts(make_server):
    world = pytest.importorskip("lanterna.world")
    import numpy as np

    from lanterna.world.layout import layout

    scene = layout(np.random.default_rng(3), world.parse_caption("a red circle to the left of a blue square"))
    picture = Image.fromarray(world.render(scene))
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode()
    async with Client(make_server()) as client:
        right = await client.call_tool("evaluate", {"images": [data_url],
                                                    "prompt": "a red circle to the left of a blue square"})
        verdict = right.structured_content["images"][0]["verdict"]
        assert verdict["passed"] and verdict["failures"] == [] and right.structured_content["verdicts_passed"] == 1
        assert any(c["requirement"].startswith("red circle left of") for c in verdict["checks"])
        wrong = await client.call_tool("evaluate", {"images": [data_url], "prompt": "a green triangle",
                                                    "metrics": ["verdict"]})
        verdict = wrong.structured_content["images"][0]["verdict"]
        assert not verdict["passed"] and any("green triangle" in f for f in verdict["failures"])
        free = await client.call_tool("evaluate", {"images": [data_url], "prompt": "a cat on a sofa"})
        assert "verdict" not in free.structured_content["images"][0]
        assert any("not a Shapes World caption" in w for w in free.structured_content["warnings"])
