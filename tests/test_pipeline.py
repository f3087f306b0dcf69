"""The latent diffusion pipeline on tiny random-weight nets: determinism, batch independence,
img2img and inpainting guarantees, and clear errors for bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lanterna.engines.base import GenerationCancelled
from lanterna.engines.pipeline import (Composition, LatentDiffusionPipeline, SamplingOptions, box_mask,
                                      composition_of)
from lanterna.world.regions import object_regions
from tests.tiny_models import tiny_pipeline


@pytest.fixture(scope="module")
def pipe() -> LatentDiffusionPipeline:
    return tiny_pipeline("dit")


@pytest.fixture(scope="module")
def video_pipe() -> LatentDiffusionPipeline:
    return tiny_pipeline("video_dit")


def as_array(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(i, dtype=np.int16) for i in images])


def checker(size: int = 64) -> Image.Image:
    a = np.zeros((size, size, 3), np.uint8)
    a[::8, :] = 200
    a[:, ::8, 1] = 150
    a[20:40, 10:30] = (220, 40, 40)
    return Image.fromarray(a)


OPTS = SamplingOptions(steps=4, guidance=3.0, sampler="dpmpp-2m")


@pytest.mark.parametrize("sampler", ["euler", "dpmpp-2m", "flow-euler", "euler-a", "ddpm", "heun"])
def test_same_seed_same_pixels(pipe, sampler):
    options = SamplingOptions(steps=3, guidance=2.0, sampler=sampler)
    a = pipe.text_to_image("a red circle", [7], options, 64, 64)
    b = pipe.text_to_image("a red circle", [7], options, 64, 64)
    assert np.array_equal(as_array(a), as_array(b))
    c = pipe.text_to_image("a red circle", [8], options, 64, 64)
    assert not np.array_equal(as_array(a), as_array(c))


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "euler-a"])
def test_batch_independence(pipe, sampler):
    options = SamplingOptions(steps=3, guidance=2.0, sampler=sampler)
    seeds = [3, 4, 5]
    batch = pipe.generate_latents("two blue squares", seeds, options, 64, 64)
    for i, seed in enumerate(seeds):
        alone = pipe.generate_latents("two blue squares", [seed], options, 64, 64)
        # fp32 GEMMs round differently at batch 3 and 1; the states reach |x| ~ 500 early on.
        assert (batch[i] - alone[0]).abs().max() <= 1e-5 * batch.abs().max()


def test_flow_euler_equals_ve_euler(pipe):
    """Both integrate the same ODE with first-order steps on the same time grid; they differ
    only by the VE start at sigma 500 standing in for t = 1 (x0's share 1/501)."""
    a = pipe.generate_latents("a red circle", [1], SamplingOptions(5, 2.0, "flow-euler"), 64, 64)
    b = pipe.generate_latents("a red circle", [1], SamplingOptions(5, 2.0, "euler"), 64, 64)
    assert torch.allclose(a, b, rtol=5e-3, atol=5e-3)
    assert not torch.allclose(a, b, rtol=0, atol=1e-6)


def test_img2img_strength_zero_returns_input(pipe):
    image = checker()
    out = pipe.image_to_image(image, "a red square", [0], OPTS, strength=0.0)[0]
    recon = pipe.decode(pipe.encode(torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1))
    expected = ((recon[0].permute(1, 2, 0) + 1) * 127.5).round().numpy()
    assert np.abs(np.asarray(out, np.float32) - expected).max() <= 1


def test_img2img_strength_one_ignores_input(pipe):
    options = SamplingOptions(steps=4, guidance=2.0, sampler="flow-euler")
    a = pipe.image_to_image(checker(), "a red square", [5], options, strength=1.0)[0]
    b = pipe.image_to_image(Image.new("RGB", (64, 64), (15, 15, 15)), "a red square", [5], options, strength=1.0)[0]
    t2i = pipe.text_to_image("a red square", [5], options, 64, 64)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.array_equal(np.asarray(a), np.asarray(t2i))


def test_img2img_partial_strength_stays_closer_than_full(pipe):
    image = checker()
    weak = pipe.image_to_image(image, "a red square", [5], OPTS, strength=0.25)[0]
    full = pipe.image_to_image(image, "a red square", [5], OPTS, strength=1.0)[0]
    ref = np.asarray(image, np.float32)
    assert np.abs(np.asarray(weak, np.float32) - ref).mean() < np.abs(np.asarray(full, np.float32) - ref).mean()


def test_inpaint_keeps_unmasked_pixels(pipe):
    image = checker()
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    out = pipe.inpaint(image, Image.fromarray(mask), "a blue circle", [2, 3], OPTS)
    for o in out:
        diff = np.abs(np.asarray(o, np.int16) - np.asarray(image, np.int16))
        assert diff[mask == 0].max() == 0
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))


def test_cancel_stops_at_next_step(pipe):
    calls = []

    def on_step(i, n):
        calls.append(i)

    with pytest.raises(GenerationCancelled):
        pipe.text_to_image("a red circle", [1], SamplingOptions(10, 2.0, "euler"), 64, 64,
                           on_step=on_step, cancelled=lambda: len(calls) >= 2)
    assert calls == [1, 2]


def test_progress_every_step(pipe):
    calls = []
    pipe.text_to_image("a red circle", [1], SamplingOptions(6, 2.0, "dpmpp-2m"), 64, 64,
                       on_step=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 6) for i in range(1, 7)]


def test_video_shapes_and_determinism(video_pipe):
    options = SamplingOptions(steps=2, guidance=2.0, sampler="euler")
    a = video_pipe.text_to_video("a red circle moving right", [1], options, 4, 64, 64)
    b = video_pipe.text_to_video("a red circle moving right", [1], options, 4, 64, 64)
    assert len(a) == 1 and len(a[0]) == 4 and a[0][0].size == (64, 64)
    assert np.array_equal(as_array(a[0]), as_array(b[0]))


@pytest.mark.parametrize("options, word", [
    (SamplingOptions(0, 2.0, "euler"), "steps"),
    (SamplingOptions(4, float("nan"), "euler"), "guidance"),
    (SamplingOptions(4, 2.0, "no-such-sampler"), "sampler"),
])
def test_bad_options_name_the_argument(pipe, options, word):
    with pytest.raises(ValueError, match=word):
        pipe.text_to_image("a red circle", [1], options, 64, 64)


def test_mask_of_wrong_size(pipe):
    with pytest.raises(ValueError, match="mask"):
        pipe.inpaint(checker(), Image.new("L", (32, 32), 255), "a red circle", [1], OPTS)


def test_strength_out_of_range(pipe):
    with pytest.raises(ValueError, match="strength"):
        pipe.image_to_image(checker(), "a red circle", [1], OPTS, strength=1.5)


def test_nan_output_is_an_error(pipe):
    class NaNNet(torch.nn.Module):
        def forward(self, x, t, context, mask, pooled):
            return torch.full_like(x, float("nan"))

    bad = LatentDiffusionPipeline(NaNNet(), pipe.vae, pipe.clip, pipe.tokenizer)
    with pytest.raises(FloatingPointError, match="NaN"):
        bad.text_to_image("a red circle", [1], SamplingOptions(2, 2.0, "euler"), 64, 64)


def test_heun_converges_on_a_flow_model(pipe):
    """Heun's trapezoid needs a finite slope at both ends of a step: on a rectified flow it runs
    in flow time, where the first step starts at t = 1, not at a VE stand-in for sigma = inf."""
    def run(sampler: str, steps: int) -> torch.Tensor:
        return pipe.generate_latents("a red circle", [2], SamplingOptions(steps, 2.0, sampler), 64, 64)

    reference = run("heun", 64)
    heun_error = (run("heun", 4) - reference).abs().mean()
    euler_error = (run("flow-euler", 4) - reference).abs().mean()
    assert heun_error < euler_error


# ---------------------------------------------------------------- composition

TWO = "a red circle and a blue square on a black background"


@pytest.fixture()
def composed() -> LatentDiffusionPipeline:
    p = tiny_pipeline("dit")
    p.composition, p.split_prompt = Composition(weight=0.7, from_t=0.5), object_regions
    return p


def raw_output(p: LatentDiffusionPipeline, x: torch.Tensor, t: float, prompt: str) -> torch.Tensor:
    c = p.encode_prompts([prompt])
    tb = torch.full((x.shape[0],), t)
    with torch.no_grad():
        return p.denoiser(x, tb, c.context.expand(x.shape[0], -1, -1), c.mask.expand(x.shape[0], -1),
                          c.pooled.expand(x.shape[0], -1)).float()


@pytest.mark.parametrize("t", [0.8, 0.3])
def test_composition_adds_each_objects_direction_in_its_box_at_high_noise(composed, t):
    shape = composed.latent_shape(64, 64, None)
    seeds = [0, 5]
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    cond, uncond, parts = composed.conditions(TWO, "", seeds, shape)
    with torch.no_grad():
        got = composed.flow_denoiser(cond, uncond, 3.0, parts)(x, torch.tensor(t))
    out_u, out_c = raw_output(composed, x, t, ""), raw_output(composed, x, t, TWO)
    guided = out_u + 3.0 * (out_c - out_u)
    if t >= 0.5:
        for j, part in enumerate(("a red circle on a black background", "a blue square on a black background")):
            masks = torch.stack([box_mask(object_regions(TWO, s)[j].box, *shape[1:]) for s in seeds])
            guided = guided + 0.7 * masks[:, None] * (raw_output(composed, x, t, part) - out_u)
    assert torch.allclose(got, x - t * guided, atol=1e-5)


def test_box_mask_covers_the_box():
    mask = box_mask((0.5, 0.0, 1.0, 0.5), 16, 16)
    assert mask.sum() == 64 and mask[:8, 8:].all() and mask[8:].sum() == 0 and mask[:, :8].sum() == 0


def test_composition_keeps_images_independent_of_their_batch(composed):
    options = SamplingOptions(steps=3, guidance=2.0, sampler="dpmpp-2m")
    batch = composed.generate_latents(TWO, [3, 4, 5], options, 64, 64)
    for i, seed in enumerate([3, 4, 5]):
        alone = composed.generate_latents(TWO, [seed], options, 64, 64)
        assert (batch[i] - alone[0]).abs().max() <= 1e-5 * batch.abs().max()


def test_composition_changes_only_prompts_of_several_objects(pipe, composed):
    options = SamplingOptions(steps=3, guidance=2.0, sampler="dpmpp-2m")
    for prompt, same in (("a red circle", True), ("three red circles", True),
                         ("a red circle, please", True), (TWO, False)):
        a = pipe.generate_latents(prompt, [1], options, 64, 64)
        b = composed.generate_latents(prompt, [1], options, 64, 64)
        assert torch.equal(a, b) == same, prompt
    composed.composition = Composition(weight=0.0, from_t=0.5)
    assert composed.prompt_parts(TWO, [1]) == []


def test_composition_runs_on_video_latents(video_pipe):
    video_pipe.composition, video_pipe.split_prompt = Composition(1.0, 0.5), object_regions
    try:
        options = SamplingOptions(steps=2, guidance=2.0, sampler="dpmpp-2m")
        cond, uncond, parts = video_pipe.conditions(TWO, "", [1, 2], video_pipe.latent_shape(64, 64, 3))
        assert parts.masks.shape[:4] == (2, 2, 1, 1)
        videos = video_pipe.text_to_video("a red circle moving left and a blue square", [1], options, 3, 64, 64)
        assert len(videos[0]) == 3
    finally:
        video_pipe.composition = video_pipe.split_prompt = None


@pytest.mark.parametrize("spec, word", [
    ({"weight": -1, "from_t": 0.5}, "weight"), ({"weight": float("nan"), "from_t": 0.5}, "weight"),
    ({"weight": 1, "from_t": 1.5}, "from_t"),
])
def test_bad_composition_names_the_field(spec, word):
    with pytest.raises(ValueError, match=word):
        composition_of({"composition": spec})
    assert composition_of({}) is None
