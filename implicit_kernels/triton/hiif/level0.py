"""HIIF level 0 in Triton (``_level0_kernel``, one program per tile of ``ROWS`` queries):
the four ensemble members (LIIF's geometry, in the kernel), their area weights, the
level-0 bits, LayerNorm of ``[w_t z_t, cell, bits]`` in the folded form of
``torch_impl/hiif.py`` (per-row statistics from the maps' ``m_t, s_t``; fc1's
pre-activation from the gathered ``A_t``), GELU and fc2, the hidden layer streamed
``BLOCK_N`` columns at a time; and its backward (the maps' gradient by ``tl.atomic_add``:
LR pixels are shared by queries).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...reference.hiif import LN_EPS
from .. import launch
from . import hidden_chunk
from .query_geometry import bit, member, query_local

_EPS = tl.constexpr(LN_EPS)



@triton.jit
def _level0_rows(coord_ptr, cell_ptr, maps_ptr, P, m, H, W, C, HID,
                 shift_y, shift_x, inv_h, inv_w, centres, ROWS: tl.constexpr):
    """The tile's queries ``p`` (``[ROWS]`` of ``P`` flat) and their mask, then per query
    and member (``[ROWS, 4]``): the maps' rows ``pix`` of the four codes, their area
    weights, ``dev_t = w_t m_t - μ``, ``ed = e - μ`` for the extras ``e = [cell·(H, W),
    level-0 bits]`` and LayerNorm's ``rstd`` (``torch_impl``'s folded statistics over the
    ``4C + 4`` inputs)."""
    p = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    p_ok = p < P
    hf, wf = H * 1.0, W * 1.0
    qy, qx, ly, lx = query_local(coord_ptr, p, p_ok, H, W, shift_y, shift_x, inv_h, inv_w,
                                 centres)
    t = tl.arange(0, 4)[None, :]
    iy, ix, ry, rx = member(qy[:, None], qx[:, None], t, H, W, shift_y, shift_x, centres)
    _, _, ry_opp, rx_opp = member(qy[:, None], qx[:, None], 3 - t, H, W, shift_y, shift_x,
                                  centres)
    # Member t is weighted by the area of the diagonally opposite member 3 - t.
    area = tl.abs(ry * rx) + 1e-9
    weight = (tl.abs(ry_opp * rx_opp) + 1e-9) / tl.sum(area, 1)[:, None]
    image = (p // m).to(tl.int64)
    pix = ((image[:, None] * H + iy) * W + ix) * 4 + t
    ok = p_ok[:, None]
    mean = tl.load(maps_ptr + pix * (HID + 2) + HID, mask=ok, other=0.0).to(tl.float32)
    sq = tl.load(maps_ptr + pix * (HID + 2) + HID + 1, mask=ok, other=0.0).to(tl.float32)
    cy = tl.load(cell_ptr + 2 * p, mask=p_ok, other=0.0).to(tl.float32) * hf
    cx = tl.load(cell_ptr + 2 * p + 1, mask=p_ok, other=0.0).to(tl.float32) * wf
    extra = tl.where(t == 0, cy[:, None], tl.where(t == 1, cx[:, None], tl.where(
        t == 2, bit(ly, 2.0)[:, None], bit(lx, 2.0)[:, None])))
    width = 4.0 * C + 4.0
    wm = weight * mean
    mu = (C * tl.sum(wm, 1) + tl.sum(extra, 1)) / width
    dev = wm - mu[:, None]
    ed = extra - mu[:, None]
    var = (tl.sum(weight * weight * sq, 1) + C * tl.sum(dev * dev, 1) + tl.sum(ed * ed, 1)) / width
    return p, p_ok, pix, weight, dev, ed, tl.math.rsqrt(var + _EPS)


@triton.jit
def _level0_pre(maps_ptr, rs_ptr, we_ptr, bias_ptr, pix, p_ok, weight, dev, ed, rstd, n, n_ok,
                HID):
    """fc1's pre-activation columns ``n`` of the tile: ``core·rstd + bias`` with
    ``core = Σ_t (w_t A_t + dev_t W'_t 1) + W'_e ed``.  Returns ``(core, pre, W'_t 1, W'_e)``
    (the last two ``[4, BLOCK_N]``)."""
    a = tl.load(maps_ptr + pix[:, :, None] * (HID + 2) + n[None, None, :],
                mask=p_ok[:, None, None] & n_ok[None, None, :], other=0.0).to(tl.float32)
    j = tl.arange(0, 4)[:, None]
    rs = tl.load(rs_ptr + j * HID + n[None, :], mask=n_ok[None, :], other=0.0).to(tl.float32)
    we = tl.load(we_ptr + n[None, :] * 4 + j, mask=n_ok[None, :], other=0.0).to(tl.float32)
    core = (tl.sum(weight[:, :, None] * a, 1) + tl.sum(dev[:, :, None] * rs[None, :, :], 1)
            + tl.sum(ed[:, :, None] * we[None, :, :], 1))
    bias = tl.load(bias_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    return core, core * rstd[:, None] + bias[None, :], rs, we


@triton.jit
def _level0_kernel(maps_ptr, rs_ptr, we_ptr, bias_ptr, w2_ptr, b2_ptr, coord_ptr, cell_ptr,
                   out_ptr, P, m, H, W, C, HID, shift_y_lo, shift_y_hi, shift_x_lo,
                   shift_x_hi, inv_h, inv_w, public, base_y, step_y, base_x, step_x,
                   ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
                   PRECISION: tl.constexpr):
    """Level 0 of ``ROWS`` queries (``P = B·m`` flat): ``fc2(GELU(fc1(LN(x))))`` → ``P×C``.

    maps: ``B×H×W×4×(HID+2)``; rs: ``4×HID``; we: ``HID×4``; w2: ``C×HID``."""
    p, p_ok, pix, weight, dev, ed, rstd = _level0_rows(
        coord_ptr, cell_ptr, maps_ptr, P, m, H, W, C, HID, (shift_y_lo, shift_y_hi),
        (shift_x_lo, shift_x_hi), inv_h, inv_w, (public, base_y, step_y, base_x, step_x),
        ROWS)
    c = tl.arange(0, BLOCK_C)
    acc = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    for n0 in range(0, HID, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        _, pre, _, _ = _level0_pre(maps_ptr, rs_ptr, we_ptr, bias_ptr, pix, p_ok, weight, dev,
                                   ed, rstd, n, n < HID, HID)
        acc = hidden_chunk.add(acc, pre, w2_ptr, n, n < HID, c, C, HID, PRECISION)
    acc += tl.load(b2_ptr + c, mask=c < C, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + p[:, None] * C + c[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=p_ok[:, None] & (c[None, :] < C))


@triton.jit
def _level0_backward_kernel(maps_ptr, rs_ptr, we_ptr, bias_ptr, w2_ptr, coord_ptr, cell_ptr,
                            dout_ptr, dmaps_ptr, hidden_ptr, delta_ptr, dev_ptr, ed_ptr,
                            P, m, H, W, C, HID, shift_y_lo, shift_y_hi, shift_x_lo,
                            shift_x_hi, inv_h, inv_w, public, base_y, step_y, base_x,
                            step_x, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
                            BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of :func:`_level0_kernel` for ``dout`` (``P×C``).

    Adds the maps' gradient into ``dmaps`` (fp32, maps' shape; ``tl.atomic_add``: LR
    pixels are shared by queries) and writes per query ``GELU(pre)`` (``hidden``), fc1's
    ``δ`` (``delta``, both ``P×HID``), ``dev·rstd`` and ``ed·rstd`` (``P×4``): the inputs
    of the gradients of fc2, bias, ``W'_t 1`` and ``W'_e``."""
    p, p_ok, pix, weight, dev, ed, rstd = _level0_rows(
        coord_ptr, cell_ptr, maps_ptr, P, m, H, W, C, HID, (shift_y_lo, shift_y_hi),
        (shift_x_lo, shift_x_hi), inv_h, inv_w, (public, base_y, step_y, base_x, step_x),
        ROWS)
    c = tl.arange(0, BLOCK_C)
    gy = tl.load(dout_ptr + p[:, None] * C + c[None, :], mask=p_ok[:, None] & (c[None, :] < C),
                 other=0.0).to(tl.float32)
    rows = p.to(tl.int64)
    d_rstd = tl.zeros([ROWS], dtype=tl.float32)
    d_dev = tl.zeros([ROWS, 4], dtype=tl.float32)
    d_ed = tl.zeros([ROWS, 4], dtype=tl.float32)
    for n0 in range(0, HID, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < HID
        core, pre, rs, we = _level0_pre(maps_ptr, rs_ptr, we_ptr, bias_ptr, pix, p_ok, weight,
                                        dev, ed, rstd, n, n_ok, HID)
        delta = hidden_chunk.backward(pre, gy, w2_ptr, n, n_ok, c, C, HID, rows, p_ok,
                                      hidden_ptr, delta_ptr, PRECISION)
        d_rstd += tl.sum(delta * core, 1)
        d_core = delta * rstd[:, None]
        d_dev += tl.sum(d_core[:, None, :] * rs[None, :, :], 2)
        d_ed += tl.sum(d_core[:, None, :] * we[None, :, :], 2)
        tl.atomic_add(dmaps_ptr + pix[:, :, None] * (HID + 2) + n[None, None, :],
                      weight[:, :, None] * d_core[:, None, :],
                      mask=p_ok[:, None, None] & n_ok[None, None, :])
    # The statistics: var = (Σ w²s + C Σ dev² + Σ ed²)/D, dev = w m - μ, ed = e - μ,
    # μ = (C Σ w m + Σ e)/D (the extras e are constants).
    width = 4.0 * C + 4.0
    d_var = -0.5 * d_rstd * rstd * rstd * rstd
    d_dev += (2.0 * C / width) * d_var[:, None] * dev
    d_ed += (2.0 / width) * d_var[:, None] * ed
    d_mu = -(tl.sum(d_dev, 1) + tl.sum(d_ed, 1))
    d_mean = weight * (d_dev + (C / width) * d_mu[:, None])
    d_sq = d_var[:, None] * weight * weight / width
    ok = p_ok[:, None]
    tl.atomic_add(dmaps_ptr + pix * (HID + 2) + HID, d_mean, mask=ok)
    tl.atomic_add(dmaps_ptr + pix * (HID + 2) + HID + 1, d_sq, mask=ok)
    t = tl.arange(0, 4)[None, :]
    tl.store(dev_ptr + rows[:, None] * 4 + t, dev * rstd[:, None], mask=ok)
    tl.store(ed_ptr + rows[:, None] * 4 + t, ed * rstd[:, None], mask=ok)


# Keys: the widths and precision (launch.Tuned adds the size bucket).  Reset: buffers the
# kernels add into and per-tile partial sums, whose slots past a configuration's last tile
# hold what a configuration with smaller tiles wrote there while being benchmarked.
forward = launch.autotuned(_level0_kernel, ["C", "HID", "PRECISION"])
backward = launch.autotuned(_level0_backward_kernel, ["C", "HID", "PRECISION"],
                         reset_to_zero=["dmaps_ptr"], configs=launch.BACKWARD_CONFIGS)
