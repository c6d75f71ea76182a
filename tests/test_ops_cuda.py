"""The fused DIIF operator on CUDA (the "cuda" backend): bf16/fp16 against the fp32
reference (fp32/fp64 values, gradients, gradcheck and opcheck are the conformance
suite's, tests/test_conformance.py).

Skipped without a GPU and a CUDA build of the extension (CI has neither; run on a GPU
machine, see bench/NOTES.md for which runs happened)."""
import pytest
import torch
from helpers import diif_params

import implicit_kernels.functional as F
from implicit_kernels import backends

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or bool(backends.unavailable_reasons("cuda", "diif")),
    reason="needs a GPU and implicit_kernels._C built with CUDA")

SIZES = {"x1": (5, 7), "x3_odd": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35),
         "x30": (150, 210)}


# fp32 comparisons at 1e-5 need full-precision matmuls (no TF32).
pytestmark = [pytestmark, pytest.mark.gpu, pytest.mark.usefixtures("exact_fp32_matmul")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_diif_half_precision_against_fp32_reference(dtype):
    """bf16/fp16 inputs (fp32 accumulation) stay within 1e-2 relative of the fp32
    reference, measured on the output's scale."""
    feat = torch.randn(2, 8, 12, 10, device="cuda")
    params = {k: v.cuda() for k, v in diif_params(8, 64).items()}
    ref = F.diif_decode(feat, (40, 37), params, backend="reference")
    got = F.diif_decode(feat.to(dtype), (40, 37), {k: v.to(dtype) for k, v in params.items()},
                        backend="cuda")
    assert got.dtype == dtype
    err = (got.float() - ref).abs().max() / ref.abs().max()
    assert err < 1e-2, f"relative error {err:.3g}"
