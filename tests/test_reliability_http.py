"""HTTP security of `lanterna serve --http`, and raw JSON-RPC the SDK client would never send.

Bearer token (none or wrong: 401, before the body is read), Host (421) and Origin (403) checks,
the request body limit (413; 8 MiB by default, configurable), the refusal to listen beyond
loopback without a token, and hostile JSON-RPC: NaN as a literal and as a string, arguments
that are not an object, malformed bodies. The server subprocesses serve the test-double
registry (tests/_engines.py); the helpers here also start them for the load and fault tests.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.test_server_transports import REGISTRY, REPO, child_env, free_port, lanterna_command, wait_for_port

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
PROTOCOL = "2025-06-18"
MiB = 1024 * 1024


class ServerProcess:
    """One `lanterna serve` subprocess; stderr goes to a file so a chatty server never blocks on a pipe."""

    def __init__(self, process: subprocess.Popen, url: str | None, output_dir: Path, log: Path) -> None:
        self.process, self.url, self.output_dir, self.log = process, url, output_dir, log

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def open_fds(self) -> list[str]:
        fd_dir = Path(f"/proc/{self.pid}/fd")
        targets = []
        for fd in fd_dir.iterdir():
            try:
                targets.append(os.readlink(fd))
            except FileNotFoundError:  # closed while listing
                continue
        return sorted(targets)

    def stop(self, sig: str = "terminate") -> int:
        getattr(self.process, sig)()
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stderr_text(self) -> str:
        return self.log.read_text(errors="replace")


def server_env(tmp_path: Path, settings: dict[str, Any] | None, step_seconds: float, **extra: str) -> dict[str, str]:
    config = tmp_path / f"settings-{time.monotonic_ns()}.json"
    config.write_text(json.dumps(settings or {}))
    return child_env(LANTERNA_REGISTRY=REGISTRY, LANTERNA_CONFIG=str(config),
                     LANTERNA_TEST_STEP_SECONDS=str(step_seconds), **extra)


@contextmanager
def http_server(tmp_path: Path, *, token: str | None = None, settings: dict[str, Any] | None = None,
                step_seconds: float = 0.01, output_dir: Path | None = None,
                args: tuple[str, ...] = ()) -> Iterator[ServerProcess]:
    port = free_port()
    output_dir = output_dir or tmp_path / "outputs"
    log = tmp_path / f"server-{port}.log"
    extra = {"LANTERNA_TOKEN": token} if token else {}
    with open(log, "wb") as err:
        process = subprocess.Popen(
            [*lanterna_command(), "serve", "--http", "--port", str(port), "--output-dir", str(output_dir), *args],
            env=server_env(tmp_path, settings, step_seconds, **extra), cwd=str(REPO),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    server = ServerProcess(process, f"http://127.0.0.1:{port}/mcp", output_dir, log)
    try:
        try:
            wait_for_port(port, process, timeout=60)
        except Exception:
            raise RuntimeError(f"the server did not start: {server.stderr_text()[-2000:]}") from None
        yield server
    finally:
        if process.poll() is None:
            server.stop()
        assert process.stdout.read() == b""  # HTTP mode never writes to stdout


def sse_messages(text: str) -> list[dict]:
    """The JSON-RPC messages of an SSE (or plain JSON) response body."""
    stripped = text.strip()
    if stripped.startswith("{"):
        return [json.loads(stripped)]
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]


class RawSession:
    """A hand-written MCP client over HTTP: sends exactly the bytes a test asks for."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 60) -> None:
        self.url = url
        self.http = httpx.Client(timeout=timeout)
        self.headers = dict(MCP_HEADERS)
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.ids = iter(range(1, 10**9))

    def __enter__(self) -> RawSession:
        answer = self.post({"jsonrpc": "2.0", "id": next(self.ids), "method": "initialize",
                            "params": {"protocolVersion": PROTOCOL, "capabilities": {},
                                       "clientInfo": {"name": "raw", "version": "0"}}})
        assert answer.status_code == 200, answer.text
        self.headers["mcp-session-id"] = answer.headers["mcp-session-id"]
        self.headers["mcp-protocol-version"] = PROTOCOL
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()

    def post(self, message: Any = None, content: bytes | None = None, **headers: str) -> httpx.Response:
        body = content if content is not None else json.dumps(message).encode()
        return self.http.post(self.url, content=body, headers={**self.headers, **headers})

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict:
        """Send one request, return its response message (the last one on the stream)."""
        answer = self.post({"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params or {}})
        assert answer.status_code == 200, (answer.status_code, answer.text[:500])
        return sse_messages(answer.text)[-1]

    def call_raw(self, body: str) -> httpx.Response:
        return self.post(content=body.encode())


INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}


def noise_png(side: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def test_token_host_origin_and_body_size_are_enforced(tmp_path):
    token = "t0ken-" + os.urandom(8).hex()
    with http_server(tmp_path, token=token) as server:
        url = server.url
        with httpx.Client(timeout=60) as raw:
            missing = raw.post(url, json=INITIALIZE, headers=MCP_HEADERS)
            assert missing.status_code == 401 and "bearer" in missing.headers.get("www-authenticate", "").lower()
            for bad in ("Bearer nope", f"Bearer {token}x", f"Bearer {token[:-1]}", "Bearer", f"Basic {token}",
                        token, f"Bearer {token.upper()}"):
                wrong = raw.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": bad})
                assert wrong.status_code == 401, bad
            in_query = raw.post(url + f"?access_token={token}", json=INITIALIZE, headers=MCP_HEADERS)
            assert in_query.status_code == 401
            # Without the token an oversized body is answered 401 before it is read.
            assert raw.post(url, content=b"{" + b" " * (9 * MiB), headers=MCP_HEADERS).status_code == 401

            authed = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
            for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example", "https://localhost.evil"):
                assert raw.post(url, json=INITIALIZE, headers={**authed, "Origin": origin}).status_code == 403
            for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil"):
                assert raw.post(url, json=INITIALIZE, headers={**authed, "Host": host}).status_code == 421
            local = raw.post(url, json=INITIALIZE, headers={**authed, "Origin": url.rsplit("/", 1)[0]})
            assert local.status_code == 200

            over = raw.post(url, content=b"{" + b" " * (8 * MiB + 1), headers=authed)
            assert over.status_code == 413

            def chunks():  # no Content-Length: the limit is counted as the body streams in
                for _ in range(9):
                    yield b" " * MiB

            streamed = raw.post(url, content=chunks(), headers=authed)
            assert streamed.status_code == 413

        # Under the 8 MiB default (and over the SDK's own 4 MiB) a large inline image gets through.
        image = noise_png(1200)
        assert 4 * MiB < len(base64.b64encode(image)) < 8 * MiB - 4096
        with RawSession(url, token) as session:
            answer = session.request("tools/call", {"name": "edit", "arguments": {
                "image": "data:image/png;base64," + base64.b64encode(image).decode(), "prompt": "a red square",
                "seed": 1}})
            assert answer["result"]["structuredContent"]["status"] == "done", answer
            assert session.request("ping") == {"jsonrpc": "2.0", "id": answer["id"] + 1, "result": {}}


def test_the_body_limit_is_configurable(tmp_path):
    with http_server(tmp_path, settings={"max_request_bytes": 64 * 1024}) as server:
        with RawSession(server.url) as session:
            big = {"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                   "params": {"name": "generate_image", "arguments": {"prompt": "a" * 100_000}}}
            assert session.post(big).status_code == 413
            fits = session.request("tools/call", {"name": "generate_image",
                                                  "arguments": {"prompt": "a red square", "seed": 2}})
            assert fits["result"]["structuredContent"]["status"] == "done"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_listening_beyond_loopback_without_a_token_refuses_to_start(tmp_path, host):
    done = subprocess.run(
        [*lanterna_command(), "serve", "--http", "--host", host, "--port", str(free_port()),
         "--output-dir", str(tmp_path / "out")],
        env=server_env(tmp_path, None, 0.01), cwd=str(REPO), capture_output=True, timeout=120)
    assert done.returncode == 2, done.stderr.decode()[-1000:]
    assert b"bearer token is required" in done.stderr and done.stdout == b""


def test_a_token_allows_listening_beyond_loopback(tmp_path):
    token = os.urandom(12).hex()
    port = free_port()
    with open(tmp_path / "wide.log", "wb") as err:
        process = subprocess.Popen(
            [*lanterna_command(), "serve", "--http", "--host", "0.0.0.0", "--port", str(port),
             "--output-dir", str(tmp_path / "out")],
            env=server_env(tmp_path, None, 0.01, LANTERNA_TOKEN=token), cwd=str(REPO),
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for_port(port, process, timeout=60)
        url = f"http://127.0.0.1:{port}/mcp"
        assert httpx.post(url, json=INITIALIZE, headers=MCP_HEADERS, timeout=30).status_code == 401
        ok = httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}, timeout=30)
        assert ok.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def tool_error_text(answer: dict) -> str:
    result = answer["result"]
    assert result["isError"] is True, answer
    return result["content"][0]["text"]


def test_hostile_json_rpc_gets_errors_not_crashes(tmp_path):
    with http_server(tmp_path) as server, RawSession(server.url) as session:
        call = '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"generate_image","arguments":%s}}'
        # NaN and Infinity as JSON literals (not JSON, but the SDK's parser reads them as floats): the
        # tool's validation refuses them by name, whatever the field.
        for field, literal in (("guidance", "NaN"), ("guidance", "Infinity"), ("guidance", "-Infinity"),
                               ("wait_seconds", "NaN"), ("seed", "NaN"), ("width", "Infinity")):
            answer = session.call_raw(call % (7, '{"prompt":"a red square","%s":%s}' % (field, literal)))
            if answer.status_code == 400:  # a stricter parser: a JSON-RPC parse error is as good
                assert sse_messages(answer.text)[0]["error"]["code"] == -32700
                continue
            assert field in tool_error_text(sse_messages(answer.text)[-1]), (field, literal, answer.text)
        edit = '{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"edit","arguments":' \
               '{"image":"x","prompt":"a","strength":NaN}}}'
        assert "strength" in tool_error_text(sse_messages(session.call_raw(edit).text)[-1])
        # As strings, they reach the tool, whose answer says what is allowed.
        for text in ("NaN", "nan", "Infinity", "-inf", "1e999"):
            answer = sse_messages(session.call_raw(call % (8, '{"prompt":"a red square","guidance":"%s"}' % text)
                                                   ).text)[-1]
            assert "guidance" in tool_error_text(answer), answer
        answer = sse_messages(session.call_raw(call % (9, '{"prompt":"a red square","guidance":1e999}')).text)[-1]
        assert "guidance" in tool_error_text(answer)  # 1e999 parses as inf
        # Arguments that are not an object, unknown tools, wrong types at every level.
        for arguments in ("5", '"x"', "[]", "true"):
            answer = session.call_raw(call % (10, arguments))
            assert answer.status_code in (200, 400), answer.text
            message = sse_messages(answer.text)[-1]
            assert "error" in message or message["result"]["isError"], message
        for body in ('{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"nope","arguments":{}}}',
                     '{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":5}}',
                     '{"jsonrpc":"2.0","id":13,"method":"tools/call","params":[]}',
                     '{"jsonrpc":"2.0","id":14,"method":"resources/read","params":{"uri":"lanterna://outputs/../x"}}',
                     '{"jsonrpc":"2.0","id":15,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}',
                     '{"jsonrpc":"2.0","id":16,"method":"no/such/method","params":{}}',
                     '{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}',
                     '[{"jsonrpc":"2.0","id":17,"method":"ping"}]',
                     '{"jsonrpc":"2.0","id":18,"method":"tools/call","params":{"name":"generate_image",'
                     '"arguments":{"prompt":"\\ud800"}}}',
                     "{", "", "\x00\xff", '{"jsonrpc":"1.0","id":19,"method":"ping"}'):
            answer = session.call_raw(body)
            assert answer.status_code < 500, (body, answer.status_code, answer.text[:300])
            assert "Traceback" not in answer.text
            if answer.status_code == 200:
                message = sse_messages(answer.text)[-1]
                assert "error" in message or message["result"].get("isError"), (body, message)
        # ... and after all that the server answers a plain call.
        done = session.request("tools/call", {"name": "generate_image", "arguments": {"prompt": "a red square"}})
        assert done["result"]["structuredContent"]["status"] == "done"
        assert server.process.poll() is None
