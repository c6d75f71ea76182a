"""LTE's operator interface (``implicit_kernels::lte_decode``, C++, and
``implicit_kernels::lte_decode_triton``): argument layout, preparation and the backend
function's plumbing; the fakes and autograd are LIIF's (:func:`.liif.register`: the same
argument layout).

The coefficient and frequency maps are the estimators' 3×3 convolutions, formed once per
public call by :func:`prepare_lte` (the torch backend's) and laid out channels last; the
operator does the local ensemble, the gather of each member's coefficients and
frequencies fused with its Fourier feature, the MLP and the blend.  The bilinear skip of
the LR image stays in PyTorch (:func:`decode`): it is one ``grid_sample`` of a 3-channel
image with border padding, which PyTorch already fuses and differentiates with respect to
the image, so the operators need neither the image nor a copy of grid_sample's rules.
``coord`` and ``cell`` are not differentiated, and a decode with gradients keeps the
forward's record for the backward, as in :mod:`.liif`.
"""
from __future__ import annotations

from ..reference.lte import bilinear_skip
from ..torch_impl.lte import prepare_lte as _prepare_torch
from .liif import call, check_coordinates_constant, register

__all__ = ["decode", "op_inputs", "prepare_lte", "register"]


def prepare_lte(feat, params):
    """Add ``"coef_map"`` and ``"freq_map"``: the estimators' outputs, ``B×H×W×2n``
    (channels last, contiguous)."""
    params = _prepare_torch(feat, params)
    return {**params, **{key: params[key].permute(0, 2, 3, 1).contiguous()
                         for key in ("coef_map", "freq_map")}}


def op_inputs(params):
    """The operator's parameter arguments: the two maps, the phase weight ``n×2``, the
    MLP's weights and biases (two lists)."""
    imnet = params["imnet"]
    return (params["coef_map"], params["freq_map"], params["phase"], [w for w, _ in imnet],
            [b for _, b in imnet])


def decode(op, inp, coord, cell, params):
    """Queries (``B×Q×2`` coord and unscaled cell) → ``B×Q×3`` through the operator
    ``op`` (``"implicit_kernels::<name>"``), plus the skip of ``inp`` (``B×3×h×w``)."""
    check_coordinates_constant(coord, cell, op)
    return call(op, (*op_inputs(params), coord, cell)) + bilinear_skip(inp, coord)
