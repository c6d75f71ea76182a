"""DIIF through the fused C++/CUDA operator ``implicit_kernels::diif_decode``
(csrc/diif_decode.cpp), with the "w/o se" ablation (the same operator with
``slice_ensemble=False``); its interface (argument layout, preparation, fake
implementation, autograd) is :mod:`implicit_kernels.ops.diif`'s."""
from __future__ import annotations

import torch

from .. import _extension
from ..ops import diif as ops
from ..ops.diif import prepare_diif, prepare_diif_without_ensemble

__all__ = ["diif", "diif_without_ensemble", "prepare_diif", "prepare_diif_without_ensemble"]

OP = "implicit_kernels::diif_decode"


def diif(feat, out_size, pixels, params, slicing):
    """Decode ``pixels`` (``B×Q×2``) of the ``out_size`` grid → ``B×Q×3`` (see the reference)."""
    return ops.decode(OP, out_size, pixels, params, slicing, True)


def diif_without_ensemble(feat, out_size, pixels, params, slicing):
    """The "w/o se" ablation: ``pixels`` (``B×Q×2``) → ``B×Q×3`` (see the reference)."""
    return ops.decode(OP, out_size, pixels, params, slicing, False)


if _extension.available():
    ops.register(OP, torch.ops.implicit_kernels.diif_decode_backward)
