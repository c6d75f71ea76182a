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
    conv_params,
    linear,
    mlp_params,
    opcheck_layouts,
    triton_device,
)

import implicit_kernels.functional as F
from implicit_kernels import backends, geometry

DEVICE = triton_device()

#: Feature map 5×7 → integer ×3, non-integer ×2.7 (14×19) and asymmetric ×3 by ×5.
SIZES = {"x3": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35)}
VARIANTS = ("dlte", "diif_without_ensemble")


def params_for(variant, c=4, hidden=16, channels=6):
    fine = mlp_params("fine.layers.", [hidden + 2, hidden, hidden, 3])
    if variant == "diif_without_ensemble":
        params = {**mlp_params("coarse.layers.", [9 * c + 6, hidden, hidden]), **fine}
    else:
        params = {**conv_params("coef", channels, c), **conv_params("freq", channels, c),
                  "phase.weight": linear(2 * channels, 2)[0],
                  **mlp_params("coarse.layers.", [4 * channels, hidden, hidden]), **fine}
    return {k: v.to(DEVICE) for k, v in params.items()}


def decode(variant, feat, inp, size, params, **kw):
    if variant == "dlte":
        return F.dlte_decode(feat, inp, size, params, **kw)
    return F.diif_decode(feat, size, params, slice_ensemble=False, **kw)


def leaves(variant, b=2, c=4, h=5, w=7, **kw):
    feat = torch.randn(b, c, h, w, device=DEVICE, requires_grad=True)
    inp = torch.randn(b, 3, h, w, device=DEVICE, requires_grad=variant == "dlte")
    params = {k: v.requires_grad_() for k, v in params_for(variant, c, **kw).items()}
    return feat, inp, params


def values_and_grads(variant, backend, feat, inp, params, size, upstream, **kw):
    out = decode(variant, feat, inp, size, params, backend=backend, **kw)
    wrt = [feat, *([inp] if variant == "dlte" else []), *params.values()]
    return out.detach(), torch.autograd.grad(out, wrt, upstream)


@pytest.mark.parametrize("slicing", geometry.SLICINGS)
@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_values_and_grads_equal_reference(variant, name, slicing):
    torch.manual_seed(10 * list(SIZES).index(name) + geometry.SLICINGS.index(slicing))
    feat, inp, params = leaves(variant)
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
    feat, inp, params = leaves(variant)
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
    from implicit_kernels.triton import diif, dlte
    if variant == "dlte":
        p = dlte.prepare_dlte(feat, F._dlte_params(params, feat))
        return torch.ops.implicit_kernels.dlte_decode_triton, (
            *dlte._op_inputs(p), pixels, *size, slicing)
    p = diif.prepare_diif_without_ensemble(feat, F._diif_params(params, feat, False))
    return torch.ops.implicit_kernels.diif_decode_triton, (
        *diif._op_inputs(p), pixels, *size, slicing, -1, False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_opcheck(variant):
    feat = torch.randn(2, 3, 3, 4, device=DEVICE)
    params = params_for(variant, 3, 16, channels=4)
    pixels = geometry.grid_pixels((7, 9), 2, device=DEVICE).contiguous()
    opcheck_layouts(*op_and_args(variant, feat, params, pixels, (7, 9)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiles_without_graph_breaks(variant):
    feat, inp, params = leaves(variant, b=1, c=3, h=3, w=4, hidden=16)

    def fn(f, i, p):
        return decode(variant, f, i, (7, 9), p, backend="triton")

    assert_compiles_fullgraph(fn, feat, inp, params)


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_pixels(variant):
    feat, inp, params = leaves(variant, c=3, h=3, w=4)
    empty = decode(variant, feat, inp, (7, 9), params, backend="triton",
                   pixels=torch.zeros(2, 0, 2, dtype=torch.long, device=DEVICE))
    assert empty.shape == (2, 0, 3)
