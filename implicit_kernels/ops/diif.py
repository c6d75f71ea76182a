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

A C++ operator ``<name>`` may come with ``<name>_train``: the same forward returning also
its record (the activations its backward needs, :func:`record_fake` spells out the
layout), and ``<name>_backward_saved``, the backward from that record.  A decode with
gradients calls it (:func:`call`), so its backward does not recompute the forward, up to
``RECORD_MAX_QUERIES`` queries a decode (:func:`implicit_kernels.ops.keeps_record`).
"""
from __future__ import annotations

import torch

from .. import _validate as check
from ..torch_impl.diif import prepare_diif, prepare_diif_without_ensemble
from . import flat, for_train, keeps_record, operator

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
    return call(op, (*op_inputs(params), pixels, out_size[0], out_size[1], slicing, *options))


def call(op, args):
    """``op(*args)``, or its ``_train`` variant's output when the call needs gradients and
    its decode is small enough to keep the record (module docstring)."""
    tensors, pixels, _ = _split(args)
    if keeps_record(op, pixels.shape[0] * pixels.shape[1], tensors, args):
        return operator(op + "_train")(*args)[0]
    return operator(op)(*args)


def _name(op):
    return op.removeprefix("implicit_kernels::")


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


def setup_context(ctx, inputs, output, record=()):
    """Autograd context of a DIIF-family decode operator (C++ or Triton): saves the
    tensors, the lists' lengths and a ``_train`` operator's ``record``, keeps the options
    after ``pixels``."""
    tensors, pixels, ctx.options = _split(inputs)
    ctx.lengths = [len(t) if isinstance(t, (list, tuple)) else None for t in tensors]
    ctx.record_length = len(record)
    ctx.save_for_backward(*flat(tensors), pixels, *record)


def _backward_arguments(ctx, grad_out):
    """The backward operator's arguments, from what :func:`setup_context` saved (a
    ``_train`` operator's record second)."""
    saved = ctx.saved_tensors
    record = list(saved[len(saved) - ctx.record_length:])
    *tensors, pixels = saved[:len(saved) - ctx.record_length]
    inputs, at = [], 0
    for n in ctx.lengths:
        inputs.append(tensors[at] if n is None else list(tensors[at:at + n]))
        at += 1 if n is None else n
    return (grad_out, *([record] if ctx.record_length else []), *inputs, pixels, *ctx.options)


def make_backward(backward_op):
    """Autograd backward of a DIIF-family decode operator through ``backward_op``."""
    def backward(ctx, grad_out, *_record_grads):
        if grad_out is None:  # unmaterialised (ops.for_train): nothing reached the output
            return (*[None if n is None else [None] * n for n in ctx.lengths], None,
                    *[None] * len(ctx.options))
        grads = backward_op(*_backward_arguments(ctx, grad_out))
        return (*grads, None, *[None] * len(ctx.options))
    return backward


def record_fake(tensors, pixels, width, coarse_w, fine_wh, fine_w):
    """Fake record of a ``_train`` operator (csrc/diif_stages.h, ``pack_record``) for
    ``n`` queries: ``slice_of`` (n,), for the call's R slice-vertex rows (a dynamic size:
    it depends on the pixels' values) the coordinate inputs (R, 6), corner indices (R,)
    and the coarse stage's activations (its ReLU'd ``width``-wide input, each layer's
    output), the fine stage's but its output (n rows), and the per-pixel vertex mix
    (n or no rows, hidden)."""
    like = tensors[0]
    n = pixels.shape[0] * pixels.shape[1]
    ctx = torch.library.get_ctx()
    rows, mix = ctx.new_dynamic_size(), ctx.new_dynamic_size()
    acc = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype

    def empty(*shape, dtype=like.dtype):
        return like.new_empty(shape, dtype=dtype)
    return [empty(n, dtype=torch.long), empty(rows, 6, dtype=acc), empty(rows, dtype=torch.long),
            empty(rows, width), *[empty(rows, w.shape[0]) for w in coarse_w],
            empty(n, fine_wh.shape[0]), *[empty(n, w.shape[0]) for w in fine_w[:-1]],
            empty(mix, fine_wh.shape[1])]


def _diif_record(tensors, pixels, options):
    corner_proj, _, _, coarse_w, _, fine_wh, _, _, fine_w, _ = tensors
    return record_fake(tensors, pixels, corner_proj.shape[-1], coarse_w, fine_wh, fine_w)


def register(op: str, backward_op, record=_diif_record) -> None:
    """Fake implementations of a DIIF-family decode operator ``op`` and ``op + "_backward"``,
    and ``op``'s autograd through ``backward_op``; for an operator with a ``_train``
    variant, the same for it and ``_backward_saved``, its record's fake from
    ``record(tensors, pixels, options)``."""
    torch.library.register_fake(op)(fake_decode)
    torch.library.register_fake(op + "_backward")(fake_backward)
    torch.library.register_autograd(op, make_backward(backward_op), setup_context=setup_context)
    name = _name(op)
    if not hasattr(torch.ops.implicit_kernels, name + "_train"):
        return

    def fake_train(*inputs):
        tensors, pixels, options = _split(inputs)
        return fake_decode(*inputs), record(tensors, pixels, options)

    def fake_backward_saved(grad_out, saved, *inputs):
        return fake_backward(grad_out, *inputs)

    torch.library.register_fake(op + "_train")(fake_train)
    torch.library.register_fake(op + "_backward_saved")(fake_backward_saved)
    torch.library.register_autograd(
        op + "_train",
        make_backward(getattr(torch.ops.implicit_kernels, name + "_backward_saved")),
        setup_context=for_train(setup_context))
