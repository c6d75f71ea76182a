"""Reference models (`models/`): parameter counts, official state-dict layouts, forward
shapes at non-integer and asymmetric scales, and gradients through encoder and decoder."""
from __future__ import annotations

import pytest
import torch
from helpers import assert_matches

import models
from implicit_kernels import geometry

# ----------------------------------------------------------------------------------------
# Parameter counts at the papers' widths (trainable parameters, as the papers count)
# ----------------------------------------------------------------------------------------

PARAM_COUNTS = {
    "edsr-baseline": 1_220_416,
    "rdn": 21_973_952,
    "edsr-baseline-liif": 1_567_299,   # LIIF paper: 1.567M
    "edsr-baseline-lte": 1_714_243,    # LTE paper: 1.714M
    "edsr-baseline-diif": 1_683_011,   # DIIF Table 1: 1.683M
    "edsr-baseline-dlte": 1_558_979,   # DIIF Table 1: 1.559M (reconstructed layout)
    "rdn-liif": 22_320_835,            # DIIF Table 1: 22.321M
    "rdn-diif": 22_436_547,            # DIIF Table 1: 22.437M
}


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_parameter_count(name):
    assert models.count_parameters(models.make(name)) == PARAM_COUNTS[name]


def test_diif_without_slice_ensemble():
    """The paper's "w/o se" ablation: 347,907 decoder parameters (Table 4: "356K" =
    0.347907 M × 1024), decoded through F with slice_ensemble=False."""
    model = models.make("edsr-baseline-diif", slice_ensemble=False)
    assert models.count_parameters(model) - 1_220_416 == 347_907
    small = models.make("edsr-baseline-diif", slice_ensemble=False, coarse_hidden=(8, 8),
                        fine_hidden=(8,))
    out = small(torch.randn(1, 3, 4, 5), (9, 13), backend="reference")
    assert out.shape == (1, 3, 9, 13)


def test_edsr_mean_shifts_are_frozen():
    enc = models.make("edsr-baseline")
    for name in ("sub_mean", "add_mean"):
        params = list(getattr(enc, name).parameters())
        assert sum(p.numel() for p in params) == 12
        assert not any(p.requires_grad for p in params)
    assert sum(p.numel() for p in enc.parameters()) == 1_220_416 + 24


def test_hiif_parameter_count_and_gap_to_paper():
    """The derivative's layout (docs/hiif.md#parameters-per-layer; the gap:
    docs/hiif.md#parameter-count): 1,735,071 decoder parameters with the 3×3 conv ``freq``,
    1,587,359 without.  The paper's Table 3 lists +1.33M over the encoder (its LIIF/LTE rows
    equal our decoder counts, so the conv is included there); ours is about 0.4M more, a gap
    no natural variant of the paper's text closes."""
    model = models.make("edsr-baseline-hiif")
    decoder = sum(p.numel() for p in model.decoder_params().values())
    conv = sum(p.numel() for k, p in model.decoder_params().items() if k.startswith("freq."))
    assert decoder == 1_735_071
    assert decoder - conv == 1_587_359
    assert models.count_parameters(model) == 1_220_416 + 1_735_071
    assert 0.35e6 < decoder - 1.33e6 < 0.45e6


def test_decoder_params_exclude_encoder_and_cover_the_rest():
    model = models.make("edsr-baseline-diif")
    params = model.decoder_params()
    assert not any(k.startswith("encoder.") for k in params)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    assert set(params) == set(sd)
    assert all(params[k] is p for k, p in model.named_parameters() if k in params)


# ----------------------------------------------------------------------------------------
# Official state-dict layouts (so published checkpoints load unchanged)
# ----------------------------------------------------------------------------------------

def _official_edsr_baseline() -> dict:
    """``encoder.*`` names and shapes of the official EDSR-baseline (no up-sampler)."""
    shapes = {"encoder.sub_mean.weight": (3, 3, 1, 1), "encoder.sub_mean.bias": (3,),
              "encoder.add_mean.weight": (3, 3, 1, 1), "encoder.add_mean.bias": (3,),
              "encoder.head.0.weight": (64, 3, 3, 3), "encoder.head.0.bias": (64,)}
    for i in range(16):
        for j in (0, 2):
            shapes[f"encoder.body.{i}.body.{j}.weight"] = (64, 64, 3, 3)
            shapes[f"encoder.body.{i}.body.{j}.bias"] = (64,)
    shapes["encoder.body.16.weight"] = (64, 64, 3, 3)
    shapes["encoder.body.16.bias"] = (64,)
    return shapes


def _linear_chain(prefix: str, dims) -> dict:
    shapes = {}
    for k, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        shapes[f"{prefix}{2 * k}.weight"] = (fan_out, fan_in)
        shapes[f"{prefix}{2 * k}.bias"] = (fan_out,)
    return shapes


def _official_liif() -> dict:
    return {**_official_edsr_baseline(),
            **_linear_chain("imnet.layers.", [580, 256, 256, 256, 256, 3])}


def _official_lte() -> dict:
    return {**_official_edsr_baseline(),
            "coef.weight": (256, 64, 3, 3), "coef.bias": (256,),
            "freq.weight": (256, 64, 3, 3), "freq.bias": (256,),
            "phase.weight": (128, 2),
            **_linear_chain("imnet.layers.", [256, 256, 256, 256, 3])}


@pytest.mark.parametrize("name, official", [("edsr-baseline-liif", _official_liif),
                                            ("edsr-baseline-lte", _official_lte)])
def test_official_checkpoint_layout_loads(name, official):
    shapes = official()
    model = models.make(name)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    # A synthetic checkpoint in the official layout: same names and shapes, random values.
    sd = {k: torch.randn(s) for k, s in shapes.items()}
    model.load_state_dict(sd, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_liif_keys_in_official_order():
    keys = list(models.make("edsr-baseline-liif").state_dict())
    assert keys[:3] == ["encoder.sub_mean.weight", "encoder.sub_mean.bias",
                        "encoder.add_mean.weight"]
    assert keys[-2:] == ["imnet.layers.8.weight", "imnet.layers.8.bias"]


def test_rdn_keys():
    sd = models.make("rdn").state_dict()
    expected = {"SFENet1.weight": (64, 3, 3, 3), "SFENet2.weight": (64, 64, 3, 3),
                "GFF.0.weight": (64, 1024, 1, 1), "GFF.1.weight": (64, 64, 3, 3)}
    for d in range(16):
        for c in range(8):
            expected[f"RDBs.{d}.convs.{c}.conv.0.weight"] = (64, 64 + 64 * c, 3, 3)
        expected[f"RDBs.{d}.LFF.weight"] = (64, 576, 1, 1)
    weights = {k: tuple(v.shape) for k, v in sd.items() if k.endswith(".weight")}
    assert weights == expected
    assert set(sd) == set(expected) | {k[:-len("weight")] + "bias" for k in expected}


def test_diif_dlte_hiif_keys():
    small = {"encoder_kwargs": {"n_resblocks": 1, "n_feats": 8}}
    diif = set(models.make("edsr-baseline-diif", **small).decoder_params())
    assert diif == {f"{s}.layers.{i}.{w}" for s, ids in (("coarse", (0, 2)), ("fine", (0, 2, 4)))
                    for i in ids for w in ("weight", "bias")}
    dlte = set(models.make("edsr-baseline-dlte", **small).decoder_params())
    assert dlte == diif | {"coef.weight", "coef.bias", "freq.weight", "freq.bias",
                           "phase.weight"}
    hiif = set(models.make("edsr-baseline-hiif", **small).decoder_params())
    expected = {"freq.weight", "freq.bias"}
    expected |= {f"fc_layers.{level}.{m}.{w}" for level in range(6) for m in ("norm", "fc1", "fc2")
                 for w in ("weight", "bias")}
    expected |= {f"conv{i}.{m}.{w}" for i in range(2)
                 for m in ("qkv_proj", "kln", "vln", "proj1", "proj2") for w in ("weight", "bias")}
    assert hiif == expected


# ----------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------

def test_names_and_unknown_name():
    names = models.names()
    assert names[:3] == ["edsr-baseline", "rdn", "swinir"]
    assert len(names) == 3 + 3 * 5 and "rdn-hiif" in names and "swinir-lte" in names
    with pytest.raises(ValueError, match="edsr-baseline-diif"):
        models.make("edsr-diif")
    with pytest.raises(ValueError, match="valid names"):
        models.make("edsr-baseline-foo")


def test_encoders_keep_spatial_size():
    x = torch.randn(2, 3, 5, 7)
    assert models.make("edsr-baseline", n_resblocks=2, n_feats=8)(x).shape == (2, 8, 5, 7)
    assert models.make("rdn", G0=8, D=2, C=2, G=4)(x).shape == (2, 8, 5, 7)


# ----------------------------------------------------------------------------------------
# Forward and backward through the reference backend, narrow widths
# ----------------------------------------------------------------------------------------

#: Narrow decoders for speed (the arithmetic does not depend on the widths).
NARROW = {
    "liif": {"hidden_list": (16, 16)},
    "lte": {"hidden_dim": 16, "hidden_list": (16, 16)},
    "diif": {"coarse_hidden": (16, 16), "fine_hidden": (16,)},
    "dlte": {"est_dim": 8, "coarse_hidden": (16, 16), "fine_hidden": (16,)},
    "hiif": {"dim": 16, "hidden_dim": 16, "levels": 3, "heads": 4},
}
SIZES = {"x2.7": (22, 27), "x3-by-x5": (24, 50)}  # from an 8×10 input


def _narrow(decoder):
    model = models.make(f"edsr-baseline-{decoder}",
                        encoder_kwargs={"n_resblocks": 1, "n_feats": 8}, **NARROW[decoder])
    return model.double()


def _run(fn):
    """Call ``fn``; skip while the reference backend does not implement the decoder yet."""
    try:
        return fn()
    except RuntimeError as e:
        if "does not implement" in str(e):
            pytest.skip(str(e))
        raise


@pytest.mark.parametrize("decoder", list(NARROW))
@pytest.mark.parametrize("size", list(SIZES))
@torch.no_grad()
def test_forward_shape(decoder, size):
    model = _narrow(decoder)
    inp = torch.rand(1, 3, 8, 10, dtype=torch.float64) * 2 - 1
    out = _run(lambda: model(inp, SIZES[size], backend="reference"))
    assert out.shape == (1, 3, *SIZES[size])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("decoder", list(NARROW))
@torch.no_grad()
def test_query_mode_matches_grid(decoder):
    """Routing of ``coord``/``cell`` (or ``pixels`` for DIIF/DLTE) through the model:
    random pixels, or for HIIF every pixel (its attention sums over all queries)."""
    model = _narrow(decoder)
    inp = torch.rand(2, 3, 5, 6, dtype=torch.float64) * 2 - 1
    size = (11, 16)
    grid = _run(lambda: model(inp, size, backend="reference"))
    if decoder == "hiif":
        pix = geometry.grid_pixels(size, 2)
    else:
        pix = torch.stack([torch.randint(0, size[0], (2, 9)),
                           torch.randint(0, size[1], (2, 9))], -1)
    expected = torch.stack([grid[b, :, pix[b, :, 0], pix[b, :, 1]].T for b in range(2)])
    if decoder in ("diif", "dlte"):
        got = model(inp, size, pixels=pix, backend="reference")
    else:
        coord = geometry.pixel_coord(pix, size, torch.float64)
        cell = torch.tensor([2 / size[0], 2 / size[1]], dtype=torch.float64).expand_as(coord)
        got = model(inp, coord=coord, cell=cell, backend="reference")
    assert_matches(got, expected)


@pytest.mark.parametrize("decoder", list(NARROW))
@torch.no_grad()
def test_auto_backend_matches_reference(decoder):
    """The model runs on the default backend too, and agrees with the reference."""
    model = _narrow(decoder)
    inp = torch.rand(1, 3, 6, 7, dtype=torch.float64) * 2 - 1
    expected = _run(lambda: model(inp, (13, 19), backend="reference"))
    assert_matches(_run(lambda: model(inp, (13, 19))), expected)


@pytest.mark.parametrize("decoder", ["diif", "dlte"])
@torch.no_grad()
def test_slicing_override(decoder):
    model = _narrow(decoder)
    inp = torch.rand(1, 3, 4, 5, dtype=torch.float64) * 2 - 1
    linear = _run(lambda: model(inp, (10, 14), backend="reference"))
    constant = model(inp, (10, 14), slicing="constant", backend="reference")
    assert not torch.allclose(linear, constant)
    model.slicing = "constant"
    assert_matches(model(inp, (10, 14), backend="reference"), constant)
    with pytest.raises(ValueError, match="slicing"):
        models.make(f"edsr-baseline-{decoder}", slicing="diagonal")


@torch.no_grad()
def test_hiif_options():
    """``normalizer`` defaults to the model's; one strip covering the whole output equals
    global attention."""
    model = _narrow("hiif")
    inp = torch.rand(1, 3, 4, 5, dtype=torch.float64) * 2 - 1
    size = (9, 11)
    default = _run(lambda: model(inp, size, backend="reference"))
    assert_matches(model(inp, size, normalizer="n", backend="reference"), default)
    sqrt_n = model(inp, size, normalizer="sqrt_n", backend="reference")
    assert not torch.allclose(sqrt_n, default)
    model.normalizer = "sqrt_n"
    assert_matches(model(inp, size, backend="reference"), sqrt_n)
    strip = model(inp, size, attention="strip", strip_rows=size[0], backend="reference")
    assert_matches(strip, sqrt_n)


@pytest.mark.parametrize("decoder", list(NARROW))
def test_gradients_reach_every_parameter(decoder):
    model = _narrow(decoder)
    inp = torch.rand(1, 3, 6, 7, dtype=torch.float64) * 2 - 1
    out = _run(lambda: model(inp, (13, 19), backend="reference"))
    (out * torch.randn_like(out)).sum().backward()
    trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
    assert any(k.startswith("encoder.") for k in trainable)
    for k, p in trainable.items():
        assert p.grad is not None, f"{k}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{k}: non-finite gradient"
    zero = [k for k, p in trainable.items() if not p.grad.any()]
    assert len(zero) <= len(trainable) // 10, f"zero gradients: {zero}"


@torch.no_grad()
def test_upscale_maps_to_unit_range():
    model = _narrow("liif")
    img = torch.rand(1, 3, 6, 7, dtype=torch.float64)
    out = _run(lambda: models.upscale(model, img, (12, 17), backend="reference"))
    raw = model((img - 0.5) / 0.5, (12, 17), backend="reference")
    assert out.shape == (1, 3, 12, 17)
    assert_matches(out, (raw * 0.5 + 0.5).clamp(0, 1))
    assert out.min() >= 0 and out.max() <= 1
