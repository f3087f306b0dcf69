"""The binding near miss and the contrast term that trains a denoiser to tell the two apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lanterna.training import binding, data, train_diffusion
from lanterna.training.binding import BindingContrast, binding_negative, reworded
from lanterna.training.common import Recipe, RecipeError
from lanterna.world.captions import parse_caption
from lanterna.world.near_miss import flipped_relation, swapped_colours
from lanterna.world.palette import article
from tests.tiny_models import tiny_denoiser


def test_a_near_miss_keeps_the_words_and_binds_them_the_other_way():
    rng = np.random.default_rng(0)
    _, captions, requirements = data.image_batch_with_requirements(rng, 400)
    found = 0
    for caption, req in zip(captions, requirements):
        miss = binding_negative(caption, req, rng)
        if miss is None:
            assert swapped_colours(rng, req) is None and flipped_relation(rng, req) is None
            continue
        found += 1
        words, miss_words = caption.split(), miss.split()
        assert len(words) == len(miss_words) and miss != caption
        changed = {w for w, m in zip(words, miss_words) if w != m} - {"a", "an"}
        asked = parse_caption(miss)
        if asked == swapped_colours(rng, req):  # the same bag of words
            content = [sorted(w for w in ws if w not in ("a", "an")) for ws in (words, miss_words)]
            assert content[0] == content[1] and changed == {o.colour for o in req.objects}
        else:
            assert asked == flipped_relation(rng, req)
            assert changed in ({"left"}, {"right"}, {"above"}, {"below"})
        for det, word in zip(miss_words, miss_words[1:]):
            if det in ("a", "an"):
                assert det == article(word), miss
    assert 100 < found < 300  # the two-object tasks are 40 % of the training mix


def test_rewording_makes_the_article_agree_and_leaves_dropped_or_single_captions():
    assert reworded("an orange circle and a red square", {"orange": "red", "red": "orange"}) == \
        "a red circle and an orange square"
    single = parse_caption("a red circle")
    assert binding_negative("a red circle", single, np.random.default_rng(0)) is None
    pair = parse_caption("a red circle and a blue square")
    assert binding_negative("", pair, np.random.default_rng(0)) is None
    assert binding_negative("a red circle and a blue square", pair, np.random.default_rng(0)) == \
        "a blue circle and a red square"


def test_the_contrast_term_is_a_hinge_on_the_error_ratio():
    error = torch.tensor([0.2, 0.2, 0.2])
    assert binding.contrast_term(error, error, 0.05) == pytest.approx(0.05)
    assert binding.contrast_term(error, error * 2, 0.05) == 0
    assert binding.contrast_term(error, error / 2, 0.0) == pytest.approx(np.log(2))


def test_the_near_miss_is_scored_at_the_captions_own_noise():
    net = tiny_denoiser("unet").train()
    torch.manual_seed(0)
    z0 = torch.randn(3, net.config.in_channels, 8, 8)
    width = net.config.context_dim
    cond = (torch.randn(3, 5, width), torch.ones(3, 5, dtype=torch.bool), torch.randn(3, width))
    same = tuple(x[[0, 2]] for x in cond)
    contrast = BindingContrast(weight=0.1, margin=0.05)
    loss, parts = train_diffusion.flow_loss_with_binding(net, z0, cond, same, [0, 2], "v", 1.0, contrast)
    # The same condition at the same x_t, t and target: equal errors, so the hinge is the margin.
    assert parts["binding_term"] == pytest.approx(0.05, abs=1e-6)
    assert loss.item() == pytest.approx(parts["flow_loss"] + 0.1 * 0.05, rel=1e-5)
    other = tuple(torch.randn_like(x) if x.dtype != torch.bool else x for x in same)
    loss, parts = train_diffusion.flow_loss_with_binding(net, z0, cond, other, [0, 2], "v", 1.0, contrast)
    loss.backward()
    assert parts["binding_rows"] == 2 and parts["binding_term"] != pytest.approx(0.05, abs=1e-6)
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    _, parts = train_diffusion.flow_loss_with_binding(net, z0, cond, None, [], "v", 1.0, contrast)
    assert set(parts) == {"flow_loss"}


def test_binding_contrast_recipes_are_checked():
    assert train_diffusion.binding_contrast(Recipe(model="unet")) is None
    contrast = train_diffusion.binding_contrast(Recipe(model="unet", extra={"binding_contrast": {"weight": 0.2}}))
    assert contrast == BindingContrast(0.2, 0.1)
    for bad in ({"weight": 0}, {"margin": -1}, {"weight": 1, "scale": 2}, 0.1):
        with pytest.raises(RecipeError, match="binding_contrast"):
            train_diffusion.binding_contrast(Recipe(model="unet", extra={"binding_contrast": bad}))
    with pytest.raises(RecipeError, match="image models"):
        train_diffusion.binding_contrast(Recipe(model="video", extra={"binding_contrast": {}}))
