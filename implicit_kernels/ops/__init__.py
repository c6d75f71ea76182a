"""Each decoder's operator interface, one module per decoder, shared by every backend
that implements it with operators of the C++ operator's schema (``compiled``: the
extension's ``implicit_kernels::<name>``; ``triton``: ``implicit_kernels::<name>_triton``):
the argument packing from the structured ``params``, the feature-map preparation
(``prepare_<decoder>``), the fake implementations and autograd (``register``, which a
backend calls for its own operators) and the backend function's plumbing (``decode``),
so a backend module holds only its kernels, its operators and a thin backend function.
"""
import contextlib
import contextvars

import torch

from .. import _validate as check


def operator(name: str):
    """The operator ``name`` (``"implicit_kernels::<op>"``) as ``torch.ops`` holds it."""
    return getattr(torch.ops.implicit_kernels, name.removeprefix("implicit_kernels::"))


def flat(tensors):
    """``tensors`` with its lists (and tuples) spliced in."""
    return [x for t in tensors for x in (t if isinstance(t, (list, tuple)) else [t])]


#: Queries (over the batch) of a whole decode up to which a decode with gradients keeps
#: its operators' records (the forward's activations, the ``_train`` operators) for the
#: backward instead of recomputing the forward there.  A record costs up to ~19 KB a query
#: in float32 at the papers' widths (HIIF over three passes; LIIF's four members 16 KB),
#: so at most ~1.3 GB; larger decodes recompute each call's forward in its backward,
#: memory bounded by the chunk.
RECORD_MAX_QUERIES = 1 << 16

_DECODE_QUERIES = contextvars.ContextVar("implicit_kernels_decode_queries", default=0)


@contextlib.contextmanager
def whole_decode(queries: int):
    """Marks the backend calls inside the block as chunks of one decode of ``queries``
    queries (over the batch), which bounds the records they keep (``F``'s chunk loops).
    A no-op while ``torch.compile`` traces, which keeps no record."""
    if torch.compiler.is_compiling():
        yield
        return
    token = _DECODE_QUERIES.set(queries)
    try:
        yield
    finally:
        _DECODE_QUERIES.reset(token)


def chunk_bounds(q, batch, chunk_size):
    """The ranges ``[start, stop)`` of an image's ``q`` queries that a decode's calls take,
    ``chunk_size`` queries over the batch a call (``None``: one call).  One call is decided
    from q's range alone, without a Python range over it, so a symbolic query count (an
    ONNX export with a dynamic Q) stays symbolic."""
    if chunk_size is None:
        step = max(q, 1)
    else:
        step = max(1, check.positive_int(chunk_size, "chunk_size") // batch)
    if q <= step:
        return [(0, q)]
    return [(start, min(q, start + step)) for start in range(0, q, step)]


def chunked(fn, q, batch, chunk_size, feat, channels_first=False):
    """Call ``fn(start, stop) -> B×n×3`` over :func:`chunk_bounds`' ranges of ``[0, q)``,
    the calls marked as one decode (:func:`whole_decode`), each result written straight
    into the output; return ``B×q×3`` (in ``feat``'s dtype), or ``B×3×q`` when
    ``channels_first``."""
    bounds = chunk_bounds(q, batch, chunk_size)
    shape = (batch, 3, q) if channels_first else (batch, q, 3)
    check.output_memory(shape, feat.dtype, feat.device)
    if len(bounds) == 1:
        # One chunk: no copy.
        res = fn(0, q).to(feat.dtype)   # as the copy into ``out`` below casts
        return res.transpose(1, 2).contiguous() if channels_first else res
    out = feat.new_empty(shape)
    with whole_decode(batch * q):
        for start, stop in bounds:
            res = fn(start, stop)
            if channels_first:
                out[:, :, start:stop] = res.transpose(1, 2)
            else:
                out[:, start:stop] = res
    return out


def _diif_backward_is_fused(*args) -> bool:
    return torch.ops.implicit_kernels.diif_decode_backward_is_fused(*args)


#: Operators whose backward on CUDA tensors may be fused (csrc/cuda/diif_fused_backward.cu),
#: each with the function that says, from a call's arguments, whether it is (the C++
#: backward's own test): a fused backward recomputes each tile's activations on chip, so
#: a record would only add its memory and its round trip through device memory.
FUSED_CUDA_BACKWARD = {"implicit_kernels::diif_decode": _diif_backward_is_fused}


def keeps_record(op: str, queries: int, tensors, args=()) -> bool:
    """Whether a call of ``op`` on ``queries`` queries (over the batch) runs its ``_train``
    variant, which also returns the forward's record so that the backward does not
    recompute the forward: the call needs gradients (a tensor of ``tensors`` requires
    grad), ``torch.compile`` is not tracing it (the record's sizes may be data-dependent),
    the operator has one, its backward on these CUDA tensors is not a fused recompute
    (``FUSED_CUDA_BACKWARD``, asked with the call's ``args``), and neither the call nor
    the decode it belongs to (:func:`whole_decode`) exceeds ``RECORD_MAX_QUERIES``."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    fused = FUSED_CUDA_BACKWARD.get(op)
    if fused and any(t.is_cuda for t in flat(tensors)) and fused(*args):
        return False
    return (max(queries, _DECODE_QUERIES.get()) <= RECORD_MAX_QUERIES
            and hasattr(torch.ops.implicit_kernels,
                        op.removeprefix("implicit_kernels::") + "_train")
            and any(t.requires_grad for t in flat(tensors)))


def for_train(setup_context):
    """The autograd ``setup_context`` of a ``_train`` operator from its family's
    ``setup_context(ctx, inputs, output, record)``: the record (the operator's second
    output) is saved, not differentiated, and its gradients are not materialised (zeros
    the size of every activation, for nothing)."""
    def setup(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1])
        ctx.set_materialize_grads(False)
        setup_context(ctx, inputs, output[0], output[1])
    return setup
