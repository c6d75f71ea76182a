"""LTE (Lee & Jin, CVPR 2022): encoder + coefficient/frequency/phase estimators + MLP,
decoded by ``F.lte_decode``.

State-dict keys are the official ones (``encoder.*``, ``coef.*``, ``freq.*``,
``phase.weight``, ``imnet.layers.{0,2,4,6}.*``).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from implicit_kernels import functional as F

from .mlp import MLP, DecoderModel


class LTE(DecoderModel):
    """Local texture estimator (docs/liif-lte.md#lte).

    Args:
        encoder: module with ``out_dim`` channels ``C``.
        hidden_dim: channels of the ``coef`` and ``freq`` 3×3 convs (paper 256); ``phase``
            gives ``hidden_dim // 2`` values and ``imnet`` takes ``hidden_dim`` inputs.
        hidden_list: hidden widths of ``imnet`` (paper: three of 256).
    """

    def __init__(self, encoder: nn.Module, hidden_dim: int = 256,
                 hidden_list: Sequence[int] = (256, 256, 256)):
        super().__init__(encoder)
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (cos and sin halves), got {hidden_dim}")
        c = encoder.out_dim
        self.coef = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.freq = nn.Conv2d(c, hidden_dim, 3, padding=1)
        self.phase = nn.Linear(2, hidden_dim // 2, bias=False)
        self.imnet = MLP(hidden_dim, 3, hidden_list)

    def decode(self, feat, inp, size=None, *, coord=None, cell=None, backend="auto",
               chunk_size=F.DEFAULT_CHUNK_SIZE):
        """Decode features ``feat`` (``B×C×H×W``) with the normalised LR image ``inp``
        (``B×3×h×w``, the bilinear skip).  Other arguments and the result as
        :func:`implicit_kernels.functional.lte_decode`."""
        return F.lte_decode(feat, inp, size, self.decoder_params(), coord=coord, cell=cell,
                            backend=backend, chunk_size=chunk_size)
