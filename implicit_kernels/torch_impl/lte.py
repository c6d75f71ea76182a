"""LTE without ``grid_sample``: the coefficient and frequency maps are per LR pixel, so
they are computed once per call (:func:`prepare_lte`) and each local-ensemble code is
gathered by index (:func:`implicit_kernels.geometry.ensemble_neighbours`, the same
nearest-code rule); the phase of the cell is computed once for the four codes, which go
through the MLP together."""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

from .. import geometry
from ..layers import gather_pixels, mlp
from ..reference.lte import bilinear_skip, estimators, fourier_features


def prepare_lte(feat, params):
    """Add ``"coef_map"`` and ``"freq_map"``: the two estimators' ``B×2n×H×W`` outputs."""
    coef, freq = estimators(feat, params)
    return {**params, "coef_map": coef, "freq_map": freq}


def lte(feat, inp, coord, cell, params):
    """Decode queries (``B×Q×2`` coord and unscaled cell) → ``B×Q×3``; see the reference."""
    h, w = feat.shape[-2:]
    dt = feat.dtype  # positions stay in coord's dtype (float32 possible) until a layer
    phase = nnf.linear((cell * coord.new_tensor([h, w])).to(dt), params["phase"])
    members = geometry.ensemble_neighbours(coord, (h, w))
    index = torch.stack([i for i, _ in members])  # 4×B×Q×2
    rel = torch.stack([r for _, r in members])  # 4×B×Q×2
    coef = torch.stack([gather_pixels(params["coef_map"], i) for i in index])
    freq = torch.stack([gather_pixels(params["freq_map"], i) for i in index])
    phi = (freq.unflatten(-1, (-1, 2)) * rel.to(dt).unsqueeze(-2)).sum(-1) + phase
    preds = mlp(fourier_features(coef, phi), params["imnet"])  # 4×B×Q×3
    weights = geometry.ensemble_weights(list(rel)).movedim(-1, 0).unsqueeze(-1).to(dt)
    return (preds * weights).sum(0) + bilinear_skip(inp, coord)
