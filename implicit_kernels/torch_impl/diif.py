"""DIIF with the exact splits of docs/diif.md#equal-cheaper-forms.

* The first coarse layer ``W·[z_t, rel_first, rel_last, cell] + b`` splits into
  ``W_z·z_t`` — one 4×4 convolution of the feature map, once per LR-grid corner — plus a
  6-input part per slice; since ``rel(·, v_t) = rel(·, v*) - o_t`` the latter is one
  vector per slice minus a constant per vertex type.
* The coarse stage runs once per distinct slice of a chunk, not per pixel.
* The first fine layer is linear before its ReLU, so ``W_h·Σ_t w_t H_t = Σ_t w_t (W_h·H_t)``
  is formed once per slice and vertex and blended per pixel.

The "w/o se" ablation is the same computation with one "vertex", the group's own LR
pixel (a 3×3 convolution, offset 0, weight 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

from .. import geometry
from ..layers import mlp

#: Vertices ``(a, b)`` of the slice ensemble with their offsets ``o_t`` from the group
#: centre in LIIF units; without the ensemble, the group's own pixel at offset 0.
ENSEMBLE_VERTICES = tuple(((a, b), (2 * a - 1, 2 * b - 1)) for a, b in geometry.VERTICES)
OWN_PIXEL = (((0, 0), (0, 0)),)


def _code_projection(feat, params, kernel_size):
    """``W_z·code`` at every position the codes sit on, channels last: the first coarse
    layer's code columns as a ``kernel_size`` convolution (the unfold layouts of both
    codes are a conv weight's), ``B×(H+k-2)×(W+k-2)×D`` for padding ``k // 2``."""
    (w0, _), c = params["coarse"][0], feat.shape[1]
    kernel = w0[:, : c * kernel_size ** 2].reshape(-1, c, kernel_size, kernel_size)
    proj = nnf.conv2d(feat, kernel, padding=kernel_size // 2)
    return {**params, "corner_proj": proj.permute(0, 2, 3, 1).contiguous()}


def prepare_diif(feat, params):
    """Add ``"corner_proj"``: ``W_z·z_t`` at every LR-grid corner, ``B×(H+1)×(W+1)×D``."""
    return _code_projection(feat, params, 4)


def prepare_diif_without_ensemble(feat, params):
    """Add ``"corner_proj"``: the first layer's 3×3-code part at every LR pixel, ``B×H×W×D``."""
    return _code_projection(feat, params, 3)


def diif(feat, out_size, pixels, params, slicing):
    """Decode output pixels ``pixels`` (``B×Q×2``) → ``B×Q×3``; see the reference."""
    return _decode(feat, out_size, pixels, params, slicing, ENSEMBLE_VERTICES)


def diif_without_ensemble(feat, out_size, pixels, params, slicing):
    """The "w/o se" ablation; see the reference."""
    return _decode(feat, out_size, pixels, params, slicing, OWN_PIXEL)


def _decode(feat, out_size, pixels, params, slicing, vertices):
    in_size = feat.shape[-2:]
    dtype = feat.dtype
    bsz, nq = pixels.shape[:2]
    (w0, b0), coarse_rest = params["coarse"][0], params["coarse"][1:]
    (wf0, bf0), fine_rest = params["fine"][0], params["fine"][1:]
    k = w0.shape[1] - 6
    w_first, w_last, w_cell = w0[:, k:k + 2], w0[:, k + 2:k + 4], w0[:, k + 4:]
    w_hidden, w_offset = wf0[:, :-2], wf0[:, -2:]

    group, pixel_slice, s_batch, s_group, s_first, s_last = geometry.unique_slices(
        pixels, in_size, out_size, slicing)
    cell = 2 * torch.tensor(in_size, device=feat.device, dtype=dtype) / \
        torch.tensor(out_size, device=feat.device, dtype=dtype)
    rel_first = geometry.diif_rel(s_first, s_group, in_size, out_size, dtype)
    rel_last = geometry.diif_rel(s_last, s_group, in_size, out_size, dtype)
    per_slice = nnf.linear(rel_first, w_first) + nnf.linear(rel_last, w_last) + \
        nnf.linear(cell, w_cell, b0)

    d = geometry.diif_rel(pixels, group, in_size, out_size, dtype).reshape(-1, 2)
    weights = geometry.slice_ensemble_weights(d) if len(vertices) > 1 else None
    blended = nnf.linear(d, w_offset, bf0)
    for t, ((a, b), offset) in enumerate(vertices):
        corner = params["corner_proj"][s_batch, s_group[:, 0] + a, s_group[:, 1] + b]
        pre = corner + per_slice - nnf.linear(d.new_tensor(offset), w_first + w_last)
        coarse = mlp(torch.relu(pre), coarse_rest, relu_last=True)
        contribution = nnf.linear(coarse, w_hidden)[pixel_slice]
        blended = blended + (contribution if weights is None
                             else weights[:, t:t + 1] * contribution)
    return mlp(torch.relu(blended), fine_rest).unflatten(0, (bsz, nq))
