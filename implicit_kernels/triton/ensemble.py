"""Triton building blocks of the LIIF-family local ensemble, shared by LIIF and LTE
(docs/conventions.md#local-ensemble, docs/liif-lte.md): the four members of each query,
the MLP that decodes every member, the
area-weighted blend, and the host-side bookkeeping of their backward.

A kernel tile holds ``ROWS`` *member rows*: row ``r = 4q + t`` is member ``t`` (LIIF's
shift order, :data:`geometry.ENSEMBLE_SHIFTS`: row shift ``t // 2``, column shift
``t % 2``) of query ``q``, counted flat over the batch.  Each row finds its LR pixel and
offset exactly as :func:`geometry.ensemble_neighbours` (same fp32 operations, round half
to even), the decoder builds its MLP input, :func:`chain` decodes it, and
:func:`blend_store` sums the tile's four rows of each query with LIIF's area weights
(``ROWS`` is a multiple of 4, so a query's rows never straddle tiles).

The MLP after the decoder-specific input is the papers' four Linear layers with ReLUs
between, ``K → N1 → N2 → N3 → M``, run as two :func:`mlp.two_layers` steps; its backward
(:func:`chain_backward`) writes every Linear's input and pre-activation gradient per
row (:class:`ChainBuffers`), so the weight gradients are GEMMs.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from . import grid, launch, mlp

#: Linear layers of the chain after the decoder's own input (LIIF: after its first layer).
CHAIN_LAYERS = 4


def check_depth(weights, decoder, offset=0):
    """Refuse chains other than :data:`CHAIN_LAYERS` layers (``offset``: layers the decoder
    runs before the chain, counted in the message)."""
    if len(weights) != CHAIN_LAYERS:
        raise ValueError(f"the triton {decoder} decode supports the paper's depth only "
                         f"({CHAIN_LAYERS + offset} Linear layers); got {len(weights) + offset}")


# ----------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------

@triton.jit
def members(coord_ptr, cell_ptr, n_rows, queries, H, W, shift_y0, shift_y1, shift_x0,
            shift_x1, lo, hi, ROWS: tl.constexpr):
    """The tile's member rows (see the module docstring).

    coord, cell: ``B×Q×2`` (``queries`` = Q; cell unscaled); ``n_rows = 4·B·Q``; the
    floats are :func:`grid.ensemble_constants`.

    Returns ``(r, ok, q, pixel, ry, rx, cy, cx, weight)``, each ``[ROWS]``: row index
    (int64) and mask, query index, flat LR pixel ``(b·H + iy)·W + ix`` (int64) of the
    row's member, its offset ``rel = (q - v)·(H, W)``, the scaled cell ``cell·(H, W)``
    and the member's blend weight (the diagonally opposite member's area over the four
    areas' sum, as ``geometry.ensemble_weights``)."""
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    ok = r < n_rows
    q = r // 4
    t = r % 4
    y = tl.load(coord_ptr + 2 * q, mask=ok, other=0.0).to(tl.float32)
    x = tl.load(coord_ptr + 2 * q + 1, mask=ok, other=0.0).to(tl.float32)
    hf, wf = H * 1.0, W * 1.0
    cy = tl.load(cell_ptr + 2 * q, mask=ok, other=0.0).to(tl.float32) * hf
    cx = tl.load(cell_ptr + 2 * q + 1, mask=ok, other=0.0).to(tl.float32) * wf

    iy = tl.zeros([ROWS], dtype=tl.int32)
    ix = tl.zeros([ROWS], dtype=tl.int32)
    ry = tl.zeros([ROWS], dtype=tl.float32)
    rx = tl.zeros([ROWS], dtype=tl.float32)
    total = tl.zeros([ROWS], dtype=tl.float32)
    opposite = tl.zeros([ROWS], dtype=tl.float32)
    # Every row forms all four members (a few flops each) for the areas; it keeps its own.
    for s in tl.static_range(4):
        iy_s, ix_s, ry_s, rx_s = grid.ensemble_member(y, x, tl.full([ROWS], s, tl.int32), H, W,
                                                      shift_y0, shift_y1, shift_x0, shift_x1,
                                                      lo, hi)
        area = tl.abs(ry_s * rx_s) + 1e-9
        total += area  # ((a0 + a1) + a2) + a3, the reference's order
        mine = t == s
        iy = tl.where(mine, iy_s, iy)
        ix = tl.where(mine, ix_s, ix)
        ry = tl.where(mine, ry_s, ry)
        rx = tl.where(mine, rx_s, rx)
        opposite = tl.where(t == 3 - s, area, opposite)
    pixel = ((q // queries) * H + iy) * W + ix
    return r, ok, q, pixel, ry, rx, cy, cx, opposite / total


@triton.jit
def store_geometry(pixel_ptr, rel_ptr, r, ok, pixel, ry, rx):
    """Write each row's LR pixel (``4BQ`` int64) and offset (``4BQ×2`` fp32) for the host's
    scatters and coordinate-weight gradients."""
    tl.store(pixel_ptr + r, pixel, mask=ok)
    tl.store(rel_ptr + 2 * r, ry, mask=ok)
    tl.store(rel_ptr + 2 * r + 1, rx, mask=ok)


@triton.jit
def store_rows(ptr, value, r, ok, N, BLOCK: tl.constexpr):
    """Write ``value`` ``[ROWS, BLOCK]`` to rows ``r`` of an ``n×N`` row-major buffer."""
    c = tl.arange(0, BLOCK)
    tl.store(ptr + r[:, None] * N + c[None, :], value.to(ptr.dtype.element_ty),
             mask=ok[:, None] & (c[None, :] < N))


@triton.jit
def bias_row(b_ptr, N, BLOCK: tl.constexpr):
    """``b`` as a ``[1, BLOCK]`` fp32 row (zero past ``N``)."""
    c = tl.arange(0, BLOCK)
    return tl.load(b_ptr + c, mask=c < N, other=0.0).to(tl.float32)[None, :]


# ----------------------------------------------------------------------------------------
# The MLP and the blend
# ----------------------------------------------------------------------------------------

@triton.jit
def _first_pair(x, w1_ptr, b1_ptr, w2_ptr, b2_ptr, K, N1, N2,
                ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_MID: tl.constexpr,
                BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """The chain's first two layers before their ReLU, ``y2 = W2·relu(W1·x + b1) + b2``:
    ``[ROWS, BLOCK_MID]`` fp32."""
    y2 = mlp.two_layers(x, w1_ptr, b1_ptr, w2_ptr, K, N1, N2, ROWS, BLOCK_K, BLOCK_N,
                        BLOCK_MID, PRECISION, "relu")
    return y2 + bias_row(b2_ptr, N2, BLOCK_MID)


@triton.jit
def chain(x, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, w4_ptr, b4_ptr, K, N1, N2, N3, M,
          ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_MID: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    """``W4·relu(W3·relu(y2) + b3) + b4`` (``y2``: :func:`_first_pair`) for ``x``
    ``[ROWS, BLOCK_K]`` fp32: ``[ROWS, BLOCK_O]`` fp32 (the ``N1`` and ``N3`` layers are
    streamed in ``BLOCK_N`` column chunks)."""
    y2 = _first_pair(x, w1_ptr, b1_ptr, w2_ptr, b2_ptr, K, N1, N2, ROWS, BLOCK_K, BLOCK_MID,
                     BLOCK_N, PRECISION)
    pred = mlp.two_layers(tl.maximum(y2, 0.0), w3_ptr, b3_ptr, w4_ptr, N2, N3, M, ROWS,
                          BLOCK_MID, BLOCK_N, BLOCK_O, PRECISION, "relu")
    return pred + bias_row(b4_ptr, M, BLOCK_O)


@triton.jit
def blend_store(pred, weight, out_ptr, n_queries, M, ROWS: tl.constexpr, BLOCK_O: tl.constexpr):
    """``out[q] = Σ_t weight_t · pred_t`` over each query's four rows of the tile
    (``out``: ``n_queries × M``)."""
    rgb = tl.sum(tl.reshape(pred * weight[:, None], [ROWS // 4, 4, BLOCK_O]), axis=1)
    q = tl.program_id(0).to(tl.int64) * (ROWS // 4) + tl.arange(0, ROWS // 4)
    store_rows(out_ptr, rgb, q, q < n_queries, M, BLOCK_O)


@triton.jit
def gradient_rows(dout_ptr, q, ok, weight, M, BLOCK_O: tl.constexpr):
    """Gradient of each row's prediction, ``weight_t · dout[q]``: ``[ROWS, BLOCK_O]`` fp32."""
    o = tl.arange(0, BLOCK_O)
    g = tl.load(dout_ptr + q[:, None] * M + o[None, :], mask=ok[:, None] & (o[None, :] < M),
                other=0.0).to(tl.float32)
    return g * weight[:, None]


@triton.jit
def chain_backward(x, gy, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, w4_ptr, K, N1, N2, N3,
                   M, r, ok, x_ptr, hidden1_ptr, delta1_ptr, act2_ptr, delta2_ptr, hidden3_ptr,
                   delta3_ptr, gy_ptr,
                   ROWS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_MID: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    """Backward of :func:`chain` for the output gradient ``gy`` ``[ROWS, BLOCK_O]``:
    recomputes ``y2`` and writes, for rows ``r``, each Linear's input and pre-activation
    gradient (:class:`ChainBuffers`); returns ``dx`` ``[ROWS, BLOCK_K]`` fp32."""
    y2 = _first_pair(x, w1_ptr, b1_ptr, w2_ptr, b2_ptr, K, N1, N2, ROWS, BLOCK_K, BLOCK_MID,
                     BLOCK_N, PRECISION)
    act2 = tl.maximum(y2, 0.0)
    dact2 = mlp.two_layers_backward(act2, gy, w3_ptr, b3_ptr, w4_ptr, N2, N3, M, r, ok,
                                    hidden3_ptr, delta3_ptr, ROWS, BLOCK_MID, BLOCK_N, BLOCK_O,
                                    PRECISION, "relu")
    delta2 = tl.where(y2 > 0, dact2, 0.0)
    store_rows(x_ptr, x, r, ok, K, BLOCK_K)
    store_rows(act2_ptr, act2, r, ok, N2, BLOCK_MID)
    store_rows(delta2_ptr, delta2, r, ok, N2, BLOCK_MID)
    store_rows(gy_ptr, gy, r, ok, M, BLOCK_O)
    return mlp.two_layers_backward(x, delta2, w1_ptr, b1_ptr, w2_ptr, K, N1, N2, r, ok,
                                   hidden1_ptr, delta1_ptr, ROWS, BLOCK_K, BLOCK_N, BLOCK_MID,
                                   PRECISION, "relu")


# ----------------------------------------------------------------------------------------
# Host side
# ----------------------------------------------------------------------------------------

class Decode:
    """One call's shared kernel arguments: the member rows' geometry and the chain.

    ``maps`` is one of the decoder's ``B×H×W×·`` channels-last maps (its size and
    dtype); ``weights``/``biases`` the chain's four Linear layers."""

    def __init__(self, maps, weights, biases, coord, cell, decoder, offset=0):
        check_depth(weights, decoder, offset)
        self.batch, self.h, self.w = maps.shape[:3]
        self.device, self.dtype = maps.device, maps.dtype
        self.coord, self.cell = coord.contiguous(), cell.contiguous()
        self.queries = coord.shape[1]
        self.n_queries = coord.shape[0] * coord.shape[1]
        self.n_rows = 4 * self.n_queries
        self.layers = [t.contiguous() for pair in zip(weights, biases) for t in pair]
        self.widths = (weights[0].shape[1], *(w.shape[0] for w in weights))  # K, N1, N2, N3, M
        self.meta = {"BLOCK_K": launch.block(self.widths[0]),
                     "BLOCK_MID": launch.block(self.widths[2]),
                     "BLOCK_O": launch.block(self.widths[4]), "PRECISION": launch.precision(maps)}

    def geometry_args(self):
        return (self.coord, self.cell, self.n_rows, self.queries, self.h, self.w,
                *grid.ensemble_constants((self.h, self.w)))

    def scaled_cell(self):
        """``cell·(H, W)`` per query, ``BQ×2`` fp32, as the kernels form it."""
        return (self.cell.reshape(-1, 2).float()
                * torch.tensor([self.h, self.w], device=self.device, dtype=torch.float32))

    def scatter(self, rows, pixel):
        """Sum per-row gradients ``rows`` (``4BQ×C``) into a ``B×H×W×C`` map at ``pixel``."""
        out = torch.zeros(self.batch * self.h * self.w, rows.shape[1], device=self.device,
                          dtype=torch.float32)
        return out.index_add_(0, pixel, rows).view(self.batch, self.h, self.w, -1)

    def forward(self, kernel, *inputs):
        """The decode: ``kernel`` on the geometry, the decoder's ``inputs``, the chain and
        a fresh ``B×Q×M`` output in the maps' dtype."""
        out = launch.empty(self.coord.shape[0], self.queries, self.widths[-1], device=self.device,
                        dtype=self.dtype)
        if out.numel():
            self.launch(kernel, *self.geometry_args(), *[t.contiguous() for t in inputs],
                        *self.layers, out, *self.widths)
        return out

    def launch(self, kernel, *args):
        """``kernel`` over the call's rows, on the maps' device."""
        guard = (torch.cuda.device(self.device) if self.device.type == "cuda"
                 else contextlib.nullcontext())
        with guard:
            launch.launch(kernel, self.n_rows, *args, **self.meta, **grid.NO_FMA)


class ChainBuffers:
    """Per-row fp32 buffers written by :func:`chain_backward` for a call's ``4BQ`` rows, and
    the geometry rows of :func:`store_geometry`."""

    def __init__(self, decode: Decode):
        k, n1, n2, n3, m = decode.widths
        rows, device = decode.n_rows, decode.device

        def buf(width):
            return launch.empty(rows, width, device=device, dtype=torch.float32)

        self.x, self.hidden1, self.delta1 = buf(k), buf(n1), buf(n1)
        self.act2, self.delta2 = buf(n2), buf(n2)
        self.hidden3, self.delta3, self.gy = buf(n3), buf(n3), buf(m)
        self.pixel = launch.empty(rows, device=device, dtype=torch.int64)
        self.rel = buf(2)

    def kernel_args(self):
        return (self.x, self.hidden1, self.delta1, self.act2, self.delta2, self.hidden3,
                self.delta3, self.gy, self.pixel, self.rel)

    def op_gradients(self, grads, inputs, weights, biases):
        """A backward operator's result: ``grads`` of the decoder's own ``inputs``, then the
        chain's ``[dW1..dW4]`` (``dW = δᵀ·input`` over rows) and ``[db1..db4]``, each in
        its tensor's dtype."""
        pairs = ((self.delta1, self.x), (self.delta2, self.hidden1), (self.delta3, self.act2),
                 (self.gy, self.hidden3))
        return (*(g.to(p.dtype) for g, p in zip(grads, inputs)),
                [(d.t() @ x).to(w.dtype) for (d, x), w in zip(pairs, weights)],
                [d.sum(0).to(b.dtype) for (d, _), b in zip(pairs, biases)])
