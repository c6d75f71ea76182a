"""Shared test helpers (imported as ``from helpers import ...``; tests/conftest.py keeps
only fixtures and hooks): tolerances by dtype, random decoder parameters, opcheck and
torch.compile assertions, Triton device selection, the half-precision yardstick."""
from __future__ import annotations

import os

import pytest
import torch

from implicit_kernels import geometry

#: Relative tolerance of a fast path against the reference, by dtype. Absolute tolerance is
#: the same number times the largest magnitude of the expected tensor (outputs and
#: gradients of these decoders have no natural scale).
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.bfloat16: 1e-2,
    torch.float16: 5e-3,
}


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, name: str = "output") -> None:
    """``actual`` equals ``expected`` up to the tolerance of ``expected``'s dtype."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    tol = TOLERANCES[expected.dtype]
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{name}: {m}")


def linear(out_f: int, in_f: int, dtype=torch.float32, gen=None):
    """A random ``(weight, bias)`` with PyTorch's default Linear init scale."""
    bound = in_f ** -0.5
    w = (torch.rand(out_f, in_f, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    b = (torch.rand(out_f, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    return w.to(dtype), b.to(dtype)


def mlp_params(prefix: str, dims, ids=None, dtype=torch.float32, gen=None) -> dict:
    """Random parameters of a Linear chain ``dims[0] -> dims[1] -> ...`` keyed
    ``{prefix}{id}.weight/.bias`` with ``ids`` ``0, 2, 4, ...`` by default (ReLUs between)."""
    ids = ids if ids is not None else range(0, 2 * (len(dims) - 1), 2)
    out = {}
    for i, fan_in, fan_out in zip(ids, dims[:-1], dims[1:]):
        out[f"{prefix}{i}.weight"], out[f"{prefix}{i}.bias"] = linear(fan_out, fan_in, dtype, gen)
    return out


def conv_params(name: str, out_c: int, in_c: int, k: int = 3, dtype=torch.float32,
                gen=None) -> dict:
    w, b = linear(out_c, in_c * k * k, dtype, gen)
    return {f"{name}.weight": w.view(out_c, in_c, k, k), f"{name}.bias": b}


def assert_compiles_fullgraph(fn, *args) -> None:
    """``torch.compile(fn, fullgraph=True)`` (aot_eager: no C++ codegen in CI) traces
    without graph breaks, equals eager ``fn``, and its backward reaches every tensor of
    ``args`` that requires grad (dict values included)."""
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(*args)
    assert_matches(out, fn(*args))
    out.sum().backward()
    leaves = [t for a in args for t in (a.values() if isinstance(a, dict) else [a])
              if isinstance(t, torch.Tensor) and t.requires_grad]
    assert leaves and all(t.grad is not None for t in leaves)


def triton_device() -> str:
    """The device a Triton test module runs on: ``"cuda"``, or ``"cpu"`` under Triton's
    interpreter (``TRITON_INTERPRET=1``); skips the module when there is neither."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed", allow_module_level=True)
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("no GPU and TRITON_INTERPRET=1 is not set", allow_module_level=True)
    return "cuda"


#: Triton tests that need the GPU itself (half precision, real sizes): the interpreter's
#: bf16 ``tl.dot`` is not the GPU's, and it is too slow for real sizes.
#: tests/test_triton_interpreter.py accepts exactly this skip reason.
def triton_gpu_only(test):
    """Marks ``test`` ``gpu`` and skips it under the interpreter or without a GPU."""
    skip = pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available(),
        reason="needs a CUDA GPU")
    return pytest.mark.gpu(skip(test))


def assert_half_precision_close(decode, leaves: dict, upstream, dtype, out_tol=1e-2,
                                backend="triton") -> None:
    """``decode(tensors, backend)`` on ``leaves`` cast to ``dtype`` with ``backend``
    (half-precision storage, fp32 accumulation) against the fp32 ``"reference"`` on
    ``leaves``.

    The output must be within ``out_tol`` of the reference, relative to its largest
    magnitude. A gradient's yardstick is how far the fp32 reference's own gradient moves
    when only its inputs are rounded to ``dtype``: ReLU masks flip where a pre-activation
    is within rounding of 0, which moves these decoders' gradients by a few percent
    (relative Frobenius norm) at random initialisation. Each gradient must stay within
    twice that, plus 8 units of rounding of ``dtype`` (the floor for gradients no mask
    touches, such as LTE's skip, whose half-precision ``grid_sample`` backward rounds)."""
    wanted = [k for k, v in leaves.items() if v.requires_grad]

    def run(backend, cast, dt):
        t = {k: v.detach().to(cast).to(dt).requires_grad_(v.requires_grad)
             for k, v in leaves.items()}
        out = decode(t, backend)
        grads = torch.autograd.grad(out, [t[k] for k in wanted], upstream.to(cast).to(dt))
        return out.detach(), grads

    def frobenius(a, b):
        return float((a.float() - b).norm() / b.norm().clamp_min(1e-30))

    ref, ref_grads = run("reference", torch.float32, torch.float32)
    _, rounded_grads = run("reference", dtype, torch.float32)
    out, grads = run(backend, dtype, dtype)
    assert out.dtype == dtype
    err = float((out.float() - ref).abs().max() / ref.abs().max())
    assert err < out_tol, f"output: relative error {err:.3g} ({dtype})"
    for key, g, g_rounded, g_ref in zip(wanted, grads, rounded_grads, ref_grads):
        err, yardstick = frobenius(g, g_ref), frobenius(g_rounded, g_ref)
        assert err <= 2 * yardstick + 8 * torch.finfo(dtype).eps, (
            f"grad of {key}: relative Frobenius error {err:.3g}, rounding the inputs alone "
            f"{yardstick:.3g} ({dtype})")




def diif_params(c=4, hidden=24, dtype=torch.float32, slice_ensemble=True, coarse_layers=2):
    """DIIF decoder parameters by state-dict name (``coarse.layers.*``, ``fine.layers.*``) for
    ``c`` feature channels: ``coarse_layers`` coarse Linears of width ``hidden``, the fine
    MLP ``hidden + 2 → hidden → hidden → 3``; the code is 16c wide (9c without the slice
    ensemble)."""
    code = (16 if slice_ensemble else 9) * c
    return {**mlp_params("coarse.layers.", [code + 6] + [hidden] * coarse_layers, dtype=dtype),
            **mlp_params("fine.layers.", [hidden + 2, hidden, hidden, 3], dtype=dtype)}


def hiif_params(c_enc=8, c_z=32, head_dim=8, hidden=32, levels=6, dtype=torch.float32, seed=1):
    """Random HIIF parameters under the derivative's state-dict names, LayerNorm affines
    away from (1, 0) so that their gradients are exercised."""
    gen = torch.Generator().manual_seed(seed)

    def norm(width):
        w = 1 + 0.2 * torch.randn(width, generator=gen, dtype=torch.float64)
        b = 0.2 * torch.randn(width, generator=gen, dtype=torch.float64)
        return w.to(dtype), b.to(dtype)

    p = conv_params("freq", c_z, c_enc, dtype=dtype, gen=gen)
    for level in range(levels):
        width = 4 * c_z + 4 if level == 0 else c_z + 2
        out = 3 if level == levels - 1 else c_z
        pre = f"fc_layers.{level}."
        p[pre + "norm.weight"], p[pre + "norm.bias"] = norm(width)
        p[pre + "fc1.weight"], p[pre + "fc1.bias"] = linear(hidden, width, dtype, gen)
        p[pre + "fc2.weight"], p[pre + "fc2.bias"] = linear(out, hidden, dtype, gen)
    for i in range(2):
        pre = f"conv{i}."
        p[pre + "qkv_proj.weight"], p[pre + "qkv_proj.bias"] = linear(3 * c_z, c_z, dtype, gen)
        p[pre + "kln.weight"], p[pre + "kln.bias"] = norm(head_dim)
        p[pre + "vln.weight"], p[pre + "vln.bias"] = norm(head_dim)
        for j in (1, 2):
            p[pre + f"proj{j}.weight"], p[pre + f"proj{j}.bias"] = linear(c_z, c_z, dtype, gen)
    return p


def inputs(b=2, c=8, h=6, w=7, dtype=torch.float32):
    feat = torch.randn(b, c, h, w, dtype=dtype)
    inp = torch.rand(b, 3, h, w, dtype=dtype) * 2 - 1
    return feat, inp


def random_queries(b, q, dtype=torch.float32):
    coord = torch.rand(b, q, 2, dtype=dtype) * 2 - 1
    cell = (2 / (torch.rand(b, q, 2, dtype=dtype) * 40 + 6))
    return coord, cell


def tie_queries(b, q, h, w):
    """``b×q×2`` random coordinates whose first rows are the corners of [-1, 1]², every LR
    pixel centre and every LR pixel border (where the shifts, tie-break and clamp decide),
    and random cells."""
    coord = torch.rand(b, q, 2) * 2 - 1
    ys, xs = geometry.axis_centres(h), geometry.axis_centres(w)
    borders = torch.stack(torch.meshgrid(torch.linspace(-1, 1, h + 1), torch.linspace(-1, 1, w + 1),
                                         indexing="ij"), -1).reshape(-1, 2)
    special = torch.cat([torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]]),
                         torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2),
                         borders])
    coord[:, :len(special)] = special
    cell = torch.rand(b, q, 2) * 0.5 + 0.01
    return coord, cell
