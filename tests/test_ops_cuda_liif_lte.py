"""The fused LIIF and LTE operators on CUDA (the "cuda" backend): bf16/fp16 against the
fp32 reference (fp32/fp64 values, gradients, gradcheck and opcheck are the conformance
suite's, tests/test_conformance.py).

Skipped without a GPU and a CUDA build of the extension (CI has neither)."""
import pytest
import torch
from test_ops_cpu_liif_lte import SIZES, decode, make_params, tie_queries

from implicit_kernels import backends

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or bool(backends.unavailable_reasons("cuda", "liif")),
    reason="needs a GPU and implicit_kernels._C built with CUDA")

SIZES = {**SIZES, "x30": (150, 210)}

# fp32 comparisons at 1e-5 need full-precision matmuls (no TF32).
pytestmark = [pytestmark, pytest.mark.gpu, pytest.mark.usefixtures("exact_fp32_matmul")]


def cuda_leaves(decoder, b=2, c=4, h=5, w=7, dtype=torch.float32, **kw):
    feat = torch.randn(b, c, h, w, dtype=dtype, device="cuda", requires_grad=True)
    inp = torch.randn(b, 3, h, w, dtype=dtype, device="cuda", requires_grad=True)
    params = {k: v.cuda().requires_grad_()
              for k, v in make_params(decoder, c=c, dtype=dtype, **kw).items()}
    return feat, inp, params


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("decoder", ["liif", "lte"])
def test_half_precision_against_fp32_reference(decoder, dtype):
    """bf16/fp16 inputs (fp32 geometry and accumulation) stay within 1e-2 relative of the
    fp32 reference on the same (half-rounded) queries, measured on the output's scale."""
    feat, inp, params = cuda_leaves(decoder, b=2, c=8, h=12, w=10, hidden=64)
    coord, cell = (t.cuda().to(dtype) for t in tie_queries(2, 2000, 12, 10))
    with torch.no_grad():
        ref = decode(decoder, feat, inp, None, params, coord=coord.float(), cell=cell.float(),
                     backend="reference")
        got = decode(decoder, feat.to(dtype), inp.to(dtype), None,
                     {k: v.to(dtype) for k, v in params.items()}, coord=coord, cell=cell,
                     backend="cuda")
    assert got.dtype == dtype
    err = (got.float() - ref).abs().max() / ref.abs().max()
    assert err < 1e-2, f"relative error {err:.3g}"
