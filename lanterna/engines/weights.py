"""Bundled weights: `<name>.safetensors` beside a JSON model card `<name>.json`.

The card holds what is needed to rebuild the net (`net` kind and `config`), which other
bundled models it uses (`components`), how it was trained (`recipe`, `learning_curve`) and what
it scores (`metrics`). Tensors may be stored in fp16 and are loaded as fp32.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"


class MissingWeights(FileNotFoundError):
    pass


def weights_dir() -> Path:
    return Path(os.environ.get("LANTERNA_WEIGHTS_DIR", BUNDLED_DIR))


def card_path(name: str, directory: Path | None = None) -> Path:
    return (directory or weights_dir()) / f"{name}.json"


def tensors_path(name: str, directory: Path | None = None) -> Path:
    return (directory or weights_dir()) / f"{name}.safetensors"


def has_weights(name: str, directory: Path | None = None) -> bool:
    return card_path(name, directory).exists() and tensors_path(name, directory).exists()


def read_card(name: str, directory: Path | None = None) -> dict[str, Any]:
    path = card_path(name, directory)
    if not path.exists():
        raise MissingWeights(f"no model card for {name!r} at {path}")
    return json.loads(path.read_text())


def write_card(name: str, card: dict[str, Any], directory: Path | None = None) -> Path:
    path = card_path(name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def save_module(
    module: nn.Module, name: str, directory: Path | None = None, half: bool = False
) -> Path:
    """Write the module's state dict; `half` stores floating tensors as fp16."""
    state = {}
    for key, value in module.state_dict().items():
        value = value.detach().contiguous().cpu()
        if half and value.is_floating_point():
            value = value.half()
        state[key] = value
    path = tensors_path(name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
    file_hash.cache_clear()
    return path


def load_state(name: str, directory: Path | None = None) -> dict[str, torch.Tensor]:
    path = tensors_path(name, directory)
    if not path.exists():
        raise MissingWeights(f"no weights for {name!r} at {path}")
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}


@lru_cache(maxsize=64)
def file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_hash(name: str, directory: Path | None = None) -> str:
    """Short sha256 of the safetensors file, as shown to users and written to every sidecar."""
    return file_hash(str(tensors_path(name, directory)))[:16]
