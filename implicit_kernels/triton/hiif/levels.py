"""HIIF levels 1..L-1 in Triton (``_levels_kernel``, tiles of queries): the levels chained
with the activations in registers, each level's bits from ``coord`` in the kernel,
LayerNorm over ``[x, bits]`` (the two bits added analytically), fc1, GELU, fc2.  The
backward kernel first reruns the levels forward, writing each level's input, then goes
back through them.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ...reference.hiif import LN_EPS
from .. import launch
from . import hidden_chunk
from .query_geometry import level_bits, query_local

_EPS = tl.constexpr(LN_EPS)



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
def _level(x, ly, lx, level, norm_w_ptr, norm_b_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, C, HID, M,
           ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
           BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """One level: ``fc2(GELU(fc1(LN([x, bits]))))`` → ``[ROWS, BLOCK_M]`` (``W2`` ``M×HID``)."""
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    bit_y, bit_x = level_bits(ly, lx, level)
    u, u_y, u_x, _, _, _, _ = _level_norm(x, bit_y, bit_x, norm_w_ptr, norm_b_ptr, c, c_ok, C)
    o = tl.arange(0, BLOCK_M)
    acc = tl.zeros([ROWS, BLOCK_M], dtype=tl.float32)
    for n0 in range(0, HID, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        # [0], not ``z, _, ...``: ``_`` (rstd above) would become a loop-carried
        # variable changing shape, which the compiler refuses (the interpreter does not).
        z = _level_fc1(u, u_y, u_x, w1_ptr, b1_ptr, n, n < HID, c, c_ok, C, PRECISION)[0]
        acc = hidden_chunk.add(acc, z, w2_ptr, n, n < HID, o, M, HID, PRECISION)
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
    _, _, ly, lx = query_local(coord_ptr, p, p_ok, H, W, (shift_y_lo, shift_y_hi),
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
    bit_y, bit_x = level_bits(ly, lx, j + 1)
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
        delta = hidden_chunk.backward(z, gy, w2_ptr, n, n_ok, o, M, HID, rows, p_ok,
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
    _, _, ly, lx = query_local(coord_ptr, p, p_ok, H, W, (shift_y_lo, shift_y_hi),
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
# kernels add into and per-tile partial sums, whose slots past a configuration's last tile
# hold what a configuration with smaller tiles wrote there while being benchmarked.
forward = launch.autotuned(_levels_kernel, ["C", "HID", "LEVELS", "PRECISION"])
backward = launch.autotuned(_levels_backward_kernel, ["C", "HID", "LEVELS", "PRECISION"],
                         reset_to_zero=["dnorm_ptr"], configs=launch.BACKWARD_CONFIGS)
