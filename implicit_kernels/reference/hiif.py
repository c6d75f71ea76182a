"""HIIF (Jiang et al.) in the public derivative's layout: docs/hiif.md#forward-pass
and docs/hiif.md#multi-head-linear-attention, steps numbered as there.

The reference decodes all ``Q`` queries of a call in one go: the attention sums cover
every query it receives (``Q`` per image), which is the definition the chunked,
multi-pass backends must reproduce.  It ignores ``chunk_size``.

Attention, paper vs. code (docs/hiif.md#multi-head-linear-attention).  The paper
(Eq. 9-10) projects ``Q, K, V = ẑ W``, layer-normalises K and Q per head and forms
``V (KᵀQ) / √(HW)``.  The derivative projects ``q, k, v``, layer-normalises k and v and
forms ``q (k̂ᵀv̂) / n``.  Renaming the code's first projection ``q`` to the paper's ``V``
and its third ``v`` to the paper's ``Q`` turns one into the other term for term
(``q (k̂ᵀ v̂) = V (K̂ᵀ Q̂)``, the unnormalised factor outside, the two normalised ones in
the d×d product), so both forms are one computation, and a checkpoint in the paper's
naming is the derivative's with the first and third ``head_dim`` chunks of each head in
``qkv_proj`` exchanged.  Only the normaliser differs: ``normalizer="n"`` (the code,
default) or ``"sqrt_n"`` (Eq. 10).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

from .liif import centre_map, sample_nearest, shifted_queries
from .lte import bilinear_skip

#: LayerNorm epsilon of every norm in HIIF (PyTorch's default).
LN_EPS = 1e-5


def local_coord(rel: torch.Tensor, size) -> torch.Tensor:
    """Step 4: the query's position from its top-left code, ``(..., 2)``.

    ``rel`` is the offset from the code of the shift (-1, -1) in LR pixels.  Components
    ``<= 0`` (border clamp, or an exact tie) are reflected as ``1/H - rel`` (``1/W`` for
    columns): mixed units, as the derivative does.
    """
    h, w = size
    return torch.where(rel <= 0, rel.new_tensor([1 / h, 1 / w]) - rel, rel)


def hierarchical_code(local: torch.Tensor, level: int) -> torch.Tensor:
    """Step 6 (Eq. 6 with S = 2): the ``(level+1)``-th binary digit of ``local`` per axis,
    as raw floats 0 or 1, ``(..., 2)``."""
    return torch.floor((local - 1e-9).clamp(0, 1) * 2 ** (level + 1)) % 2


def level_block(x: torch.Tensor, block) -> torch.Tensor:
    """Step 7: LayerNorm, Linear, exact GELU, Linear (no residual: widths never agree)."""
    x = nnf.layer_norm(x, x.shape[-1:], *block["norm"], eps=LN_EPS)
    return nnf.linear(nnf.gelu(nnf.linear(x, *block["fc1"])), *block["fc2"])


def attention_block(x: torch.Tensor, block, normalizer: str) -> torch.Tensor:
    """docs/hiif.md#multi-head-linear-attention: multi-head linear attention over the ``n``
    queries of each image (``x``: ``B×n×C``) and its residual GELU MLP → ``B×n×C``."""
    b, n, c = x.shape
    heads = block["heads"]
    d = c // heads
    # 1. Head-interleaved projections: head h owns channels [3dh, 3dh + 3d) = q | k | v.
    q, k, v = nnf.linear(x, *block["qkv"]).view(b, n, heads, 3 * d).split(d, dim=-1)
    # 2. One LayerNorm over a head's d channels, shared by all heads.
    k = nnf.layer_norm(k, (d,), *block["kln"], eps=LN_EPS)
    v = nnf.layer_norm(v, (d,), *block["vln"], eps=LN_EPS)
    # 3. M_h = k̂ᵀ v̂ / n summed over the image's queries; o_h = q M_h.
    norm = n if normalizer == "n" else math.sqrt(n)
    kv = torch.einsum("bnhd,bnhe->bhde", k, v) / norm
    a = torch.einsum("bnhd,bhde->bnhe", q, kv).reshape(b, n, c)
    # 4. The MLP sees x + a, but its residual is x itself.
    r = x + a
    return x + nnf.linear(nnf.gelu(nnf.linear(r, *block["proj1"])), *block["proj2"])


def hiif(feat, inp, coord, cell, params, chunk_size=None, normalizer="n", centres="project"):
    """Decode queries with whole-call attention.

    Args:
        feat: ``B×C_enc×H×W`` encoder features (before the ``freq`` 3×3 conv).
        inp: ``B×3×h×w`` normalised LR image (bilinear skip).
        coord: ``B×Q×2`` query coordinates, row first.
        cell: ``B×Q×2`` output-pixel sizes ``(2/H_out, 2/W_out)`` (unscaled).
        params: as structured by ``functional._hiif_params``.
        chunk_size: ignored (the oracle decodes everything at once).
        normalizer: ``"n"`` or ``"sqrt_n"`` (divisor of ``k̂ᵀv̂``).
        centres: how the LR pixel centres behind ``rel`` and the level codes are rounded
            (``geometry.CENTRES``; ``"public"``: :func:`hiif_public_codes`).

    Returns:
        ``B×Q×3``.
    """
    h, w = feat.shape[-2:]
    # 1. The 3×3 conv to C channels.
    z = nnf.conv2d(feat, *params["z"], padding=1)
    centres = centre_map(feat, coord.dtype, centres)
    # 3. Nearest codes and centres of LIIF's four shifts; rel in LR pixels (HIIF units).
    half = coord.new_tensor([h / 2, w / 2])
    codes, rels, areas = [], [], []
    for shifted in shifted_queries(coord, (h, w)):
        codes.append(sample_nearest(z, shifted))
        rel = (coord - sample_nearest(centres, shifted)) * half
        rels.append(rel)
        areas.append((rel[..., 0] * rel[..., 1]).abs() + 1e-9)
    total = sum(areas)
    # Each code is weighted by the area of the diagonally opposite member.
    weights = [area / total for area in reversed(areas)]
    # 4. Local coordinate from the top-left code.
    local = local_coord(rels[0], (h, w))
    # 5. Weighted codes and the scaled cell (no relative coordinate is fed).  Positions
    # stay in coord's dtype (float32 possible with half features) until they enter a layer.
    dt = feat.dtype
    g = torch.cat([(wt.unsqueeze(-1) * code).to(dt) for wt, code in zip(weights, codes)]
                  + [(cell * coord.new_tensor([h, w])).to(dt)], dim=-1)
    # 6-7. Level 0, the attention blocks, levels 1..L-1.
    levels = params["levels"]
    x = level_block(torch.cat([g, hierarchical_code(local, 0).to(dt)], dim=-1), levels[0])
    for block in params["attention"]:
        x = attention_block(x, block, normalizer)
    for level in range(1, len(levels)):
        x = level_block(torch.cat([x, hierarchical_code(local, level).to(dt)], dim=-1),
                        levels[level])
    # 8. The bilinear skip.
    return x + bilinear_skip(inp, coord)


def hiif_public_codes(feat, inp, coord, cell, params, chunk_size=None, normalizer="n"):
    """:func:`hiif` with the public code's LR pixel centres (LIIF's ``make_coord``
    rounding), so that the local coordinate and every level code equal that code's bit
    for bit, ties included."""
    return hiif(feat, inp, coord, cell, params, chunk_size, normalizer, centres="public")
