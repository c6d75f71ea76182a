"""LIIF (Chen et al., CVPR 2021): encoder + ``imnet`` MLP, decoded by ``F.liif_decode``.

State-dict keys are the official ones (``encoder.*``, ``imnet.layers.{0,2,4,6,8}.*``).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from implicit_kernels import functional as F

from .mlp import MLP, DecoderModel


class LIIF(DecoderModel):
    """LIIF with feature unfolding, local ensemble and cell decoding (docs/liif-lte.md#liif).

    Args:
        encoder: module with ``out_dim`` channels ``C``.
        hidden_list: hidden widths of ``imnet`` (paper: four of 256); its input is
            ``9C + 4`` and its output 3.
    """

    def __init__(self, encoder: nn.Module, hidden_list: Sequence[int] = (256, 256, 256, 256)):
        super().__init__(encoder)
        self.imnet = MLP(9 * encoder.out_dim + 4, 3, hidden_list)

    def decode(self, feat, inp, size=None, *, coord=None, cell=None, backend="auto",
               chunk_size=F.DEFAULT_CHUNK_SIZE):
        """Decode features ``feat`` (``B×C×H×W``); ``inp`` is unused (LIIF has no image
        skip).  Other arguments and the result as
        :func:`implicit_kernels.functional.liif_decode`."""
        return F.liif_decode(feat, size, self.decoder_params(), coord=coord, cell=cell,
                             backend=backend, chunk_size=chunk_size)
