"""The "triton" backend for LIIF and LTE: nearest-index rounding, the paper's width,
refusals, half precision and real sizes on a GPU, float32 positions with half-precision
features (values, gradients, ties, chunking, opcheck and compile are the conformance
suite's, tests/test_conformance.py).

Runs on a GPU, or on CPU tensors under Triton's interpreter:
``TRITON_INTERPRET=1 python -m pytest tests/test_triton_liif_lte.py`` (the variable must be
set before triton is imported, so in its own process; tests/test_triton_interpreter.py
does that for the main suite).  Interpreter runs use fp32 and small shapes."""

import pytest
import torch
from helpers import (
    assert_half_precision_close,
    assert_matches,
    conv_params,
    linear,
    mlp_params,
    triton_device,
    triton_gpu_only,
)
from test_ops_cpu_liif_lte import liif_params, tie_queries

import implicit_kernels.functional as F
from implicit_kernels import backends, geometry

DEVICE = triton_device()

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from implicit_kernels.triton import grid  # noqa: E402

DECODERS = ("liif", "lte")
#: Feature map 3×4 → integer ×3, non-integer ×2.7 (8×11) and asymmetric ×3 by ×5.
SIZES = {"x3": (9, 12), "x2.7": (8, 11), "x3_by_x5": (9, 20)}


@triton.jit
def _nearest_kernel(q_ptr, out_ptr, count, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    q = tl.load(q_ptr + i, mask=i < count, other=0.0)
    tl.store(out_ptr + i, grid.nearest_index(q, n), mask=i < count)


def test_nearest_index_rounds_half_to_even():
    """The kernels' nearest-code rounding equals ``geometry.nearest_index`` (grid_sample's)
    on exact halves (``q = k/2 - 1/2`` on 4 pixels: unnormalised ``k + 1/2``), beyond the
    borders and at random."""
    q = torch.cat([torch.arange(-3, 4) / 2 - 0.5, torch.tensor([-1.0, 1.0, -2.0, 2.0]),
                   torch.rand(40) * 2 - 1]).to(DEVICE)
    out = torch.empty(q.shape, dtype=torch.int32, device=DEVICE)
    _nearest_kernel[(1,)](q, out, q.numel(), 4, BLOCK=64)
    assert torch.equal(out.long(), geometry.nearest_index(q, 4))


def make_params(decoder, c=4, hidden=24, **kw):
    """The papers' depths: LIIF 5 Linear layers, LTE 4 (``channels`` coefficients)."""
    if decoder == "liif":
        params = liif_params(c, hidden, layers=4)
    else:
        channels = kw.get("channels", 8)
        params = {**conv_params("coef", channels, c), **conv_params("freq", channels, c),
                  "phase.weight": linear(channels // 2, 2)[0],
                  **mlp_params("imnet.layers.", [channels] + [hidden] * 3 + [3])}
    return {k: v.to(DEVICE) for k, v in params.items()}


def leaves(decoder, b=2, c=4, h=3, w=4, **kw):
    """``feat``, ``inp`` (LTE's skip; unused by LIIF) and parameters, all requiring grad."""
    feat = torch.randn(b, c, h, w, device=DEVICE, requires_grad=True)
    inp = torch.randn(b, 3, h, w, device=DEVICE, requires_grad=decoder == "lte")
    params = {k: v.requires_grad_() for k, v in make_params(decoder, c, **kw).items()}
    return feat, inp, params


def decode(decoder, feat, inp, size, params, **kw):
    if decoder == "liif":
        return F.liif_decode(feat, size, params, **kw)
    return F.lte_decode(feat, inp, size, params, **kw)


def assert_triton_equals_reference(decoder, feat, inp, params, size, upstream, **kw):
    """Values and the gradients of every leaf requiring grad, triton (with ``kw``,
    e.g. a chunk size) against the reference (unchunked)."""
    named = {"feat": feat, "inp": inp, **params}
    named = {k: v for k, v in named.items() if v.requires_grad}
    results = {}
    for backend, extra in (("triton", kw), ("reference", {})):
        extra = {**extra, "coord": kw.get("coord"), "cell": kw.get("cell")}
        out = decode(decoder, feat, inp, size, params, backend=backend, **extra)
        results[backend] = (out.detach(), torch.autograd.grad(out, list(named.values()), upstream))
    assert_matches(results["triton"][0], results["reference"][0])
    for key, g, g_ref in zip(named, results["triton"][1], results["reference"][1]):
        assert_matches(g, g_ref, f"grad of {key}")


@pytest.mark.parametrize("decoder", DECODERS)
def test_paper_width(decoder):
    """Widths 256 (the papers'; blocks exactly the width) on a few dozen queries."""
    torch.manual_seed(40 + DECODERS.index(decoder))
    feat, inp, params = leaves(decoder, b=1, c=2, hidden=256, channels=256)
    coord, cell = (t.to(DEVICE) for t in tie_queries(1, 40, 3, 4))
    upstream = torch.randn(1, 40, 3, device=DEVICE)
    assert_triton_equals_reference(decoder, feat, inp, params, None, upstream, coord=coord,
                                   cell=cell)


@pytest.mark.parametrize("decoder", DECODERS)
def test_coordinate_gradients_are_refused(decoder):
    feat, inp, params = leaves(decoder)
    coord, cell = (t.to(DEVICE) for t in tie_queries(2, 40, 3, 4))
    with pytest.raises(RuntimeError, match="does not differentiate coord or cell"):
        decode(decoder, feat, inp, None, params, coord=coord.requires_grad_(), cell=cell,
               backend="triton")


def test_unsupported_depth_is_refused():
    feat = torch.randn(1, 2, 3, 4, device=DEVICE)
    params = {k: v.to(DEVICE) for k, v in liif_params(2, 16, layers=2).items()}
    with pytest.raises(ValueError, match="paper's depth only"):
        F.liif_decode(feat, (6, 8), params, backend="triton")


@pytest.mark.parametrize("decoder", DECODERS)
def test_backend_is_listed_and_not_auto(decoder):
    assert backends.available_backends(decoder)["triton"][0]
    assert "triton" not in backends.AUTO_ORDER


def half_exact_queries(b, q, dtype):
    """Random coordinates and cells that ``dtype`` represents exactly (as float32), so
    the fp32 reference and a half-precision decode see the same positions: half
    precision is for features and weights; positions in half precision move by up to
    1e-3 (bf16: 4e-3), a different nearest code or hierarchy bit (README, Backends)."""
    coord = (torch.rand(b, q, 2, device=DEVICE) * 2 - 1).to(dtype).float()
    cell = (torch.rand(b, q, 2, device=DEVICE) * 0.1 + 0.01).to(dtype).float()
    return coord, cell


@triton_gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("decoder", DECODERS)
def test_half_precision_within_1e2_of_fp32_reference(decoder, dtype):
    feat, inp, params = leaves(decoder, c=8, h=12, w=10, hidden=256, channels=256)
    coord, cell = half_exact_queries(2, 1500, dtype)
    keys = list(params)

    def run(t, backend):
        return decode(decoder, t["feat"], t["inp"], None, {k: t[k] for k in keys},
                      coord=t["coord"], cell=t["cell"], backend=backend)

    assert_half_precision_close(run, {"feat": feat, "inp": inp, "coord": coord, "cell": cell,
                                      **params},
                                torch.randn(2, 1500, 3, device=DEVICE), dtype)


@triton_gpu_only
@pytest.mark.parametrize("decoder", DECODERS)
def test_real_size_equals_reference(decoder, exact_fp32_matmul):
    """Paper widths on a 48×40 feature map at ×3.5 (fp32, no TF32), chunked."""
    feat, inp, params = leaves(decoder, b=1, c=16, h=48, w=40, hidden=256, channels=256)
    upstream = torch.randn(1, 3, 168, 140, device=DEVICE)
    assert_triton_equals_reference(decoder, feat, inp, params, (168, 140), upstream,
                                   chunk_size=8192)


@pytest.mark.parametrize("decoder", DECODERS)
def test_half_precision_features_take_float32_positions(decoder):
    """fp16 features on a 1,500-pixel-wide output (fp16 positions would be off by up to
    2.4e-4, picking other nearest codes: 4 % off for LIIF, 34 % for LTE): the grid's
    positions stay float32, so the decode is within 2e-3 of the fp32 reference.  fp16
    runs under the interpreter too (its fp16 ``tl.dot`` accumulates in fp32)."""
    torch.manual_seed(50 + DECODERS.index(decoder))
    feat, inp, params = leaves(decoder, b=1, h=2, w=300)
    half = {k: v.detach().half() for k, v in params.items()}
    with torch.no_grad():
        ref = decode(decoder, feat, inp, (3, 1500), params, backend="reference")
        out = decode(decoder, feat.half(), inp.half(), (3, 1500), half, backend="triton")
    assert out.dtype == torch.float16
    err = float((out.float() - ref).abs().max() / ref.abs().max())
    assert err < 2e-3, f"relative error {err:.3g}"


def test_float32_query_positions_with_half_features():
    """Query mode: float32 coord/cell with fp16 features go to the triton backend as they
    are; float64 ones are refused."""
    feat, inp, params = leaves("liif", b=1)
    half = {k: v.detach().half() for k, v in params.items()}
    coord, cell = (t.to(DEVICE) for t in tie_queries(1, 48, 3, 4))
    with torch.no_grad():
        got = F.liif_decode(feat.half(), None, half, coord=coord, cell=cell, backend="triton")
        ref = F.liif_decode(feat, None, params, coord=coord, cell=cell, backend="reference")
    assert got.dtype == torch.float16
    assert float((got.float() - ref).abs().max() / ref.abs().max()) < 2e-3
    with pytest.raises(TypeError, match="coord has dtype torch.float64"):
        F.liif_decode(feat.half(), None, half, coord=coord.double(), cell=cell, backend="triton")
