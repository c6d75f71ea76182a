"""Input checks of the raw compiled operators (``torch.ops.implicit_kernels.*``), which a
user can call without ``F``'s checks: every backward checks its incoming gradient,
positions that become indices must be finite, sizes that would overflow are refused.

The operators' arguments are recorded from real decodes through the ``cpu`` backend, so
each test starts from a call that is valid and changes one thing."""
import pytest
import torch
from helpers import conv_params, linear, mlp_params
from test_hiif import hiif_params
from torch.utils._python_dispatch import TorchDispatchMode

import implicit_kernels.functional as F
from implicit_kernels import _extension

pytestmark = pytest.mark.skipif(not _extension.available(), reason="; ".join(_extension.reasons()))


class _Recorder(TorchDispatchMode):
    """Records ``(op name, args)`` of every ``implicit_kernels`` operator dispatched."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "implicit_kernels":
            self.calls.setdefault(func._opname, args)
        return func(*args, **(kwargs or {}))


def _decode_all():
    """One small decode per decoder through the ``cpu`` backend."""
    c = 4
    feat, inp = torch.randn(2, c, 3, 4), torch.rand(2, 3, 3, 4) * 2 - 1
    F.diif_decode(feat, (7, 9), {**mlp_params("coarse.layers.", [16 * c + 6, 16, 16]),
                                 **mlp_params("fine.layers.", [18, 16, 3])}, backend="cpu")
    F.liif_decode(feat, (7, 9), mlp_params("imnet.layers.", [9 * c + 4, 16, 3]), backend="cpu")
    lte = {**conv_params("coef", 8, c), **conv_params("freq", 8, c),
           "phase.weight": linear(4, 2)[0], **mlp_params("imnet.layers.", [8, 16, 3])}
    F.lte_decode(feat, inp, (7, 9), lte, backend="cpu")
    dlte = {**conv_params("coef", 4, c), **conv_params("freq", 4, c),
            "phase.weight": linear(8, 2)[0],
            **mlp_params("coarse.layers.", [16, 16, 16]), **mlp_params("fine.layers.", [18, 16, 3])}
    F.dlte_decode(feat, inp, (7, 9), dlte, backend="cpu")
    F.hiif_decode(feat, inp, (7, 9), hiif_params(c_enc=c, c_z=16, head_dim=8, hidden=16),
                  backend="cpu")


def record_operator_calls() -> dict:
    """``{operator name: args}`` of the first call of each operator in :func:`_decode_all`
    (also used by the raw-operator fuzzing in test_fuzz.py), run with autograd on (nothing
    requires grad: the operators that return their result) and then without it (HIIF's
    decode then writes into one buffer: ``hiif_level0_out``, ``hiif_attention_apply_``)."""
    with _Recorder() as rec:
        _decode_all()
        with torch.no_grad():
            _decode_all()
    return rec.calls


@pytest.fixture(scope="module")
def calls():
    return record_operator_calls()


def _op(name):
    return getattr(torch.ops.implicit_kernels, name)


FORWARDS = ["diif_decode", "dlte_decode", "liif_decode", "lte_decode", "hiif_level0",
            "hiif_attention_stats", "hiif_attention_apply", "hiif_levels"]


def test_every_forward_was_recorded(calls):
    assert set(FORWARDS) <= set(calls), sorted(calls)


def _grad_like(calls, name):
    args = calls[name]
    return args, torch.randn_like(_op(name)(*args))


@pytest.mark.parametrize("name", FORWARDS)
def test_backward_takes_a_valid_gradient(calls, name):
    args, grad = _grad_like(calls, name)
    grads = _op(f"{name}_backward")(grad, *args)
    assert grads


@pytest.mark.parametrize("bad,match", [
    (lambda g: torch.empty(g.shape, device="meta"), "grad_out must be on cpu"),
    (lambda g: g.double(), "grad_out must have dtype Float"),
    (lambda g: g.flatten()[:-1], "grad_out must have shape"),
    (lambda g: g.unsqueeze(0), "grad_out must have shape"),
])
@pytest.mark.parametrize("name", FORWARDS)
def test_backward_checks_its_gradient(calls, name, bad, match):
    """A gradient on another device (meta: no data), of another dtype or shape is refused
    before it is read (a meta gradient used to return uninitialised memory)."""
    args, grad = _grad_like(calls, name)
    with pytest.raises(RuntimeError, match=match):
        _op(f"{name}_backward")(bad(grad), *args)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("name,index", [("hiif_level0", 6), ("hiif_levels", 1),
                                        ("liif_decode", 5), ("lte_decode", 5)])
def test_positions_must_be_finite(calls, name, index, value):
    args = list(calls[name])
    coord = args[index].clone()
    coord.view(-1)[1] = value
    args[index] = coord
    with pytest.raises(RuntimeError, match="coord must be finite"):
        _op(name)(*args)
    grad = torch.zeros_like(_op(name)(*calls[name]))
    with pytest.raises(RuntimeError, match="coord must be finite"):
        _op(f"{name}_backward")(grad, *args)


def test_hiif_codes_and_ensemble_neighbours_refuse_nan():
    coord = torch.tensor([[0.1, float("nan")], [0.2, 0.3]])
    with pytest.raises(RuntimeError, match="coord must be finite"):
        torch.ops.implicit_kernels.hiif_codes(coord, 4, 5, 3)
    with pytest.raises(RuntimeError, match="coord must be finite"):
        torch.ops.implicit_kernels.ensemble_neighbours(coord, [4, 5])


@pytest.mark.parametrize("channels", [0, -3, 2 ** 28, 2 ** 40])
def test_hiif_level0_bounds_channels(calls, channels):
    args = (*calls["hiif_level0"][:8], channels, *calls["hiif_level0"][9:])
    with pytest.raises(RuntimeError, match=r"channels must be in \[1, 2\^28\)"):
        torch.ops.implicit_kernels.hiif_level0(*args)


def test_diif_slice_keys_cannot_overflow(calls):
    """Slice keys are (b * H_out + r) * W_out + c in int64: a batch of 4 at the largest
    output sides would overflow them, and is refused with the reason up front."""
    args = list(calls["diif_decode"])
    corner_proj = args[0]
    args[0] = corner_proj[:1].expand(4, *corner_proj.shape[1:]).contiguous()
    args[10] = torch.zeros(4, 1, 2, dtype=torch.long)
    side = 2 ** 31 - 1
    args[11], args[12] = side, side
    with pytest.raises(RuntimeError, match=r"batch \* H_out \* W_out must be below 2\^63"):
        torch.ops.implicit_kernels.diif_decode(*args)
    # One image of that size is fine: its keys fit.
    args[0], args[10] = args[0][:1], args[10][:1]
    out = torch.ops.implicit_kernels.diif_decode(*args)
    assert out.shape == (1, 1, 3) and torch.isfinite(out).all()
