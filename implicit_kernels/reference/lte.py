"""LTE (Lee & Jin, CVPR 2022) in the official code's form: docs/liif-lte.md#lte.

The coefficient and frequency maps are read with LIIF's nearest-code ``grid_sample``
(its shifts, ``1e-6`` tie-break and clamp), as is each code's centre.  The helpers
below (estimators, Fourier feature, bilinear skip) are shared with DLTE.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

from ..layers import mlp
from .liif import centre_map, sample_nearest, shifted_queries


def estimators(feat: torch.Tensor, params) -> tuple[torch.Tensor, torch.Tensor]:
    """The coefficient and frequency maps: 3×3 convolutions (padding 1) of ``feat``
    (``B×C×H×W``), each ``B×K×H×W``."""
    return tuple(nnf.conv2d(feat, w, b, padding=1) for w, b in (params["coef"], params["freq"]))


def fourier_features(coef: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``coef ⊙ [cos(π·phase), sin(π·phase)]`` for ``coef`` ``(..., 2n)`` and ``phase``
    ``(..., n)``, cosine block first (LTE's layout)."""
    return coef * torch.cat([torch.cos(math.pi * phase), torch.sin(math.pi * phase)], dim=-1)


def bilinear_skip(inp: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """LTE's skip connection: ``inp`` (``B×3×h×w``) sampled bilinearly at ``coord``
    (``B×Q×2``, row first) with border padding and ``align_corners=False``: ``B×Q×3`` in
    ``inp``'s dtype.  Float32 positions with a half-precision image are sampled in float32
    (``backends.resolve_queries``)."""
    grid = coord.flip(-1).unsqueeze(1)
    out = nnf.grid_sample(inp.to(coord.dtype), grid, mode="bilinear", padding_mode="border",
                          align_corners=False)
    return out[:, :, 0, :].transpose(1, 2).to(inp.dtype)


def lte(feat, inp, coord, cell, params):
    """Decode queries with LTE.

    Args:
        feat: ``B×C×H×W`` encoder features.
        inp: ``B×3×h×w`` normalised LR image (bilinear skip).
        coord: ``B×Q×2`` query coordinates, row first.
        cell: ``B×Q×2`` output-pixel sizes ``(2/H_out, 2/W_out)`` (unscaled).
        params: ``{"coef": (W, b), "freq": (W, b), "phase": W (n×2), "imnet": [(W, b), ...]}``
            with ``2n`` coefficient and frequency channels.

    Returns:
        ``B×Q×3``: for each of the four local-ensemble codes, the frequencies read as ``n``
        pairs ``(F[2i], F[2i+1])`` are dotted with the query's offset, the cell's phase is
        added, and ``coef ⊙ [cos πφ, sin πφ]`` goes through ``imnet``; the predictions are
        blended by LIIF's area weights and the bilinearly sampled input is added.
    """
    h, w = feat.shape[-2:]
    coef, freq = estimators(feat, params)
    centres = centre_map(feat, coord.dtype)
    scale = coord.new_tensor([h, w])
    # Positions stay in coord's dtype (float32 possible with half features; see LIIF).
    phase = nnf.linear((cell * scale).to(feat.dtype), params["phase"])
    preds, areas = [], []
    for shifted in shifted_queries(coord, (h, w)):
        q_coef = sample_nearest(coef, shifted)
        q_freq = sample_nearest(freq, shifted)
        rel = (coord - sample_nearest(centres, shifted)) * scale
        # Pair i is (F[2i], F[2i+1]) = (f_y, f_x), dotted with rel = (y, x).
        phi = (q_freq.unflatten(-1, (-1, 2)) * rel.to(feat.dtype).unsqueeze(-2)).sum(-1) + phase
        preds.append(mlp(fourier_features(q_coef, phi), params["imnet"]))
        areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
    total = sum(areas)
    # Each prediction is weighted by the area of the diagonally opposite member.
    out = sum(pred * (area / total).unsqueeze(-1) for pred, area in zip(preds, reversed(areas)))
    return out.to(feat.dtype) + bilinear_skip(inp, coord)
