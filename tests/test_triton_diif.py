"""The "triton" backend for DIIF: the paper's width with pixel queries, refusals, half
precision and real sizes on a GPU, grid chunks' slices without ``torch.unique`` (values,
gradients, chunking, opcheck and compile are the conformance suite's,
tests/test_conformance.py).

Runs on a GPU, or on CPU tensors under Triton's interpreter:
``TRITON_INTERPRET=1 python -m pytest tests/test_triton_diif.py`` (the variable must be set
before triton is imported, so in its own process; tests/test_triton_interpreter.py
does that for the main suite).  Interpreter runs use fp32 (its bf16 ``tl.dot`` is
not the GPU's) and small shapes."""

import pytest
import torch
from helpers import (
    assert_half_precision_close,
    assert_matches,
    diif_params,
    mlp_params,
    triton_device,
    triton_gpu_only,
)

import implicit_kernels.functional as F
from implicit_kernels import backends

DEVICE = triton_device()

#: Feature map 5×7 → integer ×3, non-integer ×2.7 (14×19) and asymmetric ×3 by ×5.
SIZES = {"x3": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35)}


def decode_with_grads(feat, params, size, slicing, backend, upstream, chunk_size):
    out = F.diif_decode(feat, size, params, slicing=slicing, backend=backend,
                        chunk_size=chunk_size)
    return out.detach(), torch.autograd.grad(out, [feat, *params.values()], upstream)


def test_paper_width_and_pixel_queries():
    """Hidden width 256 (the papers'; blocks exactly the width) on sampled pixels."""
    feat = torch.randn(1, 2, 3, 4, device=DEVICE)
    params = {k: v.to(DEVICE) for k, v in diif_params(2, 256).items()}
    pixels = torch.stack([torch.randint(0, 8, (1, 40)), torch.randint(0, 11, (1, 40))], -1)
    pixels = pixels.to(DEVICE)
    ref = F.diif_decode(feat, (8, 11), params, pixels=pixels, backend="reference")
    assert_matches(F.diif_decode(feat, (8, 11), params, pixels=pixels, backend="triton"), ref)


def test_unsupported_depth_is_refused():
    feat = torch.randn(1, 2, 3, 4, device=DEVICE)
    params = {**mlp_params("coarse.layers.", [38, 16]),
              **mlp_params("fine.layers.", [18, 16, 16, 3])}
    with pytest.raises(ValueError, match="papers' depths"):
        F.diif_decode(feat, (6, 8), {k: v.to(DEVICE) for k, v in params.items()},
                      backend="triton")


def test_backend_is_listed_and_not_auto():
    assert backends.available_backends("diif")["triton"][0]
    assert "triton" not in backends.AUTO_ORDER


@triton_gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_1e2_of_fp32_reference(dtype):
    feat = torch.randn(2, 8, 12, 10, device=DEVICE, requires_grad=True)
    params = {k: v.to(DEVICE).requires_grad_() for k, v in diif_params(8, 256).items()}
    keys = list(params)

    def decode(t, backend):
        return F.diif_decode(t["feat"], (40, 37), {k: t[k] for k in keys}, backend=backend)

    assert_half_precision_close(decode, {"feat": feat, **params},
                                torch.randn(2, 3, 40, 37, device=DEVICE), dtype)


@triton_gpu_only
def test_real_size_equals_reference(exact_fp32_matmul):
    """Paper widths on a 48×40 feature map at ×3.5 (fp32, no TF32)."""
    feat = torch.randn(1, 16, 48, 40, device=DEVICE, requires_grad=True)
    params = {k: v.to(DEVICE).requires_grad_() for k, v in diif_params(16, 256).items()}
    upstream = torch.randn(1, 3, 168, 140, device=DEVICE)
    out, grads = decode_with_grads(feat, params, (168, 140), "linear", "triton", upstream, 8192)
    ref, ref_grads = decode_with_grads(feat, params, (168, 140), "linear", "reference",
                                       upstream, None)
    assert_matches(out, ref)
    for key, g, g_ref in zip(["feat", *params], grads, ref_grads):
        assert_matches(g, g_ref, f"grad of {key}")


@pytest.mark.parametrize("slicing", ["linear", "constant"])
def test_grid_chunks_find_slices_without_unique(slicing, monkeypatch):
    """A grid decode goes through the backend's raster hook: each chunk's slices come
    from its start and stop (no torch.unique, no host sync), the result the reference's."""
    assert backends.resolve_raster("triton", "diif", torch.zeros(1, device=DEVICE)) is not None
    assert backends.resolve_raster("torch", "diif", torch.zeros(1)) is None
    torch.manual_seed(3)
    feat = torch.randn(2, 4, 5, 7, device=DEVICE)
    params = {k: v.to(DEVICE) for k, v in diif_params().items()}
    ref = F.diif_decode(feat, (14, 19), params, slicing=slicing, backend="reference")

    def refuse(*args, **kwargs):
        raise AssertionError("a grid chunk called torch.unique")

    monkeypatch.setattr(torch, "unique", refuse)
    # 101 queries over a batch of 2: chunks of 50 raster positions, cut mid-row and mid-group.
    out = F.diif_decode(feat, (14, 19), params, slicing=slicing, backend="triton",
                        chunk_size=101)
    assert_matches(out, ref)


@triton_gpu_only
def test_grid_chunk_does_not_sync():
    """A raster chunk's decode enqueues its work without waiting for the GPU (the sort it
    replaces copied the slice count to the host)."""
    from implicit_kernels.triton import diif, launch
    feat = torch.randn(2, 4, 5, 7, device=DEVICE)
    params = {k: v.to(DEVICE) for k, v in diif_params().items()}
    prepared = diif.prepare_diif(feat, F._diif_params(params, feat))
    decode, chunk = diif.raster_diif(feat, (14, 19), prepared, "linear", 101, False)
    assert chunk == 101
    ref = F.diif_decode(feat, (14, 19), params, backend="reference").flatten(2)[:, :, 30:80]
    with launch.pinned(launch.CONFIGS[0]):  # autotuning would time, and so wait for, each run
        decode(30, 80)  # compiles outside the check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = decode(30, 80)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert_matches(out.transpose(1, 2), ref)
