"""HIIF with exact splits and bounded-memory global attention (docs/hiif.md#forward-pass,
docs/hiif.md#chunking-and-global-attention); the maths is the reference's
(``reference/hiif.py``).

Level 0's first Linear is split per LR pixel.  Its LayerNorm runs over
``x = [w_0 z_0, ..., w_3 z_3, e]`` (``e`` = scaled cell and level-0 bits, 4 values), so
``W`` cannot be applied before normalising; but with ``W' = W diag(γ)``,
``m_t``/``s_t`` the channel mean and centred sum of squares of code ``z_t``, and
``A_t = W'_t (z_t - m_t)`` precomputed at every LR pixel,

    μ      = (C Σ_t w_t m_t + Σ e) / D
    D·σ²   = Σ_t [w_t² s_t + C (w_t m_t - μ)²] + Σ (e - μ)²
    fc1(LN(x)) = [Σ_t (w_t A_t + (w_t m_t - μ) W'_t 1) + W'_e (e - μ)] / √(σ² + ε) + W β + b

exactly (every term is centred, so no cancellation beyond the reference's own).  Per query
this costs four gathers instead of a ``(4C + 4) × hidden`` product, and the maps serve
every pass.

Attention sums over every query of an image, so decoding in chunks of ``chunk_size``
queries (over the batch) takes one pass per attention block plus one: pass ``k``
recomputes each chunk's features through blocks ``0..k-1`` (whose per-head sums
``Σ k̂ᵀv̂`` are complete) and accumulates block ``k``'s sums; the last pass decodes.  A
call that fits in one chunk runs a single pass.  Without autograd the memory is bounded
by the chunk; with it every pass's graph is kept (needed for exact gradients).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf

from .. import geometry
from ..layers import gather_pixels
from ..reference.hiif import LN_EPS
from ..reference.lte import bilinear_skip


def prepare_hiif(feat, params):
    """Add ``"level0"``: the per-LR-pixel maps ``[A_t, m, s]`` (four ``B×(hidden+2)×H×W``)
    and level 0's folded first layer (module docstring), computed once per public call."""
    level0, member_projection, mean, sq = fold_level0(feat, params)
    maps = [torch.cat([member_projection(t), mean, sq], dim=1) for t in range(4)]
    return {**params, "level0": {**level0, "maps": maps}}


def fold_level0(feat, params):
    """Level 0's folded first layer (module docstring) and its per-LR-pixel pieces:
    ``(level0, member_projection, mean, sq)`` with ``level0`` the ``"level0"`` entry without
    its maps, ``member_projection(t)`` computing ``A_t`` (``B×hidden×H×W``) and ``mean``,
    ``sq`` the codes' ``m`` and ``s`` (``B×1×H×W``).  A backend lays the maps out as it
    reads them; the projections are made one at a time, so it need not hold all four in
    another layout beside its own."""
    z = nnf.conv2d(feat, *params["z"], padding=1)
    c = z.shape[1]
    mean = z.mean(dim=1, keepdim=True)
    centred = z - mean
    sq = centred.square().sum(dim=1, keepdim=True)
    level0 = params["levels"][0]
    (gamma, beta), (w1, b1) = level0["norm"], level0["fc1"]
    folded = w1 * gamma
    w_codes = folded[:, :4 * c].unflatten(1, (4, c))

    def member_projection(t):
        return nnf.conv2d(centred, w_codes[:, t, :, None, None])

    return {
        "row_sums": w_codes.sum(dim=-1).t(),  # 4×hidden: W'_t 1
        "w_extra": folded[:, 4 * c:],  # hidden×4: cell (y, x), level-0 bits (y, x)
        "bias": nnf.linear(beta, w1, b1),
        "channels": c,
    }, member_projection, mean, sq


def empty_output(coord, *inputs):
    """The ``B×0×3`` result of a decode without queries.  It still depends on the decode's
    ``inputs`` (tensors, or nests of dicts, lists and tuples of them), so a backward through
    it gives zero gradients (as every other decoder's) instead of failing."""
    anchor = sum(t.reshape(-1)[:0].sum() for t in _tensors(inputs) if t.requires_grad)
    return coord.new_zeros(coord.shape[0], 0, 3) + anchor


def _tensors(tree):
    """The tensors of a nest of dicts, lists and tuples."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    items = tree.values() if isinstance(tree, dict) else tree
    return [t for item in items if isinstance(item, (torch.Tensor, dict, list, tuple))
            for t in _tensors(item)]


def hiif(feat, inp, coord, cell, params, chunk_size=None, normalizer="n", centres="project"):
    """Decode queries with attention over all ``Q`` queries of each image.

    Args:
        feat: ``B×C_enc×H×W`` encoder features (before the ``freq`` 3×3 conv).
        inp: ``B×3×h×w`` normalised LR image (bilinear skip).
        coord: ``B×Q×2`` query coordinates, row first.
        cell: ``B×Q×2`` output-pixel sizes ``(2/H_out, 2/W_out)`` (unscaled).
        params: as structured by ``functional._hiif_params``, with :func:`prepare_hiif`'s
            ``"level0"``.
        chunk_size: queries (over the batch) per pass step; ``None``: all at once.
        normalizer: ``"n"`` or ``"sqrt_n"`` (divisor of ``k̂ᵀv̂``).
        centres: rounding of the LR pixel centres (``geometry.CENTRES``).

    Returns:
        ``B×Q×3``.
    """
    b, n = coord.shape[:2]
    if n == 0:
        return empty_output(coord, feat, inp, params)
    step = n if chunk_size is None else max(1, chunk_size // b)
    # One chunk is decided from n's range alone, so a symbolic n (an ONNX export with a
    # dynamic query count) is not specialised by a Python range over it.
    chunks = [(0, n)] if n <= step else [(s, min(n, s + step)) for s in range(0, n, step)]
    # A symbolic n (dynamic export): the root as a 0-d tensor, which ONNX converts.
    root = math.sqrt(n) if isinstance(n, int) else coord.new_full((), n).sqrt()
    decoder = _Decoder(feat.shape[-2:], params, n if normalizer == "n" else root, centres)
    mats = []
    if len(chunks) > 1:
        for k in range(len(params["attention"])):
            total = sum(decoder.block_sum(coord[:, s:e], cell[:, s:e], mats, k) for s, e in chunks)
            mats.append(total / decoder.norm)
    out = torch.cat([decoder.decode(coord[:, s:e], cell[:, s:e], mats) for s, e in chunks], dim=1)
    return out + bilinear_skip(inp, coord)


def hiif_public_codes(feat, inp, coord, cell, params, chunk_size=None, normalizer="n"):
    """:func:`hiif` with the public code's LR pixel centres (level codes bit for bit as
    that code's); see ``reference.hiif.hiif_public_codes``."""
    return hiif(feat, inp, coord, cell, params, chunk_size, normalizer, centres="public")


#: Level codes with the public code's centres need only the feature-map preparation.
prepare_hiif_public_codes = prepare_hiif


class _Decoder:
    """One call's chunk functions; ``norm`` divides the attention sums."""

    def __init__(self, size, params, norm, centres="project"):
        self.size, self.params, self.norm, self.centres = size, params, norm, centres
        self.level0_params = params["level0"]

    def level0(self, coord, cell):
        """Level 0's output ``B×m×C`` and every level's bits ``B×m×L×2`` for a chunk."""
        h, w = self.size
        p = self.level0_params
        dt = p["maps"][0].dtype  # positions stay in coord's dtype until they meet features
        members = geometry.ensemble_neighbours(coord, (h, w), self.centres)
        rels = [rel * 0.5 for _, rel in members]  # LIIF units → LR pixels
        weights = geometry.ensemble_weights(rels).to(dt)
        rel0 = rels[0]
        local = torch.where(rel0 <= 0, rel0.new_tensor([1 / h, 1 / w]) - rel0, rel0)
        levels = len(self.params["levels"])
        scales = 2 ** torch.arange(1, levels + 1, device=coord.device, dtype=coord.dtype)
        bits = torch.floor((local - 1e-9).clamp(0, 1).unsqueeze(-2) * scales[:, None]) % 2

        g = torch.stack([gather_pixels(m, index) for m, (index, _) in zip(p["maps"], members)],
                        dim=-2)  # B×m×4×(hidden+2)
        proj, mean, sq = g[..., :-2], g[..., -2], g[..., -1]
        extra = torch.cat([cell * cell.new_tensor([h, w]), bits[..., 0, :]], dim=-1).to(dt)
        c = p["channels"]
        width = 4 * c + extra.shape[-1]
        wm = weights * mean
        mu = (c * wm.sum(-1) + extra.sum(-1)) / width
        dev, extra_dev = wm - mu.unsqueeze(-1), extra - mu.unsqueeze(-1)
        var = ((weights.square() * sq).sum(-1) + c * dev.square().sum(-1)
               + extra_dev.square().sum(-1)) / width
        pre = (torch.einsum("bmt,bmth->bmh", weights, proj) + dev @ p["row_sums"]
               + extra_dev @ p["w_extra"].t())
        pre = pre * torch.rsqrt(var + LN_EPS).unsqueeze(-1) + p["bias"]
        x = nnf.linear(nnf.gelu(pre), *self.params["levels"][0]["fc2"])
        return x, bits

    def features(self, coord, cell, mats, stop):
        """Level 0 then attention blocks ``0..stop-1`` for a chunk: ``B×m×C``, and the
        bits ``B×m×L×2``.  Blocks without a complete sum in ``mats`` use this chunk's
        (valid for a single chunk)."""
        x, bits = self.level0(coord, cell)
        for i, block in enumerate(self.params["attention"][:stop]):
            q, k, v = _qkv(block, x)
            mat = mats[i] if i < len(mats) else _kv_sum(k, v) / self.norm
            a = torch.einsum("bmhd,bhde->bmhe", q, mat).flatten(-2)
            x = x + nnf.linear(nnf.gelu(nnf.linear(x + a, *block["proj1"])), *block["proj2"])
        return x, bits

    def block_sum(self, coord, cell, mats, k):
        """Attention block ``k``'s ``Σ k̂ᵀv̂`` over a chunk (``B×heads×d×d``), the blocks
        before it applied with their complete sums ``mats``."""
        x, _ = self.features(coord, cell, mats, k)
        _, keys, values = _qkv(self.params["attention"][k], x)
        return _kv_sum(keys, values)

    def decode(self, coord, cell, mats):
        """The whole decoder (without the skip) for a chunk: ``B×m×3``."""
        x, bits = self.features(coord, cell, mats, len(self.params["attention"]))
        for level, block in enumerate(self.params["levels"][1:], start=1):
            x = nnf.layer_norm(torch.cat([x, bits[..., level, :].to(x.dtype)], dim=-1),
                               (x.shape[-1] + 2,), *block["norm"], eps=LN_EPS)
            x = nnf.linear(nnf.gelu(nnf.linear(x, *block["fc1"])), *block["fc2"])
        return x


def _qkv(block, x):
    """Head-interleaved q, k̂, v̂ (``B×m×heads×d`` each), k and v layer-normalised."""
    heads = block["heads"]
    d = x.shape[-1] // heads
    q, k, v = nnf.linear(x, *block["qkv"]).unflatten(-1, (heads, 3, d)).unbind(-2)
    return (q, nnf.layer_norm(k, (d,), *block["kln"], eps=LN_EPS),
            nnf.layer_norm(v, (d,), *block["vln"], eps=LN_EPS))


def _kv_sum(k, v):
    """Per-image, per-head ``Σ k̂ᵀ v̂`` over a chunk's queries: ``B×heads×d×d``."""
    return torch.einsum("bmhd,bmhe->bhde", k, v)
