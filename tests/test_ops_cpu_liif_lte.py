"""The fused LIIF and LTE operators on CPU (the "cpu" backend): chunking and "auto",
other depths, input checks, refused coordinate gradients, written outputs (values,
gradients, gradcheck, opcheck and compile are the conformance suite's,
tests/test_conformance.py)."""
import pytest
import torch
from helpers import (
    assert_matches,
    conv_params,
    linear,
    mlp_params,
    tie_queries,
)

import implicit_kernels.functional as F
from implicit_kernels import _extension, backends

pytestmark = pytest.mark.skipif(not _extension.available(), reason="; ".join(_extension.reasons()))

# Output sizes for a 5×7 feature map: ×1, odd ×3 (exact ties: output and LR centres
# coincide), ×2.7, ×3 by ×5, ×12.
SIZES = {"x1": (5, 7), "x3_odd": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35),
         "x12": (60, 84)}


def liif_params(c=4, hidden=16, dtype=torch.float32, layers=2):
    return mlp_params("imnet.layers.", [9 * c + 4] + [hidden] * layers + [3], dtype=dtype)


def lte_params(c=4, channels=8, hidden=16, dtype=torch.float32):
    return {**conv_params("coef", channels, c, dtype=dtype),
            **conv_params("freq", channels, c, dtype=dtype),
            "phase.weight": linear(channels // 2, 2, dtype)[0],
            **mlp_params("imnet.layers.", [channels, hidden, hidden, 3], dtype=dtype)}


def decode(decoder, feat, inp, size, params, **kw):
    if decoder == "liif":
        return F.liif_decode(feat, size, params, **kw)
    return F.lte_decode(feat, inp, size, params, **kw)


def make_params(decoder, **kw):
    return (liif_params if decoder == "liif" else lte_params)(**kw)


def values_and_grads(decoder, feat, inp, params, size, upstream, backends_, **kw):
    """``{backend: (out, grads of feat, [inp,] every parameter)}``."""
    leaves = [feat] + ([inp] if decoder == "lte" else []) + list(params.values())
    results = {}
    for backend in backends_:
        out = decode(decoder, feat, inp, size, params, backend=backend, **kw)
        results[backend] = (out.detach(), torch.autograd.grad(out, leaves, upstream))
    return results


def assert_cpu_equals_reference(decoder, feat, inp, params, size, upstream, **kw):
    results = values_and_grads(decoder, feat, inp, params, size, upstream, ("reference", "cpu"),
                               **kw)
    assert_matches(results["cpu"][0], results["reference"][0])
    names = ["feat"] + (["inp"] if decoder == "lte" else []) + list(params)
    for key, g, g_ref in zip(names, results["cpu"][1], results["reference"][1]):
        assert_matches(g, g_ref, f"grad of {key}")


def leaves(decoder, b=2, c=4, h=5, w=7, dtype=torch.float32, **kw):
    feat = torch.randn(b, c, h, w, dtype=dtype, requires_grad=True)
    inp = torch.randn(b, 3, h, w, dtype=dtype, requires_grad=True)
    params = make_params(decoder, c=c, dtype=dtype, **kw)
    params = {k: v.requires_grad_() for k, v in params.items()}
    return feat, inp, params


@pytest.mark.parametrize("decoder", ["liif", "lte"])
def test_chunked_equals_unchunked_and_auto_is_cpu(decoder):
    feat, inp, params = leaves(decoder)
    with torch.no_grad():
        full = decode(decoder, feat, inp, (14, 19), params, backend="cpu", chunk_size=None)
        chunked = decode(decoder, feat, inp, (14, 19), params, backend="cpu", chunk_size=37)
        auto = decode(decoder, feat, inp, (14, 19), params)
    assert torch.equal(full, chunked) and torch.equal(full, auto)
    assert backends.auto_choice(decoder, feat) == "cpu"


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_liif_other_depths(layers):
    """Depth is free; with no hidden layer the first layer is the output (no ReLU)."""
    feat = torch.randn(1, 3, 4, 4, requires_grad=True)
    params = {k: v.requires_grad_() for k, v in liif_params(3, 8, layers=layers).items()}
    assert_cpu_equals_reference("liif", feat, None, params, (10, 11), torch.randn(1, 3, 10, 11))


def op_samples(decoder, b=2, c=3, h=3, w=4, q=40):
    """The operator and two argument tuples (one with channels-last maps that are dense but
    not contiguous), all floating tensors requiring grad except coord and cell."""
    feat = torch.randn(b, c, h, w)
    params = make_params(decoder, c=c, hidden=8)
    coord, cell = tie_queries(b, q, h, w)
    if decoder == "liif":
        from implicit_kernels.ops.liif import op_inputs, prepare_liif
        args = (*op_inputs(prepare_liif(feat, F._liif_params(params, feat))), coord, cell)
        op = torch.ops.implicit_kernels.liif_decode
    else:
        from implicit_kernels.ops.lte import op_inputs, prepare_lte
        args = (*op_inputs(prepare_lte(feat, F._lte_params(params, feat))), coord, cell)
        op = torch.ops.implicit_kernels.lte_decode
    permuted = list(args)
    permuted[0] = args[0].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)

    def leaf(a, grad):
        if isinstance(a, list):
            return [t.detach().requires_grad_() for t in a]
        return a.detach().requires_grad_(grad)

    samples = [tuple(leaf(a, i < 5) for i, a in enumerate(s)) for s in (args, permuted)]
    return op, samples


@pytest.mark.parametrize("decoder", ["liif", "lte"])
def test_op_rejects_bad_input(decoder):
    op, (args, _) = op_samples(decoder, b=1)
    args = [a.detach() if isinstance(a, torch.Tensor) else [t.detach() for t in a] for a in args]
    coord = args[5]
    nan_coord = coord.clone()
    nan_coord[0, 3, 1] = float("nan")
    cases = [
        (5, coord[..., :1], r"coord must be \(B, Q, 2\)"),
        (5, coord.repeat(2, 1, 1), r"coord must be \(B, Q, 2\) with B = 1"),
        (6, args[6][:, :7], "cell must have coord's shape"),
        (5, coord.double(), "coord must have dtype"),
        (5, nan_coord, "coord must be finite"),
        (1, args[1].double(), "dtype"),
        (0, args[0][0], r"must be \(B, H, W"),
        (3, [args[3][0][:, :5], *args[3][1:]], "imnet layer 0: weight must be"),
    ]
    if decoder == "liif":
        cases.append((1, args[1][:, :3], r"rel and cell part\) weight must be \(\d+, 4\)"))
    else:
        cases += [(2, args[2][:3], r"phase must be \(\d+, 2\)"),
                  (1, args[1][..., :4], "freq must have coef's shape"),
                  (3, [], "at least one layer")]
    for index, value, match in cases:
        bad = list(args)
        bad[index] = value
        with pytest.raises(RuntimeError, match=match):
            op(*bad)
    half = [a.half() if isinstance(a, torch.Tensor) else [t.half() for t in a] for a in args]
    with pytest.raises(RuntimeError, match="float32 or float64"):
        op(*half)


@pytest.mark.parametrize("decoder", ["liif", "lte"])
def test_coordinate_gradients_are_refused(decoder):
    feat, inp, params = leaves(decoder, b=1)
    coord, cell = tie_queries(1, 100, 5, 7)
    with pytest.raises(RuntimeError, match="does not differentiate coord"):
        decode(decoder, feat, inp, None, params, coord=coord.requires_grad_(), cell=cell,
               backend="cpu")


@pytest.mark.parametrize("decoder", ["liif", "lte"])
def test_empty_and_poisoned_outputs_are_written(decoder):
    op, (args, _) = op_samples(decoder)
    empty = torch.zeros(2, 0, 2)
    out = op(*args[:5], empty, empty)
    assert out.shape == (2, 0, 3)
    inputs = [*args[:3], *args[3], *args[4]]
    grads = torch.autograd.grad(out.sum(), inputs)
    assert all(g.shape == a.shape and not g.any() for g, a in zip(grads, inputs))
    feat, inp, params = leaves(decoder, b=2)
    # tests/conftest.py sets IK_POISON=1: kernels' outputs start as NaN, so any element a
    # kernel failed to write would surface here (and in the gradients).
    out = decode(decoder, feat, inp, (11, 13), params, backend="cpu")
    grads = torch.autograd.grad(out.sum(), [feat, *params.values()])
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("magnitude", [1.0, 100.0, 8192.0, 1e6])
def test_fourier_sin_cos_accuracy(magnitude):
    """LTE's CPU sin/cos (polynomial up to |x| = 8192, libm beyond) against float64 on the
    same float32 angles: within 1.5e-7 absolute (about 1.3 ulp of 1) at every magnitude."""
    angle = (torch.rand(100_003, dtype=torch.float64) * 2 - 1) * magnitude
    angle = angle.float()
    sin, cos = torch.ops.implicit_kernels.sin_cos(angle)
    assert (sin.double() - angle.double().sin()).abs().max() <= 1.5e-7
    assert (cos.double() - angle.double().cos()).abs().max() <= 1.5e-7


def test_fourier_sin_cos_special_values():
    """Signed zero, NaN and infinities as torch.sin/cos; a row with one angle past the
    polynomial's range (or NaN) still gives every angle its value; float64 is libm's."""
    ops = torch.ops.implicit_kernels
    angle = torch.tensor([-0.0, 0.0, 8192.0, -8192.0, 3.0e4, float("nan"), float("inf"),
                          -float("inf"), 1.5])
    for n in range(1, len(angle) + 1):
        sin, cos = ops.sin_cos(angle[:n])
        torch.testing.assert_close(sin, angle[:n].sin(), atol=1.5e-7, rtol=0, equal_nan=True)
        torch.testing.assert_close(cos, angle[:n].cos(), atol=1.5e-7, rtol=0, equal_nan=True)
    assert torch.signbit(ops.sin_cos(torch.tensor([-0.0, 1.0]))[0][0])
    wide = torch.randn(1000, dtype=torch.float64) * 50
    sin, cos = ops.sin_cos(wide)
    torch.testing.assert_close(sin, wide.sin(), atol=1e-15, rtol=0)
    torch.testing.assert_close(cos, wide.cos(), atol=1e-15, rtol=0)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.sin_cos(torch.ones(3, dtype=torch.float16))
