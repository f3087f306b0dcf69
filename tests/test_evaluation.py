"""Evaluation suite: every metric against torchmetrics on the same features, plus its invariants."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lanterna.engines.base import Scorer
from lanterna.evaluation import sets
from lanterna.evaluation.cli import register_cli
from lanterna.evaluation.clip_score import TransformersCLIPScorer, clip_score
from lanterna.evaluation.extraction import StatsCache, extract_features
from lanterna.evaluation.features import (
    InceptionFeatures,
    MissingFeatureWeights,
    ModuleFeatures,
    get_feature_extractor,
    register_feature_extractor,
)
from lanterna.evaluation.image_io import ImageSet, uint8_to_pil
from lanterna.evaluation.inception import resize_like_tf1
from lanterna.evaluation.set_metrics import (
    FeatureStats,
    frechet_distance,
    kernel_inception_distance,
    mmd2_unbiased,
    precision_recall,
)
from lanterna.evaluation.video_metrics import (
    evaluate_video,
    load_video,
    motion_smoothness,
    subject_consistency,
    temporal_flicker,
)

BACKGROUNDS = [(245, 245, 245), (15, 15, 15), (128, 128, 128)]
COLOURS = [(220, 40, 40), (40, 170, 70), (40, 90, 220), (235, 205, 40), (140, 60, 190), (240, 130, 30)]


def rel_close(ours: float, theirs: float, rel: float = 1e-3) -> bool:
    return abs(ours - theirs) <= rel * max(abs(theirs), 1e-12)


class SmallConvNet(torch.nn.Module):
    """A fixed random conv net: uint8 B x 3 x H x W -> float64 features (or logits)."""

    def __init__(self, out: int = 24, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 12, 5, stride=2)
        self.conv2 = torch.nn.Conv2d(12, 16, 3, stride=2)
        self.head = torch.nn.Linear(16 * 4, out)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        self.double()
        self.num_features = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.double() / 127.5 - 1.0
        h = torch.tanh(self.conv2(torch.tanh(self.conv1(h))))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


def random_images(n: int, size: int = 32, seed: int = 0, high: int = 256) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def shapes_images(n: int, size: int = 32, seed: int = 0, colours=COLOURS) -> torch.Tensor:
    """Shapes-World-like scenes: 1-3 filled rectangles and circles on a plain background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        out[i] = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
        for _ in range(rng.integers(1, 4)):
            colour = colours[rng.integers(len(colours))]
            side = int(rng.integers(6, 14))
            x0, y0 = rng.integers(1, size - side - 1, size=2)
            if rng.integers(2):
                out[i, y0:y0 + side, x0:x0 + side] = colour
            else:
                r = side / 2
                disc = (yy - y0 - r) ** 2 + (xx - x0 - r) ** 2 <= r * r
                out[i][disc] = colour
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


IMAGE_SETS = {
    "random": lambda: (random_images(96, seed=1), random_images(80, seed=2, high=200)),
    "shapes": lambda: (shapes_images(96, seed=1), shapes_images(80, seed=2, colours=COLOURS[:3])),
}


@pytest.fixture(scope="module")
def net() -> SmallConvNet:
    return SmallConvNet()


@pytest.fixture(scope="module")
def extractor(net) -> ModuleFeatures:
    return ModuleFeatures("small-conv", net)


# ---- FID / KID / IS against torchmetrics -------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(IMAGE_SETS))
def test_fid_matches_torchmetrics(kind, net, extractor):
    from torchmetrics.image.fid import FrechetInceptionDistance

    ref, gen = IMAGE_SETS[kind]()
    metric = FrechetInceptionDistance(feature=net)
    metric.update(ref, real=True)
    metric.update(gen, real=False)
    theirs = float(metric.compute())
    ours = sets.compute_fid(ref, gen, extractor, cache=False, batch_size=32)
    assert theirs > 1e-3
    assert rel_close(ours, theirs, 1e-6), (ours, theirs)  # float64 features: both sides agree closely


def test_fid_matches_torchmetrics_when_covariances_are_singular():
    from torchmetrics.image.fid import FrechetInceptionDistance

    wide = SmallConvNet(out=64, seed=3)  # 64-d features from 40 images: rank-deficient covariances
    ref, gen = shapes_images(40, seed=4), shapes_images(40, seed=5)
    metric = FrechetInceptionDistance(feature=wide)
    metric.update(ref, real=True)
    metric.update(gen, real=False)
    ours = sets.compute_fid(ref, gen, ModuleFeatures("wide", wide), cache=False)
    # torchmetrics' eigvals of the non-symmetric product loses digits here (its FID of a set
    # with itself is ~1e-5 off zero on these features; ours is exact to round-off).
    assert rel_close(ours, float(metric.compute())), (ours, float(metric.compute()))


@pytest.mark.parametrize("kind", sorted(IMAGE_SETS))
def test_kid_matches_torchmetrics(kind, net, extractor):
    from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

    ref, gen = IMAGE_SETS[kind]()
    metric = KernelInceptionDistance(feature=net, subsets=6, subset_size=50)
    metric.update(ref, real=True)
    metric.update(gen, real=False)
    torch.manual_seed(123)  # torchmetrics draws its subsets from the global generator
    their_mean, their_std = (float(v) for v in metric.compute())
    ours = sets.compute_kid(ref, gen, extractor, subsets=6, subset_size=50, seed=123, cache=False)
    assert rel_close(ours.mean, their_mean, 1e-6) and rel_close(ours.std, their_std, 1e-6)

    # The full-set MMD^2 needs no draws at all (equal sizes: torchmetrics' estimator assumes them).
    fr, fg = net(ref[:80]).detach(), net(gen).detach()
    assert rel_close(mmd2_unbiased(fr, fg), float(poly_mmd(fr, fg)), 1e-6)


@pytest.mark.parametrize("kind", sorted(IMAGE_SETS))
def test_inception_score_matches_torchmetrics(kind):
    from torchmetrics.image.inception import InceptionScore

    classifier = SmallConvNet(out=10, seed=7)
    images = torch.cat(IMAGE_SETS[kind]())
    metric = InceptionScore(feature=classifier, splits=4)
    metric.update(images)
    torch.manual_seed(5)
    their_mean, their_std = (float(v) for v in metric.compute())
    ours = sets.compute_inception_score(images, ModuleFeatures("classifier", classifier), splits=4, seed=5)
    assert their_mean > 1.05
    assert rel_close(ours.mean, their_mean, 1e-6) and rel_close(ours.std, their_std, 1e-6)


# ---- FID invariants ----------------------------------------------------------------------------

def test_fid_of_a_set_with_itself_is_zero(extractor):
    images = shapes_images(64, seed=9)
    assert sets.compute_fid(images, images, extractor, cache=False) == pytest.approx(0, abs=1e-6)
    wide = torch.randn(30, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 5
    stats = FeatureStats.of(wide)  # rank 29 of 256
    assert frechet_distance(stats, stats) == pytest.approx(0, abs=1e-6)


def test_fid_factor_paths_agree():
    """Exact data factors (small sets), eigen-factors of a singular covariance and Cholesky."""
    from dataclasses import replace

    g = torch.Generator().manual_seed(2)
    small1 = torch.randn(40, 96, dtype=torch.float64, generator=g) @ torch.randn(96, 96, dtype=torch.float64, generator=g)
    small2 = torch.randn(50, 96, dtype=torch.float64, generator=g) + 0.3
    s1, s2 = FeatureStats.of(small1), FeatureStats.of(small2)
    assert s1.factor is not None and s1.is_singular()
    assert np.allclose(s1.factor @ s1.factor.T, s1.cov)
    by_data = frechet_distance(s1, s2)
    by_eigen = frechet_distance(replace(s1, factor=None), replace(s2, factor=None))
    assert by_data == pytest.approx(by_eigen, rel=1e-9)
    assert frechet_distance(replace(s1, factor=None), replace(s1, factor=None)) == pytest.approx(0, abs=1e-6)
    big1, big2 = (torch.cat([x, x * 0.9 + 0.1, x * 1.1 - 0.1]) for x in (small1, small2))
    b1, b2 = FeatureStats.of(big1[:100]), FeatureStats.of(big2[:100])  # 100 > 96: full rank, Cholesky
    assert b1.factor is None and not b1.is_singular()
    reference = float(np.sum((b1.mean - b2.mean) ** 2) + np.trace(b1.cov) + np.trace(b2.cov)
                      - 2 * np.sqrt(np.linalg.eigvals(b1.cov @ b2.cov).astype(complex)).real.sum())
    assert frechet_distance(b1, b2) == pytest.approx(reference, rel=1e-8)


def test_fid_with_equal_covariances_is_the_squared_mean_distance():
    x = torch.randn(200, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    shift = torch.linspace(-1, 2, 16, dtype=torch.float64)
    fid = frechet_distance(FeatureStats.of(x), FeatureStats.of(x + shift))
    assert fid == pytest.approx(float((shift ** 2).sum()), rel=1e-9)


def test_fid_is_symmetric(extractor):
    a, b = shapes_images(50, seed=2), random_images(60, seed=3)
    ab = sets.compute_fid(a, b, extractor, cache=False)
    ba = sets.compute_fid(b, a, extractor, cache=False)
    assert ab > 0.01 and ab == pytest.approx(ba, rel=1e-9)


def test_kid_is_near_zero_for_two_draws_of_one_distribution():
    g = torch.Generator().manual_seed(4)
    x, y, far = (torch.randn(300, 8, dtype=torch.float64, generator=g) for _ in range(3))
    same = kernel_inception_distance(x, y, subsets=10, subset_size=100)
    apart = kernel_inception_distance(x, far + 3, subsets=10, subset_size=100)
    assert abs(same.mean) < 0.05 < apart.mean


# ---- precision / recall ------------------------------------------------------------------------

def naive_precision_recall(ref: torch.Tensor, gen: torch.Tensor, k: int) -> tuple[float, float]:
    def covered(points, centres):
        d_cc = torch.cdist(centres, centres, compute_mode="donot_use_mm_for_euclid_dist")
        radii = d_cc.sort(dim=1).values[:, k]
        d = torch.cdist(points, centres, compute_mode="donot_use_mm_for_euclid_dist")
        return float((d <= radii).any(dim=1).double().mean())

    return covered(gen, ref), covered(ref, gen)


def test_precision_recall_extremes_and_brute_force():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(120, 6, dtype=torch.float64, generator=g)
    assert precision_recall(x, x) == precision_recall(x.clone(), x.clone())
    pr = precision_recall(x, x.clone())
    assert (pr.precision, pr.recall) == (1.0, 1.0)
    pr = precision_recall(x, x + 100)
    assert (pr.precision, pr.recall) == (0.0, 0.0)
    y = torch.randn(90, 6, dtype=torch.float64, generator=g) * 1.5 + 0.5
    for k in (3, 5):
        pr = precision_recall(x, y, k=k)
        assert (pr.precision, pr.recall) == pytest.approx(naive_precision_recall(x, y, k), abs=1e-12)
        assert 0 < pr.precision < 1 and 0 < pr.recall < 1


def test_precision_recall_on_images(extractor):
    a = shapes_images(40, seed=11)
    pr = sets.compute_precision_recall(a, a, extractor, cache=False)
    assert (pr.precision, pr.recall) == (1.0, 1.0)


# ---- stats cache -------------------------------------------------------------------------------

class CountingFeatures:
    def __init__(self, inner: ModuleFeatures) -> None:
        self.inner, self.name, self.dim, self.images = inner, "counting", inner.dim, 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.images += len(images)
        return self.inner(images)


def save_folder(images: torch.Tensor, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(uint8_to_pil(images)):
        im.save(folder / f"{i:04d}.png")
    return folder


def test_stats_cache_hits_on_the_same_set_and_misses_a_changed_one(tmp_path, extractor):
    counting = CountingFeatures(extractor)
    cache = StatsCache(tmp_path / "cache")
    ref = save_folder(shapes_images(30, seed=1), tmp_path / "ref")
    gen = shapes_images(20, seed=2)

    first = sets.compute_fid(ref, gen, counting, cache=cache, batch_size=8)
    assert (cache.hits, cache.misses, counting.images) == (0, 1, 50)
    second = sets.compute_fid(ref, gen, counting, cache=cache, batch_size=8)
    assert (cache.hits, cache.misses, counting.images) == (1, 1, 70)  # only the generated set
    assert second == first
    assert first == pytest.approx(sets.compute_fid(ref, gen, extractor, cache=False), rel=1e-8)

    changed = np.array(Image.open(ref / "0003.png"))
    changed[0, 0] = 255 - changed[0, 0]
    Image.fromarray(changed).save(ref / "0003.png")
    sets.compute_fid(ref, gen, counting, cache=cache, batch_size=8)
    assert (cache.hits, cache.misses) == (1, 2)

    # In-memory sets are keyed by their pixels; another extractor name is another entry.
    tensor_ref = shapes_images(30, seed=1)
    sets.compute_fid(tensor_ref, gen, counting, cache=cache)
    sets.compute_fid(tensor_ref.clone(), gen, counting, cache=cache)
    assert (cache.hits, cache.misses) == (2, 3)
    sets.compute_fid(tensor_ref, gen, ModuleFeatures("other", extractor.fn), cache=cache)
    assert cache.misses == 4
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 4


def test_image_set_batches_split_on_size_changes(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, size in enumerate([16, 16, 16, 24, 24]):
        Image.new("RGB", (size, size), (i, 0, 0)).save(folder / f"{i}.png")
    shapes = [tuple(b.shape) for b in ImageSet.of(folder).batches(2)]
    assert shapes == [(2, 3, 16, 16), (1, 3, 16, 16), (2, 3, 24, 24)]


# ---- feature extractors ------------------------------------------------------------------------

def test_registered_extractor_is_found_by_name(extractor):
    register_feature_extractor("test-registered", lambda: extractor)
    assert get_feature_extractor("test-registered") is extractor
    with pytest.raises(KeyError, match="test-registered"):
        get_feature_extractor("no-such-features")


def test_inception_loads_local_weights_and_says_where_missing_ones_go(tmp_path, monkeypatch):
    from lanterna.evaluation.inception import FIDInceptionV3

    monkeypatch.delenv("LANTERNA_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(MissingFeatureWeights, match="pt_inception-2015-12-05-6726825d.pth"):
        InceptionFeatures()
    path = tmp_path / "inception.pth"
    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), path)
    images = random_images(1, size=40)
    pool, logits = InceptionFeatures(path), InceptionFeatures(path, logits=True)
    p, lg = pool(images), logits(images)
    assert p.shape == (1, 2048) and lg.shape == (1, 1008) and torch.isfinite(lg).all()
    assert torch.allclose(lg, p @ pool.net.fc.weight.T)
    assert pool.fingerprint and pool.fingerprint == logits.fingerprint


def test_tf1_resize_keeps_pixels_on_integer_downscale_and_identity():
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    assert torch.equal(resize_like_tf1(x, 12), x)
    assert torch.equal(resize_like_tf1(x, 4), x[:, :, ::3, ::3])
    up = resize_like_tf1(x, 24)  # source coordinate = i / 2: every other pixel is a midpoint
    assert torch.allclose(up[:, :, 1, 1], (x[:, :, 0, 0] + x[:, :, 0, 1] + x[:, :, 1, 0] + x[:, :, 1, 1]) / 4)
    assert torch.equal(up[:, :, -1, -1], x[:, :, -1, -1])


# ---- CLIP score against torchmetrics -----------------------------------------------------------

WORDS = ["a", "an", "red", "blue", "green", "circle", "square", "triangle", "of", "photo", "left", "on"]


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A random tiny CLIP saved in transformers format, with a BPE vocabulary written here."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = tmp_path_factory.mktemp("tiny-clip")
    vocab: dict[str, int] = {}
    for c in sorted(set("".join(WORDS))):
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges: list[str] = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    eot = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=24,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=eot, pad_token_id=eot),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    return path


class TensorFeatures(torch.nn.Module):
    """torchmetrics 1.9 divides what `get_*_features` returns by its norm, but transformers 5
    returns a ModelOutput there (torchmetrics issue #3407, fixed upstream after 1.9): hand it the
    projected embedding, as transformers 4 did. Nothing else about the model changes."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs):
        return self.model.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs):
        return self.model.get_text_features(*args, **kwargs).pooler_output


def test_clip_score_matches_torchmetrics(tiny_clip_dir):
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    def load():
        return (TensorFeatures(CLIPModel.from_pretrained(str(tiny_clip_dir))),
                CLIPProcessor.from_pretrained(str(tiny_clip_dir)))

    metric = CLIPScore(model_name_or_path=load)
    # Square and non-square images: the processor's resize and centre crop both take part.
    images = list(shapes_images(4, size=40, seed=3)) + list(random_images(3, size=48, seed=4)[:, :, :, 6:42])
    pil_images = [uint8_to_pil(im[None])[0] for im in images]
    prompts = ["a red circle", "a blue square left of a green triangle", "a photo of a circle",
               "green", "an red triangle on a blue square", "a photo", "square"]
    scorer = TransformersCLIPScorer(tiny_clip_dir, batch_size=3)
    assert isinstance(scorer, Scorer)
    ours = scorer.clip_scores(pil_images, prompts)
    theirs = []
    for image, prompt in zip(images, prompts):
        metric.reset()
        with torch.no_grad():
            theirs.append(float(metric(image, prompt)))
    assert sum(t > 1 for t in theirs) >= 2  # the comparison covers real, unclamped scores
    assert ours == pytest.approx(theirs, rel=1e-3, abs=1e-4)
    summary = clip_score(scorer, pil_images[:3], "a red circle")
    assert summary.mean == pytest.approx(np.mean(summary.per_image))
    assert summary.per_image[0] == pytest.approx(ours[0], rel=1e-5)


# ---- video metrics -----------------------------------------------------------------------------

def moving_square(frames: int = 8, size: int = 32) -> torch.Tensor:
    clip = torch.full((frames, 3, size, size), 128, dtype=torch.uint8)
    for t in range(frames):
        clip[t, :, 10:18, 2 + 2 * t:10 + 2 * t] = torch.tensor([220, 40, 40], dtype=torch.uint8)[:, None, None]
    return clip


def test_video_metrics_static_against_random(extractor):
    static = shapes_images(1, seed=3).repeat(8, 1, 1, 1)
    noisy = random_images(8, seed=8)
    assert temporal_flicker(static) == 1.0
    assert motion_smoothness(static) == 1.0
    assert subject_consistency(static, extractor) == pytest.approx(1.0, abs=1e-12)
    assert temporal_flicker(noisy) < 0.8
    assert motion_smoothness(noisy) < 0.9
    assert subject_consistency(noisy, extractor) < subject_consistency(moving_square(), extractor) < 1
    # A fade at a constant rate is perfectly smooth but flickers (VBench's flicker is per-pair).
    fade = torch.stack([torch.full((3, 16, 16), 10 * t, dtype=torch.uint8) for t in range(8)])
    assert motion_smoothness(fade) == 1.0 and temporal_flicker(fade) == pytest.approx(1 - 10 / 255)


def test_video_files_load_and_score(tmp_path, extractor, tiny_clip_dir):
    import imageio.v3 as iio

    clip = moving_square()
    array = clip.permute(0, 2, 3, 1).numpy()
    iio.imwrite(tmp_path / "clip.gif", array, duration=100, loop=0)
    iio.imwrite(tmp_path / "clip.mp4", array, plugin="FFMPEG", fps=8)
    gif = load_video(tmp_path / "clip.gif")
    assert len(gif) == 8 and np.array_equal(np.stack([np.asarray(f) for f in gif]), array)
    mp4 = load_video(tmp_path / "clip.mp4")
    assert len(mp4) == 8 and mp4[0].size == (32, 32)
    scorer = TransformersCLIPScorer(tiny_clip_dir)
    report = evaluate_video(gif, "a red square", scorer, extractor)
    assert report.temporal_flicker == pytest.approx(temporal_flicker(clip))
    assert report.clip_score == pytest.approx(np.mean(scorer.clip_scores(gif, ["a red square"] * 8)))


# ---- CLI ---------------------------------------------------------------------------------------

def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="lanterna")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_set_metrics_print_the_library_numbers(tmp_path, capsys, extractor):
    register_feature_extractor("test-small-conv", lambda: extractor)
    ref = save_folder(shapes_images(40, seed=1), tmp_path / "ref")
    gen = save_folder(shapes_images(36, seed=2, colours=COLOURS[:2]), tmp_path / "gen")
    common = ["--features", "test-small-conv", "--cache-dir", str(tmp_path / "cache"), "--batch-size", "16"]

    code, out, _ = run_cli(["evaluate", "fid", str(ref), str(gen), *common], capsys)
    result = json.loads(out)
    assert code == 0 and result["features"] == "small-conv" and not result["reference_cached"]
    assert result["fid"] == pytest.approx(sets.compute_fid(ref, gen, extractor, cache=False), rel=1e-12)
    assert result["fid"] > 0 and (result["reference_images"], result["generated_images"]) == (40, 36)
    code, out, _ = run_cli(["evaluate", "fid", str(ref), str(gen), *common], capsys)
    assert json.loads(out)["reference_cached"] and json.loads(out)["fid"] == result["fid"]

    code, out, _ = run_cli(["evaluate", "kid", str(ref), str(gen), *common, "--subsets", "5",
                            "--subset-size", "30"], capsys)
    kid = sets.compute_kid(ref, gen, extractor, subsets=5, subset_size=30, cache=False)
    assert json.loads(out)["kid_mean"] == pytest.approx(kid.mean, rel=1e-12)
    code, out, _ = run_cli(["evaluate", "prd", str(ref), str(ref), *common], capsys)
    assert (json.loads(out)["precision"], json.loads(out)["recall"]) == (1.0, 1.0)

    register_feature_extractor("test-classifier", lambda: ModuleFeatures("classifier", SmallConvNet(10, 7)))
    code, out, _ = run_cli(["evaluate", "is", str(ref), "--features", "test-classifier", "--splits", "2"], capsys)
    assert code == 0 and json.loads(out)["inception_score_mean"] > 1


def test_cli_clip_and_video(tmp_path, capsys, tiny_clip_dir, extractor):
    import imageio.v3 as iio

    register_feature_extractor("test-small-conv", lambda: extractor)
    folder = save_folder(shapes_images(3, size=40, seed=5), tmp_path / "imgs")
    code, out, _ = run_cli(["evaluate", "clip", str(folder / "0000.png"), str(folder / "0002.png"),
                            "--prompt", "a red circle", "--scorer", str(tiny_clip_dir)], capsys)
    result = json.loads(out)
    expected = TransformersCLIPScorer(tiny_clip_dir).clip_scores(
        [Image.open(folder / "0000.png"), Image.open(folder / "0002.png")], ["a red circle"])
    assert code == 0 and [r["clip_score"] for r in result["images"]] == pytest.approx(expected)

    iio.imwrite(tmp_path / "clip.gif", moving_square().permute(0, 2, 3, 1).numpy(), duration=100)
    code, out, _ = run_cli(["evaluate", "video", str(tmp_path / "clip.gif"), "--prompt", "a red square",
                            "--scorer", str(tiny_clip_dir), "--features", "test-small-conv"], capsys)
    report = json.loads(out)
    assert code == 0 and report["frames"] == 8 and len(report["frame_clip_scores"]) == 8
    assert report["subject_consistency"] == pytest.approx(subject_consistency(moving_square(), extractor))


def test_cli_says_when_bundled_clip_weights_are_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LANTERNA_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    image = save_folder(shapes_images(1, seed=1), tmp_path / "one") / "0000.png"
    code, out, err = run_cli(["evaluate", "clip", str(image), "--prompt", "a red circle"], capsys)
    assert code == 2 and out == "" and "shapes-clip weights are missing" in err
    code, out, err = run_cli(["evaluate", "fid", str(image.parent), str(image.parent)], capsys)
    assert code == 2 and "shapes-clip weights are missing" in err
    code, out, err = run_cli(["evaluate", "fid", str(image.parent), str(tmp_path / "nowhere")], capsys)
    assert code == 2 and out == "" and "nowhere" in err
    iio_clip = tmp_path / "frames"
    save_folder(moving_square(), iio_clip)
    code, out, err = run_cli(["evaluate", "video", str(iio_clip)], capsys)
    report = json.loads(out)
    assert code == 0 and report["subject_consistency"] is None and "missing" in report["warnings"][0]
    assert report["temporal_flicker"] == pytest.approx(temporal_flicker(moving_square()))


def test_extract_features_batches_like_one_pass(extractor):
    images = shapes_images(37, seed=12)
    assert torch.allclose(extract_features(images, extractor, batch_size=8), extractor(images), atol=1e-12)


# ---- shapes-clip -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_shapes_clip():
    from lanterna.engines.nets.text import CLIP_SIZES, ShapesCLIP, ShapesCLIPConfig

    torch.manual_seed(2)
    return ShapesCLIP(ShapesCLIPConfig(**CLIP_SIZES["tiny"])).eval()


def test_shapes_clip_scorer_and_features(tiny_shapes_clip):
    from lanterna.engines.nets.text import ShapesTokenizer
    from lanterna.evaluation.clip_score import ShapesCLIPScorer
    from lanterna.evaluation.features import ShapesCLIPFeatures

    model, tokenizer = tiny_shapes_clip, ShapesTokenizer()
    scorer = ShapesCLIPScorer(model, tokenizer, batch_size=2)
    assert isinstance(scorer, Scorer)
    images = shapes_images(5, size=64, seed=21)
    prompts = ["a red circle", "a blue square", "two green triangles", "a red circle", "a yellow cross"]
    ours = scorer.clip_scores(uint8_to_pil(images), prompts)
    with torch.no_grad():
        tokens = tokenizer.encode(prompts)
        cos = torch.nn.functional.cosine_similarity(
            model.encode_image(images.float() / 127.5 - 1), model.encode_text(tokens.ids, tokens.mask))
    assert ours == pytest.approx((100 * cos.clamp_min(0)).tolist(), rel=1e-5, abs=1e-5)
    assert any(s > 0 for s in ours)

    features = ShapesCLIPFeatures(model)
    assert features.dim == model.config.embed_dim
    small = shapes_images(3, size=32, seed=22)  # other sizes are resized to the model's 64 x 64
    assert features(small).shape == (3, features.dim)
    assert scorer.clip_scores(uint8_to_pil(small), ["a red circle"]) == pytest.approx(
        (100 * torch.nn.functional.cosine_similarity(
            features(small), scorer.embed_texts(["a red circle"])).clamp_min(0)).tolist(), rel=1e-5, abs=1e-5)


def test_bundled_shapes_clip_scores_and_features(tmp_path, monkeypatch, capsys, tiny_shapes_clip):
    from dataclasses import asdict

    from lanterna.engines import weights
    from lanterna.engines.nets.text import ShapesTokenizer
    from lanterna.evaluation.clip_score import ShapesCLIPScorer

    weights.save_module(tiny_shapes_clip, "shapes-clip", tmp_path)
    weights.write_card("shapes-clip", {"net": "clip", "config": asdict(tiny_shapes_clip.config)}, tmp_path)
    monkeypatch.setenv("LANTERNA_WEIGHTS_DIR", str(tmp_path))
    images = uint8_to_pil(shapes_images(3, size=64, seed=23))
    bundled = ShapesCLIPScorer.from_bundled()
    direct = ShapesCLIPScorer(tiny_shapes_clip, ShapesTokenizer())
    assert bundled.clip_scores(images, ["a red circle"]) == pytest.approx(
        direct.clip_scores(images, ["a red circle"]), rel=1e-6, abs=1e-6)

    features = get_feature_extractor("shapes-clip")
    assert features.fingerprint == weights.weights_hash("shapes-clip", tmp_path)
    folder = save_folder(shapes_images(12, size=64, seed=24), tmp_path / "set")
    code, out, _ = run_cli(["evaluate", "fid", str(folder), str(folder), "--no-cache"], capsys)
    assert code == 0 and json.loads(out)["features"] == "shapes-clip"
    assert json.loads(out)["fid"] == pytest.approx(0, abs=1e-6)
    code, out, _ = run_cli(["evaluate", "clip", str(folder / "0000.png"), "--prompt", "a red circle"], capsys)
    assert code == 0 and json.loads(out)["scorer"] == "shapes-clip"


def test_fid_of_sets_smaller_than_the_feature_size_warns_with_the_count_needed(tmp_path, capsys, extractor):
    small_ref, small_gen = shapes_images(10, seed=1), shapes_images(12, seed=2)
    with pytest.warns(sets.IllConditionedWarning, match="at least 25 images"):
        sets.compute_fid(small_ref, small_gen, extractor, cache=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", sets.IllConditionedWarning)
        sets.compute_fid(shapes_images(30, seed=1), shapes_images(26, seed=2), extractor, cache=False)

    register_feature_extractor("test-small-conv", lambda: extractor)
    ref = save_folder(small_ref, tmp_path / "ref")
    gen = save_folder(shapes_images(40, seed=2), tmp_path / "gen")
    code, out, _ = run_cli(["evaluate", "fid", str(ref), str(gen), "--features", "test-small-conv",
                            "--no-cache"], capsys)
    result = json.loads(out)
    assert code == 0 and len(result["warnings"]) == 1
    assert "set of 10 images" in result["warnings"][0] and "feature size 24" in result["warnings"][0]


def test_an_unreadable_file_is_named_in_the_error(tmp_path, capsys, extractor):
    ref = save_folder(shapes_images(6, seed=1), tmp_path / "ref")
    whole = (ref / "0003.png").read_bytes()
    (ref / "0003.png").write_bytes(whole[: len(whole) // 2])
    (ref / "0005.png").write_text("not an image")
    with pytest.raises(ValueError, match="0003.png"):
        sets.compute_fid(ref, shapes_images(6, seed=2), extractor, cache=False)
    register_feature_extractor("test-small-conv", lambda: extractor)
    code, out, err = run_cli(["evaluate", "fid", str(ref), str(ref), "--features", "test-small-conv",
                              "--no-cache"], capsys)
    assert code == 2 and out == "" and "0003.png" in err
