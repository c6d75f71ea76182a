"""HIIF decode in Triton: the operators ``implicit_kernels::hiif_<part>_triton``.

The C++ backend's decomposition (``compiled/hiif.py``, whose orchestration, per-LR-pixel
maps and autograd glue this module reuses): per chunk of queries,

* ``hiif_level0_triton`` (``_level0_kernel``, one program per tile of ``ROWS`` queries):
  the four ensemble members (LIIF's geometry, in the kernel), their area weights, the
  level-0 bits, LayerNorm of ``[w_t z_t, cell, bits]`` in the folded form of
  ``torch_impl/hiif.py`` (per-row statistics from the maps' ``m_t, s_t``; fc1's
  pre-activation from the gathered ``A_t``), GELU and fc2, the hidden layer streamed
  ``BLOCK_N`` columns at a time;
* ``hiif_attention_stats_triton`` (``_stats_kernel``, tiles of one image × images): per
  head ``Σ k̂ᵀv̂`` over the tile (``tl.dot``), written per tile and summed by PyTorch: the
  global reduction, its own pass;
* ``hiif_attention_apply_triton`` (``_apply_kernel``, same grid):
  ``x + proj2(GELU(proj1(x + q·M)))``: per head, only q's rows of ``qkv`` and one
  ``tl.dot`` with the head's ``M`` laid at its columns, then :func:`mlp.two_layers`;
* ``hiif_levels_triton`` (``_levels_kernel``, tiles of queries): levels 1..L-1 chained
  with the activations in registers, each level's bits from ``coord`` in the kernel,
  LayerNorm over ``[x, bits]`` (the two bits added analytically), fc1, GELU, fc2.

Backward: one kernel per operator recomputes the tile's activations and carries the chain
rule through them (LayerNorms included), writing per row what the weight gradients need
(each Linear's input and pre-activation gradient ``δ``, fp32, bounded by the chunk), so
those are GEMMs (``dW = δᵀ·x``) in PyTorch; reductions over queries inside a kernel
(``dM``, the LayerNorm affines) are written per tile and summed by PyTorch, and level 0's
map gradient is scattered with ``tl.atomic_add``.  ``levels``' backward first reruns the
levels forward, writing each level's input, then goes back through them.

Supported: any widths up to :data:`MAX_WIDTH` (blocks are the next power of two ≥ the
width, ≥ 16 for ``tl.dot``, masked), one hidden width for levels 1..L-1, fp32 (tf32 when
``torch.backends.cuda.matmul.allow_tf32``) and fp16/bf16 storage with fp32 accumulation.
Positions (coord, cell) are not differentiated.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .. import geometry
from ..compiled import hiif as compiled_hiif
from ..compiled.hiif import prepare_hiif  # noqa: F401  (the same maps, member rows contiguous)
from ..reference.hiif import LN_EPS
from . import grid, launch, mlp

SUFFIX = "_triton"
NS = "implicit_kernels::"
#: The widest channel or hidden width held as one register row tile.
MAX_WIDTH = 1024
_CLAMP_LO = tl.constexpr(-1 + geometry.ENSEMBLE_EPS)
_CLAMP_HI = tl.constexpr(1 - geometry.ENSEMBLE_EPS)
_EPS = tl.constexpr(LN_EPS)


# ----------------------------------------------------------------------------------------
# Query geometry (bit-exact with geometry.py and reference/hiif.py: same float operations
# in the same order; on GPU the kernels using it run without FMA contraction)
# ----------------------------------------------------------------------------------------

@triton.jit
def _centre(idx, n, public, base, step):
    """Centre of LR pixel ``idx`` on an axis of ``n`` (fp32) pixels, rounded as the project
    does (``public == 0``) or as the public code does (``base``, ``step``:
    :func:`grid.public_constants`)."""
    return tl.where(public != 0, grid.public_centre(idx, base, step), grid.centre(idx, n))


@triton.jit
def _member(qy, qx, t, H, W, shift_y, shift_x, centres):
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
def _bit(local, scale):
    """Step 6: ``floor(clamp(local - 1e-9, 0, 1) · scale) mod 2`` (``scale = 2^(level+1)``)."""
    f = tl.floor(tl.minimum(tl.maximum(local - 1e-9, 0.0), 1.0) * scale)
    return f - 2.0 * tl.floor(f * 0.5)


@triton.jit
def _query_local(coord_ptr, p, p_ok, H, W, shift_y, shift_x, inv_h, inv_w, centres):
    """Coordinates ``[ROWS]`` of queries ``p`` (flat over the batch) and their local
    coordinate (member 0's offset, reflected)."""
    qy = tl.load(coord_ptr + 2 * p, mask=p_ok, other=0.0).to(tl.float32)
    qx = tl.load(coord_ptr + 2 * p + 1, mask=p_ok, other=0.0).to(tl.float32)
    _, _, ry, rx = _member(qy, qx, tl.zeros_like(p), H, W, shift_y, shift_x, centres)
    return qy, qx, _local(ry, inv_h), _local(rx, inv_w)


# ----------------------------------------------------------------------------------------
# Level 0
# ----------------------------------------------------------------------------------------

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
    qy, qx, ly, lx = _query_local(coord_ptr, p, p_ok, H, W, shift_y, shift_x, inv_h, inv_w,
                                  centres)
    t = tl.arange(0, 4)[None, :]
    iy, ix, ry, rx = _member(qy[:, None], qx[:, None], t, H, W, shift_y, shift_x, centres)
    _, _, ry_opp, rx_opp = _member(qy[:, None], qx[:, None], 3 - t, H, W, shift_y, shift_x,
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
        t == 2, _bit(ly, 2.0)[:, None], _bit(lx, 2.0)[:, None])))
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
def _add_hidden_chunk(acc, z, w2_ptr, n, n_ok, m, M, N, PRECISION: tl.constexpr):
    """``acc + GELU(z)·W2[:, n]ᵀ``: hidden columns ``n`` into a second layer ``W2`` (``M×N``)."""
    w2t = tl.load(w2_ptr + m[None, :] * N + n[:, None], mask=n_ok[:, None] & (m[None, :] < M),
                  other=0.0)
    return acc + tl.dot(mlp.activation(z, "gelu").to(w2t.dtype), w2t, input_precision=PRECISION)


@triton.jit
def _hidden_chunk_backward(z, gy, w2_ptr, n, n_ok, m, M, N, rows, rows_ok, hidden_ptr,
                           delta_ptr, PRECISION: tl.constexpr):
    """Backward of :func:`_add_hidden_chunk` for the output gradient ``gy``: stores, per
    row (``rows × N``), ``GELU(z)`` to ``hidden`` and ``δ = (gy·W2[:, n]) ⊙ GELU'(z)`` to
    ``delta``, and returns ``δ``."""
    w2 = tl.load(w2_ptr + m[:, None] * N + n[None, :], mask=(m[:, None] < M) & n_ok[None, :],
                 other=0.0)
    delta = (tl.dot(gy.to(w2.dtype), w2, input_precision=PRECISION)
             * mlp.activation_grad(z, "gelu"))
    out = rows[:, None] * N + n[None, :]
    ok = rows_ok[:, None] & n_ok[None, :]
    tl.store(hidden_ptr + out, mlp.activation(z, "gelu"), mask=ok)
    tl.store(delta_ptr + out, delta, mask=ok)
    return delta


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
        acc = _add_hidden_chunk(acc, pre, w2_ptr, n, n < HID, c, C, HID, PRECISION)
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
        delta = _hidden_chunk_backward(pre, gy, w2_ptr, n, n_ok, c, C, HID, rows, p_ok,
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


# ----------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------

@triton.jit
def _head_rows(x, w_ptr, b_ptr, first, c, c_ok, i, i_ok, C, PRECISION: tl.constexpr):
    """``x·W[first + i]ᵀ + b[first + i]``: a head's ``d`` output rows of a Linear with
    ``C`` inputs → ``[ROWS, BLOCK_D]`` fp32, zero for ``i ≥ d``."""
    wt = tl.load(w_ptr + (first + i)[None, :] * C + c[:, None], mask=c_ok[:, None] & i_ok[None, :],
                 other=0.0)
    b = tl.load(b_ptr + first + i, mask=i_ok, other=0.0).to(tl.float32)
    return tl.dot(x.to(wt.dtype), wt, input_precision=PRECISION) + b[None, :]


@triton.jit
def _head_weight(w_ptr, first, c, c_ok, i, i_ok, C):
    """``W[first + i]`` as ``[BLOCK_D, BLOCK_C]`` (zero outside ``d × C``)."""
    return tl.load(w_ptr + (first + i)[:, None] * C + c[None, :],
                   mask=i_ok[:, None] & c_ok[None, :], other=0.0)


@triton.jit
def _head_norm(y, gamma_ptr, beta_ptr, i, i_ok, d):
    """LayerNorm over a head's ``d`` channels: ``(ŷ = ȳγ + β, ȳ, rstd)``, zero for ``i ≥ d``."""
    mean = tl.sum(tl.where(i_ok[None, :], y, 0.0), 1) / d
    centred = tl.where(i_ok[None, :], y - mean[:, None], 0.0)
    rstd = tl.math.rsqrt(tl.sum(centred * centred, 1) / d + _EPS)
    y_bar = centred * rstd[:, None]
    gamma = tl.load(gamma_ptr + i, mask=i_ok, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + i, mask=i_ok, other=0.0).to(tl.float32)
    return y_bar * gamma[None, :] + beta[None, :], y_bar, rstd


@triton.jit
def _head_norm_backward(dy, y_bar, rstd, gamma_ptr, i, i_ok, d):
    """Input gradient of :func:`_head_norm` for the output gradient ``dy``."""
    g = dy * tl.load(gamma_ptr + i, mask=i_ok, other=0.0).to(tl.float32)[None, :]
    mean_g = tl.sum(g, 1) / d
    mean_gy = tl.sum(g * y_bar, 1) / d
    return tl.where(i_ok[None, :],
                    rstd[:, None] * (g - mean_g[:, None] - y_bar * mean_gy[:, None]), 0.0)


@triton.jit
def _normed_keys_values(x, qkv_w_ptr, qkv_b_ptr, kln_w_ptr, kln_b_ptr, vln_w_ptr, vln_b_ptr, h,
                        d, c, c_ok, i, i_ok, row_ok, C, PRECISION: tl.constexpr):
    """Head ``h``'s ``k̂, k̄, rstd_k, v̂, v̄, rstd_v`` (``[ROWS, BLOCK_D]``; ``k̂, v̂`` zero on
    rows outside the image).  Head ``h`` owns ``qkv`` rows ``[3dh, 3dh + 3d)`` = q | k | v."""
    k = _head_rows(x, qkv_w_ptr, qkv_b_ptr, (3 * h + 1) * d, c, c_ok, i, i_ok, C, PRECISION)
    v = _head_rows(x, qkv_w_ptr, qkv_b_ptr, (3 * h + 2) * d, c, c_ok, i, i_ok, C, PRECISION)
    k_hat, k_bar, k_rstd = _head_norm(k, kln_w_ptr, kln_b_ptr, i, i_ok, d)
    v_hat, v_bar, v_rstd = _head_norm(v, vln_w_ptr, vln_b_ptr, i, i_ok, d)
    return (tl.where(row_ok[:, None], k_hat, 0.0), k_bar, k_rstd,
            tl.where(row_ok[:, None], v_hat, 0.0), v_bar, v_rstd)


@triton.jit
def _image_tile(x_ptr, m, C, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's queries (tile ``program_id(0)`` of image ``program_id(1)``): flat
    rows ``p`` (int64), their mask, the columns and ``x`` ``[ROWS, BLOCK_C]`` fp32."""
    q = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = q < m
    p = tl.program_id(1).to(tl.int64) * m + q
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    x = tl.load(x_ptr + p[:, None] * C + c[None, :], mask=row_ok[:, None] & c_ok[None, :],
                other=0.0).to(tl.float32)
    return p, row_ok, c, c_ok, x


@triton.jit
def _stats_kernel(x_ptr, qkv_w_ptr, qkv_b_ptr, kln_w_ptr, kln_b_ptr, vln_w_ptr, vln_b_ptr,
                  part_ptr, m, tiles, C, heads, d,
                  ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Per head, ``Σ k̂ᵀv̂`` over this program's queries → ``part[image, tile, head]``
    (``B×tiles×heads×d×d`` fp32; ``tiles`` ≥ this launch's programs per image).
    x: ``B×m×C``; qkv_w: ``3C×C``.  (``BLOCK_N``, of the
    shared launch configuration, is unused: no hidden layer.)"""
    p, row_ok, c, c_ok, x = _image_tile(x_ptr, m, C, ROWS, BLOCK_C)
    i = tl.arange(0, BLOCK_D)
    i_ok = i < d
    out = part_ptr + ((tl.program_id(1) * tiles + tl.program_id(0)) * heads) * d * d
    for h in range(heads):
        k_hat, _, _, v_hat, _, _ = _normed_keys_values(
            x, qkv_w_ptr, qkv_b_ptr, kln_w_ptr, kln_b_ptr, vln_w_ptr, vln_b_ptr, h, d, c, c_ok,
            i, i_ok, row_ok, C, PRECISION)
        # Operands in x's dtype (bf16 runs: tensor-core bf16), fp32 accumulation.
        kv = tl.dot(tl.trans(k_hat).to(x_ptr.dtype.element_ty), v_hat.to(x_ptr.dtype.element_ty),
                    input_precision=PRECISION)
        tl.store(out + h * d * d + i[:, None] * d + i[None, :], kv,
                 mask=i_ok[:, None] & i_ok[None, :])


@triton.jit
def _stats_backward_kernel(x_ptr, qkv_w_ptr, qkv_b_ptr, kln_w_ptr, kln_b_ptr, vln_w_ptr,
                           vln_b_ptr, dkv_sum_ptr, dx_ptr, dkv_ptr, dnorm_ptr, m, tiles, C,
                           heads, d,
                           ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                           BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of :func:`_stats_kernel` for ``dkv_sum`` (``B×heads×d×d``): writes ``dx``
    (``B×m×C`` fp32), the pre-LayerNorm gradients of k and v (``dkv``, ``B·m×heads×2×d``:
    the ``qkv`` weight gradient's rows) and this tile's LayerNorm affine gradients
    (``dnorm[image, tile]``: ``B×tiles×4×d``, ``γ_k, β_k, γ_v, β_v``)."""
    p, row_ok, c, c_ok, x = _image_tile(x_ptr, m, C, ROWS, BLOCK_C)
    i = tl.arange(0, BLOCK_D)
    i_ok = i < d
    ii = i_ok[:, None] & i_ok[None, :]
    dx = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    d_gk = tl.zeros([BLOCK_D], dtype=tl.float32)
    d_bk = tl.zeros([BLOCK_D], dtype=tl.float32)
    d_gv = tl.zeros([BLOCK_D], dtype=tl.float32)
    d_bv = tl.zeros([BLOCK_D], dtype=tl.float32)
    for h in range(heads):
        k_hat, k_bar, k_rstd, v_hat, v_bar, v_rstd = _normed_keys_values(
            x, qkv_w_ptr, qkv_b_ptr, kln_w_ptr, kln_b_ptr, vln_w_ptr, vln_b_ptr, h, d, c, c_ok,
            i, i_ok, row_ok, C, PRECISION)
        g = tl.load(dkv_sum_ptr + ((tl.program_id(1) * heads + h) * d + i[:, None]) * d
                    + i[None, :], mask=ii, other=0.0).to(tl.float32)
        # Rows outside the image have k̂ = v̂ = 0, hence zero gradients.
        dk_hat = tl.dot(v_hat, tl.trans(g), input_precision=PRECISION)
        dv_hat = tl.dot(k_hat, g, input_precision=PRECISION)
        d_gk += tl.sum(dk_hat * k_bar, 0)
        d_bk += tl.sum(dk_hat, 0)
        d_gv += tl.sum(dv_hat * v_bar, 0)
        d_bv += tl.sum(dv_hat, 0)
        dk = _head_norm_backward(dk_hat, k_bar, k_rstd, kln_w_ptr, i, i_ok, d)
        dv = _head_norm_backward(dv_hat, v_bar, v_rstd, vln_w_ptr, i, i_ok, d)
        out = dkv_ptr + ((p[:, None] * heads + h) * 2) * d + i[None, :]
        ok = row_ok[:, None] & i_ok[None, :]
        tl.store(out, dk, mask=ok)
        tl.store(out + d, dv, mask=ok)
        wk = _head_weight(qkv_w_ptr, (3 * h + 1) * d, c, c_ok, i, i_ok, C)
        wv = _head_weight(qkv_w_ptr, (3 * h + 2) * d, c, c_ok, i, i_ok, C)
        dx += tl.dot(dk.to(wk.dtype), wk, input_precision=PRECISION)
        dx += tl.dot(dv.to(wv.dtype), wv, input_precision=PRECISION)
    tl.store(dx_ptr + p[:, None] * C + c[None, :], dx, mask=row_ok[:, None] & c_ok[None, :])
    norm = dnorm_ptr + (tl.program_id(1) * tiles + tl.program_id(0)) * 4 * d + i
    tl.store(norm, d_gk, mask=i_ok)
    tl.store(norm + d, d_bk, mask=i_ok)
    tl.store(norm + 2 * d, d_gv, mask=i_ok)
    tl.store(norm + 3 * d, d_bv, mask=i_ok)


@triton.jit
def _placed_mat(mat_ptr, h, heads, d, i, i_ok, c):
    """Head ``h``'s ``M`` (``d×d``, of image ``program_id(1)``) laid at its columns
    ``[hd, hd + d)`` of a ``[BLOCK_D, BLOCK_C]`` zero matrix, so that ``q_h·M_h`` lands in
    the head's channels of the ``C`` wide row."""
    col = c[None, :] - h * d
    ok = i_ok[:, None] & (col >= 0) & (col < d)
    return tl.load(mat_ptr + ((tl.program_id(1) * heads + h) * d + i[:, None]) * d + col,
                   mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _attention_residual(x, mat_ptr, qkv_w_ptr, qkv_b_ptr, heads, d, c, c_ok, C,
                        BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
    """``x + q·M`` (per head; only q's rows of ``qkv`` are used) → ``[ROWS, BLOCK_C]``."""
    i = tl.arange(0, BLOCK_D)
    i_ok = i < d
    r = x
    for h in range(heads):
        q = _head_rows(x, qkv_w_ptr, qkv_b_ptr, 3 * h * d, c, c_ok, i, i_ok, C, PRECISION)
        # Operands in M's dtype (x's; bf16 runs: tensor-core bf16), fp32 accumulation.
        placed = _placed_mat(mat_ptr, h, heads, d, i, i_ok, c).to(mat_ptr.dtype.element_ty)
        r += tl.dot(q.to(mat_ptr.dtype.element_ty), placed, input_precision=PRECISION)
    return r


@triton.jit
def _apply_kernel(x_ptr, mat_ptr, qkv_w_ptr, qkv_b_ptr, p1_w_ptr, p1_b_ptr, p2_w_ptr, p2_b_ptr,
                  out_ptr, m, C, heads, d,
                  ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """``x + proj2(GELU(proj1(x + q·M)))`` for this program's queries → ``out`` (``B×m×C``).
    mat: ``B×heads×d×d``; proj1, proj2: ``C×C``."""
    p, row_ok, c, c_ok, x = _image_tile(x_ptr, m, C, ROWS, BLOCK_C)
    r = _attention_residual(x, mat_ptr, qkv_w_ptr, qkv_b_ptr, heads, d, c, c_ok, C, BLOCK_D,
                            PRECISION)
    y = mlp.two_layers(r, p1_w_ptr, p1_b_ptr, p2_w_ptr, C, C, C, ROWS, BLOCK_C, BLOCK_N,
                       BLOCK_C, PRECISION, "gelu")
    y += x + tl.load(p2_b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + p[:, None] * C + c[None, :], y.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & c_ok[None, :])


@triton.jit
def _apply_backward_kernel(x_ptr, mat_ptr, qkv_w_ptr, qkv_b_ptr, p1_w_ptr, p1_b_ptr, p2_w_ptr,
                           dout_ptr, dx_ptr, r_ptr, hidden_ptr, delta_ptr, dq_ptr, dmat_ptr,
                           m, tiles, C, heads, d,
                           ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                           BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of :func:`_apply_kernel` for ``dout``: writes ``dx``, proj1's input ``r``,
    its GELU output and ``δ`` (``hidden``, ``delta``), q's gradient ``dq`` (all
    ``B·m×C`` fp32, ``dq`` head-major) and this tile's ``dM`` (``dmat[image, tile]``:
    ``B×tiles×heads×d×d``)."""
    p, row_ok, c, c_ok, x = _image_tile(x_ptr, m, C, ROWS, BLOCK_C)
    ok = row_ok[:, None] & c_ok[None, :]
    r = _attention_residual(x, mat_ptr, qkv_w_ptr, qkv_b_ptr, heads, d, c, c_ok, C, BLOCK_D,
                            PRECISION)
    gy = tl.load(dout_ptr + p[:, None] * C + c[None, :], mask=ok, other=0.0).to(tl.float32)
    # Rows outside the image have gy = 0, hence dr = 0 and no contribution below.
    dr = mlp.two_layers_backward(r, gy, p1_w_ptr, p1_b_ptr, p2_w_ptr, C, C, C, p, row_ok,
                                 hidden_ptr, delta_ptr, ROWS, BLOCK_C, BLOCK_N, BLOCK_C,
                                 PRECISION, "gelu")
    tl.store(r_ptr + p[:, None] * C + c[None, :], r, mask=ok)
    dx = gy + dr
    i = tl.arange(0, BLOCK_D)
    i_ok = i < d
    dmat = dmat_ptr + (tl.program_id(1) * tiles + tl.program_id(0)) * heads * d * d
    for h in range(heads):
        q = _head_rows(x, qkv_w_ptr, qkv_b_ptr, 3 * h * d, c, c_ok, i, i_ok, C, PRECISION)
        placed = _placed_mat(mat_ptr, h, heads, d, i, i_ok, c)
        dq = tl.dot(dr, tl.trans(placed), input_precision=PRECISION)
        # dM_h = q_hᵀ·dr restricted to the head's columns.
        col = c[None, :] - h * d
        tl.store(dmat + (h * d + i[:, None]) * d + col,
                 tl.dot(tl.trans(q), dr, input_precision=PRECISION),
                 mask=i_ok[:, None] & (col >= 0) & (col < d))
        tl.store(dq_ptr + p[:, None] * C + h * d + i[None, :], dq,
                 mask=row_ok[:, None] & i_ok[None, :])
        wq = _head_weight(qkv_w_ptr, 3 * h * d, c, c_ok, i, i_ok, C)
        dx += tl.dot(dq.to(wq.dtype), wq, input_precision=PRECISION)
    tl.store(dx_ptr + p[:, None] * C + c[None, :], dx, mask=ok)


# ----------------------------------------------------------------------------------------
# Levels 1..L-1
# ----------------------------------------------------------------------------------------

@triton.jit
def _level_norm(x, bit_y, bit_x, norm_w_ptr, norm_b_ptr, c, c_ok, C):
    """LayerNorm over the ``C + 2`` values ``[x, bit_y, bit_x]`` of each row (the bits
    added analytically): ``(u, u_y, u_x)`` its output (``[ROWS, BLOCK_C]``, ``[ROWS]``
    twice), then ``(x̄, ē_y, ē_x, rstd)`` for the backward."""
    width = C + 2.0
    mean = (tl.sum(x, 1) + bit_y + bit_x) / width
    centred = tl.where(c_ok[None, :], x - mean[:, None], 0.0)
    ey = bit_y - mean
    ex = bit_x - mean
    rstd = tl.math.rsqrt((tl.sum(centred * centred, 1) + ey * ey + ex * ex) / width + _EPS)
    x_bar = centred * rstd[:, None]
    ey *= rstd
    ex *= rstd
    gamma = tl.load(norm_w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    beta = tl.load(norm_b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    u = x_bar * gamma[None, :] + beta[None, :]
    u_y = ey * tl.load(norm_w_ptr + C).to(tl.float32) + tl.load(norm_b_ptr + C).to(tl.float32)
    u_x = (ex * tl.load(norm_w_ptr + C + 1).to(tl.float32)
           + tl.load(norm_b_ptr + C + 1).to(tl.float32))
    return u, u_y, u_x, x_bar, ey, ex, rstd


@triton.jit
def _level_norm_backward(du, du_y, du_x, x_bar, ey, ex, rstd, norm_w_ptr, c, c_ok, C):
    """Gradient of :func:`_level_norm`'s ``x`` (the bits are constants)."""
    g = du * tl.load(norm_w_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    g_y = du_y * tl.load(norm_w_ptr + C).to(tl.float32)
    g_x = du_x * tl.load(norm_w_ptr + C + 1).to(tl.float32)
    width = C + 2.0
    mean_g = (tl.sum(g, 1) + g_y + g_x) / width
    mean_gx = (tl.sum(g * x_bar, 1) + g_y * ey + g_x * ex) / width
    return tl.where(c_ok[None, :],
                    rstd[:, None] * (g - mean_g[:, None] - x_bar * mean_gx[:, None]), 0.0)


@triton.jit
def _level_fc1(u, u_y, u_x, w1_ptr, b1_ptr, n, n_ok, c, c_ok, C, PRECISION: tl.constexpr):
    """fc1's pre-activation columns ``n`` for the input ``[u, u_y, u_x]`` (``W1``
    ``HID×(C+2)``): ``(z, W1[n, :C]ᵀ, W1[n, C], W1[n, C+1])``."""
    w1t = tl.load(w1_ptr + n[None, :] * (C + 2) + c[:, None], mask=c_ok[:, None] & n_ok[None, :],
                  other=0.0)
    w_y = tl.load(w1_ptr + n * (C + 2) + C, mask=n_ok, other=0.0).to(tl.float32)
    w_x = tl.load(w1_ptr + n * (C + 2) + C + 1, mask=n_ok, other=0.0).to(tl.float32)
    b1 = tl.load(b1_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
    z = (tl.dot(u.to(w1t.dtype), w1t, input_precision=PRECISION)
         + u_y[:, None] * w_y[None, :] + u_x[:, None] * w_x[None, :] + b1[None, :])
    return z, w1t, w_y, w_x


@triton.jit
def _level_bits(ly, lx, level):
    scale = (tl.full([1], 2, tl.int32) << level).to(tl.float32)
    return _bit(ly, scale), _bit(lx, scale)


@triton.jit
def _level(x, ly, lx, level, norm_w_ptr, norm_b_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, C, HID, M,
           ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """One level: ``fc2(GELU(fc1(LN([x, bits]))))`` → ``[ROWS, BLOCK_M]`` (``W2`` ``M×HID``)."""
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    bit_y, bit_x = _level_bits(ly, lx, level)
    u, u_y, u_x, _, _, _, _ = _level_norm(x, bit_y, bit_x, norm_w_ptr, norm_b_ptr, c, c_ok, C)
    o = tl.arange(0, BLOCK_M)
    acc = tl.zeros([ROWS, BLOCK_M], dtype=tl.float32)
    for n0 in range(0, HID, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        # [0], not ``z, _, ...``: ``_`` (rstd above) would become a loop-carried
        # variable changing shape, which the compiler refuses (the interpreter does not).
        z = _level_fc1(u, u_y, u_x, w1_ptr, b1_ptr, n, n < HID, c, c_ok, C, PRECISION)[0]
        acc = _add_hidden_chunk(acc, z, w2_ptr, n, n < HID, o, M, HID, PRECISION)
    return acc + tl.load(b2_ptr + o, mask=o < M, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _levels_kernel(x_ptr, coord_ptr, norm_w_ptr, norm_b_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                   last_w_ptr, last_b_ptr, out_ptr, P, H, W, C, HID, NOUT, LEVELS,
                   shift_y_lo, shift_y_hi, shift_x_lo, shift_x_hi, inv_h, inv_w,
                   public, base_y, step_y, base_x, step_x,
                   ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    """Levels 1..``LEVELS`` of ``ROWS`` queries (``P`` flat), chained in registers → ``P×NOUT``.

    x: ``P×C``; norm: ``LEVELS×(C+2)``; w1: ``LEVELS×HID×(C+2)``; b1: ``LEVELS×HID``;
    w2, b2: the first ``LEVELS-1`` levels' fc2 (``×C×HID``, ``×C``); last_w: ``NOUT×HID``."""
    p = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    p_ok = p < P
    _, _, ly, lx = _query_local(coord_ptr, p, p_ok, H, W, (shift_y_lo, shift_y_hi),
                                (shift_x_lo, shift_x_hi), inv_h, inv_w,
                                (public, base_y, step_y, base_x, step_x))
    c = tl.arange(0, BLOCK_C)
    x = tl.load(x_ptr + p[:, None] * C + c[None, :], mask=p_ok[:, None] & (c[None, :] < C),
                other=0.0).to(tl.float32)
    for j in range(0, LEVELS - 1):
        x = _level(x, ly, lx, j + 1, norm_w_ptr + j * (C + 2), norm_b_ptr + j * (C + 2),
                   w1_ptr + j * HID * (C + 2), b1_ptr + j * HID, w2_ptr + j * C * HID,
                   b2_ptr + j * C, C, HID, C, ROWS, BLOCK_C, BLOCK_N, BLOCK_C, PRECISION)
    j = LEVELS - 1
    rgb = _level(x, ly, lx, j + 1, norm_w_ptr + j * (C + 2), norm_b_ptr + j * (C + 2),
                 w1_ptr + j * HID * (C + 2), b1_ptr + j * HID, last_w_ptr, last_b_ptr, C, HID,
                 NOUT, ROWS, BLOCK_C, BLOCK_N, BLOCK_O, PRECISION)
    o = tl.arange(0, BLOCK_O)
    tl.store(out_ptr + p[:, None] * NOUT + o[None, :], rgb.to(out_ptr.dtype.element_ty),
             mask=p_ok[:, None] & (o[None, :] < NOUT))


@triton.jit
def _level_backward(gy, j, ly, lx, p, p_ok, inputs_ptr, norm_w_ptr, norm_b_ptr, w1_ptr, b1_ptr,
                    w2_ptr, ln_out_ptr, hidden_ptr, delta_ptr, dnorm_ptr, P, C, HID, M, LEVELS,
                    ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of level ``j + 1`` (``j`` indexes the packed parameters) for its output
    gradient ``gy`` ``[ROWS, BLOCK_M]`` (``W2`` ``M×HID`` at ``w2_ptr``): reads the level's
    input from ``inputs[j]``; writes its LayerNorm output (``ln_out[j]``, ``P×(C+2)``),
    GELU output and ``δ`` (``hidden[j]``, ``delta[j]``, ``P×HID``) and this tile's
    LayerNorm affine gradients (``dnorm[tile, j]``, ``2×(C+2)``: γ then β); returns the
    input's gradient ``[ROWS, BLOCK_C]``."""
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    ok = p_ok[:, None] & c_ok[None, :]
    rows = p.to(tl.int64) + j * P
    x = tl.load(inputs_ptr + rows[:, None] * C + c[None, :], mask=ok, other=0.0)
    bit_y, bit_x = _level_bits(ly, lx, j + 1)
    norm_w = norm_w_ptr + j * (C + 2)
    u, u_y, u_x, x_bar, ey, ex, rstd = _level_norm(x, bit_y, bit_x, norm_w,
                                                   norm_b_ptr + j * (C + 2), c, c_ok, C)
    ln_row = ln_out_ptr + rows * (C + 2)
    tl.store(ln_row[:, None] + c[None, :], u, mask=ok)
    tl.store(ln_row + C, u_y, mask=p_ok)
    tl.store(ln_row + C + 1, u_x, mask=p_ok)
    o = tl.arange(0, BLOCK_M)
    du = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
    du_y = tl.zeros([ROWS], dtype=tl.float32)
    du_x = tl.zeros([ROWS], dtype=tl.float32)
    for n0 in range(0, HID, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < HID
        z, w1t, w_y, w_x = _level_fc1(u, u_y, u_x, w1_ptr + j * HID * (C + 2), b1_ptr + j * HID,
                                      n, n_ok, c, c_ok, C, PRECISION)
        delta = _hidden_chunk_backward(z, gy, w2_ptr, n, n_ok, o, M, HID, rows, p_ok,
                                       hidden_ptr, delta_ptr, PRECISION)
        du += tl.dot(delta.to(w1t.dtype), tl.trans(w1t), input_precision=PRECISION)
        du_y += tl.sum(delta * w_y[None, :], 1)
        du_x += tl.sum(delta * w_x[None, :], 1)
    # Rows outside the tile have gy = 0, hence du = 0: the sums over rows need no mask.
    tile = dnorm_ptr + (tl.program_id(0) * LEVELS + j) * 2 * (C + 2)
    tl.store(tile + c, tl.sum(du * x_bar, 0), mask=c_ok)
    tl.store(tile + C, tl.sum(du_y * ey, 0))
    tl.store(tile + C + 1, tl.sum(du_x * ex, 0))
    tl.store(tile + C + 2 + c, tl.sum(du, 0), mask=c_ok)
    tl.store(tile + 2 * C + 2, tl.sum(du_y, 0))
    tl.store(tile + 2 * C + 3, tl.sum(du_x, 0))
    return _level_norm_backward(du, du_y, du_x, x_bar, ey, ex, rstd, norm_w, c, c_ok, C)


@triton.jit
def _levels_backward_kernel(x_ptr, coord_ptr, norm_w_ptr, norm_b_ptr, w1_ptr, b1_ptr, w2_ptr,
                            b2_ptr, last_w_ptr, dout_ptr, dx_ptr, inputs_ptr, ln_out_ptr,
                            hidden_ptr, delta_ptr, dlevel_out_ptr, dnorm_ptr,
                            P, H, W, C, HID, NOUT, LEVELS,
                            shift_y_lo, shift_y_hi, shift_x_lo, shift_x_hi, inv_h, inv_w,
                            public, base_y, step_y, base_x, step_x,
                            ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of :func:`_levels_kernel` for ``dout`` (``P×NOUT``).

    Reruns the levels, writing each one's input (``inputs``, ``LEVELS×P×C``), then goes
    back through them (:func:`_level_backward`'s outputs, each ``LEVELS×`` stacked), writing
    the gradient of each but the last level's output (``dlevel_out``, ``(LEVELS-1)×P×C``:
    fc2's output gradient) and ``dx`` (``P×C``); all fp32."""
    p = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    p_ok = p < P
    _, _, ly, lx = _query_local(coord_ptr, p, p_ok, H, W, (shift_y_lo, shift_y_hi),
                                (shift_x_lo, shift_x_hi), inv_h, inv_w,
                                (public, base_y, step_y, base_x, step_x))
    c = tl.arange(0, BLOCK_C)
    ok = p_ok[:, None] & (c[None, :] < C)
    out = p.to(tl.int64)[:, None] * C + c[None, :]
    x = tl.load(x_ptr + out, mask=ok, other=0.0).to(tl.float32)
    for j in range(0, LEVELS - 1):
        tl.store(inputs_ptr + j * P * C + out, x, mask=ok)
        x = _level(x, ly, lx, j + 1, norm_w_ptr + j * (C + 2), norm_b_ptr + j * (C + 2),
                   w1_ptr + j * HID * (C + 2), b1_ptr + j * HID, w2_ptr + j * C * HID,
                   b2_ptr + j * C, C, HID, C, ROWS, BLOCK_C, BLOCK_N, BLOCK_C, PRECISION)
    tl.store(inputs_ptr + (LEVELS - 1) * P * C + out, x, mask=ok)
    # The stores above are read back below by other threads of this program.
    tl.debug_barrier()
    o = tl.arange(0, BLOCK_O)
    gy = tl.load(dout_ptr + p[:, None] * NOUT + o[None, :],
                 mask=p_ok[:, None] & (o[None, :] < NOUT), other=0.0).to(tl.float32)
    dx = _level_backward(gy, LEVELS - 1, ly, lx, p, p_ok, inputs_ptr, norm_w_ptr, norm_b_ptr,
                         w1_ptr, b1_ptr, last_w_ptr, ln_out_ptr, hidden_ptr, delta_ptr,
                         dnorm_ptr, P, C, HID, NOUT, LEVELS, ROWS, BLOCK_C, BLOCK_N, BLOCK_O,
                         PRECISION)
    for i in range(0, LEVELS - 1):
        j = LEVELS - 2 - i
        tl.store(dlevel_out_ptr + j * P * C + out, dx, mask=ok)
        dx = _level_backward(dx, j, ly, lx, p, p_ok, inputs_ptr, norm_w_ptr, norm_b_ptr,
                             w1_ptr, b1_ptr, w2_ptr + j * C * HID, ln_out_ptr, hidden_ptr,
                             delta_ptr, dnorm_ptr, P, C, HID, C, LEVELS, ROWS, BLOCK_C,
                             BLOCK_N, BLOCK_C, PRECISION)
    tl.store(dx_ptr + out, dx, mask=ok)


# Keys: the widths and precision (launch.Tuned adds the size bucket).  Reset: buffers the
# kernels add into (level 0's map gradient) and per-tile partial sums, whose slots past a
# configuration's last tile hold what a configuration with smaller tiles wrote there
# while being benchmarked.
_level0 = launch.autotuned(_level0_kernel, ["C", "HID", "PRECISION"])
_level0_backward = launch.autotuned(_level0_backward_kernel, ["C", "HID", "PRECISION"],
                                 reset_to_zero=["dmaps_ptr"], configs=launch.BACKWARD_CONFIGS)
_stats = launch.autotuned(_stats_kernel, ["C", "d", "PRECISION"], reset_to_zero=["part_ptr"])
_stats_backward = launch.autotuned(_stats_backward_kernel, ["C", "d", "PRECISION"],
                                reset_to_zero=["dnorm_ptr"], configs=launch.BACKWARD_CONFIGS)
_apply = launch.autotuned(_apply_kernel, ["C", "d", "PRECISION"])
_apply_backward = launch.autotuned(_apply_backward_kernel, ["C", "d", "PRECISION"],
                                reset_to_zero=["dmat_ptr"], configs=launch.BACKWARD_CONFIGS)
_levels = launch.autotuned(_levels_kernel, ["C", "HID", "LEVELS", "PRECISION"])
_levels_backward = launch.autotuned(_levels_backward_kernel, ["C", "HID", "LEVELS", "PRECISION"],
                                 reset_to_zero=["dnorm_ptr"],
                                 configs=launch.BACKWARD_CONFIGS)


# ----------------------------------------------------------------------------------------
# Operators
# ----------------------------------------------------------------------------------------

_F32 = torch.float32


def _geometry(h, w, public_centres=False):
    """The geometry kernels' scalar arguments: the member shifts of
    :func:`grid.ensemble_constants` (its clamp bounds are this module's constexprs),
    ``1/H``, ``1/W`` (``local_coord``), rounded to fp32 at launch as PyTorch rounds a
    Python float, then the centre rounding: the flag ``public`` (0 or 1) and the rows' and
    columns' :func:`grid.public_constants` (read only when it is set)."""
    return (*grid.ensemble_constants((h, w))[:4], 1 / h, 1 / w, int(public_centres),
            *grid.public_constants(h), *grid.public_constants(w))


def _tiles(n):
    """Slots per image of a per-tile partial buffer over ``n`` rows: an upper bound on the
    programs along a launch's first grid axis (tiles of the smallest ``ROWS`` a launch may
    use), passed to the kernels as the stride between images.  Zero-filled, so slots a
    configuration with larger tiles leaves unwritten add nothing."""
    return triton.cdiv(n, launch.smallest_rows())


def _device(t):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _check_widths(**widths):
    for name, width in widths.items():
        if width > MAX_WIDTH:
            raise ValueError(f"the triton HIIF decode holds rows of at most {MAX_WIDTH} values "
                             f"in registers; {name} is {width}")


def _check_level_widths(fc1_w):
    hidden = {w.shape[0] for w in fc1_w}
    if len(hidden) != 1:
        raise ValueError("the triton HIIF decode needs one hidden width for levels 1..L-1; "
                         f"got {sorted(hidden)}")
    _check_widths(hidden=hidden.pop())


def _contiguous(*ts):
    return [t.contiguous() for t in ts]


def _cast(grads, like):
    """``grads`` in their inputs' dtypes."""
    return tuple(g.to(t.dtype) for g, t in zip(grads, like))


@torch.library.custom_op(NS + "hiif_level0" + SUFFIX, mutates_args=())
def hiif_level0_triton(maps: torch.Tensor, row_sums: torch.Tensor, w_extra: torch.Tensor,
                       bias: torch.Tensor, fc2_w: torch.Tensor, fc2_b: torch.Tensor,
                       coord: torch.Tensor, cell: torch.Tensor, channels: int,
                       public_centres: bool) -> torch.Tensor:
    """Level 0 of queries ``coord``, ``cell`` (``B×m×2``) → ``B×m×C``.

    maps ``B×H×W×4×(hidden+2)`` (``prepare_hiif``), row_sums ``4×hidden``, w_extra
    ``hidden×4``, bias ``hidden``, fc2 ``(C×hidden, C)``, ``channels`` = C;
    ``public_centres``: LR centres rounded as the public code does (``geometry.CENTRES``)."""
    b, m = coord.shape[:2]
    h, w, hid = maps.shape[1], maps.shape[2], maps.shape[-1] - 2
    out = launch.empty(b, m, fc2_w.shape[0], device=maps.device, dtype=maps.dtype)
    if out.numel() == 0:
        return out
    _check_widths(channels=channels, hidden=hid)
    with _device(maps):
        launch.launch(_level0, b * m, *_contiguous(maps, row_sums, w_extra, bias, fc2_w, fc2_b,
                                                coord, cell),
                   out, b * m, m, h, w, channels, hid, *_geometry(h, w, public_centres),
                   BLOCK_C=launch.block(channels), PRECISION=launch.precision(maps), **grid.NO_FMA)
    return out


@torch.library.custom_op(NS + "hiif_level0" + SUFFIX + "_backward", mutates_args=())
def hiif_level0_triton_backward(
        grad_out: torch.Tensor, maps: torch.Tensor, row_sums: torch.Tensor,
        w_extra: torch.Tensor, bias: torch.Tensor, fc2_w: torch.Tensor, fc2_b: torch.Tensor,
        coord: torch.Tensor, cell: torch.Tensor, channels: int, public_centres: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`hiif_level0_triton` w.r.t. maps, row_sums, w_extra, bias, fc2."""
    like = (maps, row_sums, w_extra, bias, fc2_w, fc2_b)
    b, m = coord.shape[:2]
    n, h, w, hid = b * m, maps.shape[1], maps.shape[2], maps.shape[-1] - 2
    dmaps = torch.zeros(maps.shape, device=maps.device, dtype=_F32)
    hidden, delta = (launch.empty(n, hid, device=maps.device, dtype=_F32) for _ in range(2))
    dev, ed = (launch.empty(n, 4, device=maps.device, dtype=_F32) for _ in range(2))
    if n:
        with _device(maps):
            launch.launch(_level0_backward, n,
                       *_contiguous(maps, row_sums, w_extra, bias, fc2_w, coord, cell, grad_out),
                       dmaps, hidden, delta, dev, ed, n, m, h, w, channels, hid,
                       *_geometry(h, w, public_centres), BLOCK_C=launch.block(channels),
                       PRECISION=launch.precision(maps), **grid.NO_FMA)
    gy = grad_out.reshape(n, -1).to(_F32)
    return _cast((dmaps, dev.t() @ delta, delta.t() @ ed, delta.sum(0), gy.t() @ hidden,
                  gy.sum(0)), like)


def _attention_meta(x, heads):
    c = x.shape[-1]
    d = c // heads
    _check_widths(channels=c)
    return {"BLOCK_C": launch.block(c), "BLOCK_D": launch.block(d),
            "PRECISION": launch.precision(x)}


@torch.library.custom_op(NS + "hiif_attention_stats" + SUFFIX, mutates_args=())
def hiif_attention_stats_triton(x: torch.Tensor, qkv_w: torch.Tensor, qkv_b: torch.Tensor,
                                kln_w: torch.Tensor, kln_b: torch.Tensor, vln_w: torch.Tensor,
                                vln_b: torch.Tensor, heads: int) -> torch.Tensor:
    """Per image and head, ``Σ k̂ᵀv̂`` over the ``m`` queries of ``x`` (``B×m×C``) →
    ``B×heads×d×d`` (unnormalised)."""
    b, m, c = x.shape
    d = c // heads
    tiles = _tiles(m)
    part = torch.zeros(b, tiles, heads, d, d, device=x.device, dtype=_F32)
    if m:
        with _device(x):
            launch.launch(_stats, m, *_contiguous(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b),
                       part, m, tiles, c, heads, d, grid_extra=(b,), **_attention_meta(x, heads))
    return part.sum(1).to(x.dtype)


@torch.library.custom_op(NS + "hiif_attention_stats" + SUFFIX + "_backward", mutates_args=())
def hiif_attention_stats_triton_backward(
        grad_out: torch.Tensor, x: torch.Tensor, qkv_w: torch.Tensor, qkv_b: torch.Tensor,
        kln_w: torch.Tensor, kln_b: torch.Tensor, vln_w: torch.Tensor, vln_b: torch.Tensor,
        heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                             torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`hiif_attention_stats_triton` w.r.t. x, qkv, kln, vln."""
    b, m, c = x.shape
    d, n = c // heads, b * m
    f32 = {"device": x.device, "dtype": _F32}
    dx = torch.zeros(b, m, c, **f32)
    dkv = launch.empty(n, heads, 2, d, **f32)
    tiles = _tiles(m)
    dnorm = torch.zeros(b, tiles, 4, d, **f32)
    if m:
        with _device(x):
            launch.launch(_stats_backward, m, *_contiguous(x, qkv_w, qkv_b, kln_w, kln_b, vln_w,
                                                        vln_b, grad_out),
                       dx, dkv, dnorm, m, tiles, c, heads, d, grid_extra=(b,),
                       **_attention_meta(x, heads))
    # Only k's and v's rows of qkv (head h: rows [3dh + d, 3dh + 3d)) get gradients.
    d_qkv_w = torch.zeros(heads, 3, d, c, **f32)
    d_qkv_w[:, 1:] = (dkv.reshape(n, -1).t() @ x.reshape(n, c).to(_F32)).view(heads, 2, d, c)
    d_qkv_b = torch.zeros(heads, 3, d, **f32)
    d_qkv_b[:, 1:] = dkv.sum(0)
    d_norm = dnorm.sum((0, 1))
    return _cast((dx, d_qkv_w.view(3 * c, c), d_qkv_b.view(3 * c),
                  *[g.clone() for g in d_norm.unbind(0)]),
                 (x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b))


@torch.library.custom_op(NS + "hiif_attention_apply" + SUFFIX, mutates_args=())
def hiif_attention_apply_triton(x: torch.Tensor, mat: torch.Tensor, qkv_w: torch.Tensor,
                                qkv_b: torch.Tensor, proj1_w: torch.Tensor,
                                proj1_b: torch.Tensor, proj2_w: torch.Tensor,
                                proj2_b: torch.Tensor) -> torch.Tensor:
    """``x + proj2(GELU(proj1(x + q·M)))`` for ``x`` ``B×m×C`` and the complete
    (normalised) sums ``mat`` ``B×heads×d×d`` → ``B×m×C``."""
    b, m, c = x.shape
    heads = mat.shape[1]
    out = launch.empty(b, m, c, device=x.device, dtype=x.dtype)
    if m:
        with _device(x):
            launch.launch(_apply, m, *_contiguous(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w,
                                               proj2_b),
                       out, m, c, heads, c // heads, grid_extra=(b,),
                       **_attention_meta(x, heads))
    return out


@torch.library.custom_op(NS + "hiif_attention_apply" + SUFFIX + "_backward", mutates_args=())
def hiif_attention_apply_triton_backward(
        grad_out: torch.Tensor, x: torch.Tensor, mat: torch.Tensor, qkv_w: torch.Tensor,
        qkv_b: torch.Tensor, proj1_w: torch.Tensor, proj1_b: torch.Tensor,
        proj2_w: torch.Tensor, proj2_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor, torch.Tensor]:
    """Gradients of :func:`hiif_attention_apply_triton` w.r.t. every input."""
    b, m, c = x.shape
    heads = mat.shape[1]
    d, n = c // heads, b * m
    f32 = {"device": x.device, "dtype": _F32}
    dx, r, hidden, delta, dq = (torch.zeros(n, c, **f32) for _ in range(5))
    tiles = _tiles(m)
    dmat = torch.zeros(b, tiles, heads, d, d, **f32)
    if m:
        with _device(x):
            launch.launch(_apply_backward, m, *_contiguous(x, mat, qkv_w, qkv_b, proj1_w, proj1_b,
                                                        proj2_w, grad_out),
                       dx, r, hidden, delta, dq, dmat, m, tiles, c, heads, d, grid_extra=(b,),
                       **_attention_meta(x, heads))
    gy = grad_out.reshape(n, c).to(_F32)
    # Only q's rows of qkv (head h: rows [3dh, 3dh + d)) get gradients.
    d_qkv_w = torch.zeros(heads, 3, d, c, **f32)
    d_qkv_w[:, 0] = (dq.t() @ x.reshape(n, c).to(_F32)).view(heads, d, c)
    d_qkv_b = torch.zeros(heads, 3, d, **f32)
    d_qkv_b[:, 0] = dq.sum(0).view(heads, d)
    return _cast((dx.view(b, m, c), dmat.sum(1), d_qkv_w.view(3 * c, c), d_qkv_b.view(3 * c),
                  delta.t() @ r, delta.sum(0), gy.t() @ hidden, gy.sum(0)),
                 (x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b))


class _Levels:
    """Levels 1..L-1's parameters packed for the kernels (level ``j + 1`` at index ``j``):
    norm ``L'×(C+2)``, fc1 ``L'×hidden×(C+2)`` and ``L'×hidden``, the first ``L'-1``
    levels' fc2 (``×C×hidden``, ``×C``; the last level's weight stands in when there are
    none: never read) and the last level's fc2 (``NOUT×hidden``, ``NOUT``)."""

    def __init__(self, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b):
        _check_level_widths(fc1_w)
        self.count = len(norm_w)
        self.hidden, self.nout = fc1_w[0].shape[0], fc2_w[-1].shape[0]
        middle = slice(0, self.count - 1) if self.count > 1 else slice(-1, None)
        self.tensors = [torch.stack(ts).contiguous() for ts in (
            norm_w, norm_b, fc1_w, fc1_b, fc2_w[middle], fc2_b[middle])]
        self.tensors += _contiguous(fc2_w[-1], fc2_b[-1])

    def meta(self, x):
        c = x.shape[-1]
        _check_widths(channels=c)
        return {"BLOCK_C": launch.block(c), "BLOCK_O": launch.block(self.nout),
                "PRECISION": launch.precision(x), **grid.NO_FMA}


@torch.library.custom_op(NS + "hiif_levels" + SUFFIX, mutates_args=())
def hiif_levels_triton(x: torch.Tensor, coord: torch.Tensor, norm_w: list[torch.Tensor],
                       norm_b: list[torch.Tensor], fc1_w: list[torch.Tensor],
                       fc1_b: list[torch.Tensor], fc2_w: list[torch.Tensor],
                       fc2_b: list[torch.Tensor], h: int, w: int,
                       public_centres: bool) -> torch.Tensor:
    """Levels 1..L-1 of ``x`` (``B×m×C``) at ``coord`` on an ``h×w`` feature map →
    ``B×m×NOUT`` (lists: one entry per level; ``public_centres``: as
    :func:`hiif_level0_triton`'s)."""
    b, m, c = x.shape
    out = launch.empty(b, m, fc2_w[-1].shape[0], device=x.device, dtype=x.dtype)
    levels = _Levels(norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b)
    n = b * m
    if n:
        with _device(x):
            launch.launch(_levels, n, *_contiguous(x, coord), *levels.tensors, out, n, h, w, c,
                       levels.hidden, levels.nout, levels.count,
                       *_geometry(h, w, public_centres),
                       **levels.meta(x))
    return out


@torch.library.custom_op(NS + "hiif_levels" + SUFFIX + "_backward", mutates_args=())
def hiif_levels_triton_backward(
        grad_out: torch.Tensor, x: torch.Tensor, coord: torch.Tensor, norm_w: list[torch.Tensor],
        norm_b: list[torch.Tensor], fc1_w: list[torch.Tensor], fc1_b: list[torch.Tensor],
        fc2_w: list[torch.Tensor], fc2_b: list[torch.Tensor], h: int, w: int,
        public_centres: bool
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor],
           list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Gradients of :func:`hiif_levels_triton`: ``x``'s, then one list per parameter list."""
    b, m, c = x.shape
    levels = _Levels(norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b)
    count, hid, n = levels.count, levels.hidden, b * m
    f32 = {"device": x.device, "dtype": _F32}
    dx = torch.zeros(n, c, **f32)
    inputs = launch.empty(count, n, c, **f32)
    ln_out = launch.empty(count, n, c + 2, **f32)
    hidden, delta = (launch.empty(count, n, hid, **f32) for _ in range(2))
    dlevel_out = launch.empty(max(count - 1, 1), n, c, **f32)
    dnorm = torch.zeros(_tiles(n), count, 2, c + 2, **f32)
    if n:
        with _device(x):
            launch.launch(_levels_backward, n, *_contiguous(x, coord), *levels.tensors[:-1],
                       grad_out.contiguous(), dx, inputs, ln_out, hidden, delta, dlevel_out,
                       dnorm, n, h, w, c, hid, levels.nout, count,
                       *_geometry(h, w, public_centres),
                       **levels.meta(x))
    gy = grad_out.reshape(n, -1).to(_F32)
    out_grads = [*dlevel_out[:count - 1], gy]
    d_norm = dnorm.sum(0)
    # Clones: an operator's outputs may not alias one another.
    grads = ([d_norm[j, 0].clone() for j in range(count)],
             [d_norm[j, 1].clone() for j in range(count)],
             [delta[j].t() @ ln_out[j] for j in range(count)],
             [delta[j].sum(0) for j in range(count)],
             [g.t() @ hidden[j] for j, g in enumerate(out_grads)],
             [g.sum(0) for g in out_grads])
    lists = (norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b)
    return (*_cast([dx.view(b, m, c)], [x]), *[list(_cast(gs, ts)) for gs, ts in zip(grads, lists)])


compiled_hiif.register(SUFFIX)


def hiif(feat, inp, coord, cell, params, chunk_size=None, normalizer="n"):
    """Decode queries with attention over all ``Q`` queries of each image (arguments as
    ``torch_impl.hiif.hiif``; ``params`` prepared by :func:`prepare_hiif`) → ``B×Q×3``."""
    return _decode(feat, inp, coord, cell, params, chunk_size, normalizer, False)


def hiif_public_codes(feat, inp, coord, cell, params, chunk_size=None, normalizer="n"):
    """:func:`hiif` with the public code's LR pixel centres (``level_codes="public"``;
    ``reference.hiif.hiif_public_codes``): the operators' ``public_centres`` flag."""
    return _decode(feat, inp, coord, cell, params, chunk_size, normalizer, True)


#: The public-centres mode needs only the feature-map preparation.
prepare_hiif_public_codes = prepare_hiif


def _decode(feat, inp, coord, cell, params, chunk_size, normalizer, public_centres):
    _check_widths(channels=params["level0"]["channels"],
                  hidden=params["levels"][0]["fc1"][0].shape[0])
    _check_level_widths([level["fc1"][0] for level in params["levels"][1:]])
    _check_offsets(coord, chunk_size, params)
    return compiled_hiif.decode(feat, inp, coord, cell, params, chunk_size, normalizer, SUFFIX,
                                centres=(public_centres,))


def _check_offsets(coord, chunk_size, params):
    """The kernels index their buffers with 32-bit offsets; the largest is the levels
    backward's stack of every level's input, ``levels × queries × (C + 2)`` of one call."""
    b, n = coord.shape[:2]
    per_call = b * (n if chunk_size is None else min(n, max(1, chunk_size // b)))
    widths = [params["level0"]["channels"] + 2, params["levels"][0]["fc1"][0].shape[0]]
    elements = len(params["levels"]) * per_call * max(widths)
    if elements >= 2 ** 31:
        limit = (2 ** 31 - 1) // (len(params["levels"]) * max(widths))
        raise ValueError(f"the triton HIIF decode indexes with 32-bit offsets: at most "
                         f"{limit:,} queries per call, got {per_call:,}; pass a smaller "
                         f"chunk_size")
