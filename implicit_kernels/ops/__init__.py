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
