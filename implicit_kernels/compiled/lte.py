"""LTE through the fused C++/CUDA operator ``implicit_kernels::lte_decode``
(csrc/lte_decode.cpp): its fake (meta) implementation, its autograd, and the backend
function.

The coefficient and frequency maps are the estimators' 3×3 convolutions, formed once per
public call by :func:`prepare_lte` (the torch backend's) and laid out channels last; the
operator does the local ensemble, the gather of each member's coefficients and
frequencies fused with its Fourier feature, the MLP and the blend.  The bilinear skip of
the LR image stays here, in PyTorch: it is one ``grid_sample`` of a 3-channel image with
border padding, which PyTorch already fuses and differentiates with respect to the image,
so the operator needs neither the image nor a copy of grid_sample's rules.  ``coord`` and
``cell`` are not differentiated, as in :mod:`.liif`.
"""
from __future__ import annotations

import torch

from .. import _extension
from ..reference.lte import bilinear_skip
from ..torch_impl.lte import prepare_lte as _prepare_torch
from .liif import check_coordinates_constant, register_decode

OP = "implicit_kernels::lte_decode"


def prepare_lte(feat, params):
    """Add ``"coef_map"`` and ``"freq_map"``: the estimators' outputs, ``B×H×W×2n``
    (channels last, contiguous)."""
    params = _prepare_torch(feat, params)
    return {**params, **{key: params[key].permute(0, 2, 3, 1).contiguous()
                         for key in ("coef_map", "freq_map")}}


def _op_inputs(params):
    """The operator's parameter arguments."""
    imnet = params["imnet"]
    return (params["coef_map"], params["freq_map"], params["phase"], [w for w, _ in imnet],
            [b for _, b in imnet])


def lte(feat, inp, coord, cell, params):
    """Decode queries (``B×Q×2`` coord and unscaled cell) → ``B×Q×3`` (see the reference)."""
    check_coordinates_constant(coord, cell, OP)
    out = torch.ops.implicit_kernels.lte_decode(*_op_inputs(params), coord, cell)
    return out + bilinear_skip(inp, coord)


if _extension.available():
    register_decode(OP, torch.ops.implicit_kernels.lte_decode_backward)
