"""Hostile input: every tool's arguments, input images and resource URIs.

Property-based over each tool's own input schema (values the schema admits, values it does not,
unknown and missing keys), plus the named cases: sizes, steps and counts past their caps, NaN and
Inf, huge prompts and control characters, unknown names, paths out of the allowed folders,
non-images, truncated files, decompression bombs (stills and animations), mismatched masks and
resource URIs that do not exist or try to leave the output root. Every call must end in a result
or a tool error with a message: never an exception, a hang, a traceback in the text, or a dead
worker. The raw JSON-RPC forms of NaN are sent over HTTP in test_reliability_http.py.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.shared.exceptions import MCPError
from PIL import Image

from lanterna.config import Settings
from lanterna.engines.registry import ModelRegistry
from lanterna.server.app import create_server
from lanterna.server.media import PNG_TEXT_KEY
from tests._engines import ColourScorer, PatternEngine, pattern

CALL_TIMEOUT = 60  # seconds; generous for a loaded machine, short of a hang
PROPERTY = settings(max_examples=25, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture
def anyio_backend():
    return "asyncio"


def fast_registry() -> ModelRegistry:
    """The test-double engines without their per-step sleep: hostile calls that get through run at once."""
    registry = ModelRegistry()
    registry.add_engine("pattern", lambda: PatternEngine("pattern", seconds_per_step=0.0))
    registry.add_engine("pattern-video", lambda: PatternEngine("pattern-video", capabilities=("t2v",),
                                                               seconds_per_step=0.0))
    registry.add_engine("nan-engine", lambda: PatternEngine("nan-engine", failure="nan", seconds_per_step=0.0))
    registry.add_engine("crashy", lambda: PatternEngine("crashy", failure="crash", seconds_per_step=0.0))
    registry.add_scorer("colour-share", ColourScorer)
    registry.default_image_model, registry.default_video_model = "pattern", "pattern-video"
    registry.default_scorer = "colour-share"
    return registry


def png_bytes(image: Image.Image, **save: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **save)
    return out.getvalue()


def gif_bytes(frames: list[Image.Image]) -> bytes:
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], loop=0, duration=50)
    return out.getvalue()


def flat_frames(side: int, count: int) -> list[Image.Image]:
    """Alternating black and white palette frames: they compress to almost nothing."""
    frames = []
    for i in range(count):
        frame = Image.new("P", (side, side), i % 2)
        frame.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        frames.append(frame)
    return frames


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


class Files:
    """Inputs for the edit and evaluate cases, inside and outside the allowed folder."""

    def __init__(self, root: Path) -> None:
        self.allowed = root / "inputs"
        self.allowed.mkdir(parents=True)
        self.outside = root / "private"
        self.outside.mkdir()
        good = png_bytes(pattern(1, "a red square", 64, 64))
        self.good = self.write("good.png", good)
        self.mask_other_size = self.write("mask32.png", png_bytes(Image.new("L", (32, 32), 255)))
        self.text = self.write("notes.png", b"this is not an image, whatever its name says")
        self.truncated = self.write("truncated.png", good[: len(good) // 2])
        # 20000 x 20000 one-bit pixels of one colour: about 50 kB on disk, 1.2 GB as RGB.
        self.bomb = self.write("bomb.png", png_bytes(Image.new("1", (20000, 20000), 1), optimize=True))
        self.secret = self.outside / "secret.png"
        self.secret.write_bytes(good)
        (self.allowed / "link.png").symlink_to(self.secret)
        (self.allowed / "escape").symlink_to(self.outside, target_is_directory=True)
        self.link = self.allowed / "link.png"

    def write(self, name: str, data: bytes) -> Path:
        path = self.allowed / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    return Files(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def server(files):
    server = create_server(Settings(output_dir=files.allowed.parent / "outputs", allow_dirs=[files.allowed],
                                    queue_size=4), fast_registry())
    yield server
    server.runtime.close()


# ---- what every answer must look like ----

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")


def texts(result) -> list[str]:
    return [block.text for block in result.content if block.type == "text"]


def check_answer(result, tool: str) -> None:
    """A result, or a tool error whose first text says what went wrong; no traceback anywhere."""
    for text in texts(result):
        assert not TRACEBACK.search(text), text[:500]
    if result.is_error:
        message = texts(result)[0]
        detail = message.split(f"Error executing tool {tool}", 1)[-1].lstrip(": ")
        assert re.search(r"[a-z]{3}", detail), f"{tool} answered an error without a message: {message!r}"
        # Input quoted back is escaped: no terminal escapes or bidi overrides reach the reader.
        assert all(c.isprintable() or c in "\n\t" for c in message), repr(message[:300])
        return
    report = result.structured_content
    assert isinstance(report, dict), texts(result)
    if tool in ("generate_image", "generate_video", "edit", "get_job"):
        assert report["status"] in ("done", "running", "cancelled"), report


async def call(client: Client, tool: str, arguments: Any):
    with anyio.fail_after(CALL_TIMEOUT):
        return await client.call_tool(tool, arguments)


def call_once(server, tool: str, arguments: Any, mode: str = "auto"):
    async def run():
        async with Client(server, mode=mode) as client:
            return await call(client, tool, arguments)

    return anyio.run(run)


def assert_workers_alive(server) -> None:
    anyio.run(workers_alive, server)


async def workers_alive(server) -> None:
    """Every engine's worker thread is alive, and a plain request still gets its images."""
    for queue in server.runtime.jobs.queues.values():
        assert queue.thread.is_alive(), f"the worker of {queue.name} died"
    async with Client(server) as client:
        result = await call(client, "generate_image", {"prompt": "a red square", "seed": 1, "wait_seconds": 30})
    assert result.structured_content["status"] == "done", texts(result)


# ---- property-based: arguments from each tool's own schema, and arguments outside it ----

def from_schema(schema: dict[str, Any], likely: dict[str, st.SearchStrategy] | None = None) -> st.SearchStrategy:
    """Instances of the JSON-schema subset pydantic writes for the tools' arguments.

    `likely` adds values per property name (real files, job ids, model names) that random
    strings would never hit, so the calls also get past the first check.
    """
    likely = likely or {}
    if "anyOf" in schema:
        return st.one_of([from_schema(option) for option in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        required = set(schema.get("required", ()))
        values = {k: st.one_of(likely[k], from_schema(v)) if k in likely else from_schema(v)
                  for k, v in properties.items()}
        return st.fixed_dictionaries({k: v for k, v in values.items() if k in required},
                                     optional={k: v for k, v in values.items() if k not in required})
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength", 100_000)
        longest = st.sampled_from(["a", " ", "\x00", "\u202e", "/", "é"]).map(lambda c: c * high)
        return st.one_of(st.text(min_size=low, max_size=min(high, max(low, 40))), longest)
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        edges = [v for v in (low, high) if v is not None]
        return st.one_of(st.integers(low, high), *([st.sampled_from(edges)] if edges else []))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", 4), max(low, 4))
        return st.lists(from_schema(schema.get("items", {})), min_size=low, max_size=high)
    if kind == "null":
        return st.none()
    return ANY_JSON


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


def outside_schema(schema: dict[str, Any], likely: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Schema-valid arguments with some values replaced by any JSON, unknown keys added, required ones dropped."""
    keys = sorted(schema.get("properties", {}))

    @st.composite
    def mutated(draw):
        arguments = dict(draw(from_schema(schema, likely)))
        for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)) if keys else []:
            arguments[key] = draw(ANY_JSON)
        if draw(st.booleans()):
            arguments[draw(st.text(min_size=1, max_size=12))] = draw(ANY_JSON)
        for key in schema.get("required", ()):
            if draw(st.integers(0, 4)) == 0:
                arguments.pop(key, None)
        return arguments

    return mutated()


TOOL_NAMES = ["generate_image", "generate_video", "edit", "evaluate", "get_job", "cancel_job", "list_models"]


@pytest.fixture(scope="module")
def likely(server, files) -> dict[str, st.SearchStrategy]:
    """Real sources, job ids and names, next to the hostile ones, for the property tests to draw from."""
    async def made():
        async with Client(server) as client:
            result = await call(client, "generate_image", {"prompt": "a red square", "seed": 8})
            return result.structured_content

    report = anyio.run(made)
    good = files.good.read_bytes()
    readable = st.sampled_from([str(files.good), data_url(good), base64.b64encode(good).decode(),
                                report["images"][0]["uri"]])
    hostile = st.sampled_from([str(files.bomb), str(files.truncated), str(files.text), str(files.link), "/etc/passwd",
                               str(files.allowed / ".." / "private" / "secret.png"), "https://example.com/a.png",
                               str(files.allowed)])
    sources = readable | hostile
    some = st.lists(readable, min_size=1, max_size=3) | st.lists(sources, min_size=1, max_size=3)
    return {
        "image": sources, "mask": sources, "images": some, "reference": some,
        "job_id": st.sampled_from([report["job_id"], "job-1-00000000"]),
        "model": st.sampled_from(["pattern", "pattern-video", "nan-engine", "crashy"]),
        "sampler": st.sampled_from(["euler", "heun"]),
        "prompt": st.sampled_from(["a red square", "a blue circle moving left"]),
        "width": st.sampled_from([8, 64, 128]), "height": st.sampled_from([8, 64, 128]),
        "frames": st.integers(1, 16), "steps": st.integers(1, 8), "wait_seconds": st.floats(0, 5),
    }


@pytest.fixture(scope="module")
def schemas(server) -> dict[str, dict]:
    async def listed():
        async with Client(server) as client:
            return {t.name: t.input_schema for t in (await client.list_tools()).tools}

    found = anyio.run(listed)
    assert sorted(found) == sorted(TOOL_NAMES)
    return found


@pytest.mark.parametrize("tool", TOOL_NAMES)
def test_arguments_the_schema_admits_get_a_result_or_a_tool_error(server, schemas, likely, tool):
    answers = {"ok": 0, "error": 0}

    @PROPERTY
    @given(arguments=from_schema(schemas[tool], likely))
    def check(arguments):
        result = call_once(server, tool, arguments)
        check_answer(result, tool)
        answers["error" if result.is_error else "ok"] += 1

    check()
    assert sum(answers.values()) >= 1
    if tool.startswith("generate"):
        assert answers["ok"] >= 5, answers  # the valid calls really ran, not only the refusals
    assert_workers_alive(server)


@pytest.mark.parametrize("tool", TOOL_NAMES)
def test_arguments_outside_the_schema_get_a_tool_error_not_a_crash(server, schemas, likely, tool):
    @PROPERTY
    @given(arguments=outside_schema(schemas[tool], likely))
    def check(arguments):
        check_answer(call_once(server, tool, arguments), tool)

    check()
    assert_workers_alive(server)


# ---- the named cases ----

MODES = ["auto", "legacy"]  # in memory, and the real JSON-RPC path


def generate(**arguments: Any) -> tuple[str, dict]:
    return "generate_image", {"prompt": "a red square", **arguments}


ARGUMENT_CASES = [
    (generate(width=0), ["width", "greater than or equal to 8"]),
    (generate(height=0), ["height", "greater than or equal to 8"]),
    (generate(width=10**6), ["width", "less than or equal to 4096"]),
    (generate(height=10**6, width=10**6), ["height", "width"]),
    (generate(width=60), ["width", "multiples of 8"]),
    (generate(height=100), ["height", "multiples of 8"]),
    (generate(steps=0), ["steps", "greater than or equal to 1"]),
    (generate(steps=10**6), ["steps", "less than or equal to 200"]),
    (generate(num_images=9), ["num_images", "less than or equal to 8"]),
    (generate(best_of=17), ["best_of", "less than or equal to 16"]),
    (generate(num_images=4, best_of=2), ["best_of", "num_images"]),
    (generate(guidance=1e308), ["guidance", "less than or equal to 30"]),
    (generate(guidance=-1), ["guidance", "greater than or equal to 0"]),
    (generate(seed=2**64), ["seed"]),
    (generate(seed=2**31 - 1, num_images=2), ["seed", "at most 2147483646"]),  # seed+1 could not be sent back
    (generate(seed=2**31 - 8, num_images=1, best_of=16), ["seed", "at most 2147483632"]),
    (("generate_image", {"prompt": ""}), ["prompt", "at least 1 character"]),
    (("generate_image", {"prompt": "x" * 10**6}), ["prompt", "at most 2000 characters"]),
    (("generate_image", {}), ["prompt", "required"]),
    (generate(model="no-such-model"), ["no-such-model", "pattern"]),
    (generate(sampler="no-such-sampler"), ["no-such-sampler", "euler, heun"]),
    (generate(backend="no-such-backend"), ["backend", "'torch', 'onnx' or 'auto'"]),
    (("generate_video", {"prompt": "a red square", "frames": 17}), ["at most 16 frames"]),
    (("generate_video", {"prompt": "a red square", "frames": 10**6}), ["frames", "less than or equal to 256"]),
    (("generate_video", {"prompt": "a red square", "frames": 0}), ["frames", "greater than or equal to 1"]),
    (("generate_video", {"prompt": "a red square", "steps": 0}), ["steps"]),
    (("edit", {"image": "x", "prompt": "a red square", "num_images": 9}), ["num_images"]),
    (("edit", {"image": "x", "prompt": "a red square", "strength": 1.5}), ["strength"]),
    (("get_job", {"job_id": "job-1-nope"}), ["no job"]),
    (("cancel_job", {"job_id": "job-2-nope"}), ["no job"]),
    (("cancel_job", {"job_id": "x" * 10**4}), ["job_id", "at most 100"]),
]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_named_argument_cases_answer_what_is_allowed(server, mode):
    async with Client(server, mode=mode) as client:
        for (tool, arguments), needles in ARGUMENT_CASES:
            result = await call(client, tool, arguments)
            check_answer(result, tool)
            text = texts(result)[0]
            assert result.is_error, (tool, str(arguments)[:100], text[:200])
            for needle in needles:
                assert needle in text, (tool, str(arguments)[:100], text[:300])
            assert len(text) < 2000  # a 10^6-character argument is not echoed back
            assert "job-" not in text.replace(str(arguments.get("job_id")), "")  # no other client's job id
    await workers_alive(server)


@pytest.mark.anyio
async def test_nan_and_inf_never_reach_an_engine(server):
    engine = server.runtime.registry.engine("pattern")
    runs = engine.runs
    # Straight into the server's Python API: the float itself arrives.
    for field, value in (("guidance", math.nan), ("guidance", math.inf), ("guidance", -math.inf),
                         ("wait_seconds", math.nan)):
        for tool, arguments in (("generate_image", {"prompt": "a red square"}),
                                ("generate_video", {"prompt": "a red square"})):
            with pytest.raises(Exception) as refused:
                await server.call_tool(tool, {**arguments, field: value})
            assert field in str(refused.value) and "Traceback" not in str(refused.value)
    with pytest.raises(Exception, match="strength"):
        await server.call_tool("edit", {"image": "x", "prompt": "a", "strength": math.nan})
    assert engine.runs == runs
    # Through the client's Python API NaN cannot be sent as JSON: it arrives as null, which means
    # "the model's default", so the call succeeds with a finite guidance.
    async with Client(server) as client:
        result = await call(client, "generate_image", {"prompt": "a red square", "guidance": math.nan, "seed": 3})
        check_answer(result, "generate_image")
        if not result.is_error:
            assert math.isfinite(result.structured_content["params"]["guidance"])
        strength = await call(client, "edit", {"image": "x", "prompt": "a", "strength": math.inf})
        assert strength.is_error and "strength" in texts(strength)[0]
        for value in ("NaN", "Infinity", "-inf", "nan"):
            as_string = await call(client, "generate_image", {"prompt": "a red square", "guidance": value})
            assert as_string.is_error and "guidance" in texts(as_string)[0], value


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_control_characters_in_prompts_are_kept_verbatim(server, mode):
    prompt = "a red\x00 square\x1b[2J\u202e\r\n\t\x7f"
    async with Client(server, mode=mode) as client:
        result = await call(client, "generate_image", {"prompt": prompt, "negative_prompt": "\x00" * 2000,
                                                       "seed": 4})
        check_answer(result, "generate_image")
        assert result.structured_content["status"] == "done"
        read = await client.read_resource(result.structured_content["images"][0]["uri"])
        stored = Image.open(io.BytesIO(base64.b64decode(read.contents[0].blob)))
        assert json.loads(stored.text[PNG_TEXT_KEY])["prompt"] == prompt
        assert any("does not know" in w for w in result.structured_content["warnings"])


def image_cases(files: Files) -> list[tuple[tuple[str, dict], list[str]]]:
    def edit(image: str, **more: Any) -> tuple[str, dict]:
        return "edit", {"image": image, "prompt": "a blue square", **more}

    allowed = str(files.allowed)
    dotdot = str(files.allowed / ".." / "private" / "secret.png")
    tiff_out = io.BytesIO()
    pattern(1, "a red square", 64, 64).save(tiff_out, format="TIFF")
    tiff = tiff_out.getvalue()
    animated = gif_bytes(flat_frames(64, 40))  # 163,840 pixels over 40 frames: past the server's 5,000
    return [
        (edit("/etc/passwd"), ["outside the allowed folders", allowed]),
        (edit("/etc/no-such-file"), ["outside the allowed folders"]),  # same answer: no existence oracle
        (edit(dotdot), ["outside the allowed folders"]),
        (edit(allowed + "/../../../../../../etc/passwd"), ["outside the allowed folders"]),
        (edit(str(files.link)), ["outside the allowed folders"]),
        (edit(str(files.allowed / "escape" / "secret.png")), ["outside the allowed folders"]),
        (edit("~/../../etc/passwd"), ["outside the allowed folders"]),
        (edit(str(files.allowed / "missing.png")), ["no such file"]),
        (edit(allowed + "/\x00.png"), ["no such file"]),
        (edit(allowed), ["not a file"]),
        (edit("https://example.com/cat.png"), ["not fetched"]),
        (edit("file:///etc/passwd"), ["not fetched"]),
        (edit("ftp://127.0.0.1/x.png"), ["not fetched"]),
        (edit(str(files.text)), ["not an image", "PNG"]),
        (edit(data_url(tiff, "image/tiff")), ["not an image", "PNG"]),  # only the accepted decoders ever run
        (edit(str(files.truncated)), ["truncated or corrupt"]),
        (edit(str(files.bomb)), ["too large", "pixels"]),
        (edit(data_url(files.bomb.read_bytes())), ["too large", "pixels"]),
        (edit("data:text/plain;base64,aGVsbG8="), ["only image data"]),
        (edit("data:image/png;base64,@@@@"), ["not valid base64"]),
        (edit("data:image/png;base64," + "A" * 3_000_000), ["byte limit"]),
        (edit(str(files.good), mode="inpaint", mask=str(files.mask_other_size)), ["mask", "32x32", "64x64"]),
        (edit(str(files.good), mode="inpaint"), ["mask", "needs a mask"]),
        (edit(str(files.good), mask=str(files.good)), ["mask", "only used with mode 'inpaint'"]),
        (edit("lanterna://outputs/../../etc/passwd"), ["not an output name"]),
        (edit("lanterna://outputs/0123456789abcdef.png"), ["does not exist"]),
        (("evaluate", {"images": [str(files.bomb)], "prompt": "a red square"}), ["too large"]),
        (("evaluate", {"images": ["/etc/passwd"], "prompt": "a red square"}), ["outside the allowed folders"]),
        (("evaluate", {"images": [data_url(animated, "image/gif")], "prompt": "a red square"}),
         ["video too large", "5000 pixels"]),
        (("evaluate", {"images": [str(files.good)] * 5, "prompt": "a red square"}),  # 5 x 4096 > 4 x 5000
         ["add up to more than 20000 pixels"]),
        (("evaluate", {"images": [str(files.good)] * 2, "metrics": ["fid"], "reference": ["/etc"]}),
         ["reference[0]", "outside the allowed folders"]),
        (("evaluate", {"images": [str(files.good)] * 2, "metrics": ["fid"],
                       "reference": [str(files.allowed / "escape")]}), ["outside the allowed folders"]),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_named_image_cases_are_refused_with_a_reason(files, tmp_path, mode):
    # Small limits so bombs and budgets are cheap to build; 64 x 64 inputs stay well inside them.
    server = create_server(Settings(output_dir=tmp_path / "outputs", allow_dirs=[files.allowed],
                                    max_input_pixels=5000, max_input_bytes=2_000_000), fast_registry())
    try:
        async with Client(server, mode=mode) as client:
            for (tool, arguments), needles in image_cases(files):
                result = await call(client, tool, arguments)
                check_answer(result, tool)
                text = texts(result)[0]
                assert result.is_error, (tool, str(arguments)[:200], text[:300])
                for needle in needles:
                    assert needle in text, (tool, str(arguments)[:200], text[:400])
            ok = await call(client, "edit", {"image": str(files.good), "prompt": "a blue square", "seed": 2})
            assert ok.structured_content["status"] == "done", texts(ok)
        assert server.runtime.registry.engine("pattern").runs == 1  # nothing hostile reached the engine
    finally:
        server.runtime.close()


def test_an_animated_bomb_is_small_on_disk_and_refused_at_the_default_limits(files, tmp_path):
    """A GIF of 16 frames of 2000 x 2000 is a few tens of kB and 64 M pixels: past the default 50 M."""
    bomb = gif_bytes(flat_frames(2000, 16))
    assert len(bomb) < 200_000
    server = create_server(Settings(output_dir=tmp_path / "outputs", allow_dirs=[files.allowed]), fast_registry())
    try:
        result = call_once(server, "evaluate", {"images": [data_url(bomb, "image/gif")], "prompt": "a red square"})
        assert result.is_error, texts(result)
        assert "video too large" in texts(result)[0] and "50000000 pixels" in texts(result)[0]
    finally:
        server.runtime.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_resource_uris_that_do_not_exist_or_leave_the_root_are_not_found(server, files, mode):
    root = server.runtime.store.root
    planted = root / "00000000000000aa.png"  # a link with an output's name, pointing out of the root
    if not planted.is_symlink():
        planted.symlink_to(files.secret)
    bad = ["lanterna://outputs/0123456789abcdef.png", "lanterna://outputs/../../etc/passwd",
           "lanterna://outputs/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "lanterna://outputs//etc/passwd",
           "lanterna://outputs/..", "lanterna://outputs/", "lanterna://outputs/0123456789abcdef.png/../x",
           "lanterna://outputs/00000000000000aa.png", "lanterna://outputs/" + "a" * 10_000,
           "lanterna://outputs/0123456789ABCDEF.png", "file:///etc/passwd", "lanterna://elsewhere/x"]
    async with Client(server, mode=mode) as client:
        for uri in bad:
            with anyio.fail_after(CALL_TIMEOUT):
                with pytest.raises((MCPError, ValueError)) as refused:
                    await client.read_resource(uri)
            message = str(refused.value)
            assert message and not TRACEBACK.search(message), (uri, message)
            assert "root:" not in message  # nothing of /etc/passwd
        listed = [str(r.uri) for r in (await client.list_resources()).resources]
        assert "lanterna://outputs/00000000000000aa.png" not in listed
