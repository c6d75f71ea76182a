"""LIIF (Chen et al., CVPR 2021) in the official code's form: docs/liif-lte.md#liif,
docs/conventions.md#local-ensemble."""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

from .. import geometry
from ..layers import mlp


def sample_nearest(maps: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` of ``maps`` (``B×C×H×W``) at ``coord`` (``B×Q×2``, row first) with
    nearest mode and ``align_corners=False``, as LIIF does: ``B×Q×C`` in ``maps``' dtype
    (float32 positions with half-precision maps: sampled in float32, exactly)."""
    grid = coord.flip(-1).unsqueeze(1)
    out = nnf.grid_sample(maps.to(coord.dtype), grid, mode="nearest", align_corners=False)
    return out[:, :, 0, :].transpose(1, 2).to(maps.dtype)


def shifted_queries(coord: torch.Tensor, size):
    """The four shifted query sets of LIIF's local ensemble, in its shift order."""
    h, w = size
    eps = geometry.ENSEMBLE_EPS
    for vy, vx in geometry.ENSEMBLE_SHIFTS:
        shifted = coord.clone()
        shifted[..., 0] += vy / h + eps
        shifted[..., 1] += vx / w + eps
        yield shifted.clamp_(-1 + eps, 1 - eps)


def centre_map(feat: torch.Tensor, dtype: torch.dtype, centres: str = "project") -> torch.Tensor:
    """LR pixel-centre coordinates as a ``B×2×H×W`` map in ``dtype`` (the positions'), to
    sample alongside features (rounded as ``centres``: ``geometry.CENTRES``)."""
    b, _, h, w = feat.shape
    coord = geometry.make_coord((h, w), device=feat.device, dtype=dtype, centres=centres)
    return coord.permute(2, 0, 1).unsqueeze(0).expand(b, 2, h, w)


def liif(feat, coord, cell, params):
    """Decode queries: ``feat`` ``B×C×H×W``, ``coord``/``cell`` ``B×Q×2`` → ``B×Q×3``.

    Each query is decoded from the 3×3-unfolded codes of its four surrounding LR pixels,
    with its offset from each and the scaled cell, and the four predictions are blended by
    the areas to the diagonally opposite codes.  Positions (``coord``, ``cell``, offsets,
    areas) stay in ``coord``'s dtype, which may be float32 with half-precision features;
    offsets enter the MLP in the features' dtype.
    """
    b, c, h, w = feat.shape
    unfolded = nnf.unfold(feat, 3, padding=1).view(b, c * 9, h, w)
    centres = centre_map(feat, coord.dtype)
    scale = coord.new_tensor([h, w])
    rel_cell = cell * scale
    preds, areas = [], []
    for shifted in shifted_queries(coord, (h, w)):
        code = sample_nearest(unfolded, shifted)
        rel = (coord - sample_nearest(centres, shifted)) * scale
        preds.append(mlp(torch.cat([code, rel.to(feat.dtype), rel_cell.to(feat.dtype)], dim=-1),
                         params["imnet"]))
        areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
    total = sum(areas)
    # Each prediction is weighted by the area of the diagonally opposite member.
    out = sum(pred * (area / total).unsqueeze(-1) for pred, area in zip(preds, reversed(areas)))
    return out.to(feat.dtype)
