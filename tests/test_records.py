"""The ``cpu`` backend's kept records: a decode with gradients runs the operators'
``_train`` variants (the forward with its activations, so the backward does not recompute
them) up to ``ops.RECORD_MAX_QUERIES`` queries a decode, counted over all its chunks, and
the plain operators beyond; both give the same values and gradients."""
import pytest
import torch
from helpers import diif_params, hiif_params, mlp_params
from torch.utils._python_dispatch import TorchDispatchMode

import implicit_kernels.functional as F
from implicit_kernels import _extension, ops

pytestmark = pytest.mark.skipif(not _extension.available(), reason="; ".join(_extension.reasons()))

SIZE = (9, 11)  # 99 output pixels per image, 198 over the batch


class _OpNames(TorchDispatchMode):
    """The names of the ``implicit_kernels`` operators dispatched."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "implicit_kernels":
            self.names.add(func._opname)
        return func(*args, **(kwargs or {}))


def _decode(decoder, feat, inp, params, chunk_size):
    if decoder == "diif":
        return F.diif_decode(feat, SIZE, params, backend="cpu", chunk_size=chunk_size)
    if decoder == "liif":
        return F.liif_decode(feat, SIZE, params, backend="cpu", chunk_size=chunk_size)
    return F.hiif_decode(feat, inp, SIZE, params, backend="cpu", chunk_size=chunk_size)


def _params(decoder, c):
    if decoder == "diif":
        return diif_params(c=c, hidden=16)
    if decoder == "liif":
        return mlp_params("imnet.layers.", [9 * c + 4, 16, 16, 3])
    return hiif_params(c_enc=c, c_z=16, head_dim=4, hidden=16, levels=3)


@pytest.mark.parametrize("decoder,op", [("diif", "diif_decode"), ("liif", "liif_decode"),
                                        ("hiif", "hiif_levels"), ("hiif", "hiif_attention_stats"),
                                        ("hiif", "hiif_attention_apply")])
def test_records_kept_up_to_the_decodes_size(decoder, op, monkeypatch):
    torch.manual_seed(0)
    c = 8 if decoder == "hiif" else 4
    feat, inp = torch.randn(2, c, 4, 5), torch.rand(2, 3, 4, 5) * 2 - 1
    params = {k: v.requires_grad_() for k, v in _params(decoder, c).items()}
    results = {}
    # 198 queries in chunks of 64: kept under a limit of 1000, not under one of 100 (each
    # chunk is under it, the decode is not).
    for limit in (1000, 100):
        monkeypatch.setattr(ops, "RECORD_MAX_QUERIES", limit)
        leaves = [feat.detach().clone().requires_grad_(), *params.values()]
        with _OpNames() as seen:
            out = _decode(decoder, leaves[0], inp, params, chunk_size=64)
            grads = torch.autograd.grad(out.square().sum(), leaves)
        kept = limit > 2 * SIZE[0] * SIZE[1]
        assert (op + "_train" in seen.names) == kept
        assert (op + "_backward_saved" in seen.names) == kept
        assert (op + "_backward" in seen.names) != kept
        results[limit] = (out.detach(), grads)
    (out_kept, grads_kept), (out_plain, grads_plain) = results[1000], results[100]
    torch.testing.assert_close(out_kept, out_plain, rtol=1e-5, atol=1e-6)
    for g_kept, g_plain in zip(grads_kept, grads_plain):
        torch.testing.assert_close(g_kept, g_plain, rtol=1e-4, atol=1e-6)


def test_no_record_without_gradients():
    feat = torch.randn(1, 4, 3, 4)
    with torch.no_grad(), _OpNames() as seen:
        F.diif_decode(feat, (6, 8), diif_params(c=4, hidden=16), backend="cpu")
    assert seen.names == {"diif_decode"}


class _OnCuda:
    """What keeps_record reads of a tensor, for a CUDA tensor on a machine without one."""
    is_cuda = requires_grad = True


def test_no_record_where_the_cuda_backward_is_fused(monkeypatch):
    """On CUDA tensors DIIF's backward recomputes the forward in its fused kernels where
    its operator says it applies to the call's arguments; then the decode runs the plain
    operator, else (a decoder too wide for the kernels) it keeps its record. LIIF keeps
    its record there, and DIIF on the CPU without asking."""
    diif, cpu = "implicit_kernels::diif_decode", torch.zeros(1, requires_grad=True)
    asked = []
    for fused in (True, False):
        monkeypatch.setitem(ops.FUSED_CUDA_BACKWARD, diif,
                            lambda *args, fused=fused: asked.append(args) or fused)
        assert ops.keeps_record(diif, 100, [_OnCuda()], ("call", "args")) is not fused
    assert asked == [("call", "args")] * 2
    assert ops.keeps_record(diif, 100, [cpu], ("call", "args")) and len(asked) == 2
    assert ops.keeps_record("implicit_kernels::liif_decode", 100, [_OnCuda()])
