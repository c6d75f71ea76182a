"""LIIF's operator interface (``implicit_kernels::liif_decode``, C++, and
``implicit_kernels::liif_decode_triton``): argument layout, preparation, fake
implementations, autograd and the backend function's plumbing.  LTE's operators have the
same layout (:mod:`.lte` reuses the fakes and autograd).

The first layer's ``9C`` feature part is one 3×3 convolution per LR pixel, formed once per
public call by :func:`prepare_liif` (the torch backend's, differentiated by PyTorch) and
laid out channels last for the operator; the rest — the local ensemble's geometry, the
first layer's coordinate part, the MLP on the 4 members of each query and the area-weighted
blend — runs in the operator.  ``coord`` and ``cell`` are not differentiated (training
samples them: they are data); the backends refuse coordinates that require a gradient
rather than silently returning none (:func:`check_coordinates_constant`).
"""
from __future__ import annotations

import torch

from .. import _validate as check
from ..torch_impl.liif import prepare_liif as _prepare_torch
from . import operator


def prepare_liif(feat, params):
    """Add ``"proj"``: the first layer's feature part at every LR pixel, ``B×H×W×D``
    (channels last, contiguous)."""
    params = _prepare_torch(feat, params)
    return {**params, "proj": params["proj"].permute(0, 2, 3, 1).contiguous()}


def op_inputs(params):
    """The operator's parameter arguments, views of the decoder's tensors: ``proj``,
    the first layer's coordinate columns ``D×4`` and bias, the remaining layers' weights
    and biases (two lists)."""
    (w0, b0), rest = params["imnet"][0], params["imnet"][1:]
    return params["proj"], w0[:, -4:], b0, [w for w, _ in rest], [b for _, b in rest]


def check_coordinates_constant(coord, cell, backend_op):
    """The fused operators do not differentiate the query coordinates: say so instead of
    returning no gradient."""
    if coord.requires_grad or cell.requires_grad:
        raise RuntimeError(f"{backend_op} does not differentiate coord or cell; use "
                           "backend='torch' for gradients with respect to the coordinates")


def decode(op, coord, cell, params):
    """Queries (``B×Q×2`` coord and cell) → ``B×Q×3`` through the operator ``op``
    (``"implicit_kernels::<name>"``)."""
    check_coordinates_constant(coord, cell, op)
    return operator(op)(*op_inputs(params), coord, cell)


def fake_decode(a, b, c, w, bias, coord, cell):
    """Fake implementation shared with LTE (same argument layout): ``B×Q×out``; without
    layers after LIIF's first, its width is the output's."""
    return a.new_empty(coord.shape[0], coord.shape[1], w[-1].shape[0] if w else a.shape[-1])


def fake_backward(grad_out, a, b, c, w, bias, coord, cell):
    """Fake backward shared with LTE: a contiguous gradient like each differentiable input."""
    check.grad_out(grad_out, a, fake_decode(a, b, c, w, bias, coord, cell).shape,
                   "implicit_kernels: the decode backward")

    def like(ts):
        return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in ts]
    return (*like([a, b, c]), like(w), like(bias))


def setup_context(ctx, inputs, output):
    a, b, c, w, bias, coord, cell = inputs
    ctx.save_for_backward(a, b, c, coord, cell, *w, *bias)
    ctx.layers = len(w)


def make_backward(backward_op):
    """Autograd backward calling ``backward_op`` (LIIF's or LTE's: same argument layout)."""
    def backward(ctx, grad_out):
        a, b, c, coord, cell, *lists = ctx.saved_tensors
        w, bias = lists[:ctx.layers], lists[ctx.layers:]
        grads = backward_op(grad_out, a, b, c, w, bias, coord, cell)
        return (*grads, None, None)
    return backward


def register(op: str, backward_op) -> None:
    """Fake implementations of a decode operator ``op`` with LIIF's argument layout (LIIF's
    or LTE's, C++ or Triton) and of ``op + "_backward"``, and ``op``'s autograd through
    ``backward_op``."""
    torch.library.register_fake(op)(fake_decode)
    torch.library.register_fake(op + "_backward")(fake_backward)
    torch.library.register_autograd(op, make_backward(backward_op), setup_context=setup_context)
