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
from .launch import INTERPRET

#: Launch option of kernels whose rounding must be the reference's.
NO_FMA = {} if INTERPRET else {"enable_fp_fusion": False}


@triton.jit
def centre(idx, n):
    """Pixel centre ``-1 + (2 idx + 1) / n`` of an integer index (``n`` fp32), as
    ``geometry.pixel_coord`` / ``geometry.axis_centres``."""
    return -1.0 + tl.math.div_rn(2.0 * idx.to(tl.float32) + 1.0, n)


def public_constants(n):
    """The two constants of LIIF's ``make_coord`` centres on an axis of ``n`` pixels
    (``geometry.CENTRES`` "public"): ``-1 + r`` and ``2r`` with ``r = 1/n``, formed in
    double (Python floats, as there and in ik/geometry.h's ``public_pixel_centre``) and
    rounded to fp32 by the launch."""
    r = 1 / n
    return -1 + r, 2 * r


@triton.jit
def public_centre(idx, base, step):
    """Pixel centre ``base + step·idx`` of an integer index as the public LIIF/HIIF code
    rounds it (:func:`public_constants`; the product and the sum each rounded in fp32: the
    kernels using it run without FMA contraction)."""
    return base + step * idx.to(tl.float32)


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
def ensemble_pixel(y, x, t, H, W, shift_y0, shift_y1, shift_x0, shift_x1, lo, hi):
    """The LR pixel ``(iy, ix)`` (int32) of member ``t`` (a tensor of 0..3, LIIF's shift
    order: row shift ``t // 2``, column shift ``t % 2``) of queries ``(y, x)``; the floats
    are :func:`ensemble_constants`."""
    sy = tl.minimum(tl.maximum(y + tl.where(t >= 2, shift_y1, shift_y0), lo), hi)
    sx = tl.minimum(tl.maximum(x + tl.where(t % 2 == 1, shift_x1, shift_x0), lo), hi)
    return nearest_index(sy, H), nearest_index(sx, W)


@triton.jit
def ensemble_member(y, x, t, H, W, shift_y0, shift_y1, shift_x0, shift_x1, lo, hi):
    """Member ``t`` of queries ``(y, x)`` (:func:`ensemble_pixel`): its LR pixel
    ``(iy, ix)`` (int32) and the query's offset ``rel = (q - v)·(H, W)`` (LIIF's units)."""
    iy, ix = ensemble_pixel(y, x, t, H, W, shift_y0, shift_y1, shift_x0, shift_x1, lo, hi)
    hf, wf = H * 1.0, W * 1.0
    return iy, ix, (y - centre(iy, hf)) * hf, (x - centre(ix, wf)) * wf
