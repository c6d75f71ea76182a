"""DLTE through the fused C++/CUDA operator ``implicit_kernels::dlte_decode``
(csrc/dlte_decode.cpp); its interface (argument layout, preparation, fake implementation,
autograd, the bilinear skip in PyTorch) is :mod:`implicit_kernels.ops.dlte`'s."""
from __future__ import annotations

import torch

from .. import _extension
from ..ops import dlte as ops
from ..ops.dlte import prepare_dlte

__all__ = ["dlte", "prepare_dlte"]

OP = "implicit_kernels::dlte_decode"


def dlte(feat, inp, out_size, pixels, params, slicing):
    """Decode ``pixels`` (``B×Q×2``) of the ``out_size`` grid → ``B×Q×3`` (see the reference)."""
    return ops.decode(OP, feat, inp, out_size, pixels, params, slicing)


if _extension.available():
    ops.register(OP, torch.ops.implicit_kernels.dlte_decode_backward)
