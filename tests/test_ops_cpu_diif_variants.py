"""The fused C++ operators on CPU (the "cpu" backend) for DLTE and DIIF's "w/o se"
ablation against the reference: values and every gradient at integer, non-integer and
asymmetric scales in every slicing mode, chunked = unchunked, pixel queries, float64
gradcheck, opcheck, torch.compile, and input checks."""
import pytest
import torch
from conftest import (
    assert_compiles_fullgraph,
    assert_matches,
    opcheck_layouts,
)
from diif_variants import VARIANTS, decode, leaves, params_for, values_and_grads

import implicit_kernels.functional as F
from implicit_kernels import _extension, backends, geometry

pytestmark = pytest.mark.skipif(not _extension.available(), reason="; ".join(_extension.reasons()))

# Output sizes for a 5×7 feature map.
SIZES = {"x1": (5, 7), "x3_odd": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35),
         "x12": (60, 84)}


@pytest.mark.parametrize("slicing", geometry.SLICINGS)
@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_values_and_grads_equal_reference(variant, name, slicing):
    feat, inp, params = leaves(variant)
    upstream = torch.randn(2, 3, *SIZES[name])
    ref = values_and_grads(variant, "reference", feat, inp, params, SIZES[name], upstream,
                           slicing=slicing)
    got = values_and_grads(variant, "cpu", feat, inp, params, SIZES[name], upstream,
                           slicing=slicing, chunk_size=500)
    assert_matches(got[0], ref[0])
    names = ["feat", *(["inp"] if variant == "dlte" else []), *params]
    for key, g, g_ref in zip(names, got[1], ref[1]):
        assert_matches(g, g_ref, f"grad of {key}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_equals_unchunked_and_pixels_equal_grid(variant):
    feat, inp, params = leaves(variant)
    size = (14, 19)
    full = decode(variant, feat, inp, size, params, backend="cpu", chunk_size=10 ** 9)
    chunked = decode(variant, feat, inp, size, params, backend="cpu", chunk_size=77)
    assert_matches(chunked, full)
    pixels = torch.stack([torch.randint(0, 14, (2, 300)), torch.randint(0, 19, (2, 300))], -1)
    got = decode(variant, feat, inp, size, params, pixels=pixels, backend="cpu", chunk_size=123)
    want = full.permute(0, 2, 3, 1)[torch.arange(2)[:, None], pixels[..., 0], pixels[..., 1]]
    assert_matches(got, want)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_float64(variant):
    feat, inp, params = leaves(variant, b=1, c=2, h=2, w=3, dtype=torch.float64, hidden=4,
                               **({"channels": 2} if variant == "dlte" else {}))
    keys = list(params)

    def fn(f, i, *ps):
        return decode(variant, f, i, (5, 7), dict(zip(keys, ps)), backend="cpu", chunk_size=13)

    assert torch.autograd.gradcheck(fn, (feat, inp, *params.values()))


def op_and_args(variant, feat, params, pixels, size, slicing="linear"):
    """The operator and its arguments for a decode, as the backend builds them."""
    from implicit_kernels.ops import diif, dlte
    if variant == "dlte":
        p = dlte.prepare_dlte(feat, F._dlte_params(params, feat))
        return torch.ops.implicit_kernels.dlte_decode, (*dlte.op_inputs(p), pixels, *size,
                                                        slicing)
    p = diif.prepare_diif_without_ensemble(feat, F._diif_params(params, feat, False))
    return torch.ops.implicit_kernels.diif_decode, (*diif.op_inputs(p), pixels, *size, slicing,
                                                    False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_opcheck(variant):
    feat = torch.randn(2, 3, 3, 4)
    params = params_for(variant, 3, 8, channels=4)
    pixels = geometry.grid_pixels((7, 9), 2).contiguous()
    opcheck_layouts(*op_and_args(variant, feat, params, pixels, (7, 9)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiles_without_graph_breaks(variant):
    feat, inp, params = leaves(variant, b=1, c=3, h=3, w=4)

    def fn(f, i, p):
        return decode(variant, f, i, (7, 9), p, backend="cpu")

    assert_compiles_fullgraph(fn, feat, inp, params)


def test_auto_picks_cpu():
    feat = torch.randn(1, 4, 5, 7)
    for decoder in ("dlte", "diif_without_ensemble"):
        assert backends.auto_choice(decoder, feat) == "cpu"


def test_ops_reject_bad_input():
    feat = torch.randn(1, 3, 3, 4)
    pixels = geometry.grid_pixels((7, 9), 1).contiguous()
    op, args = op_and_args("diif_without_ensemble", feat, params_for("diif_without_ensemble", 3, 8),
                           pixels, (7, 9))
    # The (B, H, W, D) projection without the slice ensemble: H = 3.
    with pytest.raises(RuntimeError, match=r"\(2, 9\) must be at least the feature map's \(3, 4\)"):
        op(*args[:11], 2, *args[12:])
    dlte_op, dlte_args = op_and_args("dlte", feat, params_for("dlte", 3, 8, channels=4), pixels,
                                     (7, 9))
    cases = [
        (1, dlte_args[1][..., :-1], "freq must have coef's shape"),
        (2, dlte_args[2][:-1], r"phase must be \(8, 2\)"),
        (3, dlte_args[3][:, :-1], r"coarse layer 0 weight must be \(D, 16\)"),
        (12, pixels + 100, "pixels must index inside"),
        (15, "cubic", "slicing must be one of"),
        (0, dlte_args[0].double(), "dtype"),
    ]
    for index, value, match in cases:
        bad = list(dlte_args)
        bad[index] = value
        with pytest.raises(RuntimeError, match=match):
            dlte_op(*bad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_and_poisoned_outputs_are_written(variant):
    feat, inp, params = leaves(variant, c=3, h=3, w=4)
    empty = decode(variant, feat, inp, (7, 9), params, backend="cpu",
                   pixels=torch.zeros(2, 0, 2, dtype=torch.long))
    assert empty.shape == (2, 0, 3)
    # tests/conftest.py sets IK_POISON=1: kernels' outputs start as NaN.
    out = decode(variant, feat, inp, (7, 9), params, backend="cpu")
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out.sum(), [feat, *params.values()])
    assert all(torch.isfinite(g).all() for g in grads)
