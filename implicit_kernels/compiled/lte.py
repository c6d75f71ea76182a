"""LTE through the fused C++/CUDA operator ``implicit_kernels::lte_decode``
(csrc/lte_decode.cpp); its interface (argument layout, preparation, fake implementation,
autograd, the bilinear skip in PyTorch) is :mod:`implicit_kernels.ops.lte`'s."""
from __future__ import annotations

import torch

from .. import _extension
from ..ops import lte as ops
from ..ops.lte import prepare_lte

__all__ = ["lte", "prepare_lte"]

OP = "implicit_kernels::lte_decode"


def lte(feat, inp, coord, cell, params):
    """Decode queries (``B×Q×2`` coord and unscaled cell) → ``B×Q×3`` (see the reference)."""
    return ops.decode(OP, inp, coord, cell, params)


if _extension.available():
    ops.register(OP, torch.ops.implicit_kernels.lte_decode_backward)
