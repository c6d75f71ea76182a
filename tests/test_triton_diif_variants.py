"""The "triton" backend for DLTE and DIIF's "w/o se" ablation against the reference:
values and every gradient at integer, non-integer and asymmetric scales, batch 2, chunked
= unchunked, pixel queries, opcheck and torch.compile.

Runs on a GPU, or on CPU tensors under Triton's interpreter:
``TRITON_INTERPRET=1 python -m pytest tests/test_triton_diif_variants.py`` (fp32, small
shapes; tests/test_triton_interpreter.py runs it in its own process)."""
import pytest
import torch
from conftest import (
    assert_compiles_fullgraph,
    assert_matches,
    opcheck_layouts,
    triton_device,
)
from diif_variants import VARIANTS, decode, leaves, params_for, values_and_grads

import implicit_kernels.functional as F
from implicit_kernels import backends, geometry

DEVICE = triton_device()

#: Feature map 5×7 → integer ×3, non-integer ×2.7 (14×19) and asymmetric ×3 by ×5.
SIZES = {"x3": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35)}


@pytest.mark.parametrize("slicing", geometry.SLICINGS)
@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_values_and_grads_equal_reference(variant, name, slicing):
    torch.manual_seed(10 * list(SIZES).index(name) + geometry.SLICINGS.index(slicing))
    feat, inp, params = leaves(variant, device=DEVICE)
    upstream = torch.randn(2, 3, *SIZES[name], device=DEVICE)
    # chunk_size 500 over a batch of 2 cuts the grid mid-slice: chunks must agree.
    got = values_and_grads(variant, "triton", feat, inp, params, SIZES[name], upstream,
                           slicing=slicing, chunk_size=500)
    ref = values_and_grads(variant, "reference", feat, inp, params, SIZES[name], upstream,
                           slicing=slicing)
    assert_matches(got[0], ref[0])
    names = ["feat", *(["inp"] if variant == "dlte" else []), *params]
    for key, g, g_ref in zip(names, got[1], ref[1]):
        assert_matches(g, g_ref, f"grad of {key}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_equals_unchunked_and_pixels_equal_grid(variant):
    feat, inp, params = leaves(variant, device=DEVICE)
    size = (14, 19)
    full = decode(variant, feat, inp, size, params, backend="triton", chunk_size=10 ** 9)
    chunked = decode(variant, feat, inp, size, params, backend="triton", chunk_size=77)
    assert_matches(chunked, full)
    pixels = torch.stack([torch.randint(0, 14, (2, 60)), torch.randint(0, 19, (2, 60))], -1)
    pixels = pixels.to(DEVICE)
    got = decode(variant, feat, inp, size, params, pixels=pixels, backend="triton",
                 chunk_size=53)
    want = full.permute(0, 2, 3, 1)[torch.arange(2)[:, None], pixels[..., 0], pixels[..., 1]]
    assert_matches(got, want)


def test_backend_lists_the_variants():
    feat = torch.zeros(1, 4, 5, 7, device=DEVICE)
    for decoder in VARIANTS:
        assert backends.available_backends(decoder, feat)["triton"][0]


def op_and_args(variant, feat, params, pixels, size, slicing="linear"):
    """The operator and its arguments for a decode, as the backend builds them."""
    from implicit_kernels.ops import diif, dlte
    if variant == "dlte":
        p = dlte.prepare_dlte(feat, F._dlte_params(params, feat))
        return torch.ops.implicit_kernels.dlte_decode_triton, (
            *dlte.op_inputs(p), pixels, *size, slicing)
    p = diif.prepare_diif_without_ensemble(feat, F._diif_params(params, feat, False))
    return torch.ops.implicit_kernels.diif_decode_triton, (
        *diif.op_inputs(p), pixels, *size, slicing, -1, False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_opcheck(variant):
    feat = torch.randn(2, 3, 3, 4, device=DEVICE)
    params = params_for(variant, 3, 16, channels=4, device=DEVICE)
    pixels = geometry.grid_pixels((7, 9), 2, device=DEVICE).contiguous()
    opcheck_layouts(*op_and_args(variant, feat, params, pixels, (7, 9)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiles_without_graph_breaks(variant):
    feat, inp, params = leaves(variant, device=DEVICE, b=1, c=3, h=3, w=4, hidden=16)

    def fn(f, i, p):
        return decode(variant, f, i, (7, 9), p, backend="triton")

    assert_compiles_fullgraph(fn, feat, inp, params)


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_pixels(variant):
    feat, inp, params = leaves(variant, device=DEVICE, c=3, h=3, w=4)
    empty = decode(variant, feat, inp, (7, 9), params, backend="triton",
                   pixels=torch.zeros(2, 0, 2, dtype=torch.long, device=DEVICE))
    assert empty.shape == (2, 0, 3)
