"""HIIF through the fused C++/CUDA operators ``implicit_kernels::hiif_<part>``
(csrc/hiif_decode.cpp); their interface (preparation, the chunked multi-pass
orchestration, fake implementations, autograd) is :mod:`implicit_kernels.ops.hiif`'s."""
from __future__ import annotations

import torch

from .. import _extension
from ..ops import hiif as ops
from ..ops.hiif import prepare_hiif, prepare_hiif_public_codes

__all__ = ["hiif", "hiif_public_codes", "prepare_hiif", "prepare_hiif_public_codes",
           "raster_hiif", "raster_hiif_public_codes"]


def hiif(feat, inp, coord, cell, params, chunk_size=None, normalizer="n"):
    """Decode queries with attention over all ``Q`` queries of each image (arguments as
    ``torch_impl.hiif.hiif``) → ``B×Q×3``."""
    return ops.decode(feat, inp, coord, cell, params, chunk_size, normalizer, centres=(False,))


def hiif_public_codes(feat, inp, coord, cell, params, chunk_size=None, normalizer="n"):
    """:func:`hiif` with the public code's LR pixel centres (``level_codes="public"``): the
    operators' ``public_centres`` flag."""
    return ops.decode(feat, inp, coord, cell, params, chunk_size, normalizer, centres=(True,))


def raster_hiif(feat, inp, size, params, positions, chunk_size=None, normalizer="n"):
    """:func:`hiif` of every pixel of the grid ``size = (H_out, W_out)``, positions in dtype
    ``positions`` → ``B×3×H_out×W_out`` (``F``'s grid hook: no whole-grid positions)."""
    return ops.decode_grid(feat, inp, size, params, positions, chunk_size, normalizer)


def raster_hiif_public_codes(feat, inp, size, params, positions, chunk_size=None,
                             normalizer="n"):
    """:func:`raster_hiif` with the public code's LR pixel centres and grid positions."""
    return ops.decode_grid(feat, inp, size, params, positions, chunk_size, normalizer,
                           public_centres=True)


if _extension.available():
    torch.library.register_fake("implicit_kernels::hiif_codes")(ops.fake_codes)
    ops.register()
    ops.register_train()
    ops.register_in_place()
