"""Features of an image set, and an on-disk cache of a reference set's features and statistics.

A cache entry is keyed by sha256 of the set's content (file bytes or pixel bytes, see
`ImageSet.content_hash`), the extractor's name and its weights' fingerprint, so editing one image,
or retraining the extractor, misses the cache. Entries are .npz files under the cache directory:
`cache_dir`, else $LANTERNA_STATS_CACHE, else ~/.cache/lanterna/stats.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lanterna.evaluation.features import FeatureExtractor, fingerprint
from lanterna.evaluation.image_io import ImageSet, ImageSource
from lanterna.evaluation.set_metrics import FeatureStats, StatsAccumulator

log = logging.getLogger("lanterna.evaluation.extraction")

CACHE_ENV = "LANTERNA_STATS_CACHE"
DEFAULT_BATCH = 64


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lanterna" / "stats").expanduser()


def batches_with_progress(images: ImageSet, batch_size: int, progress: bool, label: str):
    """The set's batches, with a tqdm bar on stderr when the set spans more than one batch."""
    bar = tqdm(total=len(images), desc=label, unit="img", file=sys.stderr, leave=False,
               disable=not progress or len(images) <= batch_size)
    with bar:
        for batch in images.batches(batch_size):
            yield batch
            bar.update(len(batch))


def extract_features(source: ImageSource, extractor: FeatureExtractor, batch_size: int = DEFAULT_BATCH,
                     progress: bool = False) -> torch.Tensor:
    """N x dim features of every image, in the extractor's dtype, on the CPU."""
    images = ImageSet.of(source)
    with torch.inference_mode():
        parts = [extractor(batch).cpu()
                 for batch in batches_with_progress(images, batch_size, progress, extractor.name)]
    return torch.cat(parts).clone()  # a normal tensor again, usable outside inference mode


class StatsCache:
    """Features and statistics of image sets, on disk; counts its hits and misses."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def key(self, images: ImageSet, extractor: FeatureExtractor, kind: str) -> str:
        text = f"{images.content_hash()}|{extractor.name}|{fingerprint(extractor)}|{kind}"
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            with np.load(path) as data:
                entry = {name: data[name] for name in data.files}
        except (OSError, ValueError) as e:  # a torn or foreign file: recompute and overwrite it
            log.warning("ignoring unreadable cache entry %s: %s", path, e)
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def save(self, key: str, **arrays: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        tmp = self.path(key).with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, self.path(key))

    def features(self, source: ImageSource, extractor: FeatureExtractor,
                 batch_size: int = DEFAULT_BATCH, progress: bool = False) -> torch.Tensor:
        images = ImageSet.of(source)
        key = self.key(images, extractor, "features")
        entry = self.load(key)
        if entry is not None:
            return torch.from_numpy(entry["features"])
        features = extract_features(images, extractor, batch_size, progress)
        self.save(key, features=features.numpy())
        return features

    def stats(self, source: ImageSource, extractor: FeatureExtractor,
              batch_size: int = DEFAULT_BATCH, progress: bool = False) -> FeatureStats:
        images = ImageSet.of(source)
        key = self.key(images, extractor, "stats")
        entry = self.load(key)
        if entry is not None:
            return FeatureStats(entry["mean"], entry["cov"], int(entry["count"]), entry.get("factor"))
        stats = feature_stats(images, extractor, batch_size, progress)
        extra = {} if stats.factor is None else {"factor": stats.factor}
        self.save(key, mean=stats.mean, cov=stats.cov, count=np.array(stats.count), **extra)
        return stats


def feature_stats(source: ImageSource, extractor: FeatureExtractor, batch_size: int = DEFAULT_BATCH,
                  progress: bool = False) -> FeatureStats:
    """Mean and covariance of a set's features, accumulated batch by batch (no N x d matrix)."""
    images = ImageSet.of(source)
    acc = StatsAccumulator()
    with torch.inference_mode():
        for batch in batches_with_progress(images, batch_size, progress, extractor.name):
            acc.add(extractor(batch))
        return acc.stats()
