"""The cost model against the papers' figures (docs/diif.md#mac-formula,
docs/dlte.md#numbers-that-pin-it, docs/cost-model.md#reference-figures) and against counts
taken with forward hooks on the real modules."""
from __future__ import annotations

import math

import pytest
import torch

from implicit_kernels import geometry
from implicit_kernels.cost import count, diif_slice_count, paper_kilo, paper_tera

#: DIIF Table 1 setting: a 160×90 input (H = 90, W = 160) decoded at ×16.
T1 = (90, 160)


def giga(macs):
    return round(macs / 1e9, 2)


def test_encoders_per_pixel_and_params():
    edsr = count("edsr-baseline", T1)
    assert edsr.encoder_macs == 1_218_240 * 90 * 160
    assert giga(edsr.macs) == 17.54
    assert edsr.params == 1_220_416
    rdn = count("rdn", (1, 1))
    assert (rdn.params, rdn.macs) == (21_973_952, 21_964_480)


@pytest.mark.parametrize("model, plain_g, paper_t", [
    ("edsr-baseline-liif", 5_117.40, 5.117),
    ("rdn-liif", 5_416.14, 5.416),
    ("edsr-baseline-lte", 2_935.99, 2.936),
    ("rdn-lte", 3_234.74, 3.235),
    ("edsr-baseline-diif", 808.85, 0.790),
    ("rdn-diif", 1_107.60, 1.108),
    ("edsr-baseline-dlte", 627.54, 0.613),
    ("rdn-dlte", 926.28, 0.905),
])
def test_table1_macs(model, plain_g, paper_t):
    cost = count(model, T1, 16)
    assert cost.out_size == (1440, 2560)
    assert giga(cost.macs) == plain_g
    assert round(cost.paper_tera_macs, 3) == paper_t


def test_table1_constant_order():
    cost = count("edsr-baseline-diif", T1, 16, slicing="constant")
    assert giga(cost.macs) == 524.41
    assert round(cost.paper_tera_macs, 3) == 0.512


def test_table4_without_slice_ensemble():
    """The "w/o se" ablation: 554.87 G plain, printed 0.542T; decoder 347,907 ("356K")."""
    cost = count("edsr-baseline-diif", T1, 16, slice_ensemble=False)
    assert giga(cost.macs) == 554.87
    assert round(cost.paper_tera_macs, 3) == 0.542
    assert cost.decoder_params == 347_907
    with pytest.raises(ValueError, match="DIIF only"):
        count("edsr-baseline-liif", T1, 16, slice_ensemble=False)


def test_liif_per_pixel_formula():
    per_pixel = 4 * (580 * 256 + 3 * 256 ** 2 + 256 * 3)
    assert per_pixel == 1_383_424
    assert count("liif", (5, 7), out_size=(11, 13)).macs == per_pixel * 11 * 13


def test_diif_formula_linear_and_constant():
    e, c, f = 1_218_240, 329_216, 132_352
    h, w, ho, wo = 7, 9, 20, 31
    linear = count("edsr-baseline-diif", (h, w), out_size=(ho, wo))
    assert linear.macs == e * h * w + 4 * (ho * w) * c + ho * wo * f
    constant = count("edsr-baseline-diif", (h, w), out_size=(ho, wo), slicing="constant")
    assert constant.macs == e * h * w + 4 * (h * w) * c + ho * wo * f


@pytest.mark.parametrize("scale, plain_g, printed", [
    (3, 366.3, 0.36), (4, 495.6, 0.48), (6, 799.7, 0.78), (12, 2_078, 2.08), (24, 6_282, 6.28),
])
def test_table3_diif(scale, plain_g, printed):
    cost = count("edsr-baseline-diif", (180, 320), scale)
    digits = 1 if plain_g < 1000 else 0
    assert round(cost.macs / 1e9, digits) == plain_g
    assert round(cost.paper_tera_macs, 2) == printed


@pytest.mark.parametrize("scale, printed", [
    (2, 0.16), (3, 0.23), (4, 0.31), (6, 0.52), (12, 1.54), (18, 3.09), (24, 5.19),
])
def test_table3_dlte(scale, printed):
    assert round(count("edsr-baseline-dlte", (180, 320), scale).paper_tera_macs, 2) == printed


@pytest.mark.parametrize("model, decoder, total", [
    ("edsr-baseline-liif", 346_883, 1_567_299),
    ("rdn-liif", 346_883, 22_320_835),
    ("edsr-baseline-lte", 493_827, 1_714_243),
    ("rdn-lte", 493_827, 22_467_779),
    ("edsr-baseline-diif", 462_595, 1_683_011),
    ("rdn-diif", 462_595, 22_436_547),
    ("edsr-baseline-dlte", 338_563, 1_558_979),
    ("rdn-dlte", 338_563, 22_312_515),
    ("edsr-baseline-hiif", 1_735_071, 1_220_416 + 1_735_071),
])
def test_parameter_counts(model, decoder, total):
    cost = count(model, (4, 4))
    assert (cost.decoder_params, cost.params) == (decoder, total)


@pytest.mark.parametrize("decoder, printed_k", [("liif", 355), ("lte", 506), ("diif", 474),
                                                ("dlte", 347)])
def test_paper_kilo_params(decoder, printed_k):
    assert round(count(decoder, (4, 4)).paper_kilo_decoder_params) == printed_k


def test_paper_convention_units():
    assert paper_tera(1_292_030_000_000) == pytest.approx(1.29203)  # printed T: as is
    assert paper_tera(808_850_000_000) == pytest.approx(808.85 / 1024)  # printed G: /1024
    assert paper_kilo(462_595) == pytest.approx(473.697, abs=1e-3)


def test_hiif_is_our_count():
    cost = count("edsr-baseline-hiif", (6, 5), 3)
    per_query = 1_577_216 + 16_384
    assert cost.decoder_macs == 147_456 * 6 * 5 + per_query * 18 * 15
    assert "our count" in cost.note


def _fixed4_bruteforce(in_size, out_size):
    """Slices of "fixed4" counted pixel by pixel with geometry.diif_slices."""
    pixels = geometry.grid_pixels(out_size, 1)[0]
    group, first, _ = geometry.diif_slices(pixels, in_size, out_size, "fixed4")
    return torch.unique(torch.cat([group, first], dim=-1), dim=0).shape[0]


@pytest.mark.parametrize("in_size, out_size", [((4, 5), (8, 10)), ((5, 7), (13, 19)),
                                               ((6, 4), (15, 21)), ((3, 3), (3, 3))])
def test_slice_counts_non_integer_and_asymmetric(in_size, out_size):
    (h, w), (ho, _) = in_size, out_size
    assert diif_slice_count(in_size, out_size, "linear") == ho * w
    assert diif_slice_count(in_size, out_size, "constant") == h * w
    assert diif_slice_count(in_size, out_size, "fixed4") == _fixed4_bruteforce(in_size, out_size)


def test_fixed4_integer_scale_closed_form():
    # s×s groups: ceil(s²/4) runs each.
    assert diif_slice_count((3, 4), (15, 20), "fixed4") == 12 * math.ceil(25 / 4)


def test_scale_pairs_and_rounding():
    cost = count("edsr-baseline-diif", (10, 10), (2.7, 3.05))
    assert cost.out_size == (27, 31)
    assert count("diif", (10, 10), 2.7).out_size == (27, 27)


@pytest.mark.parametrize("kwargs", [dict(scale=0.5), dict(scale=2, out_size=(20, 20)),
                                    dict(scale=2, slicing="fixed9")])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        count("edsr-baseline-diif", (10, 10), **kwargs)


def test_rejects_unknown_model_and_misplaced_slicing():
    with pytest.raises(ValueError, match="unknown model"):
        count("edsr-diif", (4, 4))
    with pytest.raises(ValueError, match="DIIF and DLTE only"):
        count("edsr-baseline-liif", (4, 4), 2, slicing="constant")


def test_summary_shows_both_conventions():
    text = str(count("edsr-baseline-diif", T1, 16))
    assert "808.85 G" in text and "0.790T" in text and "473.7K" in text


# ----------------------------------------------------------------------------------------
# Against the real modules (models/ is a sibling package; skipped until it exists)
# ----------------------------------------------------------------------------------------

def _hook_macs(module, inp):
    """Conv2d and Linear multiplies of one forward pass, counted with forward hooks."""
    total = 0

    def hook(layer, args, out):
        nonlocal total
        if isinstance(layer, torch.nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1]
            total += out.numel() * (layer.in_channels // layer.groups) * k
        else:
            total += out.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            module(inp)
    finally:
        for h in handles:
            h.remove()
    return total


def _make(name):
    models = pytest.importorskip("models")
    make = getattr(models, "make", None)
    if make is None:
        pytest.skip("models.make is not available yet")
    return make(name)


@pytest.mark.parametrize("encoder", ["edsr-baseline", "rdn"])
def test_encoder_macs_match_hooks(encoder):
    module = _make(encoder).eval()
    size = (3, 4)
    assert _hook_macs(module, torch.zeros(1, 3, *size)) == count(encoder, size).macs


@pytest.mark.parametrize("name", ["edsr-baseline", "rdn", "edsr-baseline-liif",
                                  "edsr-baseline-lte", "edsr-baseline-diif",
                                  "edsr-baseline-dlte", "edsr-baseline-hiif"])
def test_trainable_params_match_modules(name):
    module = _make(name)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trainable == count(name, (4, 4)).params
