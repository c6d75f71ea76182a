"""DIIF through the fused C++/CUDA operator ``implicit_kernels::diif_decode``
(csrc/diif_decode.cpp): its fake (meta) implementation, its autograd, and the backend
function.

The operator takes the decoder after SPEC.md §3's splits; the 4×4 corner projection is
formed once per public call by :func:`prepare_diif` (a convolution, differentiated by
PyTorch), the rest — grouping, slicing, the coarse stage per slice and vertex, the slice
ensemble and the fine stage — in the operator.
"""
from __future__ import annotations

import torch

from .. import _extension
from .. import _validate as check
from ..torch_impl.diif import prepare_diif  # noqa: F401  (the same corner projection)

OP = "implicit_kernels::diif_decode"


def _op_inputs(params):
    """The operator's parameter arguments, views of the decoder's tensors."""
    (w0, b0), coarse = params["coarse"][0], params["coarse"][1:]
    (wf0, bf0), fine = params["fine"][0], params["fine"][1:]
    return (params["corner_proj"], w0[:, -6:], b0, [w for w, _ in coarse], [b for _, b in coarse],
            wf0[:, :-2], wf0[:, -2:], bf0, [w for w, _ in fine], [b for _, b in fine])


def diif(feat, out_size, pixels, params, slicing):
    """Decode ``pixels`` (``B×Q×2``) of the ``out_size`` grid → ``B×Q×3`` (see the reference)."""
    return torch.ops.implicit_kernels.diif_decode(*_op_inputs(params), pixels, out_size[0],
                                                  out_size[1], slicing)


def _fake(corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0, fine_w,
          fine_b, pixels, out_h, out_w, slicing):
    return corner_proj.new_empty(pixels.shape[0], pixels.shape[1], fine_w[-1].shape[0])


def _fake_backward(grad_out, corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                   fine_b0, fine_w, fine_b, pixels, out_h, out_w, slicing):
    check.grad_out(grad_out, corner_proj, (*pixels.shape[:2], fine_w[-1].shape[0]),
                   OP + "_backward")

    def like(ts):
        return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in ts]
    return (*like([corner_proj, w_coord, b0]), like(coarse_w), like(coarse_b),
            *like([fine_wh, fine_wd, fine_b0]), like(fine_w), like(fine_b))


def setup_context(ctx, inputs, output):
    """Autograd context of a DIIF decode operator with this schema (shared with the
    Triton operator): saves the tensors, the list lengths and the options."""
    (corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0, fine_w, fine_b,
     pixels, out_h, out_w, slicing) = inputs
    ctx.save_for_backward(corner_proj, w_coord, b0, fine_wh, fine_wd, fine_b0, pixels,
                          *coarse_w, *coarse_b, *fine_w, *fine_b)
    ctx.layers = (len(coarse_w), len(fine_w))
    ctx.options = (out_h, out_w, slicing)


def backward_arguments(ctx, grad_out):
    """The backward operator's arguments, from what :func:`setup_context` saved."""
    corner_proj, w_coord, b0, fine_wh, fine_wd, fine_b0, pixels, *lists = ctx.saved_tensors
    nc, nf = ctx.layers
    coarse_w, coarse_b = lists[:nc], lists[nc:2 * nc]
    fine_w, fine_b = lists[2 * nc:2 * nc + nf], lists[2 * nc + nf:]
    return (grad_out, corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0,
            fine_w, fine_b, pixels, *ctx.options)


def _backward(ctx, grad_out):
    grads = torch.ops.implicit_kernels.diif_decode_backward(*backward_arguments(ctx, grad_out))
    return (*grads, None, None, None, None)


if _extension.available():
    torch.library.register_fake(OP)(_fake)
    torch.library.register_fake(OP + "_backward")(_fake_backward)
    torch.library.register_autograd(OP, _backward, setup_context=setup_context)
