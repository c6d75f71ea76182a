"""DIIF's operator interface (``implicit_kernels::diif_decode``, C++, and
``implicit_kernels::diif_decode_triton``), with its "w/o se" variant: argument layout,
preparation, the backend function's plumbing, and the fake implementations and autograd
of the whole DIIF family (DIIF's and DLTE's operators, :mod:`.dlte`).

The operators take the decoder after the splits of docs/diif.md; the 4×4 corner projection
is formed once per public call by :func:`prepare_diif` (the torch backend's convolution,
differentiated by PyTorch), the rest — grouping, slicing, the coarse stage per slice and
vertex, the slice ensemble and the fine stage — in the operator.  The "w/o se" ablation is
the same operator with ``slice_ensemble=False``: its projection is the 3×3 code's at every
LR pixel (:func:`prepare_diif_without_ensemble`), one vertex per slice, the group's own
pixel.

The family's autograd (:func:`setup_context`, :func:`make_backward`) serves every operator
whose tensor and list inputs come before ``pixels`` and options after it, with a backward
operator returning one gradient like each of those inputs (lists as lists).
"""
from __future__ import annotations

import torch

from .. import _validate as check
from ..torch_impl.diif import prepare_diif, prepare_diif_without_ensemble
from . import operator

__all__ = ["decode", "op_inputs", "prepare_diif", "prepare_diif_without_ensemble", "register"]


def op_inputs(params):
    """The operator's parameter arguments, views of the decoder's tensors: the corner
    projection, the first coarse layer's coordinate columns ``D_c×6`` and bias, the other
    coarse layers (two lists), the first fine layer's ``G`` and offset columns and bias,
    the other fine layers (two lists)."""
    (w0, b0), coarse = params["coarse"][0], params["coarse"][1:]
    (wf0, bf0), fine = params["fine"][0], params["fine"][1:]
    return (params["corner_proj"], w0[:, -6:], b0, [w for w, _ in coarse], [b for _, b in coarse],
            wf0[:, :-2], wf0[:, -2:], bf0, [w for w, _ in fine], [b for _, b in fine])


def decode(op, out_size, pixels, params, slicing, *options):
    """``pixels`` (``B×Q×2``) of the ``out_size`` grid → ``B×Q×3`` through the operator
    ``op`` (``"implicit_kernels::<name>"``) with its ``options`` after ``slicing``."""
    return operator(op)(*op_inputs(params), pixels, out_size[0], out_size[1], slicing,
                        *options)


def fake_decode(*inputs):
    """Fake implementation of a DIIF-family decode operator: ``B×Q×out`` in the first
    input's dtype, ``out`` the last fine layer's."""
    tensors, pixels = _split(inputs)[:2]
    return tensors[0].new_empty(pixels.shape[0], pixels.shape[1], tensors[-1][-1].shape[0])


def fake_backward(grad_out, *inputs):
    """Fake backward: a contiguous gradient like each tensor (and list) input before
    ``pixels``."""
    tensors = _split(inputs)[0]
    check.grad_out(grad_out, tensors[0], fake_decode(*inputs).shape,
                   "implicit_kernels: the DIIF-family decode backward")

    def like(t):
        return torch.empty_like(t, memory_format=torch.contiguous_format)
    return tuple([like(x) for x in t] if isinstance(t, (list, tuple)) else like(t)
                 for t in tensors)


def _split(inputs):
    """``(tensors and lists before pixels, pixels, options)`` of an operator's inputs:
    ``pixels`` is the first tensor input after the last list."""
    last_list = max(i for i, x in enumerate(inputs) if isinstance(x, (list, tuple)))
    return inputs[:last_list + 1], inputs[last_list + 1], inputs[last_list + 2:]


def setup_context(ctx, inputs, output):
    """Autograd context of a DIIF-family decode operator (C++ or Triton): saves the
    tensors and the lists' lengths, keeps the options after ``pixels``."""
    tensors, pixels, ctx.options = _split(inputs)
    ctx.lengths = [len(t) if isinstance(t, (list, tuple)) else None for t in tensors]
    flat = [x for t in tensors for x in (t if isinstance(t, (list, tuple)) else [t])]
    ctx.save_for_backward(*flat, pixels)


def _backward_arguments(ctx, grad_out):
    """The backward operator's arguments, from what :func:`setup_context` saved."""
    *flat, pixels = ctx.saved_tensors
    inputs, at = [], 0
    for n in ctx.lengths:
        inputs.append(flat[at] if n is None else list(flat[at:at + n]))
        at += 1 if n is None else n
    return (grad_out, *inputs, pixels, *ctx.options)


def make_backward(backward_op):
    """Autograd backward of a DIIF-family decode operator through ``backward_op``."""
    def backward(ctx, grad_out):
        grads = backward_op(*_backward_arguments(ctx, grad_out))
        return (*grads, None, *[None] * len(ctx.options))
    return backward


def register(op: str, backward_op) -> None:
    """Fake implementations of a DIIF-family decode operator ``op`` and ``op + "_backward"``,
    and ``op``'s autograd through ``backward_op``."""
    torch.library.register_fake(op)(fake_decode)
    torch.library.register_fake(op + "_backward")(fake_backward)
    torch.library.register_autograd(op, make_backward(backward_op), setup_context=setup_context)
