"""The server's building blocks on their own: output store, previews, input reading, settings."""

from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from lanterna.config import Settings, load_settings
from lanterna.server.inputs import InputError, InputRules, read_bytes, read_image
from lanterna.server.media import PNG_TEXT_KEY, contact_sheet, png_bytes
from lanterna.server.previews import PreviewBudget, previews
from lanterna.server.store import InvalidOutputName, OutputStore, check_name
from lanterna.server.transports import transport_security


def noise(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_store_names_by_content_writes_atomically_and_keeps_a_sidecar(tmp_path):
    store = OutputStore(tmp_path, cap_bytes=10**9)
    data = png_bytes(noise(16), {"seed": 3})
    first = store.save(data, "png", {"seed": 3, "weights_hash": "abc"})
    assert first.name == __import__("hashlib").sha256(data).hexdigest()[:16] + ".png"
    assert store.read(first.name) == data
    assert json.loads(Image.open(io.BytesIO(data)).text[PNG_TEXT_KEY]) == {"seed": 3}
    sidecar = store.metadata(first.name)
    assert sidecar["seed"] == 3 and sidecar["weights_hash"] == "abc" and sidecar["bytes"] == len(data)
    assert "pillow" in sidecar["versions"] and sidecar["mime_type"] == "image/png"
    assert store.save(data, "png").name == first.name  # same bytes, same file
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    assert OutputStore(tmp_path, 10**9).total_bytes == store.total_bytes


def test_store_evicts_the_oldest_files_beyond_its_cap(tmp_path):
    store = OutputStore(tmp_path, cap_bytes=1024 * 1024)
    blobs = [os.urandom(300 * 1024) for _ in range(5)]
    saved = []
    for i, blob in enumerate(blobs):
        saved.append(store.save(blob, "mp4"))
        os.utime(saved[-1].path, (1000 + i, 1000 + i))  # a clear age order
    names = {p.name for p in tmp_path.iterdir()}
    assert saved[0].name not in names and saved[0].sidecar_name not in names
    assert saved[-1].name in names and saved[-1].sidecar_name in names
    assert store.total_bytes <= store.cap_bytes
    assert store.total_bytes == sum(p.stat().st_size for p in tmp_path.iterdir())
    kept = store.save(os.urandom(2 * 1024 * 1024), "gif")  # larger than the cap: evicts all else, never itself
    assert kept.path.exists()


@pytest.mark.parametrize("name", ["../etc/passwd", "0123456789ABCDEF.png", "0123456789abcdef.exe",
                                  "0123456789abcdef.png/..", "0123456789abcde.png", ".0123456789abcdef.png"])
def test_store_rejects_names_that_are_not_outputs(name):
    with pytest.raises(InvalidOutputName):
        check_name(name)


def test_previews_fit_the_budget_and_small_images_are_upscaled_crisply():
    budget = PreviewBudget(max_side=512, min_side=256, total_chars=100_000)
    tiny = Image.fromarray(np.kron(np.eye(8, dtype=np.uint8) * 255, np.ones((8, 8), np.uint8))).convert("RGB")
    (p,) = previews([tiny], budget)
    shown = Image.open(io.BytesIO(base64.b64decode(p.data)))
    assert shown.size == (256, 256) and p.mime_type == "image/png"
    assert shown.convert("RGB").resize((64, 64), Image.NEAREST).tobytes() == tiny.tobytes()

    big = [noise(1024, seed) for seed in range(6)]  # incompressible: forces downscaling and lossy formats
    made = previews(big, budget)
    assert all(p is not None for p in made)
    assert sum(len(p.data) for p in made) <= budget.total_chars
    assert all(max(p.width, p.height) <= 512 for p in made)
    assert {p.mime_type for p in made} == {"image/jpeg"}


def test_contact_sheet_orders_keyframes():
    frames = [Image.new("RGB", (10, 10), (i * 20, 0, 0)) for i in range(12)]
    sheet = contact_sheet(frames, max_frames=8, columns=4, gap=2)
    assert sheet.size == (4 * 10 + 3 * 2, 2 * 10 + 2)
    firsts = [sheet.getpixel((c * 12, r * 12))[0] for r in range(2) for c in range(4)]
    assert firsts[0] == 0 and firsts[-1] == 11 * 20 and firsts == sorted(firsts)


def test_inputs_accept_bare_base64_and_tell_paths_from_data(tmp_path):
    store = OutputStore(tmp_path / "out", 10**9)
    rules = InputRules((tmp_path,), max_bytes=10**6, max_pixels=10**6)
    image = noise(8)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    encoded = base64.b64encode(buf.getvalue()).decode()
    assert read_image(encoded, "image", rules, store).size == (8, 8)
    (tmp_path / "dir").mkdir()
    image.save(tmp_path / "dir" / "x.png")
    assert read_image(str(tmp_path / "dir" / ".." / "dir" / "x.png"), "image", rules, store).size == (8, 8)
    with pytest.raises(InputError, match="reading files is disabled"):
        read_bytes(str(tmp_path / "dir" / "x.png"), "image", InputRules((), 10**6, 10**6), store)
    with pytest.raises(InputError, match="not valid base64|not an image"):
        read_image("data:image/png;base64,@@@@", "image", rules, store)


def test_settings_layer_defaults_environment_file_and_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("LANTERNA_OUTPUT_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("LANTERNA_TOKEN", "env-token")
    assert Settings().output_dir == tmp_path / "from-env" and Settings().token == "env-token"
    config = tmp_path / "lanterna.toml"
    config.write_text(f'output_dir = "{tmp_path / "from-file"}"\nqueue_size = 3\nallow_dirs = ["/a"]\n')
    settings = load_settings(config, allow_dirs=[tmp_path], port=9000)
    assert settings.output_dir == tmp_path / "from-file" and settings.queue_size == 3
    assert settings.allow_dirs == [tmp_path.__class__("/a"), tmp_path] and settings.port == 9000
    with pytest.raises(ValueError):
        load_settings(None, queue_size=0)


def test_transport_security_allows_loopback_and_named_hosts_only():
    local = transport_security(Settings(host="127.0.0.1"))
    assert "localhost:*" in local.allowed_hosts and "http://127.0.0.1:*" in local.allowed_origins
    assert not any("0.0.0.0" in h for h in local.allowed_hosts)
    wide = transport_security(Settings(host="0.0.0.0", token="t", allowed_hosts=["gpu-box", "gpu-box.lan:8000"]))
    assert {"gpu-box", "gpu-box:*", "gpu-box.lan:8000"} <= set(wide.allowed_hosts)
    assert "https://gpu-box:*" in wide.allowed_origins
