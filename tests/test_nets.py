"""The in-repo nets on their "tiny" configs: shapes, zero-init guarantees, agreement with
diffusers where the math is the same, masking, batch independence, round-trips."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lanterna.engines.nets import NET_CLASSES, NET_KINDS, NET_SIZES, VIDEO_NET_KINDS, build_net, count_params
from lanterna.engines.nets.dit import DiTBlock
from lanterna.engines.nets.layers import Attention, TimestepEmbedder, timestep_embedding
from lanterna.engines.nets.text import ShapesCLIPConfig, ShapesTokenizer, text_conditioner
from lanterna.engines.nets.vae import DiagonalGaussian

DENOISERS = ("dit", "unet", "video_dit", "video_unet")
VIDEO = VIDEO_NET_KINDS
CONTEXT_LEN = 24


def tiny(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return build_net(kind, NET_SIZES[kind]["tiny"]).eval()


def randomize_zero_init(net: nn.Module, std: float = 0.2) -> nn.Module:
    """Give every zero-initialised tensor random values: the net as after some training."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, std)
    return net


def denoiser_inputs(kind: str, batch: int = 3, frames: int = 6) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(2)
    shape = (batch, 4, frames, 8, 8) if kind in VIDEO else (batch, 4, 16, 16)
    x = torch.randn(shape, generator=g)
    t = torch.rand(batch, generator=g)
    dim = NET_SIZES[kind]["tiny"]["context_dim"]
    context = torch.randn(batch, CONTEXT_LEN, dim, generator=g)
    lengths = torch.tensor([5, 9, 3, 12, 7, 2, 8, 4][:batch])
    mask = torch.arange(CONTEXT_LEN)[None] < lengths[:, None]
    pooled = torch.randn(batch, dim, generator=g)
    return x, t, context, mask, pooled


# -- shapes and zero init ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", DENOISERS)
def test_denoiser_output_is_zero_at_init_and_shaped_like_input(kind):
    net = tiny(kind)
    x, *cond = denoiser_inputs(kind)
    with torch.no_grad():
        out = net(x, *cond)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x))


@pytest.mark.parametrize("kind", DENOISERS)
def test_denoiser_output_depends_on_everything_once_trained(kind):
    net = randomize_zero_init(tiny(kind))
    x, t, context, mask, pooled = denoiser_inputs(kind)
    with torch.no_grad():
        base = net(x, t, context, mask, pooled)
        assert base.abs().mean() > 1e-3
        assert not torch.allclose(net(x, t * 0.5, context, mask, pooled), base)
        assert not torch.allclose(net(x, t, context, mask, pooled + 1), base)
        assert not torch.allclose(net(x, t, context + 1, mask, pooled), base)


@pytest.mark.parametrize("kind", ["dit", "video_dit"])
def test_every_transformer_block_is_the_identity_at_init(kind):
    net = tiny(kind)
    x, t, context, mask, pooled = denoiser_inputs(kind)
    with torch.no_grad():
        c = net.condition(t, pooled)
        tokens = torch.randn(x.shape[0], 16, net.config.width)
        if kind == "video_dit":
            tokens = torch.randn(x.shape[0], 4, 16, net.config.width)
        for block in net.blocks:
            assert torch.equal(block(tokens, c, context, mask), tokens)


def test_unet_residual_branches_start_at_zero():
    net = tiny("unet")
    x, t, context, mask, pooled = denoiser_inputs("unet")
    emb = net.t_embedder(t) + net.pooled_embedder(pooled)
    h = torch.randn(x.shape[0], net.config.channels[0], 16, 16)
    with torch.no_grad():
        stage = net.down[0]
        assert torch.equal(stage.res(h, emb), h)


def test_vae_shapes_and_round_trip():
    vae = tiny("vae")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(x)
        assert posterior.mean.shape == (2, 4, 16, 16) == posterior.logvar.shape
        assert vae.config.downsample == 4
        assert vae.decode(posterior.mode()).shape == x.shape
        vae.scaling_factor.fill_(0.5)
        z = vae.encode_latents(x, deterministic=True)
        assert torch.allclose(z, posterior.mode() * 0.5)
        assert torch.allclose(vae.decode_latents(z), vae.decode(posterior.mode()), atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        vae.encode(torch.zeros(1, 3, 62, 62))


def test_diagonal_gaussian_kl_sample_mode():
    g = torch.Generator().manual_seed(3)
    moments = torch.randn(4, 8, 5, 5, generator=g) * 2
    posterior = DiagonalGaussian(moments)
    kl = posterior.kl()
    assert kl.shape == (4,) and (kl >= 0).all() and (kl > 0).all()
    standard = DiagonalGaussian(torch.zeros(2, 8, 5, 5))
    assert torch.allclose(standard.kl(), torch.zeros(2))
    assert torch.equal(posterior.mode(), moments[:, :4])
    a = posterior.sample(torch.Generator().manual_seed(7))
    b = posterior.sample(torch.Generator().manual_seed(7))
    c = posterior.sample(torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, posterior.mode())
    # A wide sample: its standardised residuals are ~N(0, 1).
    wide = DiagonalGaussian(torch.cat([torch.full((1, 1, 200, 200), 3.0), torch.full((1, 1, 200, 200), math.log(4.0))], 1))
    s = wide.sample(torch.Generator().manual_seed(0))
    assert abs(float(s.mean()) - 3.0) < 0.05 and abs(float(s.std()) - 2.0) < 0.05


def test_clip_shapes_and_logit_scale():
    clip = tiny("clip")
    tokens = ShapesTokenizer().encode(["a red circle", "two blue squares", "a green cross"])
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        per_image, per_text = clip(pixels, tokens.ids, tokens.mask)
        states, pooled = clip.encode_text_tokens(tokens.ids, tokens.mask)
    cfg = clip.config
    assert per_image.shape == (2, 3) and per_text.shape == (3, 2)
    assert torch.allclose(per_image.T, per_text)
    assert states.shape == (3, CONTEXT_LEN, cfg.text_width) and pooled.shape == (3, cfg.text_width)
    assert clip.encode_text(tokens.ids, tokens.mask).shape == (3, cfg.embed_dim)
    assert clip.encode_image(pixels).shape == (2, cfg.embed_dim)
    assert math.isclose(clip.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    assert float(per_image.abs().max()) <= 1 / 0.07 + 1e-3
    # Padding states are zero; the pooled state is the <eos> state.
    assert not states[~tokens.mask].any()
    last = tokens.mask.sum(1) - 1
    assert torch.equal(pooled, states[torch.arange(3), last])


# -- agreement with diffusers --------------------------------------------------------------------
def test_timestep_embedding_matches_diffusers():
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_timestep_embedding

    t = torch.tensor([0.0, 1.0, 17.5, 250.0, 999.0])
    for dim in (32, 256):
        ref = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        assert torch.allclose(timestep_embedding(t, dim), ref, atol=1e-5)
    torch.manual_seed(0)
    ours = TimestepEmbedder(64, frequency_dim=256, time_scale=1000.0)
    proj, mlp = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0), TimestepEmbedding(256, 64)
    mlp.linear_1.load_state_dict(ours.mlp[0].state_dict())
    mlp.linear_2.load_state_dict(ours.mlp[2].state_dict())
    t01 = torch.rand(6)
    with torch.no_grad():
        assert torch.allclose(ours(t01), mlp(proj(t01 * 1000.0)), atol=1e-5)


def copy_block_into_diffusers(ours: DiTBlock, ref: nn.Module) -> None:
    with torch.no_grad():
        for name, (w, b) in zip(("to_q", "to_k", "to_v"),
                                zip(ours.attn.qkv.weight.chunk(3), ours.attn.qkv.bias.chunk(3))):
            getattr(ref.attn1, name).weight.copy_(w)
            getattr(ref.attn1, name).bias.copy_(b)
        ref.attn1.to_out[0].load_state_dict(ours.attn.out.state_dict())
        ref.attn2.to_q.load_state_dict(ours.cross_attn.q.state_dict())
        for name, w, b in zip(("to_k", "to_v"), ours.cross_attn.kv.weight.chunk(2),
                              ours.cross_attn.kv.bias.chunk(2)):
            getattr(ref.attn2, name).weight.copy_(w)
            getattr(ref.attn2, name).bias.copy_(b)
        ref.attn2.to_out[0].load_state_dict(ours.cross_attn.out.state_dict())
        ref.ff.net[0].proj.load_state_dict(ours.mlp.fc1.state_dict())
        ref.ff.net[2].load_state_dict(ours.mlp.fc2.state_dict())
        ref.scale_shift_table.zero_()  # our modulation comes whole from adaLN_modulation(c)


def test_dit_block_matches_diffusers_basic_transformer_block():
    from diffusers.models.attention import BasicTransformerBlock

    width, heads, context_dim = 48, 3, 24
    torch.manual_seed(0)
    ours = randomize_zero_init(DiTBlock(width, heads, context_dim))
    ref = BasicTransformerBlock(
        width, heads, width // heads, cross_attention_dim=context_dim,
        activation_fn="gelu-approximate", attention_bias=True, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6,
    )
    copy_block_into_diffusers(ours, ref)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 20, width, generator=g)
    c = torch.randn(3, width, generator=g)
    context = torch.randn(3, 7, context_dim, generator=g)
    mask = torch.arange(7)[None] < torch.tensor([[7], [3], [1]])
    with torch.no_grad():
        out = ours(x, c, context, mask)
        expected = ref(x, encoder_hidden_states=context,
                       encoder_attention_mask=((1 - mask.float()) * -10000.0)[:, None],
                       timestep=ours.adaLN_modulation(c))
    assert (out - x).abs().max() > 0.1  # the block does something
    assert torch.allclose(out, expected, atol=1e-5), float((out - expected).abs().max())


# -- masking -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", DENOISERS)
def test_masked_context_tokens_change_nothing(kind):
    net = randomize_zero_init(tiny(kind))
    x, t, context, mask, pooled = denoiser_inputs(kind)
    changed = context.clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 10
    real = context.clone()
    real[0, 0] += 1.0  # a real token: must matter
    with torch.no_grad():
        base = net(x, t, context, mask, pooled)
        assert torch.allclose(net(x, t, changed, mask, pooled), base, atol=1e-6)
        assert not torch.allclose(net(x, t, real, mask, pooled)[0], base[0], atol=1e-4)


def test_attention_with_no_real_context_token_gives_zero_not_nan():
    attn = Attention(16, 2, context_dim=8)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    out = attn(x, context, mask)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[1], attn.out.bias.expand(5, 16))


def test_text_padding_changes_nothing():
    clip = randomize_zero_init(tiny("clip"))
    tokens = ShapesTokenizer().encode(["a red circle on a black background", "three squares"])
    ids = tokens.ids.clone()
    ids[~tokens.mask] = 17  # any word id where padding was
    with torch.no_grad():
        a_states, a_pooled = clip.encode_text_tokens(tokens.ids, tokens.mask)
        b_states, b_pooled = clip.encode_text_tokens(ids, tokens.mask)
    assert torch.allclose(a_states, b_states, atol=1e-6) and torch.allclose(a_pooled, b_pooled, atol=1e-6)


# -- batch independence --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", DENOISERS)
def test_denoiser_batch_independence(kind):
    net = randomize_zero_init(tiny(kind))
    x, t, context, mask, pooled = denoiser_inputs(kind)
    with torch.no_grad():
        batch = net(x, t, context, mask, pooled)
        for i in range(x.shape[0]):
            s = slice(i, i + 1)
            alone = net(x[s], t[s], context[s], mask[s], pooled[s])
            assert torch.allclose(batch[s], alone, atol=1e-5)


def test_vae_and_clip_batch_independence():
    vae, clip = tiny("vae"), tiny("clip")
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    tokens = ShapesTokenizer().encode(["a red circle", "two blue squares above a cross", "green"])
    with torch.no_grad():
        z = vae.encode(x).mode()
        recon = vae.decode(z)
        images = clip.encode_image(x)
        texts = clip.encode_text(tokens.ids, tokens.mask)
        for i in range(3):
            s = slice(i, i + 1)
            assert torch.allclose(vae.encode(x[s]).mode(), z[s], atol=1e-5)
            assert torch.allclose(vae.decode(z[s]), recon[s], atol=1e-5)
            assert torch.allclose(clip.encode_image(x[s]), images[s], atol=1e-5)
            assert torch.allclose(clip.encode_text(tokens.ids[s], tokens.mask[s]), texts[s], atol=1e-5)


# -- video: what mixes frames --------------------------------------------------------------------
def test_video_temporal_attention_mixes_frames_and_spatial_does_not():
    net = randomize_zero_init(tiny("video_dit"))
    x, t, context, mask, pooled = denoiser_inputs("video_dit", batch=1, frames=6)
    perturbed = x.clone()
    perturbed[:, :, 0] += torch.randn_like(perturbed[:, :, 0])
    with torch.no_grad():
        base, moved = net(x, t, context, mask, pooled), net(perturbed, t, context, mask, pooled)
        assert (moved[:, :, 5] - base[:, :, 5]).abs().max() > 1e-3
        for block in net.blocks:  # switch temporal attention off: frames must stay independent
            nn.init.zeros_(block.temporal_attn.out.weight)
            nn.init.zeros_(block.temporal_attn.out.bias)
        base, moved = net(x, t, context, mask, pooled), net(perturbed, t, context, mask, pooled)
    assert (moved[:, :, 0] - base[:, :, 0]).abs().max() > 1e-3
    assert torch.allclose(moved[:, :, 1:], base[:, :, 1:], atol=1e-6)


def test_video_frame_count_is_checked():
    net = tiny("video_dit")
    x, t, context, mask, pooled = denoiser_inputs("video_dit", batch=1, frames=17)
    with pytest.raises(ValueError, match="frames"):
        net(x, t, context, mask, pooled)


# -- configs and weights round-trip --------------------------------------------------------------
@pytest.mark.parametrize("kind", NET_KINDS)
def test_config_and_weights_round_trip_through_json_and_safetensors(kind, tmp_path):
    net = randomize_zero_init(tiny(kind))
    if kind == "vae":
        net.scaling_factor.fill_(0.8125)
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(asdict(net.config)))
    torch.manual_seed(123)
    loaded = build_net(kind, json.loads((tmp_path / "config.json").read_text()))
    assert loaded.config == net.config
    loaded.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    if kind == "vae":
        assert float(loaded.scaling_factor) == 0.8125


@pytest.mark.parametrize("kind", NET_KINDS)
def test_size_table_default_is_the_config_default(kind):
    _, config_class = NET_CLASSES[kind]
    assert config_class(**NET_SIZES[kind]["default"]) == config_class()
    assert set(NET_SIZES[kind]) >= {"tiny", "default"}


def test_build_net_rejects_unknown_kinds_and_fields():
    with pytest.raises(ValueError, match="unknown net kind"):
        build_net("gan", {})
    with pytest.raises(ValueError, match="bad dit config"):
        build_net("dit", {"widht": 64})
    assert count_params(nn.Linear(3, 2)) == 8


# -- tokenizer -----------------------------------------------------------------------------------
def test_tokenizer_known_words_round_trip():
    tok = ShapesTokenizer()
    text = "a small red circle to the left of two blue squares on a black background"
    batch = tok.encode([text, "Three GREEN triangles."])
    assert batch.ids.shape == batch.mask.shape == (2, 24)
    assert batch.ids.dtype == torch.long and batch.mask.dtype == torch.bool
    assert tok.decode(batch.ids[0]) == text.split()
    assert tok.decode(batch.ids[1]) == ["three", "green", "triangles"]  # case and punctuation
    assert batch.unknown_words == [[], []] and batch.truncated == [False, False]
    assert batch.ids[0, 0] == tok.index["<bos>"]
    assert batch.ids[0, int(batch.mask[0].sum()) - 1] == tok.index["<eos>"]
    assert int(batch.mask[1].sum()) == 5


def test_tokenizer_reports_unknown_words():
    tok = ShapesTokenizer()
    batch = tok.encode(["a red dodecahedron near a Red dodecahedron", ""])
    assert batch.unknown_words == [["dodecahedron", "near"], []]
    unk = tok.index["<unk>"]
    assert int((batch.ids[0] == unk).sum()) == 3  # every occurrence is kept as <unk>
    assert int(batch.mask[1].sum()) == 2  # the empty prompt is <bos> <eos>


def test_tokenizer_reports_truncation():
    tok = ShapesTokenizer()
    long = " ".join(["red"] * 30)
    batch = tok.encode([long, "a red circle"], max_length=10)
    assert batch.truncated == [True, False]
    assert batch.ids.shape == (2, 10) and bool(batch.mask[0].all())
    assert batch.ids[0, -1] == tok.index["<eos>"]
    assert tok.encode([" ".join(["red"] * 8)], max_length=10).truncated == [False]


def test_tokenizer_vocabulary_and_clip_vocab_size():
    tok = ShapesTokenizer()
    words = tok.vocabulary()
    assert "circle" in words and "<pad>" not in words and "<unk>" not in words
    assert len(words) == tok.vocab_size - 4
    assert ShapesCLIPConfig().vocab_size == tok.vocab_size


# -- word-aware text conditioning ---------------------------------------------------------------
def test_word_aware_text_keeps_the_states_and_adds_distinct_words():
    clip = tiny("clip")
    text = text_conditioner(clip, "states+words")
    tokens = ShapesTokenizer().encode(["a red circle", "a red square"])
    with torch.no_grad():
        states, pooled = clip.encode_text_tokens(tokens.ids, tokens.mask)
        context, pooled2 = text.encode_text_tokens(tokens.ids, tokens.mask)
    w = clip.config.text_width
    assert text.context_width == 2 * w and context.shape == (2, CONTEXT_LEN, 2 * w)
    assert torch.equal(context[..., :w], states) and torch.equal(pooled2[:, :w], pooled)
    words = context[..., w:]
    assert not words[~tokens.mask].any()  # padding stays zero
    real = words[tokens.mask]
    assert torch.allclose(real.pow(2).mean(-1), torch.ones(len(real)), atol=1e-2)  # RMS 1 per word
    shape_word = 3  # <bos> a red circle|square
    assert (words[0, shape_word] - words[1, shape_word]).norm() > 0.5 * words[0, shape_word].norm()
    assert torch.equal(words[0, :shape_word], words[1, :shape_word])
    assert text_conditioner(clip, "states") is clip
    with pytest.raises(ValueError, match="text_context"):
        text_conditioner(clip, "words")


def test_order_context_tells_swapped_objects_apart_where_the_words_cannot():
    clip = tiny("clip")
    with torch.no_grad():
        clip.text.position_embedding.normal_()
    words, ordered = text_conditioner(clip, "states+words"), text_conditioner(clip, "states+words+order")
    tokens = ShapesTokenizer().encode(["a red circle to the left of a blue square",
                                       "a blue square to the left of a red circle"])
    w = clip.config.text_width
    with torch.no_grad():
        two, pooled2 = words.encode_text_tokens(tokens.ids, tokens.mask)
        three, pooled3 = ordered.encode_text_tokens(tokens.ids, tokens.mask)
    assert ordered.context_width == 3 * w and three.shape[-1] == 3 * w
    assert torch.equal(three[..., :2 * w], two) and torch.equal(pooled3[:, :2 * w], pooled2)
    assert not three[..., 2 * w:][~tokens.mask].any()  # padding stays zero

    def rows(context, i):  # what cross-attention sees: the set of real tokens, in any order
        return sorted(map(tuple, context[i][tokens.mask[i]].tolist()))

    assert rows(two[..., w:], 0) == rows(two[..., w:], 1)  # the words alone: the same bag
    assert rows(three[..., w:], 0) != rows(three[..., w:], 1)  # word beside position: not
    assert torch.allclose(three[..., 2 * w:][tokens.mask].pow(2).mean(-1), torch.ones(int(tokens.mask.sum())),
                          atol=1e-2)


@pytest.mark.parametrize("kind", DENOISERS)
def test_weights_widened_to_word_aware_context_compute_the_same(kind):
    from lanterna.training.common import load_widened

    narrow = randomize_zero_init(tiny(kind))
    wide = build_net(kind, {**NET_SIZES[kind]["tiny"], "context_dim": 2 * NET_SIZES[kind]["tiny"]["context_dim"]})
    load_widened(wide, narrow.state_dict())
    x, t, context, mask, pooled = denoiser_inputs(kind)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        before = narrow(x, t, context, mask, pooled)
        after = wide(x, t, torch.cat([context, torch.randn(context.shape, generator=g)], -1), mask,
                     torch.cat([pooled, torch.randn(pooled.shape, generator=g)], -1))
    assert torch.allclose(before, after, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        load_widened(narrow, wide.state_dict())


def test_unet_grown_with_extra_middle_stages_computes_the_same_then_learns():
    from lanterna.training.common import WeightsDoNotFit, load_widened

    saved = randomize_zero_init(tiny("unet"))
    grown = build_net("unet", {**NET_SIZES["unet"]["tiny"], "extra_mid_stages": 2})
    load_widened(grown, saved.state_dict())
    new = [k for k in grown.state_dict() if k not in saved.state_dict()]
    assert new and all(k.startswith(("mid.2.", "mid.3.")) for k in new)
    x, t, context, mask, pooled = denoiser_inputs("unet")
    with torch.no_grad():
        assert torch.allclose(saved(x, t, context, mask, pooled), grown(x, t, context, mask, pooled), atol=1e-6)
    grown(x, t, context, mask, pooled).pow(2).mean().backward()
    for key in new:
        if key.endswith(("proj_out.weight", "conv2.weight")):
            assert grown.get_parameter(key).grad.abs().sum() > 0, key
    truncated = {k: v for k, v in saved.state_dict().items() if not k.startswith("mid.1.")}
    with pytest.raises(WeightsDoNotFit, match="missing"):
        load_widened(grown, truncated)


def test_unet_grown_with_a_text_mixer_computes_the_same_then_reads_word_order():
    from lanterna.training.common import load_widened

    saved = randomize_zero_init(tiny("unet"))
    grown = build_net("unet", {**NET_SIZES["unet"]["tiny"], "context_layers": 1}).eval()
    load_widened(grown, saved.state_dict())
    new = [k for k in grown.state_dict() if k not in saved.state_dict()]
    assert new and all(k.startswith("context_mixer.") for k in new)
    x, t, context, mask, pooled = denoiser_inputs("unet")
    with torch.no_grad():
        assert torch.allclose(saved(x, t, context, mask, pooled), grown(x, t, context, mask, pooled), atol=1e-5)
    grown(x, t, context, mask, pooled).pow(2).mean().backward()
    for key in ("context_mixer.blocks.0.attn.out.weight", "context_mixer.blocks.0.mlp.fc2.weight"):
        assert grown.get_parameter(key).grad.abs().sum() > 0, key

    # Cross-attention alone reads the tokens as a set: two words swapped give the same output.
    # Once the mixer has learned anything, their order counts.
    swapped = context.clone()
    swapped[:, [0, 1]] = context[:, [1, 0]]
    with torch.no_grad():
        assert torch.allclose(saved(x, t, context, mask, pooled), saved(x, t, swapped, mask, pooled), atol=1e-5)
        randomize_zero_init(grown)
        moved = (grown(x, t, context, mask, pooled) - grown(x, t, swapped, mask, pooled)).abs().max()
    assert moved > 1e-3
    with pytest.raises(ValueError, match="mixer covers"):
        grown(x, t, torch.randn(3, 30, context.shape[-1]), torch.ones(3, 30, dtype=torch.bool), pooled)


# -- the video U-Net -----------------------------------------------------------------------------
def test_a_video_unet_starts_as_the_image_unet_frame_by_frame_then_mixes_frames():
    image = randomize_zero_init(tiny("unet"))
    video = tiny("video_unet")
    missing = video.load_state_dict(image.state_dict(), strict=False).missing_keys
    assert missing and all(".temporal." in k for k in missing)
    assert all(k.startswith(video.optional_prefixes) for k in missing)
    x, t, context, mask, pooled = denoiser_inputs("video_unet", batch=2, frames=5)
    with torch.no_grad():
        out = video(x, t, context, mask, pooled)
        each = torch.stack([image(x[:, :, f], t, context, mask, pooled) for f in range(5)], dim=2)
        assert torch.allclose(out, each, atol=1e-5)
        randomize_zero_init(video)  # the temporal layers, as after training
        moved = x.clone()
        moved[:, :, 0] += 1.0
        changed = video(moved, t, context, mask, pooled) - video(x, t, context, mask, pooled)
    assert changed[:, :, 3].abs().max() > 1e-3  # frame 0's input reaches frame 3


def with_space_time() -> nn.Module:
    torch.manual_seed(0)
    return build_net("video_unet", {**NET_SIZES["video_unet"]["tiny"], "spacetime_mid": True}).eval()


def test_space_time_attention_starts_as_the_identity_then_carries_frames_into_each_other():
    trained = randomize_zero_init(tiny("video_unet"))  # temporal layers and all
    grown = with_space_time()
    missing = grown.load_state_dict(trained.state_dict(), strict=False).missing_keys
    assert missing and all(".spacetime." in k and k.startswith(grown.optional_prefixes) for k in missing)
    x, t, context, mask, pooled = denoiser_inputs("video_unet", batch=2, frames=5)
    moved = x.clone()
    moved[:, :, 0] += 1.0
    with torch.no_grad():
        assert torch.allclose(grown(x, t, context, mask, pooled), trained(x, t, context, mask, pooled), atol=1e-5)
        # Temporal layers at their identity start, the rest trained: only space-time layers mix frames.
        nets = [with_space_time(), tiny("video_unet")]
        for net in nets:
            for name, p in net.named_parameters():
                if ".temporal." not in name and not p.any():
                    p.normal_(0.0, 0.2)
        reach = [(net(moved, t, context, mask, pooled) - net(x, t, context, mask, pooled))[:, :, 3].abs().max()
                 for net in nets]
    assert reach[0] > 1e-3 and reach[1] < 1e-6  # frame 0 reaches frame 3 only through them


def trained_but_temporal(net: nn.Module, std: float = 0.2) -> nn.Module:
    """Random values for the zero-initialised tensors outside the temporal layers, which stay as
    they start."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".temporal." not in name and not p.any():
                p.normal_(0.0, std)
    return net


def test_temporal_layers_that_read_the_prompt_start_as_the_identity_then_draw_each_frame_by_it():
    plain = trained_but_temporal(tiny("video_unet"))
    torch.manual_seed(0)
    reading = build_net("video_unet", {**NET_SIZES["video_unet"]["tiny"], "temporal_text": True}).eval()
    missing = reading.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(".temporal.text." in k and k.startswith(reading.optional_prefixes) for k in missing)
    x, t, context, mask, pooled = denoiser_inputs("video_unet", batch=2, frames=5)
    still = x[:, :, :1].expand_as(x).contiguous()  # the same latent in every frame

    def last_minus_first(net, ctx):
        out = net(still, t, ctx, mask, pooled)
        return out[:, :, 4] - out[:, :, 0]

    with torch.no_grad():
        assert torch.allclose(reading(x, t, context, mask, pooled), plain(x, t, context, mask, pooled), atol=1e-5)
        for name, p in reading.named_parameters():
            if ".temporal.text." in name and not p.any():
                p.normal_(0.0, 0.2)  # the prompt readers, as after training; the rest of the temporal layers stay
        assert last_minus_first(plain, context).abs().max() < 1e-5  # the image layers draw equal frames alike
        apart = last_minus_first(reading, context)
        elsewhere = last_minus_first(reading, torch.randn_like(context))
    assert apart.abs().max() > 1e-3  # the prompt, read with the frame's index, makes frames differ
    assert (apart - elsewhere).abs().max() > 1e-3  # and how depends on the prompt


def test_a_video_unet_takes_one_noise_level_a_video_or_one_a_frame():
    net = randomize_zero_init(tiny("video_unet"))
    x, t, context, mask, pooled = denoiser_inputs("video_unet", batch=2, frames=5)
    per_frame = t[:, None].expand(2, 5).clone()
    with torch.no_grad():
        assert torch.allclose(net(x, per_frame, context, mask, pooled), net(x, t, context, mask, pooled), atol=1e-5)
        per_frame[:, 4] = 0.05
        changed = net(x, per_frame, context, mask, pooled) - net(x, t, context, mask, pooled)
    assert changed[:, :, 4].abs().max() > 1e-3 and changed[:, :, 0].abs().max() > 1e-4  # felt by the others too
    with pytest.raises(ValueError, match="2 x 5"):
        net(x, per_frame[:, :3], context, mask, pooled)


def test_a_video_unet_refuses_images_and_too_many_frames():
    net = tiny("video_unet")
    x, *cond = denoiser_inputs("video_unet", batch=1, frames=17)
    with pytest.raises(ValueError, match="frames: 1 to 16"):
        net(x, *cond)
    with pytest.raises(ValueError, match="B x C x F x H x W"):
        net(x[:, :, 0], *cond)
