"""DLTE through the fused C++/CUDA operator ``implicit_kernels::dlte_decode``
(csrc/dlte_decode.cpp): its fake (meta) implementation, its autograd, and the backend
function.

The estimators' 3×3 convolutions and their 2×2 vertex codes (every LR-grid corner's four
LR values, :func:`implicit_kernels.reference.dlte.vertex_codes`) are formed once per
public call by :func:`prepare_dlte`, channels last, and differentiated by PyTorch; the
operator does DIIF's grouping and slicing, each slice's vertex Fourier features (LTE's
fused gather and feature step, with the slice's first and last pixel as the two offsets),
the coarse stage, the slice ensemble and the fine stage.  The bilinear skip of the LR image
stays in PyTorch, as in :mod:`.lte`.
"""
from __future__ import annotations

import torch

from .. import _extension, geometry
from ..reference.dlte import vertex_codes
from ..reference.lte import bilinear_skip, estimators
from .diif import register_decode

OP = "implicit_kernels::dlte_decode"


def prepare_dlte(feat, params):
    """Add ``"coef_corners"`` and ``"freq_corners"``: the estimators' vertex codes at every
    LR-grid corner, ``B×(H+1)×(W+1)×4K`` (channels last, contiguous)."""
    coef, freq = (vertex_codes(m).permute(0, 2, 3, 1).contiguous()
                  for m in estimators(feat, params))
    return {**params, "coef_corners": coef, "freq_corners": freq}


def _op_inputs(params):
    """The operator's parameter arguments, views of the decoder's tensors."""
    (w0, b0), coarse = params["coarse"][0], params["coarse"][1:]
    (wf0, bf0), fine = params["fine"][0], params["fine"][1:]
    return (params["coef_corners"], params["freq_corners"], params["phase"], w0, b0,
            [w for w, _ in coarse], [b for _, b in coarse], wf0[:, :-2], wf0[:, -2:], bf0,
            [w for w, _ in fine], [b for _, b in fine])


def dlte(feat, inp, out_size, pixels, params, slicing):
    """Decode ``pixels`` (``B×Q×2``) of the ``out_size`` grid → ``B×Q×3`` (see the reference)."""
    out = torch.ops.implicit_kernels.dlte_decode(*_op_inputs(params), pixels, out_size[0],
                                                 out_size[1], slicing)
    return out + bilinear_skip(inp, geometry.pixel_coord(pixels, out_size, feat.dtype))


if _extension.available():
    register_decode(OP, torch.ops.implicit_kernels.dlte_decode_backward)
