"""The Shapes engine and the bundled-model registry, over tiny models saved to and loaded from a folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lanterna.engines.base import Engine, GenerationCancelled, GenerationRequest, InvalidRequest
from lanterna.engines.bundled import default_registry
from tests.tiny_models import save_tiny_bundle


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return default_registry(save_tiny_bundle(tmp_path_factory.mktemp("weights")))


def test_registry_lists_installed_models(registry):
    assert registry.names() == ["shapes-dit", "shapes-video"]
    assert registry.default_image_model == "shapes-dit"
    assert registry.default_video_model == "shapes-video"
    assert registry.default_scorer == "shapes-clip"
    engine = registry.engine(None)
    assert isinstance(engine, Engine)
    assert not registry.is_loaded("shapes-dit")  # building an engine does not load weights


def test_the_unet_is_the_default_image_model_when_installed(tmp_path):
    both = default_registry(save_tiny_bundle(tmp_path, kinds=("dit", "unet")))
    assert both.default_image_model == "shapes-unet" and set(both.names()) == {"shapes-dit", "shapes-unet"}


def test_text_to_image_reproducible(registry):
    engine = registry.get("shapes-dit")
    req = GenerationRequest(task="t2i", prompt="a red circle", seeds=[11, 12])
    a = engine.run(req)
    b = engine.run(GenerationRequest(task="t2i", prompt="a red circle", seeds=[12]))
    assert [im.size for im in a.images] == [(64, 64), (64, 64)]
    assert np.abs(np.asarray(a.images[1], np.int16) - np.asarray(b.images[0], np.int16)).max() <= 1
    assert a.params["steps"] == 4 and a.params["sampler"] == "dpmpp-2m"
    assert len(engine.weights_hash) > 8


def test_unknown_words_are_warned(registry):
    engine = registry.get("shapes-dit")
    result = engine.run(GenerationRequest(task="t2i", prompt="a red unicorn", seeds=[1], steps=1))
    assert engine.unknown_words("a red unicorn") == ["unicorn"]
    assert any("unicorn" in w for w in result.warnings)


def test_edit_modes(registry):
    engine = registry.get("shapes-dit")
    image = Image.new("RGB", (64, 64), (245, 245, 245))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    out = engine.run(GenerationRequest(task="inpaint", prompt="a blue square", seeds=[3],
                                       init_image=image, mask=mask, strength=1.0))
    arr = np.asarray(out.images[0])
    assert (arr[:8] == 245).all()
    out = engine.run(GenerationRequest(task="i2i", prompt="a blue square", seeds=[3],
                                       init_image=image, strength=0.5))
    assert out.images[0].size == (64, 64)


def test_video(registry):
    engine = registry.get("shapes-video")
    result = engine.run(GenerationRequest(task="t2v", prompt="a red circle moving right", seeds=[1], frames=3, steps=2))
    assert len(result.videos) == 1 and len(result.videos[0]) == 3


@pytest.mark.parametrize("change, word", [
    (dict(width=128), "width"),
    (dict(sampler="warp"), "sampler"),
    (dict(task="t2v"), "t2v"),
    (dict(task="inpaint"), "image"),
    (dict(steps=0), "steps"),
    (dict(guidance=float("nan")), "guidance"),
])
def test_bad_requests_say_what_is_allowed(registry, change, word):
    engine = registry.get("shapes-dit")
    args = dict(task="t2i", prompt="a red circle", seeds=[1]) | change
    with pytest.raises(InvalidRequest, match=word):
        engine.run(GenerationRequest(**args))


def test_cancel(registry):
    engine = registry.get("shapes-dit")
    with pytest.raises(GenerationCancelled):
        engine.run(GenerationRequest(task="t2i", prompt="a red circle", seeds=[1]), cancelled=lambda: True)


def test_scorer_scores(registry):
    scorer = registry.scorer()
    scores = scorer.clip_scores([Image.new("RGB", (64, 64))] * 2, ["a red circle", "a blue square"])
    assert len(scores) == 2 and all(0 <= s <= 100 for s in scores)


def test_card_composition_guides_prompts_of_several_objects(tmp_path):
    from lanterna.engines import weights
    from lanterna.engines.shapes import ShapesEngine

    directory = save_tiny_bundle(tmp_path, kinds=("unet",))
    plain = ShapesEngine("shapes-unet", directory)
    card = weights.read_card("shapes-unet", directory)
    weights.write_card("shapes-unet", {**card, "composition": {"weight": 1.0, "from_t": 0.6}}, directory)
    composed = ShapesEngine("shapes-unet", directory)
    two = "a picture of a red circle and a blue square"
    result = composed.run(GenerationRequest(task="t2i", prompt=two, seeds=[2]))
    composition = result.params["composition"]
    assert (composition["weight"], composition["from_t"]) == (1.0, 0.6)
    assert [p["prompt"] for p in composition["parts"]] == ["a red circle", "a blue square"]
    assert len(composition["parts"][0]["boxes"]) == 1
    before = plain.run(GenerationRequest(task="t2i", prompt=two, seeds=[2]))
    assert "composition" not in before.params
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(before.images[0]))
    one = composed.run(GenerationRequest(task="t2i", prompt="a red circle", seeds=[2]))
    assert "composition" not in one.params
    assert np.array_equal(np.asarray(one.images[0]),
                          np.asarray(plain.run(GenerationRequest(task="t2i", prompt="a red circle",
                                                                  seeds=[2])).images[0]))
