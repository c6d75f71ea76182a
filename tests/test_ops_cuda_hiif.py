"""The fused HIIF operators on CUDA (the "cuda" backend): the codes bit for bit, bf16/fp16
against the fp32 reference (fp32/fp64 values, gradients, chunking, gradcheck and opcheck
are the conformance suite's, tests/test_conformance.py).

Skipped without a GPU and a CUDA build of the extension (CI has neither)."""
import pytest
import torch
from test_hiif import hiif_params, inputs

import implicit_kernels.functional as F
from implicit_kernels import backends, geometry
from implicit_kernels.reference.hiif import hierarchical_code, local_coord

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or bool(backends.unavailable_reasons("cuda", "hiif")),
    reason="needs a GPU and implicit_kernels._C built with CUDA")

SIZES = {"x1": (6, 7), "x2.7": (16, 19), "x3_by_x5": (18, 35), "x3_ties": (18, 21),
         "x30": (180, 210)}


def cuda_all(*ts):
    return [t.cuda() for t in ts]


def cuda_params(**kw):
    return {k: v.cuda() for k, v in hiif_params(**kw).items()}

# fp32 comparisons at 1e-5 need full-precision matmuls (no TF32).
pytestmark = [pytestmark, pytest.mark.gpu, pytest.mark.usefixtures("exact_fp32_matmul")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hiif_codes_bit_exact(dtype):
    h, w = 6, 7
    coord = torch.cat([torch.rand(500, 2, dtype=dtype) * 2 - 1] + [
        geometry.make_coord((h * s, w * s), dtype=dtype).reshape(-1, 2) for s in (2, 3, 4, 5)])
    local = local_coord(geometry.ensemble_neighbours(coord, (h, w))[0][1] * 0.5, (h, w))
    expected = torch.stack([hierarchical_code(local, level) for level in range(6)], dim=-2)
    assert torch.equal(torch.ops.implicit_kernels.hiif_codes(coord.cuda(), h, w, 6).cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_hiif_half_precision_against_fp32_reference(dtype):
    """bf16/fp16 inputs (fp32 statistics) stay within 2e-2 relative of the fp32 reference,
    measured on the output's scale."""
    feat, inp = cuda_all(*inputs(b=2, c=8, h=10, w=12))
    params = cuda_params(c_z=64, head_dim=16, hidden=64)
    ref = F.hiif_decode(feat, inp, (37, 40), params, backend="reference")
    got = F.hiif_decode(feat.to(dtype), inp.to(dtype), (37, 40),
                        {k: v.to(dtype) for k, v in params.items()}, backend="cuda")
    assert got.dtype == dtype
    err = (got.float() - ref).abs().max() / ref.abs().max()
    assert err < 2e-2, f"relative error {err:.3g}"
