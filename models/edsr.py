"""EDSR-baseline encoder (Lim et al., 2017) without up-sampler, as LIIF uses it.

The output keeps the input's spatial size: ``B×3×h×w`` → ``B×n_feats×h×w``.  State-dict
keys follow the official LIIF/EDSR code (``head.0.*``, ``body.{i}.body.{0,2}.*``,
``body.{n}.*``, ``sub_mean.*``, ``add_mean.*``) so published checkpoints load.
"""
from __future__ import annotations

import torch
from torch import nn

#: DIV2K RGB mean that the official mean-shift layers hold.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """3×3 convolution with "same" padding."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class MeanShift(nn.Conv2d):
    """Frozen 1×1 convolution adding ``sign·mean`` per channel.

    LIIF's forward never calls it (the input is normalised as ``(x - 0.5) / 0.5``
    instead); it is kept, frozen, only because the official state dicts hold it.
    """

    def __init__(self, sign: int, rgb_mean=DIV2K_RGB_MEAN):
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * torch.tensor(rgb_mean))
        self.requires_grad_(False)


class ResBlock(nn.Module):
    """``x + res_scale · conv(relu(conv(x)))``; the convs are ``body.0`` and ``body.2``."""

    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(conv3x3(n_feats, n_feats), nn.ReLU(inplace=True),
                                  conv3x3(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class EDSR(nn.Module):
    """EDSR without up-sampler.  Defaults: EDSR-baseline (16 blocks, 64 channels,
    res_scale 1; 1,220,416 trainable parameters).

    ``forward``: ``B×in_channels×h×w`` → ``B×n_feats×h×w`` (``out_dim = n_feats``).
    """

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0,
                 in_channels: int = 3):
        super().__init__()
        # Registered first, as in the official module, so state-dict order matches.
        self.sub_mean = MeanShift(-1)
        self.add_mean = MeanShift(+1)
        self.head = nn.Sequential(conv3x3(in_channels, n_feats))
        self.body = nn.Sequential(*[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)],
                                  conv3x3(n_feats, n_feats))
        self.out_dim = n_feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return self.body(x) + x
