"""`lanterna evaluate clip|fid|kid|prd|is|video`: metrics as JSON on stdout, progress on stderr."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from lanterna.evaluation.extraction import DEFAULT_BATCH, StatsCache
from lanterna.evaluation.features import (
    FeatureExtractor,
    InceptionFeatures,
    MissingFeatureWeights,
    available_feature_extractors,
    get_feature_extractor,
)
from lanterna.evaluation.image_io import IMAGE_SUFFIXES, list_image_files

log = logging.getLogger("lanterna.evaluation.cli")

INCEPTION_NAMES = {"inception-v3": False, "inception-v3-logits": True}


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="score images and videos (CLIP, FID, KID, IS, ...)")
    commands = p.add_subparsers(dest="metric", required=True, metavar="METRIC")

    clip = commands.add_parser("clip", help="CLIP score of images against a prompt")
    clip.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    clip.add_argument("--prompt", required=True)
    add_scorer_option(clip)
    clip.add_argument("--batch-size", type=int, default=32)
    clip.set_defaults(func=run_clip)

    for name, help_text in (("fid", "Frechet distance between two image sets"),
                            ("kid", "kernel inception distance between two image sets"),
                            ("prd", "precision and recall (k-NN manifolds) of a generated set")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("reference", type=Path, help="reference images (a folder)")
        sub.add_argument("generated", type=Path, help="generated images (a folder)")
        add_feature_options(sub, default="shapes-clip")
        sub.add_argument("--cache-dir", type=Path, help="reference stats cache "
                         "(default $LANTERNA_STATS_CACHE or ~/.cache/lanterna/stats)")
        sub.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
        if name == "kid":
            sub.add_argument("--subsets", type=int, default=100)
            sub.add_argument("--subset-size", type=int, default=1000,
                             help="images a subset (shrinks to the smaller set)")
            sub.add_argument("--seed", type=int, default=0)
        if name == "prd":
            sub.add_argument("--k", type=int, default=3, help="neighbour that sets a ball's radius")
        sub.set_defaults(func=run_set_metric)

    score = commands.add_parser("is", help="Inception Score of one image set (needs class logits)")
    score.add_argument("images", type=Path, help="a folder of images")
    add_feature_options(score, default="inception-v3-logits")
    score.add_argument("--splits", type=int, default=10)
    score.add_argument("--seed", type=int, default=0)
    score.set_defaults(func=run_inception_score)

    video = commands.add_parser("video", help="flicker, smoothness, consistency and CLIP of a clip")
    video.add_argument("video", type=Path, help="a GIF / WebP / MP4, or a folder of frames")
    video.add_argument("--prompt", help="score every frame against this prompt")
    add_scorer_option(video)
    add_feature_options(video, default="shapes-clip", help_text="features for subject consistency")
    video.set_defaults(func=run_video)


def add_scorer_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scorer", type=Path, help="a CLIP folder in transformers format "
                        "(default: the bundled shapes-clip)")


def add_feature_options(parser: argparse.ArgumentParser, default: str,
                        help_text: str = "feature extractor") -> None:
    parser.add_argument("--features", default=default,
                        help=f"{help_text}: {', '.join(available_feature_extractors())} or a "
                             f"registered name (default {default})")
    parser.add_argument("--inception-weights", type=Path,
                        help="local Inception-v3 weights file for the inception-v3 features")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)


def extractor_from_args(args: argparse.Namespace) -> FeatureExtractor:
    if args.features in INCEPTION_NAMES and args.inception_weights:
        return InceptionFeatures(args.inception_weights, logits=INCEPTION_NAMES[args.features])
    return get_feature_extractor(args.features)


def image_paths(items: list[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            paths.extend(list_image_files(item))
        elif item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES:
            paths.append(item)
        else:
            raise FileNotFoundError(f"not an image file or folder: {item}")
    return paths


def emit(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    sys.stdout.flush()


def reporting_errors(run):
    """Known failures (missing weights, bad paths, bad sizes) end with a message and exit code 2."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (MissingFeatureWeights, FileNotFoundError, KeyError, ValueError, TypeError) as e:
            message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            sys.stderr.write(f"error: {message}\n")
            return 2

    return wrapped


@reporting_errors
def run_clip(args: argparse.Namespace) -> int:
    from lanterna.evaluation.clip_score import clip_score, load_scorer
    from lanterna.evaluation.image_io import load_rgb

    paths = image_paths(args.images)
    scorer = load_scorer(args.scorer)
    if hasattr(scorer, "batch_size"):
        scorer.batch_size = args.batch_size
    summary = clip_score(scorer, [load_rgb(p) for p in paths], args.prompt)
    emit({"metric": "clip_score", "scorer": scorer.name, "prompt": args.prompt,
          "images": [{"path": str(p), "clip_score": s} for p, s in zip(paths, summary.per_image)],
          "mean": summary.mean})
    return 0


@reporting_errors
def run_set_metric(args: argparse.Namespace) -> int:
    from lanterna.evaluation import sets

    reference, generated = image_paths([args.reference]), image_paths([args.generated])
    extractor = extractor_from_args(args)
    cache: StatsCache | bool = False if args.no_cache else StatsCache(args.cache_dir)
    common = dict(cache=cache, batch_size=args.batch_size, progress=True)
    messages: list[str] = []
    if args.metric == "fid":
        with sets.ill_conditioned_messages() as messages:
            values = {"fid": sets.compute_fid(reference, generated, extractor, **common)}
        for message in messages:
            log.warning("%s", message)
    elif args.metric == "kid":
        kid = sets.compute_kid(reference, generated, extractor, subsets=args.subsets,
                               subset_size=args.subset_size, seed=args.seed, **common)
        values = {"kid_mean": kid.mean, "kid_std": kid.std, "subsets": args.subsets,
                  "subset_size": min(args.subset_size, len(reference), len(generated))}
    else:
        pr = sets.compute_precision_recall(reference, generated, extractor, k=args.k, **common)
        values = {"precision": pr.precision, "recall": pr.recall, "k": args.k}
    emit({"metric": args.metric, **values, "features": extractor.name,
          "reference": str(args.reference), "generated": str(args.generated),
          "reference_images": len(reference), "generated_images": len(generated),
          "reference_cached": isinstance(cache, StatsCache) and cache.hits > 0,
          "warnings": messages})
    return 0


@reporting_errors
def run_inception_score(args: argparse.Namespace) -> int:
    from lanterna.evaluation.sets import compute_inception_score

    paths = image_paths([args.images])
    extractor = extractor_from_args(args)
    score = compute_inception_score(paths, extractor, splits=args.splits, seed=args.seed,
                                    batch_size=args.batch_size, progress=True)
    emit({"metric": "inception_score", "inception_score_mean": score.mean,
          "inception_score_std": score.std, "splits": args.splits, "features": extractor.name,
          "images": len(paths)})
    return 0


@reporting_errors
def run_video(args: argparse.Namespace) -> int:
    from lanterna.evaluation.clip_score import load_scorer
    from lanterna.evaluation.video_metrics import evaluate_video, load_video

    frames = load_video(args.video)
    warnings: list[str] = []
    scorer = None
    if args.prompt is not None:
        scorer = load_scorer(args.scorer)  # asked for: a missing scorer is an error
    try:
        extractor = extractor_from_args(args)
    except MissingFeatureWeights as e:
        # Flicker and smoothness need no model: report them, and say what is missing.
        warnings.append(f"subject consistency skipped: {e}")
        log.warning("%s", warnings[-1])
        extractor = None
    report = evaluate_video(frames, args.prompt, scorer, extractor)
    emit({"metric": "video", "video": str(args.video), **asdict(report),
          "features": extractor.name if extractor else None,
          "scorer": scorer.name if scorer else None, "warnings": warnings})
    return 0
