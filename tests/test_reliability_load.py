"""Load: bursts of concurrent calls over HTTP and stdio, hundreds of calls in a row, the output cap.

A burst of 20 generate_image calls meets a queue of 4 behind one running job: each call ends
exactly once, either with its own image or with the busy error, and the server serves again
afterwards. Hundreds of sequential calls must leave the server's resident memory and open file
descriptors where they were (measured on the subprocess through /proc). The output store's
size cap holds while several engines' workers save at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from lanterna.config import Settings
from lanterna.server.app import create_server
from lanterna.server.store import NAME_PATTERN
from tests.test_reliability_http import http_server, server_env
from tests.test_reliability_inputs import fast_registry
from tests.test_server_transports import REPO, lanterna_command

BURST = 20
QUEUE = 4
BURST_STEPS = 50  # at 0.02 s a step: about 1 s a job, so the burst arrives long before the queue drains
CALL_TIMEOUT = 120


@pytest.fixture
def anyio_backend():
    return "asyncio"


def outcome_of(result, seed: int) -> str:
    """'done' (with this call's own image) or 'busy'; anything else fails the test."""
    text = result.content[0].text if result.content and result.content[0].type == "text" else ""
    if result.is_error:
        assert "busy" in text and "try again" in text and "cancel_job" in text, text
        return "busy"
    report = result.structured_content
    assert report["status"] == "done", report
    assert [image["seed"] for image in report["images"]] == [seed]
    return "done"


def check_burst(outcomes: dict[int, tuple[str, str | None]], output_dir: Path) -> None:
    assert sorted(outcomes) == list(range(BURST))  # every call answered
    done = {i: job for i, (kind, job) in outcomes.items() if kind == "done"}
    busy = [i for i, (kind, _) in outcomes.items() if kind == "busy"]
    assert len(done) + len(busy) == BURST
    assert len(done) >= QUEUE + 1 and busy, (len(done), len(busy))
    print(f"burst of {BURST}: {len(done)} done, {len(busy)} busy")
    assert len(set(done.values())) == len(done)  # one job per accepted call
    # Each accepted call made exactly one file, whose sidecar names that call's job: nothing ran twice.
    sidecars = [json.loads(p.read_text()) for p in output_dir.glob("*.json")]
    assert sorted(s["job_id"] for s in sidecars) == sorted(done.values())


def burst_arguments(i: int) -> dict:
    return {"prompt": "a red square", "seed": 1000 + i, "steps": BURST_STEPS, "wait_seconds": CALL_TIMEOUT}


@pytest.mark.anyio
async def test_a_burst_over_http_completes_or_is_refused_busy(tmp_path):
    with http_server(tmp_path, settings={"queue_size": QUEUE}, step_seconds=0.02) as server:
        outcomes: dict[int, tuple[str, str | None]] = {}

        async def one(i: int) -> None:  # each call from its own client and HTTP connection
            async with httpx2.AsyncClient(timeout=CALL_TIMEOUT) as http:
                async with Client(streamable_http_client(server.url, http_client=http)) as client:
                    result = await client.call_tool("generate_image", burst_arguments(i))
            kind = outcome_of(result, 1000 + i)
            assert i not in outcomes
            outcomes[i] = (kind, result.structured_content["job_id"] if kind == "done" else None)

        with anyio.fail_after(CALL_TIMEOUT * 2):
            async with anyio.create_task_group() as group:
                for i in range(BURST):
                    group.start_soon(one, i)
        check_burst(outcomes, server.output_dir)
        async with httpx2.AsyncClient(timeout=CALL_TIMEOUT) as http:
            async with Client(streamable_http_client(server.url, http_client=http)) as client:
                after = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 1})
        assert after.structured_content["status"] == "done"


@pytest.mark.anyio
async def test_a_burst_over_stdio_completes_or_is_refused_busy(tmp_path):
    output_dir = tmp_path / "outputs"
    env = server_env(tmp_path, {"queue_size": QUEUE}, 0.02)
    command = lanterna_command()
    params = StdioServerParameters(command=command[0], args=[*command[1:], "serve", "--output-dir", str(output_dir)],
                                   env=env, cwd=str(REPO))
    outcomes: dict[int, tuple[str, str | None]] = {}
    async with Client(params, read_timeout_seconds=CALL_TIMEOUT) as client:
        async def one(i: int) -> None:  # one client, many requests in flight on the one pipe
            result = await client.call_tool("generate_image", burst_arguments(i))
            kind = outcome_of(result, 1000 + i)
            assert i not in outcomes
            outcomes[i] = (kind, result.structured_content["job_id"] if kind == "done" else None)

        with anyio.fail_after(CALL_TIMEOUT * 2):
            async with anyio.create_task_group() as group:
                for i in range(BURST):
                    group.start_soon(one, i)
        check_burst(outcomes, output_dir)
        after = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 1})
        assert after.structured_content["status"] == "done"


def fd_kinds(targets: list[str]) -> dict[str, int]:
    """Open descriptors by kind: files by path, sockets, pipes and the rest by type."""
    kinds: dict[str, int] = {}
    for target in targets:
        key = target.split(":", 1)[0] if target.startswith(("socket:", "pipe:", "anon_inode:")) else target
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


async def sequential_calls(url: str, count: int, first_seed: int) -> None:
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            for i in range(count):
                result = await client.call_tool("generate_image", {
                    "prompt": "a blue circle", "seed": first_seed + 8 * i, "num_images": 8, "width": 128,
                    "height": 128, "wait_seconds": CALL_TIMEOUT})
                assert result.structured_content["status"] == "done", result.content[0].text
                if i % 10 == 0:  # the other requests of a session, too
                    await client.read_resource(result.structured_content["images"][0]["uri"])
                    await client.list_resources()


def measure_many_calls(tmp_path: Path, calls: int) -> dict[str, float]:
    """Warm up, then `calls` sequential calls (each its own HTTP session every 50); what changed."""
    cap = 1024 * 1024
    with http_server(tmp_path, settings={"output_cap_bytes": cap}, step_seconds=0.0) as server:
        anyio.run(sequential_calls, server.url, 30, 10**6)
        rss_before, fds_before = server.rss_kb(), server.open_fds()
        done = 0
        while done < calls:
            batch = min(50, calls - done)
            anyio.run(sequential_calls, server.url, batch, 2 * 10**6 + 8 * done)
            done += batch
        rss_after, fds_after = server.rss_kb(), server.open_fds()
        files = [p for p in server.output_dir.iterdir() if NAME_PATTERN.match(p.name)]
        on_disk = sum(p.stat().st_size for p in files)
        largest_call = 8 * max(p.stat().st_size for p in files) * 2  # 8 images and their sidecars
        temp_files = [p for p in server.output_dir.iterdir() if not NAME_PATTERN.match(p.name)]
    numbers = {"calls": calls, "rss_before_mb": rss_before / 1024, "rss_after_mb": rss_after / 1024,
               "rss_growth_mb": (rss_after - rss_before) / 1024, "fds_before": len(fds_before),
               "fds_after": len(fds_after), "bytes_on_disk": on_disk, "cap_bytes": cap}
    print("reliability numbers:", json.dumps(numbers))
    assert numbers["rss_growth_mb"] < 100, numbers
    # No descriptor is left behind: the same files, and no more sockets or pipes than at the start.
    before, after = fd_kinds(fds_before), fd_kinds(fds_after)
    assert {k: v for k, v in after.items() if k.startswith("/")} == {k: v for k, v in before.items()
                                                                     if k.startswith("/")}
    assert len(fds_after) <= len(fds_before) + 2, (before, after)
    assert on_disk <= cap + largest_call, numbers  # the cap held all along (the newest job is never evicted)
    assert temp_files == []
    return numbers


def test_sixty_calls_leave_memory_and_descriptors_where_they_were(tmp_path):
    measure_many_calls(tmp_path, 60)


@pytest.mark.slow
def test_three_hundred_calls_leave_memory_and_descriptors_where_they_were(tmp_path):
    measure_many_calls(tmp_path, 300)


@pytest.mark.anyio
async def test_the_output_cap_holds_while_several_workers_save(tmp_path):
    server = create_server(Settings(output_dir=tmp_path / "outputs", queue_size=50), fast_registry())
    store = server.runtime.store
    store.cap_bytes = 60_000  # below the settings' floor: a few dozen files, so eviction runs all the time
    try:
        async with Client(server) as client:
            async def image(i: int) -> None:
                result = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 10 * i,
                                                                   "num_images": 8, "width": 128, "height": 128})
                assert result.structured_content["status"] == "done"

            async def video(i: int) -> None:
                result = await client.call_tool("generate_video", {"prompt": "a red square", "seed": i,
                                                                   "frames": 16, "width": 128, "height": 128})
                assert result.structured_content["status"] == "done"

            async def edit(i: int) -> None:
                made = await client.call_tool("generate_image", {"prompt": "a blue square", "seed": 7})
                result = await client.call_tool("edit", {"image": made.structured_content["images"][0]["uri"],
                                                         "prompt": "a red square", "seed": i, "num_images": 4})
                # The input may have been evicted by the other workers meanwhile: that is an answer too.
                assert result.structured_content is None or result.structured_content["status"] == "done"

            with anyio.fail_after(CALL_TIMEOUT * 2):
                async with anyio.create_task_group() as group:
                    for i in range(12):
                        group.start_soon(image, i)
                        group.start_soon(video, i)
                        group.start_soon(edit, i)
        files = [p for p in store.root.iterdir() if NAME_PATTERN.match(p.name)]
        on_disk = sum(p.stat().st_size for p in files)
        videos = [p for p in files if p.suffix in (".mp4", ".gif")]
        largest_job = 3 * max(p.stat().st_size for p in files) * 2  # a video's MP4, GIF and sheet, with sidecars
        assert store.total_bytes == on_disk  # the running total stayed exact under concurrent saves
        assert on_disk <= store.cap_bytes + largest_job, (on_disk, store.cap_bytes)
        assert len(files) < 200 and videos  # eviction ran; the newest video is still there
        for path in files:  # whatever survived is whole, with its sidecar
            sidecar = path.with_suffix(".json")
            assert path.suffix == ".json" or sidecar.exists(), path.name
        assert not [p for p in os.listdir(store.root) if p.startswith(".tmp")]
    finally:
        server.runtime.close()


@pytest.mark.anyio
async def test_evaluations_take_turns_and_a_full_line_is_busy(tmp_path, monkeypatch):
    """evaluate runs outside the engine queues: its calls decode one at a time, behind a bounded line."""
    import threading
    import time

    from lanterna.tools import evaluate as evaluate_tool

    inside, most, lock = 0, 0, threading.Lock()
    real_read_frames = evaluate_tool.read_frames

    def slow_read_frames(*args, **kwargs):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.2)  # a large input being decoded
        try:
            return real_read_frames(*args, **kwargs)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(evaluate_tool, "read_frames", slow_read_frames)
    server = create_server(Settings(output_dir=tmp_path / "outputs", queue_size=2), fast_registry())
    try:
        async with Client(server) as client:
            made = await client.call_tool("generate_image", {"prompt": "a red square", "seed": 1})
            uri = made.structured_content["images"][0]["uri"]
            answers: list[str] = []

            async def judge() -> None:
                result = await client.call_tool("evaluate", {"images": [uri], "prompt": "a red square"})
                if result.is_error:
                    assert "busy" in result.content[0].text and "try again" in result.content[0].text
                    answers.append("busy")
                else:
                    assert result.structured_content["images"][0]["clip_score"] is not None
                    answers.append("done")

            with anyio.fail_after(CALL_TIMEOUT):
                async with anyio.create_task_group() as group:
                    for _ in range(8):
                        group.start_soon(judge)
        assert most == 1  # never two evaluations decoding at once
        assert len(answers) == 8 and answers.count("done") >= 3 and "busy" in answers, answers
    finally:
        server.runtime.close()
