"""DIIF (He & Jin, arXiv 2306.12321): encoder + coarse and fine MLPs over coordinate
slices, decoded by ``F.diif_decode``.

No official code exists; this follows the project's reading (docs/diif.md).  State-dict
keys: ``encoder.*``, ``coarse.layers.{0,2}.*``, ``fine.layers.{0,2,4}.*``.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from implicit_kernels import functional as F
from implicit_kernels import geometry

from .mlp import MLP, DecoderModel


class SlicedDecoderModel(DecoderModel):
    """Shared part of DIIF and DLTE: the slicing mode and the coarse/fine MLPs.

    Args:
        encoder: module with ``out_dim`` channels.
        coarse_in: input width of the coarse stage (set by the subclass).
        coarse_hidden: widths of the coarse stage, each Linear followed by a ReLU
            (paper: two of 256; the last is the slice feature width).
        fine_hidden: hidden widths of the fine stage, whose input is the slice feature
            plus 2 coordinates and whose output is RGB (paper: two of 256).
        slicing: default slicing, one of ``"linear"``, ``"constant"``, ``"fixed4"``.
    """

    def __init__(self, encoder: nn.Module, coarse_in: int, coarse_hidden: Sequence[int],
                 fine_hidden: Sequence[int], slicing: str):
        super().__init__(encoder)
        if slicing not in geometry.SLICINGS:
            raise ValueError(f"slicing must be one of {geometry.SLICINGS}, got {slicing!r}")
        self.slicing = slicing
        self.coarse = MLP(coarse_in, None, coarse_hidden)
        self.fine = MLP(self.coarse.out_dim + 2, 3, fine_hidden)


class DIIF(SlicedDecoderModel):
    """Dynamic implicit image function (docs/diif.md#forward-pass): coarse MLP per slice and
    vertex on
    4×4 vertex codes (input ``16C + 6``), slice ensemble, fine MLP per pixel.

    Args:
        encoder: module with ``out_dim`` channels ``C``.
        coarse_hidden, fine_hidden, slicing: see :class:`SlicedDecoderModel`.
        slice_ensemble: ``False`` builds the paper's "w/o se" ablation (coarse input
            ``9C + 6``: the group pixel's 3×3 code; 347,907 decoder parameters).
    """

    def __init__(self, encoder: nn.Module, coarse_hidden: Sequence[int] = (256, 256),
                 fine_hidden: Sequence[int] = (256, 256), slicing: str = "linear",
                 slice_ensemble: bool = True):
        code = (16 if slice_ensemble else 9) * encoder.out_dim
        super().__init__(encoder, code + 6, coarse_hidden, fine_hidden, slicing)
        self.slice_ensemble = slice_ensemble

    def decode(self, feat, inp, size, *, pixels=None, slicing=None, backend="auto",
               chunk_size="auto"):
        """Decode features ``feat`` (``B×C×H×W``) to ``size``; ``inp`` is unused (DIIF has
        no image skip).  ``slicing=None`` uses the model's.  Other arguments and the
        result as :func:`implicit_kernels.functional.diif_decode`."""
        return F.diif_decode(feat, size, self.decoder_params(), slicing=slicing or self.slicing,
                             slice_ensemble=self.slice_ensemble, pixels=pixels, backend=backend,
                             chunk_size=chunk_size)
