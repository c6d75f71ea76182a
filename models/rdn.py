"""RDN encoder (Zhang et al., 2018) without up-sampler, as LIIF uses it.

The output keeps the input's spatial size: ``B×3×h×w`` → ``B×G0×h×w``.  State-dict keys
follow the official LIIF/RDN code (``SFENet1.*``, ``SFENet2.*``,
``RDBs.{d}.convs.{c}.conv.0.*``, ``RDBs.{d}.LFF.*``, ``GFF.0.*``, ``GFF.1.*``).
"""
from __future__ import annotations

import torch
from torch import nn


class DenseLayer(nn.Module):
    """``cat(x, relu(conv(x)))``: one densely connected layer adding ``growth`` channels."""

    def __init__(self, in_channels: int, growth: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channels, growth, kernel_size,
                                            padding=kernel_size // 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(x)], dim=1)


class RDB(nn.Module):
    """Residual dense block: ``n_layers`` dense layers, 1×1 local feature fusion (``LFF``)
    back to ``G0`` channels, plus the block input."""

    def __init__(self, G0: int, G: int, n_layers: int, kernel_size: int = 3):
        super().__init__()
        self.convs = nn.Sequential(*[DenseLayer(G0 + c * G, G, kernel_size)
                                     for c in range(n_layers)])
        self.LFF = nn.Conv2d(G0 + n_layers * G, G0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


class RDN(nn.Module):
    """RDN without up-sampler.  Defaults: configuration "B" (G0 = 64, D = 16 blocks,
    C = 8 layers per block, G = 64; 21,973,952 parameters).

    ``forward``: ``B×in_channels×h×w`` → ``B×G0×h×w`` (``out_dim = G0``).
    """

    def __init__(self, G0: int = 64, D: int = 16, C: int = 8, G: int = 64,
                 kernel_size: int = 3, in_channels: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.SFENet1 = nn.Conv2d(in_channels, G0, kernel_size, padding=pad)
        self.SFENet2 = nn.Conv2d(G0, G0, kernel_size, padding=pad)
        self.RDBs = nn.ModuleList([RDB(G0, G, C, kernel_size) for _ in range(D)])
        # Global feature fusion over the concatenated outputs of every block.
        self.GFF = nn.Sequential(nn.Conv2d(D * G0, G0, 1),
                                 nn.Conv2d(G0, G0, kernel_size, padding=pad))
        self.out_dim = G0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.SFENet1(x)
        x = self.SFENet2(shallow)
        outs = []
        for block in self.RDBs:
            x = block(x)
            outs.append(x)
        return self.GFF(torch.cat(outs, dim=1)) + shallow
