"""Reading input images (`edit`, `evaluate`) from the three sources a client may name, and nothing else.

- a resource of this server: `lanterna://outputs/NAME`
- inline data: a `data:image/...;base64,` URL or bare base64
- a file path inside one of the explicitly allowed folders (symlinks resolved first)

URLs of any other scheme are refused: the server never fetches. Payloads and files larger than
`max_bytes`, images larger than `max_pixels` (decompression bombs), videos whose frames add up
to more than `max_pixels` (a few hundred bytes of GIF can hold gigabytes of frames),
non-images and truncated files are refused with a message saying what is allowed.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from lanterna.server.store import URI_PREFIX, OutputStore, name_from_uri

ALLOWED_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP")
DECODERS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # Pillow plugin ids (JPEG's also opens MPO)
VIDEO_EXTENSIONS = (".mp4", ".gif", ".webp")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,",
                      re.ASCII)
BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/=\s_-]+$")

# Refuse truncated files instead of silently padding them with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's own decompression-bomb guard (a warning above the limit, an error above twice it), set
# explicitly rather than inherited. Each server's `max_input_pixels` is checked on top of it, from
# the header, before any pixel is decoded.
PILLOW_MAX_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = PILLOW_MAX_PIXELS


class InputError(ValueError):
    """An input the server will not read; the message says what is accepted."""


@dataclass(frozen=True)
class InputRules:
    allow_dirs: tuple[Path, ...]
    max_bytes: int
    max_pixels: int


ACCEPTED = ("a lanterna://outputs/NAME resource of this server, a data:image/...;base64 URL or "
            "base64 string, or a file path inside an allowed folder")


def describe(source: str) -> str:
    """`source` fit to quote in a message: cut short, control and bidi characters escaped."""
    short = source if len(source) <= 80 else source[:60] + f"... ({len(source)} chars)"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in short)


def read_bytes(source: str, what: str, rules: InputRules, store: OutputStore) -> bytes:
    """The raw bytes behind `source` (not yet decoded as an image)."""
    source = source.strip()
    if not source:
        raise InputError(f"{what}: empty; give {ACCEPTED}")
    if source.startswith(URI_PREFIX):
        try:
            return store.read(name_from_uri(source))
        except (ValueError, FileNotFoundError) as e:
            raise InputError(f"{what}: {e}") from None
    if source.startswith("data:"):
        return decode_data_url(source, what, rules)
    if SCHEME.match(source):
        raise InputError(f"{what}: URLs are not fetched ({describe(source)}); give {ACCEPTED}")
    if looks_like_base64(source):
        return decode_base64(source, what, rules)
    if Path(source).suffix == "" and len(source) > 255:
        raise InputError(f"{what}: neither base64 image data nor a file path ({describe(source)}); give {ACCEPTED}")
    return read_allowed_file(source, what, rules)


MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM")


def looks_like_base64(source: str) -> bool:
    """Base64 whose first bytes are an image's magic number (paths use the same characters)."""
    if len(source) < 16 or not BASE64_CHARS.match(source[:4096]):
        return False
    head = "".join(source[:96].split())[:64]
    try:
        start = base64.b64decode(head[: len(head) // 4 * 4], altchars=b"-_" if "-" in head or "_" in head else None)
    except (binascii.Error, ValueError):
        return False
    return start.startswith(MAGIC) or start[4:8] == b"ftyp"


def decode_data_url(source: str, what: str, rules: InputRules) -> bytes:
    match = DATA_URL.match(source)
    if not match or not match.group("b64"):
        raise InputError(f"{what}: a data URL must look like data:image/png;base64,<data>")
    mime = (match.group("mime") or "").lower()
    if mime and not mime.startswith(("image/", "video/")):
        raise InputError(f"{what}: data URL of type {mime!r}; only image data is accepted")
    return decode_base64(source[match.end():], what, rules)


def decode_base64(text: str, what: str, rules: InputRules) -> bytes:
    if len(text) > encoded_limit(rules.max_bytes):
        raise InputError(f"{what}: payload of about {len(text) * 3 // 4} bytes is over the "
                         f"{rules.max_bytes} byte limit")
    compact = "".join(text.split())
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: not valid base64") from None


def encoded_limit(max_bytes: int) -> int:
    return 4 * ((max_bytes + 2) // 3) + 1024  # whitespace and padding slack


def read_allowed_file(source: str, what: str, rules: InputRules) -> bytes:
    path = allowed_path(source, what, rules)
    if not path.is_file():
        raise InputError(f"{what}: {describe(source)} is not a file")
    size = path.stat().st_size
    if size > rules.max_bytes:
        raise InputError(f"{what}: file of {size} bytes is over the {rules.max_bytes} byte limit")
    return path.read_bytes()


def allowed_path(source: str, what: str, rules: InputRules) -> Path:
    """`source` resolved (symlinks and `..` followed first), if it lies inside an allowed folder.

    A path outside gets the same answer whether or not it exists, so the errors tell nothing
    about the rest of the file system.
    """
    if not rules.allow_dirs:
        raise InputError(f"{what}: reading files is disabled on this server (no allowed folders; start it "
                         f"with --allow-dir DIR); give a lanterna://outputs/ resource or base64 data instead")
    try:
        path = Path(source).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # symlink loops, unknown ~user, NUL bytes
        raise InputError(f"{what}: no such file {describe(source)}") from None
    roots = [d.expanduser().resolve() for d in rules.allow_dirs]
    if not any(path.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise InputError(f"{what}: {describe(source)} is outside the allowed folders ({allowed})")
    if not path.exists():
        raise InputError(f"{what}: no such file {describe(source)}")
    return path


def allowed_folder(source: str, what: str, rules: InputRules) -> Path | None:
    """The allowed folder `source` names; None when it names no folder (a file, data, a resource)."""
    if source.startswith((URI_PREFIX, "data:")) or SCHEME.match(source):
        return None
    try:
        is_dir = Path(source).expanduser().is_dir()
    except (OSError, RuntimeError, ValueError):
        return None
    return allowed_path(source, what, rules) if is_dir else None


def decode_image(data: bytes, what: str, rules: InputRules) -> Image.Image:
    """A fully decoded image, or an InputError saying why not."""
    if len(data) > rules.max_bytes:
        raise InputError(f"{what}: {len(data)} bytes is over the {rules.max_bytes} byte limit")
    try:
        image = Image.open(io.BytesIO(data), formats=DECODERS)  # no other decoder ever parses input
    except UnidentifiedImageError:
        raise InputError(f"{what}: not an image (accepted formats: {', '.join(ALLOWED_FORMATS)})") from None
    except Image.DecompressionBombError:
        raise bomb(what, rules) from None
    if image.format not in ALLOWED_FORMATS:
        raise InputError(f"{what}: {image.format} images are not accepted; use one of {', '.join(ALLOWED_FORMATS)}")
    w, h = image.size
    if w * h > rules.max_pixels:
        raise bomb(what, rules, w, h)
    try:
        image.load()
    except Image.DecompressionBombError:
        raise bomb(what, rules) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{what}: the image could not be decoded, it is truncated or corrupt ({e})") from None
    return image


def bomb(what: str, rules: InputRules, w: int | None = None, h: int | None = None) -> InputError:
    size = f" ({w}x{h} = {w * h} pixels)" if w and h else ""
    return InputError(f"{what}: image too large{size}; at most {rules.max_pixels} pixels are accepted")


def read_image(source: str, what: str, rules: InputRules, store: OutputStore) -> Image.Image:
    return decode_image(read_bytes(source, what, rules, store), what, rules)


def read_frames(source: str, what: str, rules: InputRules, store: OutputStore,
                max_frames: int = 256) -> list[Image.Image]:
    """Frames of a video input (MP4, animated GIF or WebP) or of a single still image."""
    data = read_bytes(source, what, rules, store)
    if data[4:8] == b"ftyp":
        return mp4_frames(data, what, rules, max_frames)
    image = decode_image(data, what, rules)
    frames = []
    budget = FrameBudget(what, rules)
    for i in range(min(getattr(image, "n_frames", 1), max_frames)):
        budget.take(*image.size)  # checked before decoding: every frame is a full canvas
        image.seek(i)
        frames.append(image.convert("RGB"))
    return frames


class FrameBudget:
    """All frames of one video together may hold at most `max_pixels` pixels."""

    def __init__(self, what: str, rules: InputRules) -> None:
        self.what, self.rules, self.frames, self.pixels = what, rules, 0, 0

    def take(self, width: int, height: int) -> None:
        self.frames += 1
        self.pixels += width * height
        if self.pixels > self.rules.max_pixels:
            raise InputError(f"{self.what}: video too large ({self.frames}+ frames of {width}x{height}); all "
                             f"frames together may hold at most {self.rules.max_pixels} pixels")


def mp4_frames(data: bytes, what: str, rules: InputRules, max_frames: int) -> list[Image.Image]:
    import os
    import tempfile

    import imageio_ffmpeg
    import numpy as np

    fd, path = tempfile.mkstemp(suffix=".mp4")
    reader = None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        reader = imageio_ffmpeg.read_frames(path)
        meta = next(reader)
        w, h = meta["size"]
        if w * h > rules.max_pixels:
            raise bomb(what, rules, w, h)
        frames = []
        budget = FrameBudget(what, rules)
        for raw in reader:
            budget.take(w, h)
            frames.append(Image.fromarray(np.frombuffer(raw, np.uint8).reshape(h, w, 3)))
            if len(frames) >= max_frames:
                break
    except (OSError, RuntimeError, StopIteration) as e:
        raise InputError(f"{what}: the video could not be decoded ({e})") from None
    finally:
        if reader is not None:
            reader.close()  # stops the ffmpeg process on every path, errors included
        os.unlink(path)
    if not frames:
        raise InputError(f"{what}: the video has no frames")
    return frames
