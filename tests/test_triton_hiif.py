"""The "triton" backend for HIIF: both level-code modes (the public code's level codes bit
for bit), the paper's widths, refusals, half precision and real sizes on a GPU, float32
positions with half-precision features (values, gradients, chunked multi-pass decoding,
opcheck and compile are the conformance suite's, tests/test_conformance.py).

Runs on a GPU, or on CPU tensors under Triton's interpreter:
``TRITON_INTERPRET=1 python -m pytest tests/test_triton_hiif.py`` (the variable must be set
before triton is imported, so in its own process; tests/test_triton_interpreter.py
does that for the main suite).  Interpreter runs use fp32 and small shapes."""

import pytest
import torch
import triton
import triton.language as tl
from helpers import (
    assert_half_precision_close,
    assert_matches,
    triton_device,
    triton_gpu_only,
)
from test_hiif import hiif_params, random_queries
from test_hiif_level_codes import CASES, LEVELS, _public_bits, _torch_bits

import implicit_kernels.functional as F
from implicit_kernels import backends, geometry
from implicit_kernels.triton import grid
from implicit_kernels.triton.hiif import query_geometry

DEVICE = triton_device()

#: Feature map 3×4 → integer ×3, non-integer ×2.7 and asymmetric ×3 by ×5.
SIZES = {"x3": (9, 12), "x2.7": (8, 11), "x3_by_x5": (9, 20)}
#: Small widths: C = 32 in 4 heads of 8, hidden 32, the paper's 6 levels.
SMALL = dict(c_enc=4, c_z=32, head_dim=8, hidden=32)


def inputs(seed, b=2, c=4, h=3, w=4):
    gen = torch.Generator().manual_seed(seed)
    feat = torch.randn(b, c, h, w, generator=gen)
    inp = torch.rand(b, 3, h, w, generator=gen) * 2 - 1
    return feat.to(DEVICE), inp.to(DEVICE)


def decode_with_grads(backend, feat, inp, params, **kw):
    """Output and gradients of a fixed random projection w.r.t. feat, inp, every param."""
    leaves = {"feat": feat.clone().requires_grad_(), "inp": inp.clone().requires_grad_()}
    leaves.update({k: v.to(DEVICE).requires_grad_() for k, v in params.items()})
    out = F.hiif_decode(leaves["feat"], leaves["inp"], params={k: leaves[k] for k in params},
                        backend=backend, **kw)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    grads = torch.autograd.grad((out * weight).sum(), list(leaves.values()))
    return out.detach(), dict(zip(leaves, grads))


def assert_same_as_reference(feat, inp, params, **kw):
    out, grads = decode_with_grads("triton", feat, inp, params, **kw)
    ref, ref_grads = decode_with_grads("reference", feat, inp, params, **kw)
    assert_matches(out, ref)
    for name, g in ref_grads.items():
        assert_matches(grads[name], g, f"grad of {name}")


#: Feature map 3×5 (centres rounded differently by the two modes on both axes) → ×2, ×3
#: (ties) and ×3 by ×2.
PUBLIC_SIZES = {"x2": (6, 10), "x3": (9, 15), "x3_by_x2": (9, 10)}


@pytest.mark.parametrize("name", list(PUBLIC_SIZES))
def test_public_level_codes_equal_reference(name):
    """``level_codes="public"``: values and every gradient equal the reference's public
    mode (batch 2, grid mode: query positions rounded as the public code too), which at
    these tie-heavy scales differs from the default mode by far more than the tolerance;
    the default mode still equals the reference's default."""
    seed = 90 + list(PUBLIC_SIZES).index(name)
    feat, inp = inputs(seed, h=3, w=5)
    params = hiif_params(**SMALL, seed=seed)
    size = PUBLIC_SIZES[name]
    assert_same_as_reference(feat, inp, params, size=size, level_codes="public")
    assert_same_as_reference(feat, inp, params, size=size)
    with torch.no_grad():
        public, project = (F.hiif_decode(feat, inp, size, params, backend="triton",
                                         level_codes=mode) for mode in ("public", "project"))
    assert (public - project).abs().amax() > 1e-3


def test_public_mode_is_implemented():
    feat, _ = inputs(96)
    assert not backends.unavailable_reasons("triton", "hiif_public_codes", feat)


@triton.jit
def _codes_kernel(coord_ptr, out_ptr, P, H, W, shift_y_lo, shift_y_hi, shift_x_lo,
                  shift_x_hi, inv_h, inv_w, public, base_y, step_y, base_x, step_x,
                  LEVELS: tl.constexpr, ROWS: tl.constexpr):
    """The level codes (``P×LEVELS×2``) the HIIF kernels compute for queries ``coord``:
    their local coordinate (``query_local``) and each level's bits (``level_bits``)."""
    p = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    p_ok = p < P
    _, _, ly, lx = query_geometry.query_local(coord_ptr, p, p_ok, H, W, (shift_y_lo, shift_y_hi),
                                              (shift_x_lo, shift_x_hi), inv_h, inv_w,
                                              (public, base_y, step_y, base_x, step_x))
    for level in tl.static_range(LEVELS):
        by, bx = query_geometry.level_bits(ly, lx, level)
        tl.store(out_ptr + (p * LEVELS + level) * 2, by, mask=p_ok)
        tl.store(out_ptr + (p * LEVELS + level) * 2 + 1, bx, mask=p_ok)


def _triton_bits(lr, out, centres):
    """The level codes of the Triton kernels' geometry for a whole output grid."""
    coord = geometry.pixel_coord(geometry.grid_pixels(out, 1)[0], out, torch.float32,
                                 centres).to(DEVICE).contiguous()
    n = coord.shape[0]
    bits = torch.full((n, LEVELS, 2), float("nan"), device=DEVICE)
    _codes_kernel[(triton.cdiv(n, 16),)](
        coord, bits, n, *lr, *query_geometry.launch_args(*lr, centres == "public"),
        LEVELS=LEVELS, ROWS=16, **grid.NO_FMA)
    return bits.cpu()


@pytest.mark.parametrize("centres", geometry.CENTRES)
@pytest.mark.parametrize("case", list(CASES))
def test_level_codes_bit_for_bit(case, centres):
    """The kernels' level codes equal the torch backend's in both modes, and the public
    code's (LIIF's make_coord, grid_sample) in the public one, ties included."""
    lr, out = CASES[case]
    assert torch.equal(_triton_bits(lr, out, centres), _torch_bits(lr, out, centres))
    if centres == "public":
        assert torch.equal(_triton_bits(lr, out, centres), _public_bits(lr, out))


def test_paper_widths():
    """C = 256 in 16 heads of 16, hidden 256, 6 levels (docs/hiif.md#what-the-paper-fixes)
    on a few queries."""
    feat, inp = inputs(30, b=1, c=8, h=2, w=3)
    params = {k: v.to(DEVICE) for k, v in
              hiif_params(c_enc=8, c_z=256, head_dim=16, hidden=256, seed=30).items()}
    torch.manual_seed(30)
    coord, cell = (t.to(DEVICE) for t in random_queries(1, 24))
    kw = dict(coord=coord, cell=cell, size=None)
    assert_matches(F.hiif_decode(feat, inp, params=params, backend="triton", **kw),
                   F.hiif_decode(feat, inp, params=params, backend="reference", **kw))


def test_backend_is_listed_and_not_auto():
    assert backends.available_backends("hiif")["triton"][0]
    assert "triton" not in backends.AUTO_ORDER


def test_coordinate_gradients_are_refused():
    feat, inp = inputs(40)
    params = {k: v.to(DEVICE) for k, v in hiif_params(**SMALL, levels=2).items()}
    coord, cell = (t.to(DEVICE) for t in random_queries(2, 5))
    with pytest.raises(RuntimeError, match="does not differentiate coord"):
        F.hiif_decode(feat, inp, None, params, coord=coord.requires_grad_(), cell=cell,
                      backend="triton")


def test_unequal_hidden_widths_are_refused():
    feat, inp = inputs(41)
    params = {k: v.to(DEVICE) for k, v in hiif_params(**SMALL, levels=3).items()}
    wider = hiif_params(**{**SMALL, "hidden": 48}, levels=3)
    params.update({k: v.to(DEVICE) for k, v in wider.items() if k.startswith("fc_layers.2.")})
    with pytest.raises(ValueError, match="one hidden width"):
        F.hiif_decode(feat, inp, (5, 6), params, backend="triton")


def paper_params(seed, c_enc=8):
    """The paper's widths: C = 256 in 16 heads of 16, hidden 256, 6 levels."""
    return {k: v.to(DEVICE) for k, v in
            hiif_params(c_enc=c_enc, c_z=256, head_dim=16, hidden=256, seed=seed).items()}


@triton_gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_1e2_of_fp32_reference(dtype):
    """Features and weights in half precision; positions exactly representable in it
    (see test_triton_liif_lte.half_exact_queries: a position rounded to half precision
    can change a hierarchy bit)."""
    feat, inp = inputs(50, c=8, h=12, w=10)
    params = {k: v.requires_grad_() for k, v in paper_params(50).items()}
    torch.manual_seed(50)
    coord, cell = (t.to(DEVICE).to(dtype).float() for t in random_queries(2, 1500))
    keys = list(params)

    def run(t, backend):
        return F.hiif_decode(t["feat"], t["inp"], None, params={k: t[k] for k in keys},
                             coord=t["coord"], cell=t["cell"], backend=backend)

    leaves = {"feat": feat.requires_grad_(), "inp": inp.requires_grad_(), "coord": coord,
              "cell": cell, **params}
    assert_half_precision_close(run, leaves, torch.randn(2, 1500, 3, device=DEVICE), dtype)


@triton_gpu_only
def test_real_size_equals_reference(exact_fp32_matmul):
    """Paper widths on a 48×40 feature map at ×3.5 (fp32, no TF32), chunked: attention
    over all 23,520 queries in three passes."""
    feat, inp = inputs(60, b=1, c=8, h=48, w=40)
    assert_same_as_reference(feat, inp, paper_params(60), size=(168, 140), chunk_size=8192)


def test_calls_beyond_32_bit_offsets_are_refused():
    """A call whose buffers need 64-bit offsets is refused before any kernel runs (the
    queries are never decoded: the check reads only shapes)."""
    feat, inp = inputs(70)
    params = hiif_params(**SMALL, seed=70)
    coord = torch.zeros(1, 2 ** 31 // (6 * 34) + 1, 2, device=DEVICE).expand(1, -1, 2)
    with pytest.raises(ValueError, match="32-bit offsets"):
        F.hiif_decode(feat[:1], inp[:1], None, params=params, coord=coord,
                      cell=torch.full_like(coord, 0.1), backend="triton", chunk_size=2 ** 31)


def test_half_precision_features_take_float32_positions():
    """fp16 features on a 1,500-pixel-wide output: positions stay float32 (a position
    rounded to fp16 can flip a hierarchy bit), within 2e-3 of the fp32 reference."""
    feat, inp = inputs(80, b=1, h=2, w=300)
    params = hiif_params(**SMALL, seed=80)
    with torch.no_grad():
        ref = F.hiif_decode(feat, inp, (3, 1500), params=params, backend="reference")
        out = F.hiif_decode(feat.half(), inp.half(), (3, 1500),
                            params={k: v.half() for k, v in params.items()}, backend="triton")
    assert out.dtype == torch.float16
    err = float((out.float() - ref).abs().max() / ref.abs().max())
    assert err < 2e-3, f"relative error {err:.3g}"
