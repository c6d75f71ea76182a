"""LIIF with its first layer split (docs/liif-lte.md#split-first-layer): the ``9C``
feature part ``W_f · unfold(feat)`` is one 3×3 convolution per LR pixel, computed once per
call."""
from __future__ import annotations

import torch
import torch.nn.functional as nnf

from .. import geometry
from ..layers import gather_pixels, mlp


def prepare_liif(feat, params):
    """Add ``"proj"``: the first layer's feature part at every LR pixel, ``B×D×H×W``."""
    (w0, _), c = params["imnet"][0], feat.shape[1]
    # The unfold layout (channel c of neighbour k at c*9 + k) is a 3×3 conv weight's.
    kernel = w0[:, : 9 * c].reshape(-1, c, 3, 3)
    return {**params, "proj": nnf.conv2d(feat, kernel, padding=1)}


def liif(feat, coord, cell, params):
    """Decode queries (``B×Q×2`` coord and cell) → ``B×Q×3``; see the reference for the maths."""
    h, w = feat.shape[-2:]
    (w0, b0), rest = params["imnet"][0], params["imnet"][1:]
    c9 = w0.shape[1] - 4
    w_rel, w_cell = w0[:, c9:c9 + 2], w0[:, c9 + 2:]
    scale = coord.new_tensor([h, w])
    # Positions stay in coord's dtype (float32 possible with half features) until a layer.
    shared = nnf.linear((cell * scale).to(w0.dtype), w_cell, b0)
    members = geometry.ensemble_neighbours(coord, (h, w))
    weights = geometry.ensemble_weights([rel for _, rel in members]).to(w0.dtype)
    out = 0
    for t, (index, rel) in enumerate(members):
        hidden = gather_pixels(params["proj"], index) + nnf.linear(rel.to(w0.dtype), w_rel) + shared
        out = out + mlp(torch.relu(hidden), rest) * weights[..., t:t + 1]
    return out
