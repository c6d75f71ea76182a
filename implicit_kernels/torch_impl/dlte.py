"""DLTE (*reconstructed*, docs/dlte.md) with the exact splits of
docs/diif.md#equal-cheaper-forms.

* The estimator maps are per LR pixel: computed once per call (:func:`prepare_dlte`),
  and each slice gathers its group's 3×3 LR block, which holds all four 2×2 vertex codes
  (no 4× unfolded map).
* The coarse stage runs once per distinct slice of a chunk and vertex, not per pixel.
* The first fine layer is linear before its ReLU, so ``W_h·Σ_t w_t H_t = Σ_t w_t (W_h·H_t)``
  is formed once per slice and vertex and blended per pixel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

from .. import geometry
from ..layers import mlp
from ..reference.lte import bilinear_skip, estimators, fourier_features


def prepare_dlte(feat, params):
    """Add ``"coef_map"`` and ``"freq_map"``: the estimators' outputs zero-padded by one
    LR pixel, channels last, ``B×(H+2)×(W+2)×K``."""
    coef, freq = (nnf.pad(m, (1, 1, 1, 1)).permute(0, 2, 3, 1) for m in estimators(feat, params))
    return {**params, "coef_map": coef, "freq_map": freq}


def _vertex_codes(padded: torch.Tensor, s_batch: torch.Tensor, s_group: torch.Tensor):
    """The four vertex codes ``S×4×4K`` (channel ``c·4 + 2·dy + dx``, vertices in
    :data:`~implicit_kernels.geometry.VERTICES` order) of each slice's group, from a
    ``B×(H+2)×(W+2)×K`` padded map: vertex ``(a, b)`` is rows ``a..a+1``, columns
    ``b..b+1`` of the padded 3×3 block starting at the group's own index."""
    span = torch.arange(3, device=s_group.device)
    rows = (s_group[:, :1] + span).unsqueeze(-1)
    cols = (s_group[:, 1:] + span).unsqueeze(-2)
    block = padded[s_batch.view(-1, 1, 1), rows, cols].permute(0, 3, 1, 2)  # S×K×3×3
    return torch.stack([block[..., a:a + 2, b:b + 2].flatten(1) for a, b in geometry.VERTICES], 1)


def dlte(feat, inp, out_size, pixels, params, slicing):
    """Decode output pixels ``pixels`` (``B×Q×2``) → ``B×Q×3``; see the reference."""
    in_size = feat.shape[-2:]
    dtype = feat.dtype
    bsz, nq = pixels.shape[:2]
    (wf0, bf0), fine_rest = params["fine"][0], params["fine"][1:]
    w_hidden, w_offset = wf0[:, :-2], wf0[:, -2:]

    group, pixel_slice, s_batch, s_group, s_first, s_last = geometry.unique_slices(
        pixels, in_size, out_size, slicing)
    z_coef = _vertex_codes(params["coef_map"], s_batch, s_group)
    z_freq = _vertex_codes(params["freq_map"], s_batch, s_group)
    cell = 2 * torch.tensor(in_size, device=feat.device, dtype=dtype) / \
        torch.tensor(out_size, device=feat.device, dtype=dtype)
    phase = nnf.linear(cell, params["phase"])
    offsets = 2 * torch.tensor(geometry.VERTICES, device=feat.device, dtype=dtype) - 1
    # (x - v_t)·(H, W) = (x - v*)·(H, W) - o_t: S×4×2 (first, last)×2 (y, x).
    ends = torch.stack([geometry.diif_rel(e, s_group, in_size, out_size, dtype).unsqueeze(1)
                        - offsets for e in (s_first, s_last)], dim=-2)
    # Frequency channel 4k + 2p + j is component j of pair 2k + p, dotted with endpoint p.
    phi = (z_freq.unflatten(-1, (-1, 2, 2)) * ends.unsqueeze(-3)).sum(-1).flatten(-2) + phase
    coarse = mlp(fourier_features(z_coef, phi), params["coarse"], relu_last=True)  # S×4×D
    projected = nnf.linear(coarse, w_hidden)  # W_h·H_t per slice and vertex

    d = geometry.diif_rel(pixels, group, in_size, out_size, dtype).reshape(-1, 2)
    weights = geometry.slice_ensemble_weights(d).unsqueeze(-1)
    pre = (weights * projected[pixel_slice]).sum(1) + nnf.linear(d, w_offset, bf0)
    rgb = mlp(torch.relu(pre), fine_rest) if fine_rest else pre
    skip = bilinear_skip(inp, geometry.pixel_coord(pixels, out_size, dtype))
    return rgb.unflatten(0, (bsz, nq)) + skip
