"""Server settings: where outputs go, which input folders may be read, limits, HTTP options.

Precedence, lowest first: defaults, environment variables (`LANTERNA_*`), a config file
(`--config FILE` or $LANTERNA_CONFIG, TOML or JSON with the same keys as `Settings`; its
`[models.NAME]` and `[scorer]` tables are described in lanterna/config_file.py), command-line flags.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lanterna.config_file import ModelEntry, ScorerEntry, read_toml

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def default_output_dir() -> Path:
    env = os.environ.get("LANTERNA_OUTPUT_DIR")
    if env:
        return Path(env).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(data_home).expanduser() / "lanterna" / "outputs"


def env_list(name: str) -> list[str]:
    return [p for p in os.environ.get(name, "").split(os.pathsep) if p]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_dir: Path = Field(default_factory=default_output_dir,
                             description="root folder of every generated file")
    output_cap_bytes: int = Field(2 * 1024**3, ge=1024 * 1024,
                                  description="size cap of the output folder; the oldest files go first")
    allow_dirs: list[Path] = Field(default_factory=lambda: [Path(p) for p in env_list("LANTERNA_ALLOW_DIRS")],
                                   description="folders `edit`/`evaluate` may read input files from")
    models: dict[str, ModelEntry] = Field(default_factory=dict,
                                          description="extra models: name -> a folder or a [models.NAME] table")
    scorer: ScorerEntry | None = Field(None, description="a CLIP folder (transformers format) scoring every model")
    registry: str | None = Field(default_factory=lambda: os.environ.get("LANTERNA_REGISTRY"),
                                 description="'module:function' returning the ModelRegistry to serve "
                                             "(default: the bundled models)")

    # limits
    queue_size: int = Field(8, ge=1, le=1000, description="jobs waiting per engine before 'busy'")
    max_input_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest input file or payload")
    max_input_pixels: int = Field(50_000_000, ge=64 * 64, description="largest input image (decompression bombs)")
    finished_jobs_kept: int = Field(256, ge=1, description="finished jobs get_job can still report")

    # previews returned inline to the client
    preview_max_side: int = Field(512, ge=32, le=4096)
    preview_min_side: int = Field(256, ge=16, le=4096, description="small images are upscaled (nearest) to this")
    preview_budget_chars: int = Field(100_000, ge=1000, description="base64 characters of previews per result")

    # HTTP transport
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: str | None = Field(default_factory=lambda: os.environ.get("LANTERNA_TOKEN") or None, repr=False)
    allowed_hosts: list[str] = Field(default_factory=list,
                                     description="extra Host header values accepted over HTTP (name or name:port)")
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024,
                                   description="largest HTTP request body; larger ones get 413 before being read")

    @field_validator("output_dir", mode="after")
    @classmethod
    def _expand_output(cls, v: Path) -> Path:
        return v.expanduser()

    @field_validator("allow_dirs", mode="after")
    @classmethod
    def _expand_allowed(cls, v: list[Path]) -> list[Path]:
        return [p.expanduser() for p in v]

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS


def read_config_file(path: Path) -> dict[str, Any]:
    """Keys of `Settings` from a TOML (.toml) or JSON file."""
    data = json.loads(path.read_text()) if path.suffix.lower() == ".json" else read_toml(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of settings")
    return data.get("lanterna", data)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, then the config file, then explicit overrides (None = unset)."""
    config_file = config_file or (Path(os.environ["LANTERNA_CONFIG"]) if os.environ.get("LANTERNA_CONFIG") else None)
    values: dict[str, Any] = read_config_file(config_file.expanduser()) if config_file else {}
    for key, value in overrides.items():
        if value is None or value == [] or value == {}:
            continue
        if key in ("allow_dirs", "allowed_hosts") and key in values:
            value = [*values[key], *value]
        if key == "models" and key in values:
            value = {**values[key], **value}
        values[key] = value
    return Settings(**values)
