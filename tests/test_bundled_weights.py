"""The weights that ship in the package: complete model cards, a size budget, and they generate."""

from __future__ import annotations

import pytest

from lanterna.engines import weights
from lanterna.engines.base import GenerationRequest
from lanterna.engines.bundled import IMAGE_MODELS, SCORER, VIDEO_MODELS, default_registry

BUNDLED = [n for n in ("shapes-vae", SCORER, *IMAGE_MODELS, *VIDEO_MODELS)
           if weights.has_weights(n, weights.BUNDLED_DIR)]
CARD_FIELDS = {"name", "net", "config", "recipe", "steps", "train_seconds", "metrics",
               "learning_curve", "data", "parameters"}


def test_bundled_weights_stay_under_40_mb():
    total = sum(p.stat().st_size for p in weights.BUNDLED_DIR.glob("*.safetensors"))
    assert total < 40 * 2**20


@pytest.mark.parametrize("name", BUNDLED)
def test_model_cards_are_complete(name):
    card = weights.read_card(name, weights.BUNDLED_DIR)
    assert CARD_FIELDS <= set(card), CARD_FIELDS - set(card)
    assert card["steps"] > 0 and card["recipe"]["batch"] > 0


@pytest.mark.parametrize("name", [n for n in BUNDLED if n in IMAGE_MODELS])
def test_bundled_image_model_generates(name):
    engine = default_registry(weights.BUNDLED_DIR).get(name)
    result = engine.run(GenerationRequest(task="t2i", prompt="a red circle", seeds=[0], steps=4))
    assert result.images[0].size == (engine.defaults.width, engine.defaults.height)
    assert result.images[0].getextrema() != ((0, 0), (0, 0), (0, 0))


@pytest.mark.parametrize("name", [n for n in BUNDLED if n in VIDEO_MODELS])
def test_bundled_video_model_generates(name):
    engine = default_registry(weights.BUNDLED_DIR).get(name)
    result = engine.run(GenerationRequest(task="t2v", prompt="a red circle moving right", seeds=[0], steps=4))
    frames = result.videos[0]
    assert len(frames) == engine.defaults.frames
    assert frames[0].size == (engine.defaults.width, engine.defaults.height)
    assert len({frame.tobytes() for frame in frames}) > 1  # a video, not one picture repeated


def full_geneval(card: dict) -> float:
    """The card's latest full ShapesGenEval (50 prompts x 4 images, best of 1) overall."""
    runs = [b for b in card.get("benchmarks", []) if b.get("bench") == "geneval"
            and (b.get("prompts_per_task"), b.get("images_per_prompt"), b.get("best_of")) == (50, 4, 1)]
    return runs[-1]["overall"]


def test_the_default_image_model_is_the_best_measured():
    images = [n for n in BUNDLED if n in IMAGE_MODELS]
    scores = {n: full_geneval(weights.read_card(n, weights.BUNDLED_DIR)) for n in images}
    assert default_registry(weights.BUNDLED_DIR).default_image_model == max(scores, key=scores.get)
