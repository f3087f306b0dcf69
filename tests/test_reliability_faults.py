"""Faults: clients that vanish mid-generation, engines that fail, processes killed while writing.

- An HTTP client whose connection drops, or a stdio client that closes the pipe, frees the
  engine at its next step (the job is cancelled: nobody could collect its answer).
- An engine that raises, or returns NaN or all-black pictures, ends its job `failed` with the
  reason, and the same worker runs the next job.
- A write interrupted between the temp file and the rename (an injected failure, or SIGKILL of
  the writing process) leaves no partial file among the outputs; a server started again on the
  same folder removes the orphaned temp files and serves every output that was whole.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from lanterna.config import Settings
from lanterna.server import store as store_module
from lanterna.server.app import create_server
from lanterna.server.store import NAME_PATTERN, TEMP_PREFIX
from tests.test_reliability_http import RawSession, http_server, server_env
from tests.test_reliability_inputs import fast_registry
from tests.test_server_transports import REPO, lanterna_command

LONG_STEPS = 200
STEP_SECONDS = 0.1  # a long job takes 20 s: far longer than any wait below


@pytest.fixture
def anyio_backend():
    return "asyncio"


def stream_until_step(session: RawSession, arguments: dict, step: int) -> None:
    """POST a tools/call, read its progress stream up to `step`, then drop the connection."""
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "generate_image", "arguments": arguments, "_meta": {"progressToken": "p"}}}
    with session.http.stream("POST", session.url, json=body, headers=session.headers) as response:
        for line in response.iter_lines():
            if f'"step {step}/' in line:
                break
        else:
            raise AssertionError("the progress stream ended early")
    session.http.close()  # the client is gone: no cancel notification, just a closed connection


def sidecar_seeds(output_dir: Path) -> list[int]:
    seeds = (json.loads(p.read_text()).get("seed") for p in output_dir.glob("*.json"))
    return sorted(seed for seed in seeds if seed is not None)


def test_an_http_client_that_disconnects_frees_the_worker(tmp_path):
    with http_server(tmp_path, step_seconds=STEP_SECONDS) as server:
        with RawSession(server.url) as first:
            stream_until_step(first, {"prompt": "a red square", "seed": 1, "steps": LONG_STEPS}, step=2)
        with RawSession(server.url) as second:
            answer = second.request("tools/call", {"name": "generate_image",
                                                   "arguments": {"prompt": "a blue square", "seed": 2, "steps": 2}})
        report = answer["result"]["structuredContent"]
        assert report["status"] == "done"
        # The first job alone needed about 20 s more; the second one waited for a step or so.
        assert report["timings"]["queue"] < LONG_STEPS * STEP_SECONDS / 2, report["timings"]
        assert sidecar_seeds(server.output_dir) == [2]  # the abandoned job stored nothing
        assert "the client disconnected" in server.stderr_text()


def test_a_stdio_client_that_closes_the_pipe_stops_the_server_and_its_job(tmp_path):
    process = subprocess.Popen([*lanterna_command(), "serve", "--output-dir", str(tmp_path / "outputs")],
                               env=server_env(tmp_path, None, STEP_SECONDS), cwd=str(REPO),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def send(message: dict) -> None:
            process.stdin.write((json.dumps(message) + "\n").encode())
            process.stdin.flush()

        send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "t", "version": "0"}}})
        assert b'"id":1' in process.stdout.readline()
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
              "params": {"name": "generate_image", "arguments": {"prompt": "a red square", "steps": LONG_STEPS},
                         "_meta": {"progressToken": "p"}}})
        while True:  # stdout carries nothing but JSON-RPC, one message a line
            line = process.stdout.readline()
            assert json.loads(line)["jsonrpc"] == "2.0"
            if b'"step 2/' in line:
                break
        process.stdin.close()
        assert process.wait(timeout=LONG_STEPS * STEP_SECONDS / 2) == 0  # well before the job could finish
        assert b"cancelling the job" in process.stderr.read()
        assert list((tmp_path / "outputs").glob("*.png")) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.anyio
async def test_engine_failures_end_failed_with_the_reason_and_the_worker_goes_on(tmp_path):
    command = lanterna_command()
    params = StdioServerParameters(command=command[0], args=[*command[1:], "serve", "--output-dir",
                                                            str(tmp_path / "outputs")],
                                   env=server_env(tmp_path, None, 0.01), cwd=str(REPO))
    reasons = {"crashy": "simulated engine crash", "nan-engine": "NaN", "black-engine": "all-black"}
    async with Client(params, read_timeout_seconds=120) as client:
        for round_ in range(2):  # twice: a worker that served a failure serves again
            for model, reason in reasons.items():
                result = await client.call_tool("generate_image", {"prompt": "a red square", "model": model})
                report = result.structured_content
                assert result.is_error and report["status"] == "failed" and reason in report["error"], report
                assert report["images"] == [] and "Traceback" not in result.content[0].text
                again = await client.call_tool("get_job", {"job_id": report["job_id"], "wait_seconds": 0})
                assert again.structured_content["status"] == "failed" and reason in again.structured_content["error"]
            late = await client.call_tool("generate_image", {"prompt": "a red square", "model": "crashy",
                                                             "wait_seconds": 0})
            collected = await client.call_tool("get_job", {"job_id": late.structured_content["job_id"],
                                                           "wait_seconds": 30})
            assert collected.structured_content["status"] == "failed"
            ok = await client.call_tool("generate_image", {"prompt": "a red square", "seed": round_})
            assert ok.structured_content["status"] == "done"
    assert sidecar_seeds(tmp_path / "outputs") == [0, 1]  # no black or NaN picture was stored


def visible_outputs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if NAME_PATTERN.match(p.name))


def assert_every_output_is_whole(root: Path) -> int:
    """Content-addressed names make this exact: each file's bytes hash to its own name."""
    checked = 0
    for path in visible_outputs(root):
        data = path.read_bytes()
        if path.suffix == ".json":
            sidecar = json.loads(data)
            output = root / sidecar["name"]
            if output.exists():
                assert hashlib.sha256(output.read_bytes()).hexdigest() == sidecar["sha256"]
        else:
            assert hashlib.sha256(data).hexdigest().startswith(path.stem), f"{path.name} is not whole"
        checked += 1
    return checked


@pytest.mark.anyio
async def test_a_failure_between_temp_write_and_rename_leaves_nothing_visible(tmp_path, monkeypatch):
    server = create_server(Settings(output_dir=tmp_path / "outputs"), fast_registry())
    root = server.runtime.store.root
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    try:
        async with Client(server) as client:
            monkeypatch.setattr(store_module.os, "replace", failing_replace)
            failed = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 1})
            report = failed.structured_content
            assert failed.is_error and report["status"] == "failed" and "No space left" in report["error"]
            assert list(root.iterdir()) == []  # neither the image, nor its sidecar, nor a temp file
            assert server.runtime.store.total_bytes == 0
            monkeypatch.setattr(store_module.os, "replace", real_replace)
            ok = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 1})
            assert ok.structured_content["status"] == "done"
            assert assert_every_output_is_whole(root) == 2
    finally:
        server.runtime.close()


WRITER = """
import os, sys, time
from pathlib import Path
from lanterna.server import store as store_module
from lanterna.server.store import OutputStore

root, mode = Path(sys.argv[1]), sys.argv[2]
store = OutputStore(root, 10**10)
real_replace = os.replace

def replace_then_hang(src, dst):
    print("renaming", flush=True)
    time.sleep(600)  # killed here: the temp file is written, the rename never happens
    real_replace(src, dst)

if mode == "hang-before-rename":
    store_module.os.replace = replace_then_hang
print("ready", flush=True)
for i in range(10**6):
    store.save(os.urandom(4 * 1024 * 1024), "mp4", {"i": i})
"""


def run_writer(root: Path, mode: str, kill_after: float | None = None) -> None:
    """A process saving 4 MB files into `root`, SIGKILLed mid-write."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(root), mode], cwd=str(REPO),
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE)
    try:
        assert process.stdout.readline() == b"ready\n"
        if mode == "hang-before-rename":
            assert process.stdout.readline() == b"renaming\n"
        else:
            time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.anyio
async def test_sigkill_mid_write_leaves_only_whole_files_and_a_restart_serves_them(tmp_path):
    root = tmp_path / "outputs"
    with http_server(tmp_path, output_dir=root, step_seconds=STEP_SECONDS) as first:
        async with httpx2.AsyncClient(timeout=60) as http:
            async with Client(streamable_http_client(first.url, http_client=http)) as client:
                made = []
                for seed in (1, 2, 3):
                    result = await client.call_tool("generate_image", {"prompt": "a red square", "seed": seed,
                                                                       "steps": 2})
                    uri = result.structured_content["images"][0]["uri"]
                    blob = (await client.read_resource(uri)).contents[0].blob
                    made.append((uri, base64.b64decode(blob)))
                running = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 4,
                                                                    "steps": LONG_STEPS, "wait_seconds": 0})
                assert running.structured_content["status"] == "running"
        # Kill the server in the middle of a job, and writers in the middle of their writes.
        assert first.stop("kill") == -signal.SIGKILL
    for delay in (0.05, 0.2, 0.5):  # each writer's store also clears the temp files of the one before
        run_writer(root, "free-running", kill_after=delay)
    run_writer(root, "hang-before-rename")
    orphans = list(root.glob(TEMP_PREFIX + "*"))
    assert orphans  # at least the writer stopped before its rename left one behind
    assert all(o.stat().st_size > 0 for o in orphans)
    assert assert_every_output_is_whole(root) >= 6  # the three images, their sidecars, the writers' files

    with http_server(tmp_path, output_dir=root) as second:
        assert list(root.glob(TEMP_PREFIX + "*")) == []  # the restart removed the dead writers' temp files
        async with httpx2.AsyncClient(timeout=60) as http:
            async with Client(streamable_http_client(second.url, http_client=http)) as client:
                listed = {str(r.uri) for r in (await client.list_resources()).resources}
                for uri, data in made:
                    assert uri in listed
                    blob = (await client.read_resource(uri)).contents[0].blob
                    assert base64.b64decode(blob) == data
                    sidecar = (await client.read_resource(uri.replace(".png", ".json"))).contents[0].blob
                    assert json.loads(base64.b64decode(sidecar))["prompt"] == "a red square"
                again = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 1, "steps": 2})
                assert again.structured_content["images"][0]["uri"] == made[0][0]  # the same bytes, the same name
    assert 4 not in sidecar_seeds(root)  # the job killed with its server left no file behind
    assert assert_every_output_is_whole(root) >= 6
