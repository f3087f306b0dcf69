"""The output store: one folder of content-addressed files, each with a JSON sidecar.

Names are the first 16 hex digits of the file's sha256 plus an extension, so the same bytes are
stored once and a name can never point outside the root. Writes are atomic (temp file, then
`os.replace`), so a reader never sees part of a file; the temp files of a process that died
mid-write (named with its pid) are removed by the next store opened on the root. A size cap
evicts the least recently written files first. Files are served to
clients as MCP resources `lanterna://outputs/{name}`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

log = logging.getLogger("lanterna.server.store")

URI_PREFIX = "lanterna://outputs/"
MIME_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "json": "application/json",
}
NAME_PATTERN = re.compile(r"^[0-9a-f]{16}\.(%s)$" % "|".join(MIME_TYPES))
HASH_CHARS = 16
TEMP_PREFIX = ".tmp-"
TEMP_PATTERN = re.compile(r"^\.tmp-(?P<pid>\d+)-")


class InvalidOutputName(ValueError):
    pass


class OutputNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class StoredFile:
    name: str
    path: Path
    size: int

    @property
    def uri(self) -> str:
        return URI_PREFIX + self.name

    @property
    def mime_type(self) -> str:
        return mime_type_of(self.name)

    @property
    def sidecar_name(self) -> str:
        return sidecar_name(self.name)


def mime_type_of(name: str) -> str:
    return MIME_TYPES[name.rsplit(".", 1)[-1]]


def sidecar_name(name: str) -> str:
    return name.rsplit(".", 1)[0] + ".json"


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidOutputName(
            f"{name!r} is not an output name: expected 16 hex digits and one of "
            f".{', .'.join(MIME_TYPES)} (as returned in a result's `uri`)")
    return name


def name_from_uri(uri: str) -> str:
    if not uri.startswith(URI_PREFIX):
        raise InvalidOutputName(f"{uri!r} is not a {URI_PREFIX}NAME resource of this server")
    return check_name(uri[len(URI_PREFIX):])


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {}
    for package in ("lanterna", "torch", "diffusers", "transformers", "mcp", "pillow", "numpy", "onnxruntime"):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


class OutputStore:
    def __init__(self, root: Path, cap_bytes: int) -> None:
        self.root = Path(root).expanduser().resolve()
        self.cap_bytes = cap_bytes
        self._lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        remove_orphaned_temp_files(self.root)
        self._total = sum(p.stat().st_size for p in self._files())

    # writing

    def save(self, data: bytes, extension: str, metadata: dict[str, Any] | None = None,
             keep: set[str] | frozenset[str] = frozenset()) -> StoredFile:
        """Store `data` under its content name; `metadata` goes to the sidecar. Never evicts `keep`."""
        if extension not in MIME_TYPES or extension == "json":
            raise InvalidOutputName(f"cannot store .{extension} files")
        name = hashlib.sha256(data).hexdigest()[:HASH_CHARS] + "." + extension
        path = self.root / name
        sidecar = {
            "name": name,
            "uri": URI_PREFIX + name,
            "mime_type": MIME_TYPES[extension],
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": package_versions(),
            **(metadata or {}),
        }
        sidecar_bytes = json.dumps(sidecar, indent=2, sort_keys=False, default=str).encode()
        with self._lock:
            self._write(path, data)
            self._write(self.root / sidecar_name(name), sidecar_bytes)
            self._evict({name, *keep})
        return StoredFile(name, path, len(data))

    def _write(self, path: Path, data: bytes) -> None:
        old = path.stat().st_size if path.exists() else 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f"{TEMP_PREFIX}{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._total += len(data) - old

    def _files(self) -> list[Path]:
        return [p for p in self.root.iterdir() if NAME_PATTERN.match(p.name) and p.is_file() and not p.is_symlink()]

    def _evict(self, keep: set[str]) -> None:
        if self._total <= self.cap_bytes:
            return
        outputs = [p for p in self._files() if not p.name.endswith(".json")]
        outputs.sort(key=lambda p: p.stat().st_mtime)
        for path in outputs:
            if self._total <= self.cap_bytes:
                break
            if path.name in keep:
                continue
            for victim in (path, self.root / sidecar_name(path.name)):
                try:
                    size = victim.stat().st_size
                    victim.unlink()
                    self._total -= size
                except FileNotFoundError:
                    pass
            log.info("evicted %s (output cap %d bytes)", path.name, self.cap_bytes)

    # reading

    def path(self, name: str) -> Path:
        path = self.root / check_name(name)
        if not path.is_file() or path.is_symlink():  # only files the store wrote, never a link out of the root
            raise OutputNotFound(f"{URI_PREFIX}{name} does not exist (evicted, or never made here)")
        return path

    def read(self, name: str) -> bytes:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:  # evicted between the check and the read
            raise OutputNotFound(f"{URI_PREFIX}{name} does not exist (evicted, or never made here)") from None

    def metadata(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.path(sidecar_name(name)).read_text())
        except (OutputNotFound, ValueError):
            return None

    def recent(self, limit: int = 100) -> list[StoredFile]:
        """The newest outputs (sidecars excluded), newest first."""
        stats = []
        for p in self._files():
            if p.name.endswith(".json"):
                continue
            try:
                stats.append((p.stat(), p))
            except FileNotFoundError:
                continue
        stats.sort(key=lambda sp: sp[0].st_mtime, reverse=True)
        return [StoredFile(p.name, p, s.st_size) for s, p in stats[:limit]]

    @property
    def total_bytes(self) -> int:
        return self._total


def remove_orphaned_temp_files(root: Path) -> None:
    """Delete temp files left by processes that died mid-write (other live servers' are kept)."""
    for path in root.glob(TEMP_PREFIX + "*"):
        match = TEMP_PATTERN.match(path.name)
        if match and process_alive(int(match["pid"])):
            continue
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write", path.name)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True
