"""Training loops on tiny sizes: they learn (the loss moves), resume where they stopped, and
export weights that the Shapes engine loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lanterna.engines import weights
from lanterna.engines.base import GenerationRequest
from lanterna.engines.shapes import ShapesEngine
from lanterna.training import export, progress_eval, train_clip, train_diffusion, train_vae
from lanterna.training.common import EMA, Recipe, Run, scheduled_lr


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, request):
    directory = tmp_path_factory.mktemp("trained")
    mp = pytest.MonkeyPatch()
    mp.setenv("LANTERNA_WEIGHTS_DIR", str(directory))
    mp.setattr(train_vae, "EVAL_IMAGES", 16)  # the held-out sets, cut to test size
    mp.setattr(train_vae, "CEILING_PER_TASK", 2)
    mp.setattr(train_clip, "EVAL_PER_TASK", 16)
    request.addfinalizer(mp.undo)
    return directory


def test_vae_trains_resumes_and_exports(tmp_path, weights_dir):
    recipe = Recipe(model="vae", size="tiny", batch=8, lr=2e-3, warmup=1, bf16=False)
    vae, run = train_vae.train(str(tmp_path / "vae"), recipe, max_steps=6, max_minutes=None, eval_every=3)
    first = run.records("train")
    assert run.load()["state"]["step"] == 6
    evals = run.records("eval")
    assert [e["step"] for e in evals] == [3, 6] and all(np.isfinite(e["psnr_db"]) for e in evals)
    sheets = sorted((tmp_path / "vae" / "samples").glob("*.png"))
    assert [p.name for p in sheets] == ["step-0000003.png", "step-0000006.png"]
    assert Image.open(sheets[0]).size == (8 * 64, 2 * 64)  # originals over reconstructions
    vae, run = train_vae.train(str(tmp_path / "vae"), recipe, max_steps=8, max_minutes=None, eval_every=100)
    assert run.load()["state"]["step"] == 8  # resumed at 6, ran 2 more
    assert [e["step"] for e in run.records("eval")] == [3, 6, 8]
    vae, run = train_vae.train(str(tmp_path / "vae"), recipe, max_steps=0, max_minutes=None, eval_every=100)
    assert [e["step"] for e in run.records("eval")] == [3, 6, 8]  # exporting only adds no point
    assert float(vae.scaling_factor) != 1.0  # fitted to the latents
    export.export_vae(vae, run, recipe, weights_dir)
    card = weights.read_card("shapes-vae", weights_dir)
    assert card["steps"] == 8 and card["recipe"]["batch"] == 8 and card["learning_curve"]
    assert first == [] or all("loss" in r for r in first)


def test_clip_trains_and_exports(tmp_path, weights_dir):
    recipe = Recipe(model="clip", size="tiny", batch=16, lr=1e-3, warmup=1, bf16=False)
    clip, run = train_clip.train(str(tmp_path / "clip"), recipe, max_steps=4, max_minutes=None, eval_every=4)
    scores = run.records("eval")[-1]["retrieval"]
    assert set(scores) >= {"single_object", "novel", "mean"} and 0 <= scores["mean"] <= 1
    export.export_clip(clip, run, recipe, weights_dir)
    assert weights.has_weights("shapes-clip", weights_dir)


def test_a_scorer_run_keeps_the_text_transformer_and_learns_from_near_misses(tmp_path, monkeypatch):
    from lanterna.engines.nets.text import ShapesTokenizer

    monkeypatch.setenv("LANTERNA_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setattr(train_clip, "EVAL_PER_TASK", 8)
    recipe = Recipe(model="clip", size="tiny", batch=8, lr=1e-3, warmup=1, bf16=False)
    clip, run = train_clip.train(str(tmp_path / "a"), recipe, max_steps=1, max_minutes=None, eval_every=100)
    export.export_clip(clip, run, recipe, tmp_path / "w")
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    tuned = Recipe(model="clip", size="tiny", batch=8, lr=1e-2, warmup=1, bf16=False,
                   extra={"init_from": "shapes-clip", "part": "scorer", "near_misses": True,
                          "net": {"score_layers": 1}})
    start, _ = train_clip.train(str(tmp_path / "start"), tuned, max_steps=1, max_minutes=None, eval_every=100)
    tokens = ShapesTokenizer().encode(["a red circle left of a blue square", "two green crosses"])
    with torch.no_grad():  # the added scorer blocks start as the identity
        assert torch.allclose(start.encode_text(tokens.ids, tokens.mask), clip.encode_text(tokens.ids, tokens.mask))
    clip2, run2 = train_clip.train(str(tmp_path / "b"), tuned, max_steps=3, max_minutes=None, eval_every=3)
    after = clip2.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("text."))
    for tower in ("image.", "image_projection.", "text_projection."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(tower)), tower
    assert any(not torch.equal(start.state_dict()[k], v) for k, v in after.items() if k.startswith("score_blocks."))
    export.export_clip(clip2, run2, tuned, tmp_path / "w")
    from lanterna.engines.shapes import load_clip

    with torch.no_grad():  # what the scorer loads reads the text through the trained blocks
        assert torch.allclose(load_clip(directory=tmp_path / "w").encode_text(tokens.ids, tokens.mask),
                              clip2.eval().encode_text(tokens.ids, tokens.mask), atol=1e-6)
    near = run2.records("eval")[-1]["near_miss"]
    assert set(near) == {"images", "captions"}
    assert all(0 <= near[d][t] <= 1 for d in near for t in train_clip.IMAGE_TASKS + ("mean",))
    with pytest.raises(ValueError, match="--init-from"):
        train_clip.trained_part(Recipe(model="clip", extra={"part": "scorer"}))
    with pytest.raises(ValueError, match="part"):
        train_clip.trained_part(Recipe(model="clip", extra={"part": "text"}))


def test_a_near_miss_batch_pairs_each_caption_with_a_false_one():
    from lanterna.training import data
    from lanterna.world.captions import parse_caption

    pixels, captions = data.near_miss_batch(np.random.default_rng(3), 16)
    assert pixels.shape == (16, 3, 64, 64) and len(captions) == 16
    for right, miss in zip(captions[:8], captions[8:]):
        assert parse_caption(right) != parse_caption(miss)


def test_contrastive_loss_shares_targets_between_equal_captions():
    recipe = Recipe(model="clip", size="tiny")
    model = train_clip.build(recipe)
    from lanterna.engines.nets.text import ShapesTokenizer

    captions = ["a red circle", "a red circle", "a blue square"]
    tokens = ShapesTokenizer().encode(captions)
    pixels = torch.zeros(3, 3, 64, 64)
    loss = train_clip.contrastive_loss(model, pixels, tokens.ids, tokens.mask, captions)
    assert torch.isfinite(loss)


@pytest.fixture
def components(weights_dir, tmp_path):
    """The weights folder with a tiny VAE and CLIP in it (the tests above leave them; alone, train them)."""
    if not weights.has_weights("shapes-vae", weights_dir):
        recipe = Recipe(model="vae", size="tiny", batch=4, lr=1e-3, warmup=1, bf16=False)
        vae, run = train_vae.train(str(tmp_path / "vae"), recipe, max_steps=1, max_minutes=None, eval_every=1)
        export.export_vae(vae, run, recipe, weights_dir)
    if not weights.has_weights("shapes-clip", weights_dir):
        recipe = Recipe(model="clip", size="tiny", batch=4, lr=1e-3, warmup=1, bf16=False)
        clip, run = train_clip.train(str(tmp_path / "clip"), recipe, max_steps=1, max_minutes=None, eval_every=1)
        export.export_clip(clip, run, recipe, weights_dir)
    return weights_dir


@pytest.mark.parametrize("model", ["dit", "unet"])
def test_diffusion_trains_with_ema_and_exports(tmp_path, components, model, monkeypatch):
    weights_dir = components
    recipe = Recipe(model=model, size="tiny", batch=4, lr=1e-3, warmup=1, bf16=False, ema=0.9,
                    extra={"sampling_shift": 2.0} if model == "unet" else {})
    net, run = train_diffusion.train(str(tmp_path / model), recipe, max_steps=3, max_minutes=None, eval_every=100)
    losses = [r["loss"] for r in run.records("train")] or [run.load()["state"]["step"]]
    assert run.load()["state"]["step"] == 3 and all(np.isfinite(losses))
    export.export_denoiser(net, run, recipe, weights_dir)
    assert weights.read_card(f"shapes-{model}", weights_dir)["shift"] == (2.0 if model == "unet" else 1.0)
    if model == "dit":
        monkeypatch.setattr(progress_eval, "PROMPTS_PER_TASK", 1)
        monkeypatch.setattr(progress_eval, "IMAGES_PER_PROMPT", 2)
        scores = progress_eval.quick_geneval(recipe, tmp_path / "samples")(net, 3)["geneval"]
        assert set(scores["tasks"]) >= {"single_object", "novel"} and 0 <= scores["overall"] <= 1
        sheet = Image.open(tmp_path / "samples" / "step-0000003.png")
        captions = json.loads((tmp_path / "samples" / "step-0000003.json").read_text())
        assert sheet.size == (2 * 64, len(scores["tasks"]) * 64) and len(captions) == 2 * len(scores["tasks"])
    engine = ShapesEngine(f"shapes-{model}", weights_dir)
    out = engine.run(GenerationRequest(task="t2i", prompt="a red circle", seeds=[1], steps=2))
    assert out.images[0].size == (64, 64)


def test_video_trains_on_a_small_canvas_and_its_card_says_so(tmp_path, components):
    weights_dir = components
    recipe = Recipe(model="video", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False, ema=0.9,
                    extra={"frames": 4, "size": 32})
    net, run = train_diffusion.train(str(tmp_path / "video"), recipe, max_steps=2, max_minutes=None, eval_every=100)
    assert run.load()["state"]["step"] == 2
    export.export_denoiser(net, run, recipe, weights_dir)
    card = weights.read_card("shapes-video", weights_dir)
    assert card["max_frames"] == 4 and card["defaults"]["width"] == 32
    assert "4 frames of 32x32" in card["note"] and "4 frames of 32x32" in card["data"]
    out = ShapesEngine("shapes-video", weights_dir).run(
        GenerationRequest(task="t2v", prompt="a red circle moving left", seeds=[0], steps=2))
    assert len(out.videos[0]) == 4 and out.videos[0][0].size == (32, 32)


def test_frame_difference_loss_sees_only_what_changes_from_frame_to_frame():
    target = torch.randn(2, 4, 5, 8, 8)
    same_error_each_frame = target + torch.randn(2, 4, 1, 8, 8)
    assert train_diffusion.frame_difference_loss(same_error_each_frame, target) < 1e-10
    output = target + torch.randn(2, 4, 5, 8, 8)
    by_frame = [((output - target)[:, :, f + 1] - (output - target)[:, :, f]).pow(2).mean() for f in range(4)]
    assert torch.isclose(train_diffusion.frame_difference_loss(output, target), torch.stack(by_frame).mean())


def test_the_frame_difference_weight_adds_its_loss_to_the_flow_loss():
    z0, context, mask, pooled = torch.randn(2, 4, 5, 8, 8), torch.zeros(2, 3, 8), torch.ones(2, 3), torch.zeros(2, 8)
    drawn = torch.randn(2, 4, 5, 8, 8)

    def net(x_t, t, *_):
        return drawn

    def loss(weight):
        torch.manual_seed(0)
        return train_diffusion.flow_loss(net, z0, context, mask, pooled, "v", 1.0, weight)

    torch.manual_seed(0)
    target = train_diffusion.noised(z0, "v").target
    extra = train_diffusion.frame_difference_loss(drawn, target)
    assert extra > 0 and torch.isclose(loss(0.5) - loss(0.0), 0.5 * extra)


def test_a_video_run_with_frame_difference_trains_on_it_and_image_runs_refuse_it(tmp_path, components, monkeypatch):
    calls = []
    plain = train_diffusion.frame_difference_loss
    monkeypatch.setattr(train_diffusion, "frame_difference_loss", lambda *a: calls.append(1) or plain(*a))
    recipe = Recipe(model="video", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False,
                    extra={"frames": 4, "size": 32, "frame_difference": 0.5})
    train_diffusion.train(str(tmp_path / "fd"), recipe, max_steps=2, max_minutes=None, eval_every=100)
    assert len(calls) == 2
    for model, weight in (("unet", 1.0), ("video", -1.0), ("video", "high"), ("video", True)):
        with pytest.raises(ValueError, match="frame_difference"):
            train_diffusion.frame_difference_weight(Recipe(model=model, extra={"frame_difference": weight}))
    assert train_diffusion.frame_difference_weight(Recipe(model="unet")) == 0.0


def test_a_share_of_videos_gets_a_noise_level_per_frame():
    torch.manual_seed(0)
    t = train_diffusion.noise_per_frame(torch.rand(400), 6, 3.0, 0.25)
    own = (t != t[:, :1]).any(dim=1)
    assert t.shape == (400, 6) and 60 < int(own.sum()) < 140  # about a quarter
    shared = train_diffusion.noise_per_frame(torch.rand(50), 6, 3.0, 0.0)
    assert (shared == shared[:, :1]).all()
    z0 = torch.randn(8, 4, 6, 4, 4)
    torch.manual_seed(1)
    n = train_diffusion.noised(z0, "v", 3.0, 1.0)
    assert n.t.shape == (8, 6)
    eps = n.target + z0
    for f in range(6):  # each frame noised to its own level
        level = n.t[:, f].view(-1, 1, 1, 1)
        assert torch.allclose(n.x_t[:, :, f], (1 - level) * z0[:, :, f] + level * eps[:, :, f], atol=1e-6)


def test_a_video_unet_run_trains_with_noise_per_frame_and_other_nets_refuse_it(tmp_path, components, monkeypatch):
    seen = []
    plain = train_diffusion.noise_per_frame
    monkeypatch.setattr(train_diffusion, "noise_per_frame", lambda *a: seen.append(a[1:]) or plain(*a))
    recipe = Recipe(model="video", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False,
                    extra={"frames": 4, "size": 32, "net_kind": "video_unet", "frame_noise": 0.5, "shift": 2})
    train_diffusion.train(str(tmp_path / "fn"), recipe, max_steps=2, max_minutes=None, eval_every=100)
    assert seen == [(4, 2.0, 0.5)] * 2
    for model, extra in (("video", {"frame_noise": 0.5}), ("unet", {"frame_noise": 0.5}),
                         ("video", {"net_kind": "video_unet", "frame_noise": 1.5})):
        with pytest.raises(ValueError, match="frame_noise"):
            train_diffusion.frame_noise_share(Recipe(model=model, extra=extra))


def test_sampling_shift_follows_the_training_shift_unless_set_apart():
    assert Recipe(model="unet").sampling_shift == 1.0
    assert Recipe(model="unet", extra={"shift": 3}).sampling_shift == 3.0
    assert Recipe(model="unet", extra={"shift": 3, "sampling_shift": 2}).sampling_shift == 2.0


def test_lr_warms_up_holds_then_cools_down_to_zero():
    recipe = Recipe(model="dit", lr=1e-3, warmup=10, cooldown=20, total_steps=100)
    assert scheduled_lr(0, recipe) == pytest.approx(1e-4)
    assert scheduled_lr(50, recipe) == pytest.approx(1e-3)
    assert scheduled_lr(80, recipe) == pytest.approx(1e-3)
    assert scheduled_lr(90, recipe) == pytest.approx(5e-4)
    assert scheduled_lr(100, recipe) == 0.0
    assert scheduled_lr(90, Recipe(model="dit", lr=1e-3, warmup=10)) == pytest.approx(1e-3)


def test_a_resume_without_cooldown_trains_at_the_full_lr(tmp_path, monkeypatch):
    from lanterna.cli import main

    seen = []
    monkeypatch.setattr(train_vae, "train", lambda run_dir, recipe, *a, **k: seen.append(recipe) or (None, None))
    run_dir = tmp_path / "vae"
    Run(str(run_dir)).save({"trainable": {}, "state": {}, "recipe": {
        "model": "vae", "size": "default", "lr": 1e-3, "cooldown": 100, "total_steps": 500}})
    assert main(["train", "vae", "--run-dir", str(run_dir), "--steps", "900"]) == 0
    assert seen[-1].cooldown == 0 and seen[-1].total_steps is None
    assert scheduled_lr(800, seen[-1]) == pytest.approx(1e-3)
    monkeypatch.setattr(export, "export_vae", lambda *a, **k: None)
    assert main(["train", "vae", "--run-dir", str(run_dir), "--export-only"]) == 0
    assert (seen[-1].cooldown, seen[-1].total_steps) == (100, 500)  # the card records the run's schedule


def test_cooldown_without_a_last_step_is_refused(tmp_path, capsys):
    from lanterna.cli import main

    code = main(["train", "vae", "--run-dir", str(tmp_path / "vae"), "--cooldown", "100"])
    assert code == 2
    assert "--cooldown needs --steps" in capsys.readouterr().err


def test_a_run_continued_from_weights_keeps_the_cards_options(tmp_path, monkeypatch):
    from lanterna.cli import main
    from lanterna.engines import weights

    seen = []
    monkeypatch.setattr(train_diffusion, "train", lambda run_dir, recipe, *a, **k: seen.append(recipe) or (None, None))
    monkeypatch.setenv("LANTERNA_WEIGHTS_DIR", str(tmp_path / "w"))
    weights.write_card("shapes-video", {"recipe": {"extra": {
        "frames": 8, "size": 32, "latents": "sample", "init_from": "older", "net_kind": "video_unet",
        "spatial_from": "shapes-unet"}}}, tmp_path / "w")
    args = ["train", "video", "--init-from", "shapes-video", "--steps", "1"]
    assert main([*args, "--run-dir", str(tmp_path / "a"), "--extra", '{"size": 48}']) == 0
    extra = seen[-1].extra
    assert (extra["frames"], extra["size"]) == (8, 48)  # the card's, unless --extra says otherwise
    assert extra["latents"] == "mean" and extra["init_from"] == "shapes-video"  # new-run defaults win
    assert extra["net_kind"] == "video_unet" and "spatial_from" not in extra  # how the run began is not
    assert main(["train", "video", "--run-dir", str(tmp_path / "b"), "--steps", "1"]) == 0
    assert "frames" not in seen[-1].extra  # without --init-from nothing is carried


def test_a_stretch_stopped_before_its_cooldown_ends_says_so():
    recipe = {"batch": 8, "lr": 5e-4, "warmup": 200, "cooldown": 800, "total_steps": 20300}
    assert export.schedule_text(recipe, 20300).endswith("cooled to 0 over the last 800")
    assert export.schedule_text(recipe).endswith("cooled to 0 over the last 800")
    cut = export.schedule_text(recipe, 17179)
    assert "stopped at step 17,179" in cut and "before step 20,300" in cut and "cooled to 0" not in cut


def test_recipe_errors_are_one_line_cli_errors(tmp_path, capsys):
    from lanterna.cli import main

    run_dir = str(tmp_path / "vae")
    assert main(["train", "vae", "--run-dir", run_dir, "--steps", "1", "--extra", '{"part": "decoder"}']) == 2
    assert "give --init-from" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["train", "vae", "--run-dir", run_dir, "--extra", "{part: 1}"])
    assert exited.value.code == 2 and "not JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "vae", "--run-dir", run_dir, "--extra", "[1]"])
    assert "JSON object" in capsys.readouterr().err


def test_ema_tracks_the_model():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=1000)
    assert torch.allclose(ema.model.weight, model.weight - 0.5)


def test_run_log_round_trip(tmp_path):
    run = Run(tmp_path)
    run.log({"kind": "eval", "step": 1, "x": 2})
    run.log({"kind": "train", "step": 1})
    assert run.records("eval") == [{"kind": "eval", "step": 1, "x": 2}]
    assert json.loads(run.log_path.read_text().splitlines()[1])["kind"] == "train"


def test_continue_from_exported_weights(tmp_path, weights_dir):
    recipe = Recipe(model="vae", size="tiny", batch=4, lr=1e-3, warmup=1, bf16=False)
    vae, run = train_vae.train(str(tmp_path / "a"), recipe, max_steps=2, max_minutes=None, eval_every=2)
    export.export_vae(vae, run, recipe, weights_dir)
    again = Recipe(model="vae", size="tiny", batch=4, lr=1e-3, warmup=1, bf16=False,
                   extra={"init_from": "shapes-vae"})
    vae2, run2 = train_vae.train(str(tmp_path / "b"), again, max_steps=3, max_minutes=None, eval_every=100)
    assert run2.load()["state"]["step"] == 3  # continued at 2, ran one more
    assert [e["step"] for e in run2.records("eval")][:1] == [2]  # the curve carried over
    assert run2.load()["recipe"]["warmup_start"] == 2
    export.export_vae(vae2, run2, again, weights_dir)
    card = weights.read_card("shapes-vae", weights_dir)
    assert [line.split(" (")[0] for line in card["history"]] == ["steps 0-2", "steps 2-3"]
    assert "continued from the exported shapes-vae" in card["history"][1] and "lr 0.001" in card["history"][1]
    vae3, run3 = train_vae.train(str(tmp_path / "c"), again, max_steps=4, max_minutes=None, eval_every=100)
    export.export_vae(vae3, run3, again, weights_dir)
    card = weights.read_card("shapes-vae", weights_dir)
    assert [line.split(" (")[0] for line in card["history"]] == ["steps 0-2", "steps 2-3", "steps 3-4"]


def exported_tiny_vae(tmp_path, monkeypatch):
    """A tiny VAE trained 2 steps and exported to tmp_path / "w", the weights dir of the test."""
    monkeypatch.setenv("LANTERNA_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setattr(train_vae, "EVAL_IMAGES", 8)
    monkeypatch.setattr(train_vae, "CEILING_PER_TASK", 2)
    recipe = Recipe(model="vae", size="tiny", batch=4, lr=1e-3, warmup=1, bf16=False)
    vae, run = train_vae.train(str(tmp_path / "a"), recipe, max_steps=2, max_minutes=None, eval_every=100)
    export.export_vae(vae, run, recipe, tmp_path / "w")
    return vae


def test_a_decoder_only_run_keeps_the_latent_space(tmp_path, monkeypatch):
    vae = exported_tiny_vae(tmp_path, monkeypatch)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    tuned = Recipe(model="vae", size="tiny", batch=4, lr=1e-2, warmup=1, bf16=False,
                   extra={"init_from": "shapes-vae", "part": "decoder"})
    vae2, _ = train_vae.train(str(tmp_path / "b"), tuned, max_steps=5, max_minutes=None, eval_every=100)
    after = vae2.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert torch.equal(before["scaling_factor"], after["scaling_factor"])
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    with pytest.raises(ValueError, match="part"):
        train_vae.trained_part(Recipe(model="vae", extra={"part": "encoder"}))
    with pytest.raises(ValueError, match="--init-from"):
        train_vae.trained_part(Recipe(model="vae", extra={"part": "decoder"}))


def test_a_wider_decoder_retrains_on_the_frozen_encoder(tmp_path, monkeypatch):
    from lanterna.engines.shapes import load_vae

    vae = exported_tiny_vae(tmp_path, monkeypatch)
    net = {"decoder_channels": [16, 24, 24], "decoder_res_blocks": 2}
    wide = Recipe(model="vae", size="tiny", batch=4, lr=1e-3, warmup=1, bf16=False,
                  extra={"init_from": "shapes-vae", "part": "decoder", "decoder": "fresh", "net": net,
                         "palette_weight": 1.0})
    vae2, run2 = train_vae.train(str(tmp_path / "b"), wide, max_steps=4, max_minutes=None, eval_every=100)
    before, after = vae.state_dict(), vae2.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert torch.equal(before["scaling_factor"], after["scaling_factor"])
    assert sum(p.numel() for p in vae2.decoder.parameters()) > sum(p.numel() for p in vae.decoder.parameters())
    x, _ = train_vae.data.image_batch(np.random.default_rng(0), 2)
    losses = train_vae.decoder_loss(vae2, x, palette_weight=0.5)
    assert float(losses["loss"]) == pytest.approx(float(losses["l1"] + losses["mse"] + 0.5 * losses["palette"]), rel=1e-5)
    point = run2.records("eval")[-1]
    assert 0.0 <= point["judge_round_trip"] <= 1.0 and point["step"] == 4
    export.export_vae(vae2, run2, wide, tmp_path / "w")
    loaded = load_vae(directory=tmp_path / "w")  # the card's config builds the wider decoder
    assert loaded.config.decoder_channels == (16, 24, 24)
    assert torch.allclose(train_vae.reconstruct(loaded, x), train_vae.reconstruct(vae2.eval(), x), atol=1e-6)
    with pytest.raises(ValueError, match="decoder"):
        train_vae.build(Recipe(model="vae", size="tiny", extra={"init_from": "shapes-vae", "decoder": "fresh"}))
    with pytest.raises(ValueError, match="decoder"):
        train_vae.build(Recipe(model="vae", size="tiny", extra={"decoder": "new"}))


def test_the_palette_term_reads_what_the_oracle_snaps():
    x, _ = train_vae.data.image_batch(np.random.default_rng(3), 4)
    labels = train_vae.palette_labels(x)
    assert labels.shape == (4, 64, 64) and int(labels.max()) <= 8
    exact = torch.from_numpy(train_vae.PALETTE.astype(np.float32) / 127.5 - 1.0)[labels].permute(0, 3, 1, 2)
    assert float(train_vae.palette_term(exact, labels)) < 1e-3  # every pixel on its palette colour
    blurred = torch.nn.functional.avg_pool2d(exact, 5, stride=1, padding=2, count_include_pad=False)
    assert float(train_vae.palette_term(blurred, labels)) > 10 * float(train_vae.palette_term(exact, labels))


def test_a_fresh_optimiser_on_continued_weights_warms_up_again():
    recipe = Recipe(model="dit", lr=1e-3, warmup=10, warmup_start=5000)
    assert scheduled_lr(5000, recipe) == pytest.approx(1e-4)
    assert scheduled_lr(5020, recipe) == pytest.approx(1e-3)


def test_diffusion_targets_are_posterior_means_or_draws(components):
    from lanterna.engines.shapes import load_vae

    vae = load_vae(directory=components)
    pixels, _ = train_diffusion.data.image_batch(np.random.default_rng(0), 2)
    mean = train_diffusion.encode_images(vae, pixels, "mean")
    assert torch.equal(mean, train_diffusion.encode_images(vae, pixels, "mean"))
    assert not torch.equal(mean, train_diffusion.encode_images(vae, pixels, "sample"))
    assert train_diffusion.latent_targets(Recipe(model="dit")) == "sample"  # runs recorded before the choice
    assert train_diffusion.latent_targets(Recipe(model="dit", extra={"latents": "mean"})) == "mean"
    with pytest.raises(ValueError, match="latents"):
        train_diffusion.latent_targets(Recipe(model="dit", extra={"latents": "mode"}))


def test_shift_moves_training_timesteps_toward_noise():
    g = torch.Generator().manual_seed(0)
    plain = train_diffusion.sample_t(20000, 1.0, generator=g)
    shifted = train_diffusion.sample_t(20000, 3.0, generator=torch.Generator().manual_seed(0))
    assert plain.median() == pytest.approx(0.5, abs=0.02)
    assert shifted.median() == pytest.approx(0.75, abs=0.02)  # 3 * 0.5 / (1 + 2 * 0.5)
    assert torch.all((shifted >= plain) & (shifted < 1))


def test_word_aware_run_widens_narrow_weights_and_its_card_says_so(tmp_path, components):
    weights_dir = components
    narrow = Recipe(model="dit", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False, ema=0.9)
    narrow_net, run = train_diffusion.train(str(tmp_path / "narrow"), narrow, max_steps=1, max_minutes=None, eval_every=100)
    export.export_denoiser(narrow_net, run, narrow, weights_dir)
    assert weights.read_card("shapes-dit", weights_dir)["text_context"] == "states"
    wide = Recipe(model="dit", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False, ema=0.9,
                  extra={"text_context": "states+words", "latents": "mean", "init_from": "shapes-dit"})
    net, run = train_diffusion.train(str(tmp_path / "wide"), wide, max_steps=2, max_minutes=None, eval_every=100)
    assert run.load()["state"]["step"] == 2 and net.config.context_dim == 2 * narrow_net.config.context_dim
    export.export_denoiser(net, run, wide, weights_dir)
    assert weights.read_card("shapes-dit", weights_dir)["text_context"] == "states+words"
    ordered = Recipe(model="dit", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False, ema=0.9,
                     extra={"text_context": "states+words+order", "latents": "mean", "init_from": "shapes-dit"})
    net, run = train_diffusion.train(str(tmp_path / "ordered"), ordered, max_steps=1, max_minutes=None, eval_every=100)
    assert net.config.context_dim == 3 * narrow_net.config.context_dim
    export.export_denoiser(net, run, ordered, weights_dir)
    assert weights.read_card("shapes-dit", weights_dir)["text_context"] == "states+words+order"
    out = ShapesEngine("shapes-dit", weights_dir).run(
        GenerationRequest(task="t2i", prompt="a red circle", seeds=[1], steps=2))
    assert out.images[0].size == (64, 64)


def test_new_diffusion_runs_default_to_word_aware_mean_targets(tmp_path, monkeypatch):
    from lanterna.cli import main

    seen = []
    monkeypatch.setattr(train_diffusion, "train", lambda run_dir, recipe, *a, **k: seen.append(recipe) or (None, None))
    assert main(["train", "dit", "--run-dir", str(tmp_path / "a"), "--steps", "1"]) == 0
    assert seen[-1].extra == {"latents": "mean", "text_context": "states+words"}
    assert main(["train", "unet", "--run-dir", str(tmp_path / "b"), "--steps", "1",
                 "--extra", '{"text_context": "states"}']) == 0
    assert seen[-1].extra == {"latents": "mean", "text_context": "states"}
    Run(str(tmp_path / "c")).save({"trainable": {}, "state": {}, "recipe": {"model": "dit", "extra": {}}})
    assert main(["train", "dit", "--run-dir", str(tmp_path / "c"), "--steps", "1"]) == 0
    assert seen[-1].extra == {}  # a resumed run keeps its recipe


def test_narrowing_word_aware_weights_is_a_clear_cli_error(tmp_path, components, capsys):
    from lanterna.cli import main

    recipe = Recipe(model="dit", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False,
                    extra={"text_context": "states+words"})
    net, run = train_diffusion.train(str(tmp_path / "wide"), recipe, max_steps=1, max_minutes=None, eval_every=100)
    export.export_denoiser(net, run, recipe, components)
    code = main(["train", "dit", "--size", "tiny", "--run-dir", str(tmp_path / "narrow"), "--steps", "1",
                 "--init-from", "shapes-dit", "--extra", '{"text_context": "states"}'])
    err = capsys.readouterr().err
    assert code == 2 and "shapes-dit cannot start this run" in err and "'states+words'" in err


@pytest.mark.parametrize("kind", ["dit", "video_dit"])
def test_a_resized_patch_net_computes_the_old_net_on_the_pooled_latent(kind):
    from lanterna.engines.nets import NET_SIZES, build_net
    from lanterna.training.patch_resize import resize_patches

    torch.manual_seed(0)
    config = dict(NET_SIZES[kind]["tiny"])
    old = build_net(kind, config)
    with torch.no_grad():  # trained-looking weights: the zero-initialised layers would hide a mistake
        for p in old.parameters():
            p.add_(0.1 * torch.randn_like(p))
    new = build_net(kind, config | {"patch_size": 2 * config["patch_size"]})
    new.load_state_dict(resize_patches(old.state_dict(), 2 * config["patch_size"]))
    shape = (2, 4, 3, 16, 16) if kind == "video_dit" else (2, 4, 16, 16)
    x, t = torch.randn(shape), torch.tensor([0.3, 0.8])
    context, mask = torch.randn(2, 5, config["context_dim"]), torch.ones(2, 5, dtype=torch.bool)
    pooled = torch.randn(2, config["context_dim"])
    pool = torch.nn.AvgPool3d((1, 2, 2)) if kind == "video_dit" else torch.nn.AvgPool2d(2)
    size = (3, 16, 16) if kind == "video_dit" else (16, 16)
    expected = torch.nn.functional.interpolate(old(pool(x), t, context, mask, pooled), size=size, mode="nearest")
    with torch.no_grad():
        assert torch.allclose(new(x, t, context, mask, pooled), expected, atol=1e-5)


def test_continuing_at_a_larger_patch_resizes_the_saved_patches(tmp_path, components):
    weights_dir = components
    small = Recipe(model="dit", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False, ema=0.9)
    net, run = train_diffusion.train(str(tmp_path / "p2"), small, max_steps=1, max_minutes=None, eval_every=100)
    export.export_denoiser(net, run, small, weights_dir)
    large = Recipe(model="dit", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False, ema=0.9,
                   extra={"net": {"patch_size": 4}, "init_from": "shapes-dit"})
    net4, run4 = train_diffusion.train(str(tmp_path / "p4"), large, max_steps=1, max_minutes=None, eval_every=100)
    assert net4.config.patch_size == 4 and run4.load()["state"]["step"] == 1  # continued at 1, nothing to train
    kernel = net4.patch_embed.weight.detach()
    assert torch.equal(kernel[..., 0::2, 0::2], kernel[..., 1::2, 1::2])  # each old weight over a 2x2 block
    with pytest.raises(ValueError, match="not a multiple"):
        train_diffusion.train(str(tmp_path / "p3"), Recipe(model="dit", size="tiny", batch=2, warmup=1, extra={
            "net": {"patch_size": 3}, "init_from": "shapes-dit"}), max_steps=1, max_minutes=None, eval_every=100)


def test_a_task_mix_sets_what_the_image_batches_hold():
    from lanterna.training import data
    from lanterna.world.captions import parse_caption

    mix = train_diffusion.training_mix(Recipe(model="unet", extra={"task_mix": {"position": 3, "counting": 1}}))
    _, captions = data.image_batch(np.random.default_rng(0), 64, mix)
    asked = [parse_caption(c) for c in captions]
    relations = sum(r.relation is not None for r in asked)
    assert relations + sum(r.objects[0].count > 1 for r in asked) == 64 and 32 < relations < 64
    assert train_diffusion.training_mix(Recipe(model="unet")) is None
    for bad in ({"novel": 1.0}, {"position": -1.0}, ["position"], {"position": "a lot"}):
        with pytest.raises(ValueError, match="task_mix"):
            train_diffusion.training_mix(Recipe(model="unet", extra={"task_mix": bad}))


def test_a_binding_contrast_run_scores_near_misses_of_its_own_captions(tmp_path, components, monkeypatch):
    seen = []
    plain = train_diffusion.flow_loss_with_binding

    def recorded(net, z0, cond, negatives, rows, *args):
        seen.append((z0.shape[0], len(rows), None if negatives is None else negatives[0].shape[0]))
        return plain(net, z0, cond, negatives, rows, *args)

    monkeypatch.setattr(train_diffusion, "flow_loss_with_binding", recorded)
    recipe = Recipe(model="unet", size="tiny", batch=8, lr=1e-3, warmup=1, bf16=False,
                    extra={"task_mix": {"color_attr": 1.0}, "binding_contrast": {"weight": 0.1, "margin": 0.05}})
    train_diffusion.train(str(tmp_path / "bind"), recipe, max_steps=2, max_minutes=None, eval_every=100)
    assert len(seen) == 2
    # A colour-attribute caption has a near miss unless it was dropped or the swap would make a
    # held-out pair; each near miss is encoded once.
    assert all(batch == 8 and 2 <= rows == negatives for batch, rows, negatives in seen)


def test_a_video_unet_run_starts_from_image_unet_weights_and_exports_a_video_model(tmp_path, components):
    weights_dir = components
    image_recipe = Recipe(model="unet", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False,
                          extra={"text_context": "states+words"})
    image_net, image_run = train_diffusion.train(str(tmp_path / "image"), image_recipe, max_steps=1,
                                                 max_minutes=None, eval_every=100)
    export.export_denoiser(image_net, image_run, image_recipe, weights_dir)
    image_state = weights.load_state("shapes-unet", weights_dir)
    recipe = Recipe(model="video", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False, ema=0.9,
                    extra={"frames": 4, "size": 32, "net_kind": "video_unet", "spatial_from": "shapes-unet",
                           "text_context": "states+words"})
    start, _ = train_diffusion.train(str(tmp_path / "start"), recipe, max_steps=0, max_minutes=None, eval_every=100)
    own = start.state_dict()
    assert all(torch.equal(own[k], v.float()) for k, v in image_state.items())
    assert any(".temporal." in k for k in own) and set(image_state) < set(own)
    net, run = train_diffusion.train(str(tmp_path / "video"), recipe, max_steps=2, max_minutes=None, eval_every=100)
    export.export_denoiser(net, run, recipe, weights_dir)
    card = weights.read_card("shapes-video", weights_dir)
    assert card["net"] == "video_unet" and card["recipe"]["extra"]["spatial_from"] == "shapes-unet"
    out = ShapesEngine("shapes-video", weights_dir).run(
        GenerationRequest(task="t2v", prompt="a red circle moving left", seeds=[0], steps=2))
    assert len(out.videos[0]) == 4 and out.videos[0][0].size == (32, 32)


def test_a_video_unet_run_adds_space_time_attention_to_exported_video_weights(tmp_path, components):
    weights_dir = components
    extra = {"frames": 4, "size": 32, "net_kind": "video_unet", "text_context": "states+words"}
    plain = Recipe(model="video", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False, ema=0.9, extra=extra)
    net, run = train_diffusion.train(str(tmp_path / "plain"), plain, max_steps=1, max_minutes=None, eval_every=100)
    export.export_denoiser(net, run, plain, weights_dir)
    saved = weights.load_state("shapes-video", weights_dir)
    grown = Recipe(model="video", size="tiny", batch=2, lr=1e-3, warmup=1, bf16=False, ema=0.9,
                   extra={**extra, "init_from": "shapes-video", "net": {"spacetime_mid": True}})
    start, _ = train_diffusion.train(str(tmp_path / "start"), grown, max_steps=None, max_minutes=0,
                                     eval_every=100)  # no step taken: the net it starts from
    own = start.state_dict()
    assert all(torch.equal(own[k], v.float()) for k, v in saved.items())
    assert any(".spacetime." in k for k in own) and set(saved) < set(own)
    net, run = train_diffusion.train(str(tmp_path / "grown"), grown, max_steps=3, max_minutes=None, eval_every=100)
    export.export_denoiser(net, run, grown, weights_dir)
    assert weights.read_card("shapes-video", weights_dir)["config"]["spacetime_mid"] is True
    out = ShapesEngine("shapes-video", weights_dir).run(
        GenerationRequest(task="t2v", prompt="a red circle moving left", seeds=[0], steps=2))
    assert len(out.videos[0]) == 4


def test_image_weights_start_only_a_fresh_video_unet(tmp_path, components):
    for extra, match in (({"spatial_from": "shapes-unet"}, "only a video_unet"),
                         ({"net_kind": "unet"}, "net_kind"),
                         ({"net_kind": "video_unet", "spatial_from": "shapes-unet", "init_from": "shapes-video"},
                          "--init-from")):
        recipe = Recipe(model="video", size="tiny", batch=2, extra={"frames": 4, "size": 32, **extra})
        with pytest.raises(ValueError, match=match):
            train_diffusion.train(str(tmp_path / match[:4]), recipe, max_steps=0, max_minutes=None)


@pytest.mark.parametrize("model,extra", [("unet", {}), ("video", {"frames": 4, "size": 32, "net_kind": "video_unet"})])
def test_a_grounded_run_reads_the_scenes_layout_and_exports_it(tmp_path, components, model, extra, monkeypatch):
    from lanterna.world.grounding import LAYOUT_CHANNELS

    seen = []
    plain = train_diffusion.flow_loss
    monkeypatch.setattr(train_diffusion, "flow_loss", lambda *a: seen.append(a[-1]) or plain(*a))
    recipe = Recipe(model=model, size="tiny", batch=3, lr=1e-3, warmup=1, bf16=False, ema=0.9,
                    extra={**extra, "net": {"layout_channels": LAYOUT_CHANNELS}, "grounding": {"unconditional": False}})
    net, run = train_diffusion.train(str(tmp_path / model), recipe, max_steps=2, max_minutes=None, eval_every=100)
    cells = 8 if model == "video" else 16
    assert [tuple(m.shape) for m in seen] == [(3, LAYOUT_CHANNELS, *((4,) if model == "video" else ()), cells, cells)] * 2
    assert any(float(m[i, 0].sum()) > 0 for m in seen for i in range(3))  # the scenes' boxes (a few dropped)
    directory = tmp_path / "w"
    for name in ("shapes-vae", "shapes-clip"):
        for suffix in (".json", ".safetensors"):
            (directory / f"{name}{suffix}").parent.mkdir(exist_ok=True)
            (directory / f"{name}{suffix}").write_bytes((components / f"{name}{suffix}").read_bytes())
    export.export_denoiser(net, run, recipe, directory)
    name = "shapes-video" if model == "video" else "shapes-unet"
    card = weights.read_card(name, directory)
    assert card["config"]["layout_channels"] == LAYOUT_CHANNELS and card["grounding"] == {"unconditional": False, "map": "boxes"}
    engine = ShapesEngine(name, directory)
    engine.load()
    assert engine.pipeline.grounding.unconditional is False
