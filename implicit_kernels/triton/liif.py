"""LIIF decode in Triton: the operator ``implicit_kernels::liif_decode_triton``.

The C++ operator's argument layout (:func:`implicit_kernels.ops.liif.op_inputs`):
the first layer's ``9C`` feature part is a 3×3 convolution per LR pixel, ``proj``
(``B×H×W×D`` channels last, :func:`prepare_liif`, differentiated by PyTorch); the rest
runs in one kernel per tile of member rows (:mod:`.ensemble`: row ``4q + t`` is member
``t`` of query ``q``): the member's LR pixel and offset, the first layer
``relu(proj[pixel] + W_c·[rel, cell·(H, W)] + b0)``, the four remaining layers
(:func:`ensemble.chain`) and the area-weighted blend, writing only RGB.

Backward (``implicit_kernels::liif_decode_triton_backward``): one kernel recomputes each
tile and carries the gradient back through the chain and the first layer's ReLU,
writing per row every Linear's input and pre-activation gradient (fp32, ``4BQ`` rows:
bounded by the chunk), the member's pixel and offset; the weight gradients are GEMMs
and ``proj``'s an ``index_add`` over pixels.  ``coord`` and ``cell`` are data, not
differentiated (the backend refuses them requiring grad).

Supported: the paper's depth (5 Linear layers), any widths (blocks are the next power
of two ≥ the width, ≥ 16), fp32 (tf32 when PyTorch allows it on CUDA) and fp16/bf16
storage with fp32 accumulation on GPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops import liif as ops
from ..ops.liif import prepare_liif
from . import ensemble, launch, mlp

__all__ = ["liif", "prepare_liif"]

OP = "implicit_kernels::liif_decode_triton"


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------

@triton.jit
def _first_layer(proj_ptr, wc_ptr, b0_ptr, pixel, ok, ry, rx, cy, cx, D, BLOCK_K: tl.constexpr):
    """First layer's pre-activation ``proj[pixel] + W_c·[ry, rx, cy, cx] + b0`` of the
    tile's rows: ``[ROWS, BLOCK_K]`` fp32 (proj ``(BHW)×D``, wc ``D×4``)."""
    c = tl.arange(0, BLOCK_K)
    c_ok = c < D
    pre = tl.load(proj_ptr + pixel[:, None] * D + c[None, :], mask=ok[:, None] & c_ok[None, :],
                  other=0.0).to(tl.float32)
    pre = mlp.add_outer(pre, ry, wc_ptr, 4, c, c_ok)
    pre = mlp.add_outer(pre, rx, wc_ptr + 1, 4, c, c_ok)
    pre = mlp.add_outer(pre, cy, wc_ptr + 2, 4, c, c_ok)
    pre = mlp.add_outer(pre, cx, wc_ptr + 3, 4, c, c_ok)
    return pre + ensemble.bias_row(b0_ptr, D, BLOCK_K)


@triton.jit
def _decode_kernel(coord_ptr, cell_ptr, n_rows, queries, H, W, shift_y0, shift_y1, shift_x0,
                   shift_x1, lo, hi, proj_ptr, wc_ptr, b0_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                   w3_ptr, b3_ptr, w4_ptr, b4_ptr, out_ptr, D, N1, N2, N3, M,
                   ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_MID: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    """LIIF of the tile's ``ROWS / 4`` queries → ``out`` (``BQ×M``)."""
    r, ok, q, pixel, ry, rx, cy, cx, weight = ensemble.members(
        coord_ptr, cell_ptr, n_rows, queries, H, W, shift_y0, shift_y1, shift_x0, shift_x1,
        lo, hi, ROWS)
    pre = _first_layer(proj_ptr, wc_ptr, b0_ptr, pixel, ok, ry, rx, cy, cx, D, BLOCK_K)
    pred = ensemble.chain(tl.maximum(pre, 0.0), w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr,
                          w4_ptr, b4_ptr, D, N1, N2, N3, M, ROWS, BLOCK_K, BLOCK_MID, BLOCK_N,
                          BLOCK_O, PRECISION)
    ensemble.blend_store(pred, weight, out_ptr, n_rows // 4, M, ROWS, BLOCK_O)


@triton.jit
def _backward_kernel(coord_ptr, cell_ptr, n_rows, queries, H, W, shift_y0, shift_y1, shift_x0,
                     shift_x1, lo, hi, proj_ptr, wc_ptr, b0_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                     w3_ptr, b3_ptr, w4_ptr, dout_ptr, x_ptr, hidden1_ptr, delta1_ptr, act2_ptr,
                     delta2_ptr, hidden3_ptr, delta3_ptr, gy_ptr, pixel_ptr, rel_ptr, dpre_ptr,
                     D, N1, N2, N3, M,
                     ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_MID: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of :func:`_decode_kernel` for ``dout`` (``BQ×M``): the chain's rows
    (:class:`ensemble.ChainBuffers`), the first layer's pre-activation gradient ``dpre``
    (``4BQ×D``) and each row's pixel and offset."""
    r, ok, q, pixel, ry, rx, cy, cx, weight = ensemble.members(
        coord_ptr, cell_ptr, n_rows, queries, H, W, shift_y0, shift_y1, shift_x0, shift_x1,
        lo, hi, ROWS)
    pre = _first_layer(proj_ptr, wc_ptr, b0_ptr, pixel, ok, ry, rx, cy, cx, D, BLOCK_K)
    gy = ensemble.gradient_rows(dout_ptr, q, ok, weight, M, BLOCK_O)
    dx = ensemble.chain_backward(tl.maximum(pre, 0.0), gy, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr,
                                 b3_ptr, w4_ptr, D, N1, N2, N3, M, r, ok, x_ptr, hidden1_ptr,
                                 delta1_ptr, act2_ptr, delta2_ptr, hidden3_ptr, delta3_ptr, gy_ptr,
                                 ROWS, BLOCK_K, BLOCK_MID, BLOCK_N, BLOCK_O, PRECISION)
    ensemble.store_rows(dpre_ptr, tl.where(pre > 0, dx, 0.0), r, ok, D, BLOCK_K)
    ensemble.store_geometry(pixel_ptr, rel_ptr, r, ok, pixel, ry, rx)


_decode = launch.autotuned(_decode_kernel, ["D", "N1", "N2", "N3", "PRECISION"])
_backward = launch.autotuned(_backward_kernel, ["D", "N1", "N2", "N3", "PRECISION"],
                          configs=launch.BACKWARD_CONFIGS)


# ----------------------------------------------------------------------------------------
# Operators
# ----------------------------------------------------------------------------------------

def _decode_call(proj, weights, biases, coord, cell):
    return ensemble.Decode(proj, weights, biases, coord, cell, "LIIF", offset=1)


@torch.library.custom_op(OP, mutates_args=())
def liif_decode_triton(proj: torch.Tensor, w_coord: torch.Tensor, b0: torch.Tensor,
                       weights: list[torch.Tensor], biases: list[torch.Tensor],
                       coord: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """LIIF decode of ``coord``/``cell`` (``B×Q×2``) → ``B×Q×M`` in ``proj``'s dtype.

    proj ``B×H×W×D``; w_coord ``D×4`` (the first layer's rel and cell columns); b0 ``D``;
    weights/biases the four remaining layers ``N1×D, N2×N1, N3×N2, M×N3``."""
    return _decode_call(proj, weights, biases, coord, cell).forward(_decode, proj, w_coord, b0)


@torch.library.custom_op(OP + "_backward", mutates_args=())
def liif_decode_triton_backward(
        grad_out: torch.Tensor, proj: torch.Tensor, w_coord: torch.Tensor, b0: torch.Tensor,
        weights: list[torch.Tensor], biases: list[torch.Tensor], coord: torch.Tensor,
        cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                     list[torch.Tensor], list[torch.Tensor]]:
    """Gradients of :func:`liif_decode_triton` for ``grad_out`` (``B×Q×M``):
    ``(d proj, d w_coord, d b0, [d weights], [d biases])``, contiguous, in the inputs'
    dtypes."""
    d = _decode_call(proj, weights, biases, coord, cell)
    rows = ensemble.ChainBuffers(d)
    dpre = launch.empty(d.n_rows, proj.shape[-1], device=d.device, dtype=torch.float32)
    if d.n_rows:
        d.launch(_backward, *d.geometry_args(), proj.contiguous(), w_coord.contiguous(),
                 b0.contiguous(), *d.layers[:-1], grad_out.contiguous(), *rows.kernel_args(),
                 dpre, *d.widths)
    # The first layer's coordinate inputs per row: the member's offset, the query's cell.
    coord_inputs = torch.cat([rows.rel, d.scaled_cell().repeat_interleave(4, 0)], 1)
    grads = (d.scatter(dpre, rows.pixel), dpre.t() @ coord_inputs, dpre.sum(0))
    return rows.op_gradients(grads, (proj, w_coord, b0), weights, biases)


ops.register(OP, liif_decode_triton_backward)


def liif(feat, coord, cell, params):
    """Decode queries (``B×Q×2`` coord and cell) → ``B×Q×3`` (see the reference)."""
    return ops.decode(OP, coord, cell, params)
