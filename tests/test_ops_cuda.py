"""The fused operators on CUDA (the "cuda" backend) against the reference: fp32/fp64
values and gradients, bf16/fp16 against the fp32 reference, gradcheck, opcheck.

Skipped without a GPU and a CUDA build of the extension (CI has neither; run on a GPU
machine, see bench/NOTES.md for which runs happened)."""
import pytest
import torch
from conftest import assert_matches, mlp_params

import implicit_kernels.functional as F
from implicit_kernels import backends, geometry

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or bool(backends.unavailable_reasons("cuda", "diif")),
    reason="needs a GPU and implicit_kernels._C built with CUDA")

SIZES = {"x1": (5, 7), "x3_odd": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35),
         "x30": (150, 210)}


def diif_params(c=4, hidden=32, dtype=torch.float32):
    return {k: v.cuda() for k, v in {
        **mlp_params("coarse.layers.", [16 * c + 6, hidden, hidden], dtype=dtype),
        **mlp_params("fine.layers.", [hidden + 2, hidden, hidden, 3], dtype=dtype)}.items()}

# fp32 comparisons at 1e-5 need full-precision matmuls (no TF32).
pytestmark = [pytestmark, pytest.mark.gpu, pytest.mark.usefixtures("exact_fp32_matmul")]


@pytest.mark.parametrize("slicing", geometry.SLICINGS)
@pytest.mark.parametrize("name", list(SIZES))
def test_diif_values_and_grads_equal_reference(name, slicing):
    feat = torch.randn(2, 4, 5, 7, device="cuda", requires_grad=True)
    params = {k: v.requires_grad_() for k, v in diif_params().items()}
    upstream = torch.randn(2, 3, *SIZES[name], device="cuda")
    results = {}
    for backend in ("reference", "cuda"):
        out = F.diif_decode(feat, SIZES[name], params, slicing=slicing, backend=backend,
                            chunk_size=5000)
        results[backend] = (out.detach(),
                            torch.autograd.grad(out, [feat, *params.values()], upstream))
    assert_matches(results["cuda"][0], results["reference"][0])
    for key, g, g_ref in zip(["feat", *params], results["cuda"][1], results["reference"][1]):
        assert_matches(g, g_ref, f"grad of {key}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_diif_half_precision_against_fp32_reference(dtype):
    """bf16/fp16 inputs (fp32 accumulation) stay within 1e-2 relative of the fp32
    reference, measured on the output's scale."""
    feat = torch.randn(2, 8, 12, 10, device="cuda")
    params = diif_params(8, 64)
    ref = F.diif_decode(feat, (40, 37), params, backend="reference")
    got = F.diif_decode(feat.to(dtype), (40, 37), {k: v.to(dtype) for k, v in params.items()},
                        backend="cuda")
    assert got.dtype == dtype
    err = (got.float() - ref).abs().max() / ref.abs().max()
    assert err < 1e-2, f"relative error {err:.3g}"


def test_diif_gradcheck_float64():
    feat = torch.randn(1, 2, 2, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    params = {k: v.requires_grad_() for k, v in diif_params(2, 4, torch.float64).items()}
    keys = list(params)

    def fn(f, *ps):
        return F.diif_decode(f, (5, 7), dict(zip(keys, ps)), backend="cuda", chunk_size=13)

    assert torch.autograd.gradcheck(fn, (feat, *params.values()))


def test_diif_pixels_and_opcheck():
    from implicit_kernels.ops.diif import op_inputs, prepare_diif
    feat = torch.randn(2, 3, 3, 4, device="cuda")
    params = diif_params(3, 8)
    pixels = torch.stack([torch.randint(0, 7, (2, 40)), torch.randint(0, 9, (2, 40))], -1).cuda()
    ref = F.diif_decode(feat, (7, 9), params, pixels=pixels, backend="reference")
    assert_matches(F.diif_decode(feat, (7, 9), params, pixels=pixels, backend="cuda"), ref)
    args = (*op_inputs(prepare_diif(feat, F._diif_params(params, feat))), pixels, 7, 9, "linear")
    torch.library.opcheck(torch.ops.implicit_kernels.diif_decode, args)
