"""`lanterna serve` as a real subprocess: over stdio (what desktop clients spawn) and over streamable
HTTP on loopback with a bearer token, Host/Origin checks, and the refusal to listen beyond loopback
without a token. The subprocesses serve the test-double registry from tests/_engines.py."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REGISTRY = "tests._engines:test_registry"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def lanterna_command() -> list[str]:
    script = Path(sys.executable).with_name("lanterna")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lanterna.cli"]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANTERNA_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@pytest.mark.anyio
async def test_stdio_subprocess_serves_tools_progress_and_resources(tmp_path):
    command = lanterna_command()
    params = StdioServerParameters(
        command=command[0],
        args=[*command[1:], "serve", "--registry-module", REGISTRY, "--output-dir", str(tmp_path / "out")],
        env={"PYTHONPATH": str(REPO)}, cwd=str(REPO))
    updates = []

    async def on_progress(progress, total, message):
        updates.append(message)

    async with Client(params, read_timeout_seconds=60) as client:
        assert client.server_info.name == "lanterna"
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"generate_image", "get_job", "list_models"} <= tools
        result = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 7},
                                        progress_callback=on_progress)
        report = result.structured_content
        assert report["status"] == "done" and report["images"][0]["seed"] == 7
        assert [m for m in updates if m.startswith("step")] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
        read = await client.read_resource(report["images"][0]["uri"])
        image = Image.open(io.BytesIO(base64.b64decode(read.contents[0].blob)))
        assert image.size == (64, 64) and read.contents[0].mime_type == "image/png"
        assert (tmp_path / "out" / report["images"][0]["uri"].rsplit("/", 1)[1]).exists()

        bad = await client.call_tool("generate_image", {"prompt": "a red square", "sampler": "nope"})
        assert bad.is_error and "euler, heun" in bad.content[0].text
        late = await client.call_tool("generate_image", {"prompt": "a red square", "steps": 30, "wait_seconds": 0})
        assert late.structured_content["status"] == "running"
        done = await client.call_tool("get_job", {"job_id": late.structured_content["job_id"], "wait_seconds": 30})
        assert done.structured_content["status"] == "done"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("server did not start")


@pytest.fixture
def http_server(tmp_path):
    port = free_port()
    token = "s3cret-token"
    process = subprocess.Popen(
        [*lanterna_command(), "serve", "--http", "--port", str(port), "--output-dir", str(tmp_path / "out")],
        env=child_env(LANTERNA_TOKEN=token, LANTERNA_REGISTRY=REGISTRY), cwd=str(REPO),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/mcp", token
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stdout.read() == b""  # nothing but the protocol (none over HTTP) on stdout


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "test", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.mark.anyio
async def test_http_requires_the_token_checks_origin_and_serves(http_server):
    url, token = http_server
    with httpx.Client(timeout=10) as raw:
        assert raw.post(url, json=INITIALIZE, headers=MCP_HEADERS).status_code == 401
        wrong = raw.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "invalid_token" in wrong.text
        authed = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
        foreign = raw.post(url, json=INITIALIZE, headers={**authed, "Origin": "http://evil.example"})
        assert foreign.status_code == 403
        rebinding = raw.post(url, json=INITIALIZE, headers={**authed, "Host": "evil.example"})
        assert rebinding.status_code == 421
        local = raw.post(url, json=INITIALIZE, headers={**authed, "Origin": url.rsplit("/", 1)[0]})
        assert local.status_code == 200

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            updates = []

            async def on_progress(progress, total, message):
                updates.append(message)

            result = await client.call_tool("generate_image", {"prompt": "a blue square", "seed": 3},
                                            progress_callback=on_progress)
            report = result.structured_content
            assert report["status"] == "done" and "step 4/4" in updates
            read = await client.read_resource(report["images"][0]["uri"])
            assert read.contents[0].mime_type == "image/png"
            bad = await client.call_tool("generate_image", {"prompt": "a blue square", "steps": 0})
            assert bad.is_error and "greater than or equal to 1" in bad.content[0].text
            again = await client.call_tool("list_models", {})
            assert {m["name"] for m in again.structured_content["models"]} >= {"pattern", "pattern-video"}


def test_http_beyond_loopback_without_a_token_refuses_to_start(tmp_path):
    started = time.monotonic()
    done = subprocess.run(
        [*lanterna_command(), "serve", "--http", "--host", "0.0.0.0", "--port", str(free_port()),
         "--output-dir", str(tmp_path / "out")],
        env=child_env(LANTERNA_REGISTRY=REGISTRY), cwd=str(REPO), capture_output=True, timeout=60)
    assert done.returncode == 2
    assert b"bearer token is required" in done.stderr and done.stdout == b""
    assert time.monotonic() - started < 30


def test_one_shot_generate_writes_the_file_and_prints_a_summary(tmp_path):
    target = tmp_path / "red.png"
    done = subprocess.run(
        [*lanterna_command(), "generate", "a red square", "-o", str(target), "--seed", "4", "--num-images", "2",
         "--registry-module", REGISTRY, "--output-dir", str(tmp_path / "out")],
        env=child_env(), cwd=str(REPO), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert [im["seed"] for im in summary["images"]] == [4, 5]
    written = [Path(p) for p in summary["written"]]
    assert [p.name for p in written] == ["red_1.png", "red_2.png"]
    from tests._engines import pattern

    assert Image.open(written[1]).convert("RGB").tobytes() == pattern(5, "a red square", 64, 64).tobytes()
    bad = subprocess.run(
        [*lanterna_command(), "generate", "a red square", "-o", str(target), "--steps", "0",
         "--registry-module", REGISTRY, "--output-dir", str(tmp_path / "out")],
        env=child_env(), cwd=str(REPO), capture_output=True, timeout=60)
    assert bad.returncode == 2 and b"steps" in bad.stderr and bad.stdout == b""
