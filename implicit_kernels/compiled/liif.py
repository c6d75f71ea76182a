"""LIIF through the fused C++/CUDA operator ``implicit_kernels::liif_decode``
(csrc/liif_decode.cpp); its interface (argument layout, preparation, fake implementation,
autograd) is :mod:`implicit_kernels.ops.liif`'s."""
from __future__ import annotations

import torch

from .. import _extension
from ..ops import liif as ops
from ..ops.liif import prepare_liif

__all__ = ["liif", "prepare_liif"]

OP = "implicit_kernels::liif_decode"


def liif(feat, coord, cell, params):
    """Decode queries (``B×Q×2`` coord and cell) → ``B×Q×3`` (see the reference)."""
    return ops.decode(OP, coord, cell, params)


if _extension.available():
    ops.register(OP, torch.ops.implicit_kernels.liif_decode_backward)
