"""Layout grounding: the planned scene, its map, the nets and the pipeline that read it."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch

from lanterna.engines import weights
from lanterna.engines.base import GenerationRequest
from lanterna.engines.nets import build_net
from lanterna.engines.shapes import ShapesEngine, grounding_of
from lanterna.evaluation.geneval import prompt_set
from lanterna.training import data, train_diffusion
from lanterna.training.common import Recipe, RecipeError, load_widened
from lanterna.world import grounding
from lanterna.world.grounding import LAYOUT_CHANNELS, layout_map, plan_scene, planned_map
from lanterna.world.judge import judge
from lanterna.world.palette import Canvas
from lanterna.world.render import coverage, render, render_video
from lanterna.world.spec import Box
from tests.tiny_models import save_tiny_bundle, tiny_denoiser


def test_box_coverage_is_the_share_of_each_cell_inside_the_box():
    cover = grounding.box_coverage(Box(6, 2, 10), 64, 16)  # cells of 4 px
    assert cover.sum() == pytest.approx(100 / 16)
    assert cover[0, 1] == pytest.approx(0.5 * 0.5)  # x 4-8 covers 6-8, y 0-4 covers 2-4
    assert cover[1, 2] == 1.0 and cover[3, 1] == 0.0


def test_the_map_names_each_objects_colour_and_shape_inside_its_box():
    scene = plan_scene("a red circle to the left of a blue square", seed=3)
    m = layout_map(scene, 16)
    assert m.shape == (LAYOUT_CHANNELS, 16, 16) and m.max() <= 1.0
    red, blue = grounding.COLOUR_NAMES.index("red"), grounding.COLOUR_NAMES.index("blue")
    circle, square = (1 + len(grounding.COLOUR_NAMES) + grounding.SHAPES.index(s) for s in ("circle", "square"))
    assert np.allclose(m[1 + red], m[circle]) and np.allclose(m[1 + blue], m[square])
    assert np.allclose(m[0], m[1 + red] + m[1 + blue])  # objects never overlap
    boxes = {o.colour: o.box for o in scene.objects}
    assert m[1 + red].sum() == pytest.approx(boxes["red"].size ** 2 / 16)
    assert not layout_map(None, 16).any()


def test_a_video_map_follows_the_motion():
    v = planned_map("a red circle moving right", seed=5, size=64, cells=16, frames=8)
    assert v.shape == (LAYOUT_CHANNELS, 8, 16, 16)
    centres = [(v[0, f].sum(0) * np.arange(16)).sum() / v[0, f].sum() for f in range(8)]
    assert all(b > a for a, b in zip(centres, centres[1:]))
    assert planned_map("a red circle moving right", 5, 64, 16) is None  # motions are not drawn in an image
    assert planned_map("a red circle", 5, 64, 16, frames=8) is None  # nor a still caption as a video


@pytest.mark.parametrize("shape", ["square", "circle", "triangle", "cross"])
def test_a_silhouette_map_covers_what_the_renderer_paints(shape):
    box = Box(6, 2, 13)
    cover = grounding.silhouette_coverage(shape, box, 64, 16)
    assert cover.sum() == pytest.approx(coverage(shape, 13, True).sum() / 16, rel=1e-5)
    assert (cover <= grounding.box_coverage(box, 64, 16) + 1e-6).all()  # never outside the box
    if shape == "square":
        assert np.allclose(cover, grounding.box_coverage(box, 64, 16))
    else:
        assert cover.sum() < grounding.box_coverage(box, 64, 16).sum() - 1


def test_silhouettes_tell_apart_what_boxes_do_not():
    def maps(text: str, kind: str) -> np.ndarray:
        return grounding.CaptionPlanner(kind)(text, 4, 64, 16)[0]

    assert np.allclose(maps("a large red circle", "boxes"), maps("a large red square", "boxes"))
    assert not np.allclose(maps("a large red circle", "silhouettes"), maps("a large red square", "silhouettes"))
    video = grounding.CaptionPlanner("silhouettes")("a red circle moving right", 5, 64, 16, frames=8)
    assert video.shape == (LAYOUT_CHANNELS, 8, 16, 16)
    with pytest.raises(ValueError, match="map kind"):
        grounding.CaptionPlanner("outlines")
    with pytest.raises(ValueError, match="whole cells"):
        grounding.silhouette_coverage("circle", Box(0, 0, 8), 64, 10)


@pytest.mark.parametrize("task", ["single_object", "two_objects", "counting", "position", "color_attr", "novel"])
def test_every_plan_shows_what_its_caption_asks(task):
    for prompt in prompt_set(task, 30):
        scene = plan_scene(prompt.text, seed=prompt.index)
        assert scene == plan_scene(prompt.text, seed=prompt.index)  # the seed fixes the plan
        assert judge(render(scene), prompt.requirements).passed, prompt.text
    motion = prompt_set("motion", 20)
    for prompt in motion:
        scene = plan_scene(prompt.text, seed=prompt.index, canvas=Canvas(64), video=True)
        assert judge(list(render_video(scene, 8)), prompt.requirements).passed, prompt.text


def test_text_outside_the_grammar_has_no_plan():
    assert plan_scene("a lighthouse at dusk", seed=1) is None
    assert planned_map("a red circle", 1, size=8, cells=2) is None  # no canvas that small


@pytest.mark.parametrize("kind", ["unet", "dit", "video_unet"])
def test_a_grounded_net_continued_from_weights_starts_as_they_were(kind):
    plain = tiny_denoiser(kind)
    grounded = build_net(kind, {**asdict(plain.config), "layout_channels": LAYOUT_CHANNELS})
    load_widened(grounded, plain.state_dict())
    g = torch.Generator().manual_seed(0)
    shape = (2, 4, 3, 16, 16) if kind == "video_unet" else (2, 4, 16, 16)
    x = torch.randn(*shape, generator=g)
    layout = torch.rand(2, LAYOUT_CHANNELS, *shape[2:], generator=g)
    context = torch.randn(2, 5, plain.config.context_dim, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    pooled = torch.randn(2, plain.config.context_dim, generator=g)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        before = plain(x, t, context, mask, pooled)
        after = grounded(torch.cat([x, layout], 1), t, context, mask, pooled)
        torch.nn.init.normal_(grounded.conv_in.weight if kind != "dit" else grounded.patch_embed.weight)
        learnt = grounded(torch.cat([x, layout], 1), t, context, mask, pooled)
    assert after.shape == before.shape and torch.equal(after, before)
    assert not torch.allclose(learnt, before)  # once trained, the map reaches the output


@pytest.fixture(scope="module")
def grounded_bundle(tmp_path_factory):
    return save_tiny_bundle(tmp_path_factory.mktemp("grounded"), kinds=("unet", "video_unet"),
                            layout_channels=LAYOUT_CHANNELS)


def test_the_engine_plans_a_layout_per_seed(grounded_bundle):
    engine = ShapesEngine("shapes-unet", grounded_bundle)
    request = dict(task="t2i", prompt="three red circles", steps=3)
    one = engine.run(GenerationRequest(**request, seeds=[4, 5]))
    alone = engine.run(GenerationRequest(**request, seeds=[5]))
    assert np.array_equal(np.asarray(one.images[1]), np.asarray(alone.images[0]))
    assert not np.array_equal(np.asarray(one.images[0]), np.asarray(one.images[1]))
    from lanterna.engines.pipeline import Grounding

    engine.pipeline.grounding = Grounding(LAYOUT_CHANNELS, lambda *a: None)  # the same net, the empty map
    unplanned = engine.run(GenerationRequest(**request, seeds=[5]))
    assert not np.array_equal(np.asarray(unplanned.images[0]), np.asarray(alone.images[0]))
    assert "layout" in alone.params and "layout" not in unplanned.params  # no plan reported that was not read


def test_a_result_reports_the_plan_it_was_drawn_from(grounded_bundle):
    engine = ShapesEngine("shapes-unet", grounded_bundle)
    result = engine.run(GenerationRequest(task="t2i", prompt="three red circles", seeds=[4, 5], steps=2))
    plans = result.params["layout"]["planned"]
    for seed, plan in zip([4, 5], plans):
        scene = plan_scene("three red circles", seed)
        assert [(o["colour"], o["shape"]) for o in plan] == [("red", "circle")] * 3
        assert [o["box"] for o in plan] == [[b.box.x, b.box.y, b.box.size] for b in scene.objects]
    outside = engine.run(GenerationRequest(task="t2i", prompt="a photo of a cat", seeds=[4], steps=2))
    assert "layout" not in outside.params
    video = ShapesEngine("shapes-video", grounded_bundle).run(
        GenerationRequest(task="t2v", prompt="a red circle moving right", seeds=[1], steps=2))
    (moving,) = video.params["layout"]["planned"][0]
    assert moving["motion"] == "right" and moving["end_box"][0] > moving["box"][0]


def test_an_edit_reads_the_empty_map(grounded_bundle):
    from PIL import Image

    from lanterna.engines.pipeline import Grounding

    engine = ShapesEngine("shapes-unet", grounded_bundle)
    engine.load()
    source = Image.fromarray(render(plan_scene("a blue square", seed=1)))
    request = GenerationRequest(task="i2i", prompt="three red circles", seeds=[2], steps=4, init_image=source,
                                strength=0.7)
    planned = engine.run(request)
    engine.pipeline.grounding = Grounding(LAYOUT_CHANNELS, lambda *a: None)
    unplanned = engine.run(request)
    assert np.array_equal(np.asarray(planned.images[0]), np.asarray(unplanned.images[0]))


def test_a_grounded_video_model_runs(grounded_bundle):
    engine = ShapesEngine("shapes-video", grounded_bundle)
    result = engine.run(GenerationRequest(task="t2v", prompt="a red circle moving right", seeds=[1], steps=3))
    assert len(result.videos[0]) == engine.defaults.frames


def test_the_card_says_whether_the_unconditional_pass_reads_the_layout(grounded_bundle):
    card = weights.read_card("shapes-unet", grounded_bundle)
    assert grounding_of(card).unconditional is True
    assert grounding_of({**card, "grounding": {"unconditional": False}}).unconditional is False
    assert grounding_of(card).plan == grounding.CaptionPlanner("boxes")  # cards before map kinds
    assert grounding_of({**card, "grounding": {"map": "silhouettes"}}).plan == grounding.CaptionPlanner("silhouettes")
    with pytest.raises(ValueError, match="map kind"):
        grounding_of({**card, "grounding": {"map": "outlines"}})
    assert grounding_of({**card, "config": {**card["config"], "layout_channels": 0}}) is None
    with pytest.raises(ValueError, match="layout_channels"):
        grounding_of({**card, "config": {**card["config"], "layout_channels": 3}})


def test_layout_batches_drop_the_map_for_a_share_of_scenes():
    _, _, scenes = data.image_batch_with_scenes(np.random.default_rng(0), 64)
    maps = data.layout_batch(np.random.default_rng(1), scenes, 16, dropout=0.5)
    empty = int((maps.flatten(1).abs().sum(1) == 0).sum())
    assert maps.shape == (64, LAYOUT_CHANNELS, 16, 16) and 16 <= empty <= 48
    assert not (data.layout_batch(np.random.default_rng(1), scenes, 16, dropout=0.0).flatten(1).sum(1) == 0).any()


def test_a_recipe_names_the_map_kind_it_trains_on():
    assert train_diffusion.layout_map_kind(Recipe(model="unet", size="tiny")) == "boxes"
    recipe = Recipe(model="video", size="tiny", extra={"grounding": {"map": "silhouettes"}})
    assert train_diffusion.layout_map_kind(recipe) == "silhouettes"
    with pytest.raises(RecipeError, match="grounding.map"):
        train_diffusion.layout_map_kind(Recipe(model="unet", size="tiny", extra={"grounding": {"map": "x"}}))
    _, _, scenes = data.image_batch_with_scenes(np.random.default_rng(0), 16)
    boxes = data.layout_batch(np.random.default_rng(1), scenes, 16, dropout=0.0)
    silhouettes = data.layout_batch(np.random.default_rng(1), scenes, 16, dropout=0.0, kind="silhouettes")
    assert (silhouettes <= boxes + 1e-6).all() and silhouettes.sum() < boxes.sum()


def test_a_recipe_with_a_layout_of_the_wrong_width_is_refused():
    recipe = Recipe(model="unet", size="tiny", extra={"net": {"layout_channels": 5}})
    net = train_diffusion.build_denoiser(recipe, 32)
    with pytest.raises(RecipeError, match="layout_channels"):
        train_diffusion.layout_channels(recipe, net)
    good = Recipe(model="unet", size="tiny", extra={"net": {"layout_channels": LAYOUT_CHANNELS}})
    assert train_diffusion.layout_channels(good, train_diffusion.build_denoiser(good, 32)) == LAYOUT_CHANNELS


def test_a_grounded_denoiser_runs_on_onnx_as_on_torch(grounded_bundle, tmp_path, monkeypatch):
    from lanterna.engines import onnx as onnx_backend

    monkeypatch.setenv("LANTERNA_ONNX_CACHE", str(tmp_path / "cache"))
    engine = ShapesEngine("shapes-unet", grounded_bundle)
    spec = onnx_backend.graph_specs(engine)["denoiser"]
    assert spec.make_inputs(1, torch.Generator().manual_seed(0))[0].shape[1] == 4 + LAYOUT_CHANNELS
    request = dict(task="t2i", prompt="two green crosses", seeds=[3, 4], steps=3)
    torch_result = engine.run(GenerationRequest(**request))
    onnx_result = engine.run(GenerationRequest(**request, backend="onnx"))
    for a, b in zip(torch_result.images, onnx_result.images):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 2
