"""Shared test helpers: seeds, tolerances by dtype, random decoder parameters."""
from __future__ import annotations

import os

# Compiled kernels fill their outputs with NaN before writing them (read once, when the
# extension first allocates), so an element a kernel forgets stays NaN and fails a test.
os.environ.setdefault("IK_POISON", "1")
# A checkout without the built extension skips its tests instead of compiling it on first
# use (tests/test_install.py exercises that path in its own environment).
os.environ.setdefault("IK_JIT", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

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


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Test tensors are tiny: intra-op threads only add barrier waits (seconds per test
    on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def opcheck_layouts(op, args) -> None:
    """``torch.library.opcheck`` of ``op`` on ``args`` and on the same arguments with the
    first tensor dense but not contiguous (a fake that ignores strides fails only then),
    floating tensors (also inside lists) as grad-requiring leaves."""
    permuted = list(args)
    first = args[0]
    dims = list(range(first.dim()))
    order = dims[:1] + dims[-1:] + dims[1:-1]
    back = [order.index(d) for d in dims]
    permuted[0] = first.permute(order).contiguous().permute(back)
    assert not permuted[0].is_contiguous()
    for sample in (args, tuple(permuted)):
        leaves = [a.detach().requires_grad_()
                  if isinstance(a, torch.Tensor) and a.is_floating_point()
                  else [t.detach().requires_grad_() for t in a] if isinstance(a, list) else a
                  for a in sample]
        torch.library.opcheck(op, tuple(leaves))


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


def assert_half_precision_close(decode, leaves: dict, upstream, dtype, out_tol=1e-2) -> None:
    """``decode(tensors, backend)`` on ``leaves`` cast to ``dtype`` with ``"triton"``
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
    out, grads = run("triton", dtype, dtype)
    assert out.dtype == dtype
    err = float((out.float() - ref).abs().max() / ref.abs().max())
    assert err < out_tol, f"output: relative error {err:.3g} ({dtype})"
    for key, g, g_rounded, g_ref in zip(wanted, grads, rounded_grads, ref_grads):
        err, yardstick = frobenius(g, g_ref), frobenius(g_rounded, g_ref)
        assert err <= 2 * yardstick + 8 * torch.finfo(dtype).eps, (
            f"grad of {key}: relative Frobenius error {err:.3g}, rounding the inputs alone "
            f"{yardstick:.3g} ({dtype})")


@pytest.fixture
def exact_fp32_matmul():
    """CUDA matmuls in full fp32 (no TF32) for the test, so fp32 comparisons at 1e-5 hold."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: a harmless stand-in for a payload."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def evil_pickle(tmp_path):
    """``make(path) -> marker``: write a torch file at ``path`` whose unpickling creates
    ``marker`` (checked to work: ``weights_only=False`` does create it)."""

    def make(path, marker=None):
        marker = tmp_path / f"pwned-{os.path.basename(str(path))}" if marker is None else marker
        torch.save({"format": "implicit-kernels-weights/1", "payload": _CreatesFile(marker)}, path)
        torch.load(path, weights_only=False)  # the payload works ...
        assert os.path.exists(marker)
        os.remove(marker)                     # ... and the test starts without its file
        return marker

    return make
