"""DIIF decode in Triton: the operator ``implicit_kernels::diif_decode_triton``.

The decoder after SPEC.md §3's splits, with the C++ operator's arguments
(:func:`implicit_kernels.compiled.diif._op_inputs`):

* per public call, the 4×4 corner projection ``W_z·z_t`` (a convolution,
  :func:`prepare_diif`, differentiated by PyTorch);
* per chunk, the distinct slices (``geometry.unique_slices``: index bookkeeping in
  PyTorch), then two kernels:

  1. ``_coarse_kernel``, per tile of slices × one vertex ``t``: the 6 coordinate inputs
     from the slice's integers, ``relu(corner + W_c·x6 + b0)``, the 256×256 layer and
     ``G_t = W_h·H_t`` fused (``tl.dot``), writing ``G`` (``S·4 × D_f``, fp32);
  2. ``_fine_kernel``, per tile of pixels: ``relu(Σ_t w_t G_t + W_d·d + b)``, the fine
     256×256 layer and the 256→3 layer fused, writing only RGB.

  Each kernel chains two dense layers by streaming the hidden layer in column chunks
  (``acc += relu(x·W1[n]ᵀ + b1[n])·W2[:, n]ᵀ``), so no wide activation goes to memory:
  the only intermediate is ``G``, one row per slice and vertex.

Supported: the papers' depths (coarse 2 layers, fine 3 layers), any hidden widths
(blocks are the next power of two ≥ the width, ≥ 16 for ``tl.dot``, masked), fp32
(tf32 when ``torch.backends.cuda.matmul.allow_tf32``), and fp16/bf16 storage with fp32
accumulation on GPU.  Backward (v1) is exact PyTorch: it recomputes the chunk's forward
with the ``"torch"`` backend's splits and applies the chain rule by hand, as the opaque
operator ``implicit_kernels::diif_decode_triton_backward``.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as nnf
import triton
import triton.language as tl

from .. import geometry
from ..compiled.diif import _op_inputs, backward_arguments, setup_context
from ..torch_impl.diif import ENSEMBLE_VERTICES, prepare_diif  # noqa: F401  (same projection)

OP = "implicit_kernels::diif_decode_triton"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
#: Columns of the per-slice table: image, group (row, col), first and last pixel (row, col).
SLICE_COLUMNS = 7


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------

@triton.jit
def _centre(idx, n):
    """Pixel centre ``-1 + (2 idx + 1) / n`` of an integer index, as ``geometry.pixel_coord``."""
    return -1.0 + (2.0 * idx.to(tl.float32) + 1.0) / n


@triton.jit
def _group(idx, n_in, n_out):
    """``geometry.group_index``: ``min(floor((2 idx + 1) n_in / (2 n_out)), n_in - 1)``
    (non-negative, so integer division is the floor)."""
    return tl.minimum((2 * idx + 1) * n_in // (2 * n_out), n_in - 1)


@triton.jit
def _add_outer(acc, x, w_ptr, stride, cols, cols_ok):
    """``acc + x ⊗ w``: ``x`` a ``[R]`` column of inputs, ``w`` a weight column read with
    ``stride`` between output rows (``[R, BLOCK]`` fp32)."""
    w = tl.load(w_ptr + cols * stride, mask=cols_ok, other=0.0).to(tl.float32)
    return acc + x[:, None] * w[None, :]


@triton.jit
def _two_layers(x, w1_ptr, b1_ptr, w2_ptr, K, N, M,
                ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """``relu(x·W1ᵀ + b1)·W2ᵀ`` for ``x`` ``[ROWS, BLOCK_K]`` fp32 (columns ≥ K zero),
    ``W1`` ``N×K`` and ``W2`` ``M×N`` row-major → ``[ROWS, BLOCK_M]`` fp32.

    The hidden layer is formed ``BLOCK_N`` columns at a time and consumed at once, so
    only one chunk of it ever exists; dot operands are cast to the weights' dtype
    (fp32, or bf16/fp16 storage), accumulation is fp32."""
    k = tl.arange(0, BLOCK_K)
    m = tl.arange(0, BLOCK_M)
    xs = x.to(w1_ptr.dtype.element_ty)
    acc = tl.zeros([ROWS, BLOCK_M], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        w1t = tl.load(w1_ptr + n[None, :] * K + k[:, None],
                      mask=(k[:, None] < K) & (n[None, :] < N), other=0.0)
        b1 = tl.load(b1_ptr + n, mask=n < N, other=0.0).to(tl.float32)
        h = tl.maximum(tl.dot(xs, w1t, input_precision=PRECISION) + b1[None, :], 0.0)
        w2t = tl.load(w2_ptr + m[None, :] * N + n[:, None],
                      mask=(n[:, None] < N) & (m[None, :] < M), other=0.0)
        acc += tl.dot(h.to(w2_ptr.dtype.element_ty), w2t, input_precision=PRECISION)
    return acc


@triton.jit
def _coarse_kernel(slices_ptr, corner_ptr, wc_ptr, b0_ptr, w1_ptr, b1_ptr, wh_ptr, g_ptr,
                   S, H, W, HO, WO, DC, DF,
                   BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_F: tl.constexpr,
                   BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Coarse stage of ``BLOCK_S`` slices at vertex ``t = program_id(1)``:
    ``G[4s + t] = W_h·relu(W_1·relu(corner_t + W_c·x6_t + b0) + b1)``.

    slices: ``S×7`` int32 (see ``SLICE_COLUMNS``); corner: ``B×(H+1)×(W+1)×DC``;
    wc: ``DC×6``; w1: ``DC×DC``; wh: ``DF×DC``; g: ``4S×DF`` fp32."""
    t = tl.program_id(1)
    a = t // 2
    b = t % 2
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    s_ok = s < S
    row = slices_ptr + s * 7
    batch = tl.load(row, mask=s_ok, other=0).to(tl.int64)
    gi = tl.load(row + 1, mask=s_ok, other=0)
    gj = tl.load(row + 2, mask=s_ok, other=0)
    hf, wf = H * 1.0, W * 1.0
    hof, wof = HO * 1.0, WO * 1.0
    vy, vx = _centre(gi, hf), _centre(gj, wf)
    # rel(p, v_t) = rel(p, v*) - o_t, with vertex offset o_t = (2a - 1, 2b - 1).
    oy = (2 * a - 1).to(tl.float32)
    ox = (2 * b - 1).to(tl.float32)
    first_y = (_centre(tl.load(row + 3, mask=s_ok, other=0), hof) - vy) * hf - oy
    first_x = (_centre(tl.load(row + 4, mask=s_ok, other=0), wof) - vx) * wf - ox
    last_y = (_centre(tl.load(row + 5, mask=s_ok, other=0), hof) - vy) * hf - oy
    last_x = (_centre(tl.load(row + 6, mask=s_ok, other=0), wof) - vx) * wf - ox
    cell = tl.zeros([BLOCK_S], dtype=tl.float32)

    c = tl.arange(0, BLOCK_C)
    c_ok = c < DC
    corner_row = ((batch * (H + 1) + gi + a) * (W + 1) + gj + b) * DC
    pre = tl.load(corner_ptr + corner_row[:, None] + c[None, :],
                  mask=s_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    pre += tl.load(b0_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    pre = _add_outer(pre, first_y, wc_ptr, 6, c, c_ok)
    pre = _add_outer(pre, first_x, wc_ptr + 1, 6, c, c_ok)
    pre = _add_outer(pre, last_y, wc_ptr + 2, 6, c, c_ok)
    pre = _add_outer(pre, last_x, wc_ptr + 3, 6, c, c_ok)
    pre = _add_outer(pre, cell + 2.0 * hf / hof, wc_ptr + 4, 6, c, c_ok)
    pre = _add_outer(pre, cell + 2.0 * wf / wof, wc_ptr + 5, 6, c, c_ok)

    g = _two_layers(tl.maximum(pre, 0.0), w1_ptr, b1_ptr, wh_ptr, DC, DC, DF,
                    BLOCK_S, BLOCK_C, BLOCK_N, BLOCK_F, PRECISION)
    f = tl.arange(0, BLOCK_F)
    tl.store(g_ptr + (4 * s + t).to(tl.int64)[:, None] * DF + f[None, :], g,
             mask=s_ok[:, None] & (f[None, :] < DF))


@triton.jit
def _fine_kernel(pixels_ptr, slice_ptr, g_ptr, wd_ptr, bd_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                 out_ptr, P, H, W, HO, WO, DF, DH, NOUT,
                 BLOCK_P: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    """Slice ensemble and fine stage of ``BLOCK_P`` pixels:
    ``out = W_2·relu(W_1·relu(Σ_t w_t G[4 slice + t] + W_d·d + b) + b1) + b2``.

    pixels: ``P×2`` int64 (row, col); slice: ``P`` int64 index into ``G`` (``4S×DF``);
    wd: ``DF×2``; w1: ``DH×DF``; w2: ``NOUT×DH``; out: ``P×NOUT``."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < P
    r = tl.load(pixels_ptr + 2 * p, mask=p_ok, other=0)
    col = tl.load(pixels_ptr + 2 * p + 1, mask=p_ok, other=0)
    hf, wf = H * 1.0, W * 1.0
    dy = (_centre(r, HO * 1.0) - _centre(_group(r, H, HO), hf)) * hf
    dx = (_centre(col, WO * 1.0) - _centre(_group(col, W, WO), wf)) * wf
    sl = tl.load(slice_ptr + p, mask=p_ok, other=0)

    f = tl.arange(0, BLOCK_F)
    f_ok = f < DF
    z = tl.zeros([BLOCK_P, BLOCK_F], dtype=tl.float32)
    z += tl.load(bd_ptr + f, mask=f_ok, other=0.0).to(tl.float32)[None, :]
    z = _add_outer(z, dy, wd_ptr, 2, f, f_ok)
    z = _add_outer(z, dx, wd_ptr + 1, 2, f, f_ok)
    for t in tl.static_range(4):
        # geometry.slice_ensemble_weights: bilinear weight of vertex (a, b) = (t // 2, t % 2).
        wy = 1.0 + dy if t // 2 == 1 else 1.0 - dy
        wx = 1.0 + dx if t % 2 == 1 else 1.0 - dx
        g = tl.load(g_ptr + (4 * sl + t)[:, None] * DF + f[None, :],
                    mask=p_ok[:, None] & f_ok[None, :], other=0.0)
        z += (wy * wx / 4)[:, None] * g

    rgb = _two_layers(tl.maximum(z, 0.0), w1_ptr, b1_ptr, w2_ptr, DF, DH, NOUT,
                      BLOCK_P, BLOCK_F, BLOCK_N, BLOCK_O, PRECISION)
    o = tl.arange(0, BLOCK_O)
    o_ok = o < NOUT
    rgb += tl.load(b2_ptr + o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + p.to(tl.int64)[:, None] * NOUT + o[None, :],
             rgb.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & o_ok[None, :])


# Launch configurations.  The interpreter runs each program in Python, so it gets one
# fixed configuration (no autotuning there); on GPU a small list is autotuned per widths.
_INTERPRETER_CONFIG = {"coarse": {"BLOCK_S": 32, "BLOCK_N": 32},
                       "fine": {"BLOCK_P": 64, "BLOCK_N": 32}}


def _gpu_configs(rows):
    # Small row tiles: a tile's activations and accumulator are [rows, 256] fp32 in
    # registers (scripts/triton_compile_check.py prints registers and spills).
    return [triton.Config({rows: r, "BLOCK_N": n}, num_warps=w, num_stages=st)
            for r, n, w, st in ((16, 32, 4, 2), (32, 32, 4, 2), (32, 32, 8, 2),
                                (32, 64, 8, 2), (64, 32, 8, 2))]


if INTERPRET:
    _coarse, _fine = _coarse_kernel, _fine_kernel
else:
    _coarse = triton.autotune(_gpu_configs("BLOCK_S"), key=["DC", "DF", "PRECISION"])(_coarse_kernel)
    _fine = triton.autotune(_gpu_configs("BLOCK_P"), key=["DF", "DH", "PRECISION"])(_fine_kernel)


def _block(width):
    """Register block for a width: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(width))


def _launch(kernel, stage, grid, *args, **meta):
    """Launch ``kernel`` with ``grid(meta) -> tuple``; the interpreter's fixed config or
    the autotuner's."""
    if INTERPRET:
        meta.update(_INTERPRETER_CONFIG[stage])
        kernel[grid(meta)](*args, **meta)
    else:
        kernel[grid](*args, **meta)


# ----------------------------------------------------------------------------------------
# Operators
# ----------------------------------------------------------------------------------------

def _check_depths(coarse_w, fine_w):
    if len(coarse_w) != 1 or len(fine_w) != 2:
        raise ValueError("the triton DIIF decode supports the papers' depths only (coarse "
                         f"2 layers, fine 3); got {len(coarse_w) + 1} and {len(fine_w) + 1}")


def _slices(corner_proj, pixels, out_h, out_w, slicing):
    """``(in_size, unique_slices(...))`` of a chunk."""
    in_size = (corner_proj.shape[1] - 1, corner_proj.shape[2] - 1)
    return in_size, geometry.unique_slices(pixels, in_size, (out_h, out_w), slicing)


@torch.library.custom_op(OP, mutates_args=())
def diif_decode_triton(corner_proj: torch.Tensor, w_coord: torch.Tensor, b0: torch.Tensor,
                       coarse_w: list[torch.Tensor], coarse_b: list[torch.Tensor],
                       fine_wh: torch.Tensor, fine_wd: torch.Tensor, fine_b0: torch.Tensor,
                       fine_w: list[torch.Tensor], fine_b: list[torch.Tensor],
                       pixels: torch.Tensor, out_h: int, out_w: int, slicing: str) -> torch.Tensor:
    """DIIF decode of ``pixels`` (``B×Q×2`` int64) → ``B×Q×3`` in ``corner_proj``'s dtype.

    corner_proj ``B×(H+1)×(W+1)×D_c``, w_coord ``D_c×6`` (the first coarse layer's
    coordinate columns), coarse ``[(D_c×D_c, D_c)]``, fine_wh ``D_f×D_c``, fine_wd
    ``D_f×2``, fine ``[(D_h×D_f, D_h), (3×D_h, 3)]``."""
    _check_depths(coarse_w, fine_w)
    bsz, nq = pixels.shape[:2]
    (w2, b2), nout = (fine_w[1], fine_b[1]), fine_w[1].shape[0]
    out = corner_proj.new_empty(bsz, nq, nout)
    if out.numel() == 0:
        return out
    (h, w), (_, pixel_slice, s_batch, s_group, s_first, s_last) = _slices(
        corner_proj, pixels, out_h, out_w, slicing)
    table = torch.cat([s_batch[:, None], s_group, s_first, s_last], 1).to(torch.int32)
    n_slices, dc, df, dh = table.shape[0], corner_proj.shape[-1], fine_wh.shape[0], fine_w[0].shape[0]
    g = torch.empty(4 * n_slices, df, device=out.device, dtype=torch.float32)
    tf32 = (corner_proj.dtype == torch.float32 and corner_proj.is_cuda
            and torch.backends.cuda.matmul.allow_tf32)
    precision = "tf32" if tf32 else "ieee"
    contiguous = [t.contiguous() for t in (corner_proj, w_coord, b0, coarse_w[0], coarse_b[0],
                                           fine_wh, fine_wd, fine_b0, fine_w[0], fine_b[0], w2, b2)]
    cp, wc, b0, w1, b1, wh, wd, bd, wf1, bf1, wf2, bf2 = contiguous
    with torch.cuda.device(out.device) if out.is_cuda else contextlib.nullcontext():
        _launch(_coarse, "coarse", lambda m: (triton.cdiv(n_slices, m["BLOCK_S"]), 4),
                table.contiguous(), cp, wc, b0, w1, b1, wh, g, n_slices, h, w, out_h, out_w,
                dc, df, BLOCK_C=_block(dc), BLOCK_F=_block(df), PRECISION=precision)
        n_pixels = bsz * nq
        _launch(_fine, "fine", lambda m: (triton.cdiv(n_pixels, m["BLOCK_P"]),),
                pixels.reshape(-1, 2).contiguous(), pixel_slice.contiguous(), g, wd, bd, wf1,
                bf1, wf2, bf2, out, n_pixels, h, w, out_h, out_w, df, dh, nout,
                BLOCK_F=_block(df), BLOCK_O=_block(nout), PRECISION=precision)
    return out


@diif_decode_triton.register_fake
def _fake(corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0, fine_w,
          fine_b, pixels, out_h, out_w, slicing):
    return corner_proj.new_empty(pixels.shape[0], pixels.shape[1], fine_w[-1].shape[0])


@torch.library.custom_op(OP + "_backward", mutates_args=())
def diif_decode_triton_backward(
        grad_out: torch.Tensor, corner_proj: torch.Tensor, w_coord: torch.Tensor,
        b0: torch.Tensor, coarse_w: list[torch.Tensor], coarse_b: list[torch.Tensor],
        fine_wh: torch.Tensor, fine_wd: torch.Tensor, fine_b0: torch.Tensor,
        fine_w: list[torch.Tensor], fine_b: list[torch.Tensor], pixels: torch.Tensor,
        out_h: int, out_w: int, slicing: str) -> list[torch.Tensor]:
    """Gradients of :func:`diif_decode_triton` for ``grad_out`` (``B×Q×3``), flat in the
    order of its tensor inputs (``corner_proj, w_coord, b0, W_1, b_1, fine_wh, fine_wd,
    fine_b0, W_f1, W_f2, b_f1, b_f2``).

    v1, exact, in PyTorch: recomputes the forward of the ``"torch"`` backend's splits
    (per slice and vertex, then per pixel) keeping its activations, then the chain rule.
    """
    _check_depths(coarse_w, fine_w)
    (w1,), (b1,) = coarse_w, coarse_b
    (wf1, wf2), (bf1, bf2) = fine_w, fine_b
    (h, w), (group, pixel_slice, s_batch, s_group, s_first, s_last) = _slices(
        corner_proj, pixels, out_h, out_w, slicing)
    in_size, out_size, dtype = (h, w), (out_h, out_w), corner_proj.dtype
    n_slices = s_batch.shape[0]

    # Forward, keeping what the backward needs.
    cell = (2 * torch.tensor(in_size, device=pixels.device, dtype=dtype)
            / torch.tensor(out_size, device=pixels.device, dtype=dtype)).expand(n_slices, 2)
    rel_first = geometry.diif_rel(s_first, s_group, in_size, out_size, dtype)
    rel_last = geometry.diif_rel(s_last, s_group, in_size, out_size, dtype)
    d = geometry.diif_rel(pixels, group, in_size, out_size, dtype).reshape(-1, 2)
    weights = geometry.slice_ensemble_weights(d)
    z = nnf.linear(d, fine_wd, fine_b0)
    per_vertex = []
    for t, ((a, b), offset) in enumerate(ENSEMBLE_VERTICES):
        o = d.new_tensor(offset)
        x6 = torch.cat([rel_first - o, rel_last - o, cell], 1)
        index = (s_batch, s_group[:, 0] + a, s_group[:, 1] + b)
        pre = corner_proj[index] + nnf.linear(x6, w_coord, b0)
        hidden = nnf.linear(torch.relu(pre), w1, b1)
        coarse = torch.relu(hidden)
        z = z + weights[:, t:t + 1] * nnf.linear(coarse, fine_wh)[pixel_slice]
        per_vertex.append((x6, index, pre, hidden, coarse))
    u = torch.relu(z)
    z1 = nnf.linear(u, wf1, bf1)
    u1 = torch.relu(z1)

    # Backward: fine stage per pixel, then per slice and vertex.
    g = grad_out.reshape(-1, wf2.shape[0])
    d_wf2, d_bf2 = g.t() @ u1, g.sum(0)
    g = (g @ wf2) * (z1 > 0)
    d_wf1, d_bf1 = g.t() @ u, g.sum(0)
    g = (g @ wf1) * (z > 0)
    d_bd, d_wd = g.sum(0), g.t() @ d
    d_corner = torch.zeros_like(corner_proj, memory_format=torch.contiguous_format)
    d_wc, d_b0 = torch.zeros_like(w_coord), torch.zeros_like(b0)
    d_w1, d_b1, d_wh = torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(fine_wh)
    for t, (x6, index, pre, hidden, coarse) in enumerate(per_vertex):
        g_t = g.new_zeros(n_slices, g.shape[1]).index_add_(0, pixel_slice, weights[:, t:t + 1] * g)
        d_wh += g_t.t() @ coarse
        g_t = (g_t @ fine_wh) * (hidden > 0)
        d_w1 += g_t.t() @ torch.relu(pre)
        d_b1 += g_t.sum(0)
        g_t = (g_t @ w1) * (pre > 0)
        d_wc += g_t.t() @ x6
        d_b0 += g_t.sum(0)
        d_corner.index_put_(index, g_t, accumulate=True)
    return [d_corner, d_wc, d_b0, d_w1, d_b1, d_wh, d_wd, d_bd, d_wf1, d_wf2, d_bf1, d_bf2]


@diif_decode_triton_backward.register_fake
def _fake_backward(grad_out, corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd,
                   fine_b0, fine_w, fine_b, pixels, out_h, out_w, slicing):
    return [torch.empty_like(t, memory_format=torch.contiguous_format)
            for t in (corner_proj, w_coord, b0, *coarse_w, *coarse_b, fine_wh, fine_wd,
                      fine_b0, *fine_w, *fine_b)]


def _backward(ctx, grad_out):
    grads = diif_decode_triton_backward(*backward_arguments(ctx, grad_out))
    nc, nf = ctx.layers
    (d_corner, d_wc, d_b0), rest = grads[:3], grads[3:]
    d_cw, d_cb, rest = rest[:nc], rest[nc:2 * nc], rest[2 * nc:]
    (d_wh, d_wd, d_bd), d_fw, d_fb = rest[:3], rest[3:3 + nf], rest[3 + nf:]
    return (d_corner, d_wc, d_b0, d_cw, d_cb, d_wh, d_wd, d_bd, d_fw, d_fb, None, None, None, None)


diif_decode_triton.register_autograd(_backward, setup_context=setup_context)


def diif(feat, out_size, pixels, params, slicing):
    """Decode ``pixels`` (``B×Q×2``) of the ``out_size`` grid → ``B×Q×3`` (see the reference)."""
    return diif_decode_triton(*_op_inputs(params), pixels, out_size[0], out_size[1], slicing)
