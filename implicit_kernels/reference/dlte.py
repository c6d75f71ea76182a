"""DLTE (He & Jin), *reconstructed*: docs/dlte.md#reconstruction.

The paper gives no details and no code exists; this reconstruction fits all of its
parameter and MAC figures.  DIIF's grouping, slicing, slice ensemble and fine stage
(docs/diif.md#forward-pass) with LTE-style Fourier vertex features in the coarse stage,
plus LTE's bilinear skip.  Like the DIIF reference it works one output pixel at a time:
each pixel evaluates its own slice's coarse stage at its group's four vertices
(recomputed for every pixel of a slice: exact, by the per-pixel equivalence of
docs/diif.md#per-pixel-equivalence, and simple).
"""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

from .. import geometry
from ..layers import gather_pixels, mlp
from .lte import bilinear_skip, estimators, fourier_features


def vertex_codes(maps: torch.Tensor) -> torch.Tensor:
    """The 2×2 LR values sharing each LR-grid corner, zero outside the image:
    ``B×4K×(H+1)×(W+1)`` from ``B×K×H×W`` (channel ``c·4 + 2·dy + dx``)."""
    b, k, h, w = maps.shape
    return nnf.unfold(maps, 2, padding=1).view(b, k * 4, h + 1, w + 1)


def dlte(feat, inp, out_size, pixels, params, slicing):
    """Decode output pixels with the reconstructed DLTE.

    Args:
        feat: ``B×C×H×W`` encoder features.
        inp: ``B×3×h×w`` normalised LR image (bilinear skip).
        out_size: ``(H_out, W_out)``.
        pixels: ``B×Q×2`` int64 output pixel indices (row, col).
        params: ``{"coef": (W, b), "freq": (W, b)`` (3×3 convs to ``K`` channels),
            ``"phase": W`` (``2K×2``), ``"coarse": [(W, b), ...]`` (first takes ``4K``),
            ``"fine": [(W, b), ...]}`` (first takes the coarse width + 2).
        slicing: ``"linear"``, ``"constant"`` or ``"fixed4"`` (docs/diif.md#slicing).

    Returns:
        ``B×Q×3``.  Per vertex ``t`` of the pixel's group, the ``4K`` vertex frequencies are
        read as ``2K`` pairs ``(F[2i], F[2i+1])``; even pairs are dotted with
        ``rel(first, v_t)``, odd pairs with ``rel(last, v_t)``, the cell's phase is added,
        and ``coef ⊙ [cos πφ, sin πφ]`` goes through the coarse stage (ReLU after every
        layer) to ``H_t``; the fine stage decodes ``[Σ_t w_t H_t, d]`` and the bilinearly
        sampled input is added.
    """
    in_size = feat.shape[-2:]
    dtype = feat.dtype
    coef, freq = (vertex_codes(m) for m in estimators(feat, params))
    group, first, last = geometry.diif_slices(pixels, in_size, out_size, slicing)
    rel_first = geometry.diif_rel(first, group, in_size, out_size, dtype)
    rel_last = geometry.diif_rel(last, group, in_size, out_size, dtype)
    scale = torch.tensor(in_size, device=feat.device, dtype=dtype)
    cell = 2 / torch.tensor(out_size, device=feat.device, dtype=dtype)
    phase = nnf.linear(cell * scale, params["phase"])
    # Which endpoint each frequency pair is dotted with: even pairs first, odd pairs last.
    odd_pair = (torch.arange(phase.shape[-1], device=feat.device) % 2 == 1).unsqueeze(-1)

    hidden = []
    for a, b in geometry.VERTICES:
        vertex = group + group.new_tensor([a, b])
        # (x - v_t)·(H, W) = (x - v*)·(H, W) - o_t, o_t = (2a - 1, 2b - 1) in LIIF units.
        offset = rel_first.new_tensor([2 * a - 1, 2 * b - 1])
        rel = torch.where(odd_pair, (rel_last - offset).unsqueeze(-2),
                          (rel_first - offset).unsqueeze(-2))  # B×Q×2K×2
        z_freq = gather_pixels(freq, vertex)
        phi = z_freq[..., 0::2] * rel[..., 0] + z_freq[..., 1::2] * rel[..., 1] + phase
        coarse_in = fourier_features(gather_pixels(coef, vertex), phi)
        hidden.append(mlp(coarse_in, params["coarse"], relu_last=True))

    d = geometry.diif_rel(pixels, group, in_size, out_size, dtype)
    weights = geometry.slice_ensemble_weights(d)
    ensembled = sum(h * weights[..., t:t + 1] for t, h in enumerate(hidden))
    rgb = mlp(torch.cat([ensembled, d], dim=-1), params["fine"])
    return rgb + bilinear_skip(inp, geometry.pixel_coord(pixels, out_size, dtype))
