"""Set metrics over images: a reference set against a generated one (folders, lists, tensors).

The reference side goes through the stats cache (lanterna/evaluation/extraction.py) unless
`cache=False`; the generated side, which changes run to run, is always computed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from lanterna.evaluation.extraction import DEFAULT_BATCH, StatsCache, extract_features, feature_stats
from lanterna.evaluation.features import FeatureExtractor, get_feature_extractor
from lanterna.evaluation.image_io import ImageSource
from lanterna.evaluation.set_metrics import (
    FeatureStats,
    IllConditionedWarning,
    MeanStd,
    PrecisionRecall,
    fid_conditioning_warning,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)

CacheChoice = StatsCache | bool


def resolve_cache(cache: CacheChoice) -> StatsCache | None:
    if isinstance(cache, StatsCache):
        return cache
    return StatsCache() if cache else None


def reference_stats(reference: ImageSource, extractor: FeatureExtractor, cache: CacheChoice = True,
                    batch_size: int = DEFAULT_BATCH, progress: bool = False) -> FeatureStats:
    store = resolve_cache(cache)
    if store is None:
        return feature_stats(reference, extractor, batch_size, progress)
    return store.stats(reference, extractor, batch_size, progress)


def reference_features(reference: ImageSource, extractor: FeatureExtractor, cache: CacheChoice = True,
                       batch_size: int = DEFAULT_BATCH, progress: bool = False):
    store = resolve_cache(cache)
    if store is None:
        return extract_features(reference, extractor, batch_size, progress)
    return store.features(reference, extractor, batch_size, progress)


@contextlib.contextmanager
def ill_conditioned_messages() -> Iterator[list[str]]:
    """Collects the IllConditionedWarning messages raised inside, for a report to carry."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IllConditionedWarning)
        messages: list[str] = []
        yield messages
    messages += [str(w.message) for w in caught if issubclass(w.category, IllConditionedWarning)]


def compute_fid(reference: ImageSource, generated: ImageSource,
                features: str | FeatureExtractor = "shapes-clip", cache: CacheChoice = True,
                batch_size: int = DEFAULT_BATCH, progress: bool = False) -> float:
    """Frechet distance between the two sets' feature Gaussians (FID with `inception-v3`)."""
    extractor = get_feature_extractor(features)
    ref = reference_stats(reference, extractor, cache, batch_size, progress)
    gen = feature_stats(generated, extractor, batch_size, progress)
    message = fid_conditioning_warning(ref, gen)
    if message:
        warnings.warn(message, IllConditionedWarning, stacklevel=2)
    return frechet_distance(ref, gen)


def compute_kid(reference: ImageSource, generated: ImageSource,
                features: str | FeatureExtractor = "shapes-clip", subsets: int = 100,
                subset_size: int = 1000, seed: int | None = 0, cache: CacheChoice = True,
                batch_size: int = DEFAULT_BATCH, progress: bool = False) -> MeanStd:
    """KID over random subsets; `subset_size` shrinks to the smaller set when that is smaller."""
    extractor = get_feature_extractor(features)
    ref = reference_features(reference, extractor, cache, batch_size, progress)
    gen = extract_features(generated, extractor, batch_size, progress)
    size = min(subset_size, len(ref), len(gen))
    return kernel_inception_distance(ref, gen, subsets=subsets, subset_size=size, seed=seed)


def compute_precision_recall(reference: ImageSource, generated: ImageSource,
                             features: str | FeatureExtractor = "shapes-clip", k: int = 3,
                             cache: CacheChoice = True, batch_size: int = DEFAULT_BATCH,
                             progress: bool = False) -> PrecisionRecall:
    extractor = get_feature_extractor(features)
    ref = reference_features(reference, extractor, cache, batch_size, progress)
    gen = extract_features(generated, extractor, batch_size, progress)
    return precision_recall(ref, gen, k=k)


def compute_inception_score(images: ImageSource,
                            features: str | FeatureExtractor = "inception-v3-logits",
                            splits: int = 10, seed: int | None = 0, batch_size: int = DEFAULT_BATCH,
                            progress: bool = False) -> MeanStd:
    """IS of one set; `features` must give class logits (a classifier head)."""
    extractor = get_feature_extractor(features)
    logits = extract_features(images, extractor, batch_size, progress)
    return inception_score(logits, splits=splits, seed=seed)
