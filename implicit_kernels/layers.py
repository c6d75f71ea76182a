"""Functional building blocks shared by the PyTorch backends."""
from __future__ import annotations

import torch
import torch.nn.functional as nnf


def mlp(x: torch.Tensor, layers, relu_last: bool = False) -> torch.Tensor:
    """Linear layers ``[(W, b), ...]`` with ReLU between them (and after the last one when
    ``relu_last``), applied to the last dimension of ``x``."""
    for i, (w, b) in enumerate(layers):
        x = nnf.linear(x, w, b)
        if relu_last or i < len(layers) - 1:
            x = torch.relu(x)
    return x


def gather_pixels(maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Values of ``maps`` (``B×C×H×W``) at integer positions ``index`` (``B×Q×2``, row and
    column): ``B×Q×C``."""
    b, c, h, w = maps.shape
    flat = (index[..., 0] * w + index[..., 1]).unsqueeze(1).expand(b, c, -1)
    return maps.reshape(b, c, h * w).gather(2, flat).transpose(1, 2)
