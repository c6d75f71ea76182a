"""DIIF with SPEC.md §3's exact splits.

* The first coarse layer ``W·[z_t, rel_first, rel_last, cell] + b`` splits into
  ``W_z·z_t`` — one 4×4 convolution of the feature map, once per LR-grid corner — plus a
  6-input part per slice; since ``rel(·, v_t) = rel(·, v*) - o_t`` the latter is one
  vector per slice minus a constant per vertex type.
* The coarse stage runs once per distinct slice of a chunk, not per pixel.
* The first fine layer is linear before its ReLU, so ``W_h·Σ_t w_t H_t = Σ_t w_t (W_h·H_t)``
  is formed once per slice and vertex and blended per pixel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

from .. import geometry
from ..layers import mlp


def prepare_diif(feat, params):
    """Add ``"corner_proj"``: ``W_z·z_t`` at every LR-grid corner, ``B×(H+1)×(W+1)×D``."""
    (w0, _), c = params["coarse"][0], feat.shape[1]
    # Vertex code channel c·16 + 4·dy + dx is a 4×4 conv weight's layout (padding 2).
    kernel = w0[:, : 16 * c].reshape(-1, c, 4, 4)
    proj = nnf.conv2d(feat, kernel, padding=2).permute(0, 2, 3, 1).contiguous()
    return {**params, "corner_proj": proj}


def diif(feat, out_size, pixels, params, slicing):
    """Decode output pixels ``pixels`` (``B×Q×2``) → ``B×Q×3``; see the reference."""
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
    weights = geometry.slice_ensemble_weights(d)
    blended = nnf.linear(d, w_offset, bf0)
    for t, (a, b) in enumerate(geometry.VERTICES):
        offset = d.new_tensor([2 * a - 1, 2 * b - 1])
        corner = params["corner_proj"][s_batch, s_group[:, 0] + a, s_group[:, 1] + b]
        pre = corner + per_slice - nnf.linear(offset, w_first + w_last)
        coarse = mlp(torch.relu(pre), coarse_rest, relu_last=True)
        blended = blended + weights[:, t:t + 1] * nnf.linear(coarse, w_hidden)[pixel_slice]
    return mlp(torch.relu(blended), fine_rest).view(bsz, nq, -1)
