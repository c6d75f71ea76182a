"""HIIF's attention blocks in Triton, the global reduction as its own pass:

* ``_stats_kernel`` (tiles of one image × images): per head ``Σ k̂ᵀv̂`` over the tile
  (``tl.dot``), written per tile and summed by PyTorch;
* ``_apply_kernel`` (same grid): ``x + proj2(GELU(proj1(x + q·M)))``: per head, only q's
  rows of ``qkv`` and one ``tl.dot`` with the head's ``M`` laid at its columns, then
  :func:`mlp.two_layers`;

and their backward kernels (``dM`` and the LayerNorm affines written per tile).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...reference.hiif import LN_EPS
from .. import launch, mlp

_EPS = tl.constexpr(LN_EPS)



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


# Keys: the widths and precision (launch.Tuned adds the size bucket).  Reset: buffers the
# kernels add into and per-tile partial sums, whose slots past a configuration's last tile
# hold what a configuration with smaller tiles wrote there while being benchmarked.
stats = launch.autotuned(_stats_kernel, ["C", "d", "PRECISION"], reset_to_zero=["part_ptr"])
stats_backward = launch.autotuned(_stats_backward_kernel, ["C", "d", "PRECISION"],
                               reset_to_zero=["dnorm_ptr"], configs=launch.BACKWARD_CONFIGS)
apply = launch.autotuned(_apply_kernel, ["C", "d", "PRECISION"])
apply_backward = launch.autotuned(_apply_backward_kernel, ["C", "d", "PRECISION"],
                               reset_to_zero=["dmat_ptr"], configs=launch.BACKWARD_CONFIGS)
