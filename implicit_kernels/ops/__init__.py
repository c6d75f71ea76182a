"""Each decoder's operator interface, one module per decoder, shared by every backend
that implements it with operators of the C++ operator's schema (``compiled``: the
extension's ``implicit_kernels::<name>``; ``triton``: ``implicit_kernels::<name>_triton``):
the argument packing from the structured ``params``, the feature-map preparation
(``prepare_<decoder>``), the fake implementations and autograd (``register``, which a
backend calls for its own operators) and the backend function's plumbing (``decode``),
so a backend module holds only its kernels, its operators and a thin backend function.
"""
import torch


def operator(name: str):
    """The operator ``name`` (``"implicit_kernels::<op>"``) as ``torch.ops`` holds it."""
    return getattr(torch.ops.implicit_kernels, name.removeprefix("implicit_kernels::"))


def flat(tensors):
    """``tensors`` with its lists (and tuples) spliced in."""
    return [x for t in tensors for x in (t if isinstance(t, (list, tuple)) else [t])]


def keeps_record(op: str, queries: int, limit: int, tensors) -> bool:
    """Whether a call of ``op`` on ``queries`` queries (over the batch) runs its ``_train``
    variant, which also returns the forward's record so that the backward does not
    recompute the forward: the operator has one, the call needs gradients (a tensor of
    ``tensors`` requires grad), ``torch.compile`` is not tracing it (the record's sizes
    may be data-dependent), and the record is small enough (at most ``limit`` queries)."""
    return (torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and queries <= limit
            and hasattr(torch.ops.implicit_kernels,
                        op.removeprefix("implicit_kernels::") + "_train")
            and any(t.requires_grad for t in flat(tensors)))
