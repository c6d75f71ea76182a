"""DLTE — *reconstructed* (the DIIF paper names it but gives no details; docs/dlte.md):
DIIF's slicing with LTE-style Fourier vertex features and LTE's bilinear skip, decoded by
``F.dlte_decode``.  No checkpoint exists to match; the layout is the project's
reconstruction, fitted to the paper's parameter and MAC figures.

State-dict keys: ``encoder.*``, ``coef.*``, ``freq.*``, ``phase.weight``,
``coarse.layers.{0,2}.*``, ``fine.layers.{0,2,4}.*``.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from implicit_kernels import functional as F

from .diif import SlicedDecoderModel


class DLTE(SlicedDecoderModel):
    """Reconstructed DLTE (docs/dlte.md#reconstruction).

    Args:
        encoder: module with ``out_dim`` channels ``C``.
        est_dim: channels of the ``coef`` and ``freq`` 3×3 convs (64).  A vertex
            concatenates the 2×2 LR pixels around it, so the Fourier feature has
            ``4·est_dim`` values from ``2·est_dim`` phases (``phase`` = Linear(2, 2·est_dim)).
        coarse_hidden, fine_hidden, slicing: see :class:`~models.diif.SlicedDecoderModel`.
    """

    def __init__(self, encoder: nn.Module, est_dim: int = 64,
                 coarse_hidden: Sequence[int] = (256, 256),
                 fine_hidden: Sequence[int] = (256, 256), slicing: str = "linear"):
        if est_dim % 2:
            raise ValueError(f"est_dim must be even (frequency pairs), got {est_dim}")
        super().__init__(encoder, 4 * est_dim, coarse_hidden, fine_hidden, slicing)
        c = encoder.out_dim
        self.coef = nn.Conv2d(c, est_dim, 3, padding=1)
        self.freq = nn.Conv2d(c, est_dim, 3, padding=1)
        self.phase = nn.Linear(2, 2 * est_dim, bias=False)

    def decode(self, feat, inp, size, *, pixels=None, slicing=None, backend="auto",
               chunk_size=F.DEFAULT_CHUNK_SIZE):
        """Decode features ``feat`` (``B×C×H×W``) to ``size`` with the normalised LR image
        ``inp`` (``B×3×h×w``, the bilinear skip).  ``slicing=None`` uses the model's.
        Other arguments and the result as :func:`implicit_kernels.functional.dlte_decode`."""
        return F.dlte_decode(feat, inp, size, self.decoder_params(),
                             slicing=slicing or self.slicing, pixels=pixels, backend=backend,
                             chunk_size=chunk_size)
