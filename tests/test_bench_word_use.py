"""bench/bench_word_use.py on a tiny video bundle: the noise levels it is asked for, and the
first-frame mode's noising and scoring."""

from __future__ import annotations

import pytest
import torch

from tests.bench_scripts import load_bench_script
from tests.tiny_models import save_tiny_bundle


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("bench_word_use")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return save_tiny_bundle(tmp_path_factory.mktemp("weights"), kinds=("video_unet",))


def test_the_first_frame_mode_clears_frame_0_and_scores_the_others(bench, bundle, monkeypatch):
    seen = []
    plain = bench.losses

    def recorded(pipe, x_t, t, target, captions, scored=slice(None)):
        seen.append((t.clone(), scored))
        return plain(pipe, x_t, t, target, captions, scored)

    monkeypatch.setattr(bench, "losses", recorded)
    result = bench.word_use("shapes-video", bundle, 4, 5, (0.7,), first_frame_t=0.2)
    assert result["first_frame_t"] == 0.2 and set(k for k in result if k.startswith("t=")) == {"t=0.7"}
    assert seen and all(t[0] == 0.2 and (t[1:] == 0.7).all() and scored == slice(1, None) for t, scored in seen)
    seen.clear()
    plain_result = bench.word_use("shapes-video", bundle, 4, 5, (0.5, 0.9))
    assert "first_frame_t" not in plain_result and {"t=0.5", "t=0.9"} <= set(plain_result)
    assert all(t.dim() == 0 and scored == slice(None) for t, scored in seen)


def test_scoring_only_later_frames_is_the_loss_over_them(bench, bundle):
    from lanterna.engines.shapes import ShapesEngine

    engine = ShapesEngine("shapes-video", bundle)
    engine.load()
    x = torch.randn(2, 4, 4, 16, 16)
    target = torch.randn_like(x)
    t = torch.tensor([0.2, 0.7, 0.7, 0.7])
    captions = ["a red circle moving left", "a blue square growing"]
    later = bench.losses(engine.pipeline, x, t, target, captions, slice(1, None))
    text = engine.pipeline.encode_prompts(captions)
    with torch.no_grad():
        out = engine.pipeline.denoiser(x, t.expand(2, 4), text.context, text.mask, text.pooled)
    expected = (out[:, :, 1:] - target[:, :, 1:]).pow(2).flatten(1).mean(1)
    assert torch.allclose(later, expected, atol=1e-6)
