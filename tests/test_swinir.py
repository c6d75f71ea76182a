"""SwinIR encoder (`models/swinir.py`): parameter counts, the official state-dict layout,
shifted-window attention against a dense per-token oracle, padding to the window and
cropping back, every decoder on it, and the cost model's count."""
from __future__ import annotations

import pytest
import torch

import models
from implicit_kernels.cost import count
from models import swinir as S

#: A narrow SwinIR for fast tests (same code paths: two stages, shifted layers, padding).
TINY = {"embed_dim": 12, "depths": (2, 2), "num_heads": (2, 3), "window_size": 4,
        "img_size": 8, "num_feat": 8}


def test_parameter_counts():
    """LTE's SwinIR configuration: 11,603,044 for the encoder, 12,096,871 with LTE."""
    assert models.count_parameters(models.make("swinir")) == 11_603_044
    assert models.count_parameters(models.make("swinir-lte")) == 12_096_871
    assert count("swinir", (4, 4)).params == 11_603_044
    assert count("swinir-lte", (4, 4)).params == 12_096_871


def _official_swinir() -> dict:
    """Names and shapes of the official SwinIR state dict (classical SR, embed 180, six
    stages of six layers, window 8, MLP ratio 2, training patch 48, no up-sampler)."""
    dim, window, heads, patch = 180, 8, 6, 48
    windows = (patch // window) ** 2
    shapes = {"conv_first.weight": (dim, 3, 3, 3), "conv_first.bias": (dim,),
              "patch_embed.norm.weight": (dim,), "patch_embed.norm.bias": (dim,)}
    for i in range(6):
        for j in range(6):
            b = f"layers.{i}.residual_group.blocks.{j}."
            if j % 2:
                shapes[b + "attn_mask"] = (windows, window ** 2, window ** 2)
            for norm in ("norm1", "norm2"):
                shapes[f"{b}{norm}.weight"] = shapes[f"{b}{norm}.bias"] = (dim,)
            shapes[b + "attn.relative_position_bias_table"] = ((2 * window - 1) ** 2, heads)
            shapes[b + "attn.relative_position_index"] = (window ** 2, window ** 2)
            for name, fan_in, fan_out in (("attn.qkv", dim, 3 * dim), ("attn.proj", dim, dim),
                                          ("mlp.fc1", dim, 2 * dim), ("mlp.fc2", 2 * dim, dim)):
                shapes[f"{b}{name}.weight"] = (fan_out, fan_in)
                shapes[f"{b}{name}.bias"] = (fan_out,)
        shapes[f"layers.{i}.conv.weight"] = (dim, dim, 3, 3)
        shapes[f"layers.{i}.conv.bias"] = (dim,)
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,),
                   "conv_after_body.weight": (dim, dim, 3, 3), "conv_after_body.bias": (dim,),
                   "conv_before_upsample.0.weight": (64, dim, 3, 3),
                   "conv_before_upsample.0.bias": (64,)})
    return shapes


def test_official_layout_loads_strictly():
    shapes = {f"encoder.{k}": v for k, v in _official_swinir().items()}
    model = models.make("swinir-liif")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("encoder.")}
    assert got == shapes
    sd = {k: (torch.randint(0, 225, v.shape) if k.endswith("index") else torch.randn(v.shape))
          for k, v in model.state_dict().items()}
    model.load_state_dict(sd, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_stored_buffers_match_the_official_definitions():
    """``relative_position_index`` and the training-size ``attn_mask`` as the official
    code builds them: index (dy + 7)·15 + (dx + 7); mask -100 across rolled regions."""
    enc = models.make("swinir")
    block = enc.layers[0].residual_group.blocks[1]
    idx = block.attn.relative_position_index
    ys, xs = torch.arange(64) // 8, torch.arange(64) % 8
    assert torch.equal(idx, (ys[:, None] - ys[None] + 7) * 15 + xs[:, None] - xs[None] + 7)
    mask = block.attn_mask
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all()            # an interior window is one region
    assert (mask[-1] == -100).any()        # the corner window mixes four
    assert enc.layers[0].residual_group.blocks[0].attn_mask is None


def _dense_swin_layer(layer, x, size):
    """Oracle of one Swin layer on ``x`` (``1×(H·W)×C``) without windows: every token
    attends to every token, with the relative-position bias between tokens of the same
    shifted window and the mask's -100 between tokens of different roll regions; tokens
    of other windows are excluded."""
    h, w = size
    win, shift = layer.window, layer.shift
    attn = layer.attn
    heads = attn.heads
    c = x.shape[-1]
    y = torch.nn.functional.layer_norm(x[0], (c,), layer.norm1.weight, layer.norm1.bias)
    q, k, v = attn.qkv(y).view(h * w, 3, heads, c // heads).unbind(1)
    # Position of every token on the rolled map.
    r = (torch.arange(h * w) // w - shift) % h
    s = (torch.arange(h * w) % w - shift) % w
    same_window = ((r[:, None] // win == r[None] // win) & (s[:, None] // win == s[None] // win))

    def region(p, n):
        return (p >= n - win).long() + (p >= n - shift).long() if shift else torch.zeros_like(p)

    label = region(r, h) * 3 + region(s, w)
    dy = (r[:, None] % win) - (r[None] % win) + win - 1
    dx = (s[:, None] % win) - (s[None] % win) + win - 1
    bias = attn.relative_position_bias_table[dy * (2 * win - 1) + dx]      # n × n × heads
    out = torch.empty(h * w, heads, c // heads)
    for p in range(h * w):
        keys = same_window[p].nonzero().squeeze(1)
        logits = (q[p] * attn.scale * k[keys]).sum(-1) + bias[p, keys]     # keys × heads
        logits = logits + torch.where(label[keys] == label[p], 0.0, -100.0)[:, None]
        out[p] = torch.einsum("kh,khd->hd", logits.softmax(0), v[keys])
    x = x[0] + attn.proj(out.reshape(h * w, c))
    x = x + layer.mlp.fc2(torch.nn.functional.gelu(layer.mlp.fc1(layer.norm2(x))))
    return x[None]


@pytest.mark.parametrize("shifted", [False, True], ids=["plain", "shifted"])
def test_window_layer_equals_dense_oracle(shifted):
    torch.manual_seed(0)
    enc = S.SwinIR(**TINY).eval()
    layer = enc.layers[1].residual_group.blocks[int(shifted)]
    with torch.no_grad():
        layer.attn.relative_position_bias_table.normal_()   # make the bias matter
        size = (8, 12)
        x = torch.randn(1, 96, 12)
        mask = S.shifted_window_mask(size, 4, 2)
        got = layer(x, size, mask)
        want = _dense_swin_layer(layer, x, size)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _reflect_pad(x, h, w):
    return torch.nn.functional.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]), mode="reflect")


def test_pads_to_the_window_and_crops_back():
    """A 12×10 input runs as the official code: reflection-padded to 12×12 (window 4),
    encoded, cropped to 12×10."""
    torch.manual_seed(1)
    enc = S.SwinIR(**TINY).eval()
    x = torch.randn(2, 3, 10, 11)
    with torch.no_grad():
        got = enc(x)
        whole = enc(_reflect_pad(x, 12, 12))
    assert got.shape == (2, 8, 10, 11) and got.is_contiguous()
    torch.testing.assert_close(got, whole[..., :10, :11], rtol=0, atol=0)


@pytest.mark.parametrize("side", [1, 2, 3, 5])
def test_small_inputs_run(side):
    """Sides shorter than the padding (where one reflection is impossible) still run."""
    enc = S.SwinIR(**TINY).eval()
    with torch.no_grad():
        assert enc(torch.randn(1, 3, side, side + 1)).shape == (1, 8, side, side + 1)
    x = torch.arange(3.0).view(1, 1, 1, 3)
    assert S.pad_to_multiple(x, 8)[0, 0, 0].tolist() == [0, 1, 2, 1, 0, 1, 2, 1]
    assert torch.equal(S.pad_to_multiple(x[..., :1] + 5, 4), torch.full((1, 1, 4, 4), 5.0))


def test_full_width_model_on_a_tiny_input():
    torch.manual_seed(2)
    enc = models.make("swinir").eval()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 12, 10))
    assert out.shape == (1, 64, 12, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("decoder", ["liif", "lte", "diif", "dlte", "hiif"])
def test_every_decoder_on_swinir(decoder):
    narrow = {"liif": {"hidden_list": (16,)}, "lte": {"hidden_dim": 16, "hidden_list": (16,)},
              "diif": {"coarse_hidden": (16,), "fine_hidden": (16,)},
              "dlte": {"est_dim": 8, "coarse_hidden": (16,), "fine_hidden": (16,)},
              "hiif": {"dim": 16, "hidden_dim": 16, "levels": 2, "heads": 4}}[decoder]
    torch.manual_seed(3)
    model = models.make(f"swinir-{decoder}", encoder_kwargs=TINY, **narrow)
    inp = torch.randn(1, 3, 6, 5)
    out = model(inp, (16, 9), backend="reference")
    assert out.shape == (1, 3, 16, 9)
    out.square().mean().backward()
    assert model.encoder.conv_first.weight.grad.abs().sum() > 0


def test_drop_path():
    x = torch.ones(1000, 3)
    assert S.drop_path(x, 0.3, training=False) is x
    y = S.drop_path(x, 0.3, training=True)
    kept = y[:, 0] != 0
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert (y[~kept] == 0).all() and 0.6 < kept.float().mean() < 0.8
    rates = [b.drop_path.p for layer in models.make("swinir").layers
             for b in layer.residual_group.blocks if isinstance(b.drop_path, S.DropPath)]
    assert len(rates) == 35 and rates[-1] == pytest.approx(0.1)


def test_to_2tuple():
    assert S.to_2tuple(48) == (48, 48) and S.to_2tuple([3, 4]) == (3, 4)
    with pytest.raises(ValueError, match="pair"):
        S.to_2tuple((1, 2, 3))


def test_cost_matches_hooked_modules():
    """Linear and Conv multiplies by forward hooks, plus the window products
    (2·window²·dim per padded pixel and layer) = the cost model's count."""
    from test_cost import _hook_macs

    enc = models.make("swinir").eval()
    size = (9, 7)                                   # padded to 16×8
    products = 2 * 64 * 180 * 36 * 16 * 8
    assert _hook_macs(enc, torch.zeros(1, 3, *size)) + products == count("swinir", size).macs


def test_upscale_never_tiles_swinir():
    """Tiling is exact only for encoders of bounded reach; SwinIR's is the whole image."""
    from implicit_kernels.apps import upscale as U

    enc = S.SwinIR(**TINY).eval()
    assert U.global_receptive_field(enc)
    assert not U.global_receptive_field(models.make("edsr-baseline", n_resblocks=1, n_feats=4))
    with pytest.raises(ValueError, match="cannot be encoded in tiles"):
        U.encode(enc, torch.zeros(1, 3, 20, 20), tile=16)
