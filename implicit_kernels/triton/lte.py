"""LTE decode in Triton: the operator ``implicit_kernels::lte_decode_triton``.

The C++ operator's argument layout (:func:`implicit_kernels.ops.lte.op_inputs`):
the coefficient and frequency maps are the estimators' 3×3 convolutions
(``B×H×W×2n`` channels last, :func:`prepare_lte`, differentiated by PyTorch); one kernel
per tile of member rows (:mod:`.ensemble`) gathers each member's coefficients and
frequencies, forms its Fourier feature ``coef ⊙ [cos πφ, sin πφ]`` with
``φ_i = (F[2i], F[2i+1])·rel + W_phase[i]·cell·(H, W)``, runs the four-layer MLP
(:func:`ensemble.chain`) and blends the members, writing only RGB.  The bilinear skip
of the LR image is added in PyTorch (see :mod:`implicit_kernels.ops.lte`).

Backward (``implicit_kernels::lte_decode_triton_backward``): one kernel recomputes each
tile and writes per row the chain's inputs and pre-activation gradients, the Fourier
feature's gradient split into its coefficient part and its phase part (one value per
column: the host adds column ``i`` and ``n + i`` into ``dφ_i``), and the member's pixel
and offset; the frequency and phase-weight gradients follow from ``dφ`` on the host, the
maps' by ``index_add`` over pixels.  ``coord`` and ``cell`` are not differentiated.

Supported: the paper's depth (4 Linear layers), any even coefficient width and any
hidden widths, fp32 (tf32 when PyTorch allows it on CUDA) and fp16/bf16 storage.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..ops import lte as ops
from ..ops.lte import prepare_lte
from . import ensemble, launch

__all__ = ["lte", "prepare_lte"]

OP = "implicit_kernels::lte_decode_triton"
PI = tl.constexpr(math.pi)


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------

@triton.jit
def _fourier_feature(coef_ptr, freq_ptr, phase_ptr, pixel, ok, ry, rx, cy, cx, K,
                     BLOCK_K: tl.constexpr):
    """Each row's ``coef ⊙ [cos πφ, sin πφ]`` (``K = 2n`` columns; column ``j`` uses
    phase ``j mod n``), with the ``coef``, ``cos πφ`` and ``sin πφ`` it came from, all
    ``[ROWS, BLOCK_K]`` fp32 (coef/freq ``(BHW)×K``, phase ``n×2``)."""
    j = tl.arange(0, BLOCK_K)
    j_ok = j < K
    pair = j % (K // 2)
    ok2 = ok[:, None] & j_ok[None, :]
    row = pixel[:, None] * K
    coef = tl.load(coef_ptr + row + j[None, :], mask=ok2, other=0.0).to(tl.float32)
    fy = tl.load(freq_ptr + row + 2 * pair[None, :], mask=ok2, other=0.0).to(tl.float32)
    fx = tl.load(freq_ptr + row + 2 * pair[None, :] + 1, mask=ok2, other=0.0).to(tl.float32)
    wy = tl.load(phase_ptr + 2 * pair, mask=j_ok, other=0.0).to(tl.float32)
    wx = tl.load(phase_ptr + 2 * pair + 1, mask=j_ok, other=0.0).to(tl.float32)
    phase = cy[:, None] * wy[None, :] + cx[:, None] * wx[None, :]
    # As the reference: (F·rel) + phase, then π·φ.
    angle = PI * ((fy * ry[:, None] + fx * rx[:, None]) + phase)
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    return coef * tl.where(j[None, :] < K // 2, cos, sin), coef, cos, sin


@triton.jit
def _decode_kernel(coord_ptr, cell_ptr, n_rows, queries, H, W, shift_y0, shift_y1, shift_x0,
                   shift_x1, lo, hi, coef_ptr, freq_ptr, phase_ptr, w1_ptr, b1_ptr, w2_ptr,
                   b2_ptr, w3_ptr, b3_ptr, w4_ptr, b4_ptr, out_ptr, K, N1, N2, N3, M,
                   ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_MID: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    """LTE (without the skip) of the tile's ``ROWS / 4`` queries → ``out`` (``BQ×M``)."""
    r, ok, q, pixel, ry, rx, cy, cx, weight = ensemble.members(
        coord_ptr, cell_ptr, n_rows, queries, H, W, shift_y0, shift_y1, shift_x0, shift_x1,
        lo, hi, ROWS)
    x, _, _, _ = _fourier_feature(coef_ptr, freq_ptr, phase_ptr, pixel, ok, ry, rx, cy, cx, K,
                                  BLOCK_K)
    pred = ensemble.chain(x, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, w4_ptr, b4_ptr,
                          K, N1, N2, N3, M, ROWS, BLOCK_K, BLOCK_MID, BLOCK_N, BLOCK_O, PRECISION)
    ensemble.blend_store(pred, weight, out_ptr, n_rows // 4, M, ROWS, BLOCK_O)


@triton.jit
def _backward_kernel(coord_ptr, cell_ptr, n_rows, queries, H, W, shift_y0, shift_y1, shift_x0,
                     shift_x1, lo, hi, coef_ptr, freq_ptr, phase_ptr, w1_ptr, b1_ptr, w2_ptr,
                     b2_ptr, w3_ptr, b3_ptr, w4_ptr, dout_ptr, x_ptr, hidden1_ptr, delta1_ptr,
                     act2_ptr, delta2_ptr, hidden3_ptr, delta3_ptr, gy_ptr, pixel_ptr, rel_ptr,
                     dcoef_ptr, dangle_ptr, K, N1, N2, N3, M,
                     ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_MID: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of :func:`_decode_kernel` for ``dout`` (``BQ×M``): the chain's rows
    (:class:`ensemble.ChainBuffers`), each row's coefficient gradient (``dcoef``,
    ``4BQ×K``), the gradient of ``φ_{j mod n}`` through column ``j`` (``dangle``,
    ``4BQ×K``) and its pixel and offset."""
    r, ok, q, pixel, ry, rx, cy, cx, weight = ensemble.members(
        coord_ptr, cell_ptr, n_rows, queries, H, W, shift_y0, shift_y1, shift_x0, shift_x1,
        lo, hi, ROWS)
    x, coef, cos, sin = _fourier_feature(coef_ptr, freq_ptr, phase_ptr, pixel, ok, ry, rx, cy,
                                         cx, K, BLOCK_K)
    gy = ensemble.gradient_rows(dout_ptr, q, ok, weight, M, BLOCK_O)
    dx = ensemble.chain_backward(x, gy, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, w4_ptr,
                                 K, N1, N2, N3, M, r, ok, x_ptr, hidden1_ptr, delta1_ptr,
                                 act2_ptr, delta2_ptr, hidden3_ptr, delta3_ptr, gy_ptr, ROWS,
                                 BLOCK_K, BLOCK_MID, BLOCK_N, BLOCK_O, PRECISION)
    first = tl.arange(0, BLOCK_K)[None, :] < K // 2
    ensemble.store_rows(dcoef_ptr, dx * tl.where(first, cos, sin), r, ok, K, BLOCK_K)
    # d/dφ of coef·cos πφ is -π coef sin πφ; of coef·sin πφ, π coef cos πφ.
    ensemble.store_rows(dangle_ptr, dx * coef * PI * tl.where(first, -sin, cos), r, ok, K,
                        BLOCK_K)
    ensemble.store_geometry(pixel_ptr, rel_ptr, r, ok, pixel, ry, rx)


_decode = launch.autotuned(_decode_kernel, ["K", "N1", "N2", "N3", "PRECISION"])
_backward = launch.autotuned(_backward_kernel, ["K", "N1", "N2", "N3", "PRECISION"],
                          configs=launch.BACKWARD_CONFIGS)


# ----------------------------------------------------------------------------------------
# Operators
# ----------------------------------------------------------------------------------------

def _decode_call(coef_map, weights, biases, coord, cell):
    return ensemble.Decode(coef_map, weights, biases, coord, cell, "LTE")


@torch.library.custom_op(OP, mutates_args=())
def lte_decode_triton(coef_map: torch.Tensor, freq_map: torch.Tensor, phase: torch.Tensor,
                      weights: list[torch.Tensor], biases: list[torch.Tensor],
                      coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """LTE decode without the skip, of ``coord``/``cell`` (``B×Q×2``) → ``B×Q×M`` in
    ``coef_map``'s dtype.

    coef_map, freq_map ``B×H×W×2n``; phase ``n×2``; weights/biases the MLP's four layers
    ``N1×2n, N2×N1, N3×N2, M×N3``."""
    return _decode_call(coef_map, weights, biases, coord, cell).forward(
        _decode, coef_map, freq_map, phase)


@torch.library.custom_op(OP + "_backward", mutates_args=())
def lte_decode_triton_backward(
        grad_out: torch.Tensor, coef_map: torch.Tensor, freq_map: torch.Tensor,
        phase: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
        coord: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor, list[torch.Tensor],
                                                          list[torch.Tensor]]:
    """Gradients of :func:`lte_decode_triton` for ``grad_out`` (``B×Q×M``):
    ``(d coef_map, d freq_map, d phase, [d weights], [d biases])``, contiguous, in the
    inputs' dtypes."""
    d = _decode_call(coef_map, weights, biases, coord, cell)
    rows = ensemble.ChainBuffers(d)
    k = d.widths[0]
    dcoef, dangle = (launch.empty(d.n_rows, k, device=d.device, dtype=torch.float32)
                     for _ in range(2))
    if d.n_rows:
        d.launch(_backward, *d.geometry_args(), coef_map.contiguous(), freq_map.contiguous(),
                 phase.contiguous(), *d.layers[:-1], grad_out.contiguous(), *rows.kernel_args(),
                 dcoef, dangle, *d.widths)
    dphi = dangle[:, :k // 2] + dangle[:, k // 2:]  # 4BQ×n
    # φ_i = F[2i]·rel_y + F[2i+1]·rel_x + W_phase[i]·cell: the pairs are interleaved.
    dfreq = (dphi.unsqueeze(-1) * rows.rel.unsqueeze(1)).reshape(d.n_rows, k)
    dphase = dphi.unflatten(0, (d.n_queries, 4)).sum(1).t() @ d.scaled_cell()
    grads = (d.scatter(dcoef, rows.pixel), d.scatter(dfreq, rows.pixel), dphase)
    return rows.op_gradients(grads, (coef_map, freq_map, phase), weights, biases)


ops.register(OP, lte_decode_triton_backward)


def lte(feat, inp, coord, cell, params):
    """Decode queries (``B×Q×2`` coord and unscaled cell) → ``B×Q×3`` (see the reference)."""
    return ops.decode(OP, inp, coord, cell, params)
