"""DLTE's operator interface (``implicit_kernels::dlte_decode``, C++, and
``implicit_kernels::dlte_decode_triton``): argument layout, preparation and the backend
function's plumbing; the fakes and autograd are the DIIF family's (:func:`.diif.register`).

The estimators' 3×3 convolutions and their 2×2 vertex codes (every LR-grid corner's four
LR values, :func:`implicit_kernels.reference.dlte.vertex_codes`) are formed once per
public call by :func:`prepare_dlte`, channels last, and differentiated by PyTorch; the
operator does DIIF's grouping and slicing, each slice's vertex Fourier features (LTE's
gather and feature step, with the slice's first and last pixel as the two offsets), the
coarse stage, the slice ensemble and the fine stage.  The bilinear skip of the LR image
stays in PyTorch (:func:`decode`), as in :mod:`.lte`.
"""
from __future__ import annotations

from .. import geometry
from ..reference.dlte import vertex_codes
from ..reference.lte import bilinear_skip, estimators
from . import diif

__all__ = ["decode", "op_inputs", "prepare_dlte", "register"]


def prepare_dlte(feat, params):
    """Add ``"coef_corners"`` and ``"freq_corners"``: the estimators' vertex codes at every
    LR-grid corner, ``B×(H+1)×(W+1)×4K`` (channels last, contiguous)."""
    coef, freq = (vertex_codes(m).permute(0, 2, 3, 1).contiguous()
                  for m in estimators(feat, params))
    return {**params, "coef_corners": coef, "freq_corners": freq}


def op_inputs(params):
    """The operator's parameter arguments, views of the decoder's tensors: the two vertex
    code maps, the phase weight, the first coarse layer, the other coarse layers (two
    lists), the first fine layer's ``G`` and offset columns and bias, the other fine layers
    (two lists)."""
    (w0, b0), coarse = params["coarse"][0], params["coarse"][1:]
    (wf0, bf0), fine = params["fine"][0], params["fine"][1:]
    return (params["coef_corners"], params["freq_corners"], params["phase"], w0, b0,
            [w for w, _ in coarse], [b for _, b in coarse], wf0[:, :-2], wf0[:, -2:], bf0,
            [w for w, _ in fine], [b for _, b in fine])


def decode(op, feat, inp, out_size, pixels, params, slicing):
    """``pixels`` (``B×Q×2``) of the ``out_size`` grid → ``B×Q×3`` through the operator
    ``op`` (``"implicit_kernels::<name>"``), plus the skip of ``inp`` (``B×3×h×w``) at
    the pixels' centres in ``feat``'s dtype."""
    out = diif.call(op, (*op_inputs(params), pixels, out_size[0], out_size[1], slicing))
    return out + bilinear_skip(inp, geometry.pixel_coord(pixels, out_size, feat.dtype))


def record_fake(tensors, pixels, options):
    """Fake record of ``dlte_decode_train``: DIIF's (:func:`.diif.record_fake`), then the
    vertex Fourier features (R, 4K)."""
    coef, _, _, w0, _, coarse_w, _, fine_wh, _, _, fine_w, _ = tensors
    record = diif.record_fake(tensors, pixels, w0.shape[0], coarse_w, fine_wh, fine_w)
    return [*record, coef.new_empty(record[1].shape[0], w0.shape[1])]


def register(op: str, backward_op) -> None:
    """The DIIF family's fakes and autograd (:func:`.diif.register`) with DLTE's record."""
    diif.register(op, backward_op, record=record_fake)
