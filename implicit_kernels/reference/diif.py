"""DIIF (He & Jin) in the paper's form, one output pixel at a time: docs/diif.md.

No official code exists; docs/diif.md is the project's reading.  The reference evaluates,
for every output pixel, the coarse stage of its own slice at the four vertices of its
group (so a slice's coarse stage is recomputed for each of its pixels: exact, by the
per-pixel equivalence of docs/diif.md#per-pixel-equivalence, and simple), the slice
ensemble and the fine stage.
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

from .. import geometry
from ..layers import gather_pixels, mlp


def vertex_codes(feat: torch.Tensor) -> torch.Tensor:
    """Eq. 12: the 4×4 LR features around each LR-grid corner, zero outside the image,
    ``B×16C×(H+1)×(W+1)`` (channel ``c·16 + 4·dy + dx``)."""
    b, c, h, w = feat.shape
    return nnf.unfold(feat, 4, padding=2).view(b, c * 16, h + 1, w + 1)


def corner_coord(vertex: torch.Tensor, in_size, dtype) -> torch.Tensor:
    """Normalised coordinates of LR-grid corners ``(..., 2)``: ``-1 + 2a/H``."""
    n = torch.tensor(in_size, device=vertex.device, dtype=dtype)
    return -1 + 2 * vertex.to(dtype) / n


def diif(feat, out_size, pixels, params, slicing):
    """Decode output pixels ``pixels`` (``B×Q×2`` int64 row, col of the ``out_size`` grid)
    from ``feat`` (``B×C×H×W``) → ``B×Q×3``."""
    codes = vertex_codes(feat)
    in_size = feat.shape[-2:]

    def code_and_position(group, a, b):
        vertex = group + group.new_tensor([a, b])
        return gather_pixels(codes, vertex), corner_coord(vertex, in_size, feat.dtype)

    group, hidden = _coarse(feat, out_size, pixels, params, slicing, code_and_position,
                            geometry.VERTICES)
    d = geometry.diif_rel(pixels, group, in_size, out_size, feat.dtype)
    weights = geometry.slice_ensemble_weights(d)
    ensembled = sum(h * weights[..., t:t + 1] for t, h in enumerate(hidden))
    return mlp(torch.cat([ensembled, d], dim=-1), params["fine"])


def diif_without_ensemble(feat, out_size, pixels, params, slicing):
    """The paper's "w/o se" ablation (docs/diif.md#ablation-variants): no vertices; the coarse
    stage reads LIIF's 3×3-unfolded code of the group's own LR pixel with the slice ends
    relative to its centre (input ``9C + 6``), and the fine stage takes its output."""
    b, c, h, w = feat.shape
    codes = nnf.unfold(feat, 3, padding=1).view(b, c * 9, h, w)

    def code_and_position(group, a, b):
        return gather_pixels(codes, group), geometry.pixel_coord(group, (h, w), feat.dtype)

    group, (hidden,) = _coarse(feat, out_size, pixels, params, slicing, code_and_position,
                               [(0, 0)])
    d = geometry.diif_rel(pixels, group, (h, w), out_size, feat.dtype)
    return mlp(torch.cat([hidden, d], dim=-1), params["fine"])


def _coarse(feat, out_size, pixels, params, slicing, code_and_position, vertices):
    """Eq. 8/11 for each pixel's slice: for each vertex ``(a, b)``, the coarse MLP on
    ``[code, rel(first, v), rel(last, v), cell]`` where ``code_and_position(group, a, b)``
    gives the code and the normalised position ``v`` it sits at.  Returns the pixels'
    groups and the list of hidden vectors, one per vertex."""
    in_size = feat.shape[-2:]
    dtype = feat.dtype
    scale = torch.tensor(in_size, device=feat.device, dtype=dtype)
    group, first, last = geometry.diif_slices(pixels, in_size, out_size, slicing)
    q_first = geometry.pixel_coord(first, out_size, dtype)
    q_last = geometry.pixel_coord(last, out_size, dtype)
    cell = (2 / torch.tensor(out_size, device=feat.device, dtype=dtype)).expand_as(q_first)
    hidden = []
    for a, b in vertices:
        code, v = code_and_position(group, a, b)
        coarse_in = torch.cat([code, (q_first - v) * scale, (q_last - v) * scale, cell * scale],
                              dim=-1)
        hidden.append(mlp(coarse_in, params["coarse"], relu_last=True))
    return group, hidden
