"""HIIF's query geometry in Triton, bit-exact with geometry.py and reference/hiif.py (same
float operations in the same order; on GPU the kernels using it run without FMA
contraction, ``grid.NO_FMA``): a query's ensemble members (LIIF's geometry), its local
coordinate and each level's bits, and the scalar launch arguments they read
(:func:`launch_args`).  Used by the level-0 and levels kernels.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ... import geometry
from .. import grid

_CLAMP_LO = tl.constexpr(-1 + geometry.ENSEMBLE_EPS)
_CLAMP_HI = tl.constexpr(1 - geometry.ENSEMBLE_EPS)


@triton.jit
def _centre(idx, n, public, base, step):
    """Centre of LR pixel ``idx`` on an axis of ``n`` (fp32) pixels, rounded as the project
    does (``public == 0``) or as the public code does (``base``, ``step``:
    :func:`grid.public_constants`)."""
    return tl.where(public != 0, grid.public_centre(idx, base, step), grid.centre(idx, n))


@triton.jit
def member(qy, qx, t, H, W, shift_y, shift_x, centres):
    """Ensemble member ``t`` (LIIF's order) of queries ``(qy, qx)``: its LR pixel
    ``(iy, ix)`` and the query's offset ``(ry, rx)`` from it in LR pixels (HIIF's unit:
    LIIF's halved, exactly).  ``shift_y`` ``(lo, hi)``: the fp32 scalars ``∓1/H + 1e-6``
    (formed in double on the host); ``centres`` ``(public, base_y, step_y, base_x,
    step_x)``: the centre rounding (:func:`_centre`; ``geometry.CENTRES``)."""
    iy, ix = grid.ensemble_pixel(qy, qx, t, H, W, shift_y[0], shift_y[1], shift_x[0],
                                 shift_x[1], _CLAMP_LO, _CLAMP_HI)
    hf, wf = H * 1.0, W * 1.0
    ry = (qy - _centre(iy, hf, centres[0], centres[1], centres[2])) * hf
    rx = (qx - _centre(ix, wf, centres[0], centres[3], centres[4])) * wf
    return iy, ix, ry * 0.5, rx * 0.5


@triton.jit
def _local(rel, inv_n):
    """Step 4: components ``<= 0`` reflected as ``1/n - rel`` (``inv_n`` rounded on the host)."""
    return tl.where(rel <= 0.0, inv_n - rel, rel)


@triton.jit
def bit(local, scale):
    """Step 6: ``floor(clamp(local - 1e-9, 0, 1) · scale) mod 2`` (``scale = 2^(level+1)``)."""
    f = tl.floor(tl.minimum(tl.maximum(local - 1e-9, 0.0), 1.0) * scale)
    return f - 2.0 * tl.floor(f * 0.5)


@triton.jit
def query_local(coord_ptr, p, p_ok, H, W, shift_y, shift_x, inv_h, inv_w, centres):
    """Coordinates ``[ROWS]`` of queries ``p`` (flat over the batch) and their local
    coordinate (member 0's offset, reflected)."""
    qy = tl.load(coord_ptr + 2 * p, mask=p_ok, other=0.0).to(tl.float32)
    qx = tl.load(coord_ptr + 2 * p + 1, mask=p_ok, other=0.0).to(tl.float32)
    _, _, ry, rx = member(qy, qx, tl.zeros_like(p), H, W, shift_y, shift_x, centres)
    return qy, qx, _local(ry, inv_h), _local(rx, inv_w)


@triton.jit
def level_bits(ly, lx, level):
    """Level ``level``'s two bits of queries with local coordinate ``(ly, lx)``
    (:func:`bit` at ``scale = 2^(level+1)``)."""
    scale = (tl.full([1], 2, tl.int32) << level).to(tl.float32)
    return bit(ly, scale), bit(lx, scale)


def launch_args(h, w, public_centres=False):
    """The geometry kernels' scalar arguments: the member shifts of
    :func:`grid.ensemble_constants` (its clamp bounds are this module's constexprs),
    ``1/H``, ``1/W`` (``local_coord``), rounded to fp32 at launch as PyTorch rounds a
    Python float, then the centre rounding: the flag ``public`` (0 or 1) and the rows' and
    columns' :func:`grid.public_constants` (read only when it is set)."""
    return (*grid.ensemble_constants((h, w))[:4], 1 / h, 1 / w, int(public_centres),
            *grid.public_constants(h), *grid.public_constants(w))
