"""Pixel-grid geometry of the Triton kernels, bit for bit the float operations of
:mod:`implicit_kernels.geometry` (DIIF's groups, LIIF's local-ensemble members).

Divisions are IEEE (``tl.math.div_rn``): Triton's ``/`` is an approximate division on
NVIDIA GPUs.  Kernels that compare or round coordinates (the ensemble members) are
launched without FMA contraction on GPU (:data:`NO_FMA`); the interpreter never contracts.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .. import geometry
from .mlp import INTERPRET

#: Launch option of kernels whose rounding must be the reference's.
NO_FMA = {} if INTERPRET else {"enable_fp_fusion": False}


@triton.jit
def centre(idx, n):
    """Pixel centre ``-1 + (2 idx + 1) / n`` of an integer index (``n`` fp32), as
    ``geometry.pixel_coord`` / ``geometry.axis_centres``."""
    return -1.0 + tl.math.div_rn(2.0 * idx.to(tl.float32) + 1.0, n)


@triton.jit
def group_index(idx, n_in, n_out):
    """``geometry.group_index``: ``min(floor((2 idx + 1) n_in / (2 n_out)), n_in - 1)``
    (non-negative, so integer division is the floor)."""
    return tl.minimum((2 * idx + 1) * n_in // (2 * n_out), n_in - 1)


@triton.jit
def nearest_index(q, n):
    """``geometry.nearest_index``: ``round(((q + 1) n - 1) / 2)``, half to even, clamped to
    ``[0, n)`` (``n`` int).  The rounding is exact: ``x - floor(x)`` loses nothing for
    ``|x| < 2²³``."""
    x = ((q + 1.0) * n - 1.0) * 0.5  # exact, as / 2
    down = tl.floor(x)
    frac = x - down
    odd = (down - 2.0 * tl.floor(down * 0.5)) == 1.0
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return tl.minimum(tl.maximum(down.to(tl.int32) + up.to(tl.int32), 0), n - 1)


def ensemble_constants(size):
    """The float constants of :func:`geometry.ensemble_neighbours` for an ``(H, W)`` map:
    the row shifts ``vy / H + eps`` for ``vy = -1, +1``, the column shifts, and the clamp
    bounds, formed in double as there and rounded to fp32 by the launch, as PyTorch rounds
    them when adding to an fp32 tensor."""
    h, w = size
    eps = geometry.ENSEMBLE_EPS
    return (-1 / h + eps, 1 / h + eps, -1 / w + eps, 1 / w + eps, -1 + eps, 1 - eps)


@triton.jit
def ensemble_member(y, x, t, H, W, shift_y0, shift_y1, shift_x0, shift_x1, lo, hi):
    """Member ``t`` (a tensor of 0..3, LIIF's shift order: row shift ``t // 2``, column
    shift ``t % 2``) of queries ``(y, x)``: its LR pixel ``(iy, ix)`` (int32) and the
    query's offset ``rel = (q - v)·(H, W)`` (LIIF's units); the floats are
    :func:`ensemble_constants`."""
    sy = tl.minimum(tl.maximum(y + tl.where(t >= 2, shift_y1, shift_y0), lo), hi)
    sx = tl.minimum(tl.maximum(x + tl.where(t % 2 == 1, shift_x1, shift_x0), lo), hi)
    iy = nearest_index(sy, H)
    ix = nearest_index(sx, W)
    hf, wf = H * 1.0, W * 1.0
    return iy, ix, (y - centre(iy, hf)) * hf, (x - centre(ix, wf)) * wf
