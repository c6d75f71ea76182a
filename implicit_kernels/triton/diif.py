"""DIIF decode in Triton: the operator ``implicit_kernels::diif_decode_triton``.

The decoder after the splits of docs/diif.md, with the C++ operator's arguments
(:func:`implicit_kernels.ops.diif.op_inputs`; fakes and autograd: the DIIF family's,
:func:`implicit_kernels.ops.diif.register`):

* per public call, the 4×4 corner projection ``W_z·z_t`` (a convolution,
  :func:`prepare_diif`, differentiated by PyTorch);
* per chunk, the distinct slices: for a chunk of raster positions (a grid decode, through
  :func:`raster_diif`) ``geometry.raster_slices``, arithmetic on the chunk's start and
  stop with no device sync and a fixed number of launches; for arbitrary pixels
  ``geometry.unique_slices`` (a sort); then two kernels:

  1. ``_coarse_kernel``, per tile of slices × one vertex ``t``: the 6 coordinate inputs
     from the slice's integers, ``relu(corner + W_c·x6 + b0)``, the 256×256 layer and
     ``G_t = W_h·H_t`` fused (``tl.dot``), writing ``G`` (``S·4 × D_f``, fp32);
  2. ``_fine_kernel``, per tile of pixels: ``relu(Σ_t w_t G_t + W_d·d + b)``, the fine
     256×256 layer and the 256→3 layer fused, writing only RGB.

  Each kernel chains two dense layers with :func:`mlp.two_layers` (the hidden layer in
  column chunks, consumed at once), so no wide activation goes to memory: the only
  intermediate is ``G``, one row per slice and vertex.

Backward (the operator ``implicit_kernels::diif_decode_triton_backward``): the coarse
kernel reruns for ``G``; ``_fine_backward_kernel`` recomputes each pixel tile's
activations and carries the gradient through the fine MLP (:func:`mlp.two_layers_backward`),
``dG`` is scattered to slices, and ``_coarse_backward_kernel`` does the same through the
coarse MLP per slice and vertex.  The kernels write each Linear's input and
pre-activation gradient per row (fp32, bounded by the chunk), so the weight gradients
are GEMMs (``dW = δᵀ·x``) and the corner gradient one ``index_put``.

The "w/o se" ablation (``slice_ensemble=False``, :func:`diif_without_ensemble`) runs the same
kernels with one vertex per slice (constexpr ``V = 1``): the projection is the 3×3 code's at
every LR pixel (:func:`prepare_diif_without_ensemble`), the vertex the group's own pixel at
offset 0, ``G`` one row per slice and the fine stage's input ``G[slice]`` unweighted.  DLTE
(:mod:`.dlte`) runs them with the first coarse layer's pre-activations given per row
(constexpr ``PRE_GIVEN``).

Supported: the papers' depths (coarse 2 layers, fine 3 layers), any hidden widths
(blocks are the next power of two ≥ the width, ≥ 16 for ``tl.dot``, masked), fp32
(tf32 when ``torch.backends.cuda.matmul.allow_tf32``), and fp16/bf16 storage with fp32
accumulation on GPU.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .. import geometry
from ..ops import diif as ops
from ..ops.diif import prepare_diif, prepare_diif_without_ensemble
from ..torch_impl.diif import ENSEMBLE_VERTICES, OWN_PIXEL
from . import grid, launch, mlp

__all__ = ["diif", "diif_without_ensemble", "prepare_diif", "prepare_diif_without_ensemble",
           "raster_diif"]

OP = "implicit_kernels::diif_decode_triton"
#: Columns of the per-slice table: image, group (row, col), first and last pixel (row, col).
SLICE_COLUMNS = 7


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------

@triton.jit
def _coarse_input(slices_ptr, corner_ptr, wc_ptr, b0_ptr, S, H, W, HO, WO, DC,
                  ROWS: tl.constexpr, BLOCK_C: tl.constexpr, V: tl.constexpr,
                  PRE_GIVEN: tl.constexpr):
    """First coarse layer's pre-activation ``corner_t + W_c·x6_t + b0`` of the tile's
    slices at vertex ``t = program_id(1)``: ``(pre [ROWS, BLOCK_C] fp32, G rows V·s + t,
    row mask)``.

    slices: ``S×7`` int32 (see ``SLICE_COLUMNS``); wc: ``DC×6``.  ``V`` vertices per slice:
    4 (the slice ensemble; corner ``B×(H+1)×(W+1)×DC``, vertex ``(t // 2, t % 2)``) or 1
    (the "w/o se" ablation; corner ``B×H×W×DC``, the group's own pixel at offset 0).
    ``PRE_GIVEN``: ``corner`` holds the pre-activations themselves, ``V·S×DC`` rows (DLTE's,
    formed on the host), and only they are read."""
    t = tl.program_id(1)
    s = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    s_ok = s < S
    c = tl.arange(0, BLOCK_C)
    c_ok = c < DC
    r = (V * s + t).to(tl.int64)
    if PRE_GIVEN:
        pre = tl.load(corner_ptr + r[:, None] * DC + c[None, :],
                      mask=s_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    else:
        pre = _corner_input(slices_ptr, corner_ptr, wc_ptr, b0_ptr, s, s_ok, t, c, c_ok, H, W,
                            HO, WO, DC, ROWS, V)
    return pre, r, s_ok


@triton.jit
def _corner_input(slices_ptr, corner_ptr, wc_ptr, b0_ptr, s, s_ok, t, c, c_ok, H, W, HO, WO,
                  DC, ROWS: tl.constexpr, V: tl.constexpr):
    """:func:`_coarse_input` from the code projection at the vertex's corner (or, ``V = 1``,
    the group's own pixel) and the slice's six coordinate inputs."""
    if V == 1:
        a = t * 0
        b = t * 0
        oy = 0.0
        ox = 0.0
    else:
        a = t // 2
        b = t % 2
        # rel(p, v_t) = rel(p, v*) - o_t, with vertex offset o_t = (2a - 1, 2b - 1).
        oy = (2 * a - 1).to(tl.float32)
        ox = (2 * b - 1).to(tl.float32)
    row = slices_ptr + s * 7
    batch = tl.load(row, mask=s_ok, other=0).to(tl.int64)
    gi = tl.load(row + 1, mask=s_ok, other=0)
    gj = tl.load(row + 2, mask=s_ok, other=0)
    hf, wf = H * 1.0, W * 1.0
    hof, wof = HO * 1.0, WO * 1.0
    vy, vx = grid.centre(gi, hf), grid.centre(gj, wf)
    first_y = (grid.centre(tl.load(row + 3, mask=s_ok, other=0), hof) - vy) * hf - oy
    first_x = (grid.centre(tl.load(row + 4, mask=s_ok, other=0), wof) - vx) * wf - ox
    last_y = (grid.centre(tl.load(row + 5, mask=s_ok, other=0), hof) - vy) * hf - oy
    last_x = (grid.centre(tl.load(row + 6, mask=s_ok, other=0), wof) - vx) * wf - ox
    cell = tl.zeros([ROWS], dtype=tl.float32)

    corner_row = ((batch * (H + V // 4) + gi + a) * (W + V // 4) + gj + b) * DC
    pre = tl.load(corner_ptr + corner_row[:, None] + c[None, :],
                  mask=s_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
    pre += tl.load(b0_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    pre = mlp.add_outer(pre, first_y, wc_ptr, 6, c, c_ok)
    pre = mlp.add_outer(pre, first_x, wc_ptr + 1, 6, c, c_ok)
    pre = mlp.add_outer(pre, last_y, wc_ptr + 2, 6, c, c_ok)
    pre = mlp.add_outer(pre, last_x, wc_ptr + 3, 6, c, c_ok)
    pre = mlp.add_outer(pre, cell + 2.0 * hf / hof, wc_ptr + 4, 6, c, c_ok)
    pre = mlp.add_outer(pre, cell + 2.0 * wf / wof, wc_ptr + 5, 6, c, c_ok)
    return pre


@triton.jit
def _coarse_kernel(slices_ptr, corner_ptr, wc_ptr, b0_ptr, w1_ptr, b1_ptr, wh_ptr, g_ptr,
                   S, H, W, HO, WO, DC, DF,
                   ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_F: tl.constexpr,
                   BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, V: tl.constexpr,
                   PRE_GIVEN: tl.constexpr):
    """Coarse stage of ``ROWS`` slices at vertex ``t = program_id(1)``:
    ``G[V·s + t] = W_h·relu(W_1·relu(corner_t + W_c·x6_t + b0) + b1)``.

    w1: ``DC×DC``; wh: ``DF×DC``; g: ``V·S×DF`` (the weights' dtype)."""
    pre, r, r_ok = _coarse_input(slices_ptr, corner_ptr, wc_ptr, b0_ptr, S, H, W, HO, WO, DC,
                                 ROWS, BLOCK_C, V, PRE_GIVEN)
    g = mlp.two_layers(tl.maximum(pre, 0.0), w1_ptr, b1_ptr, wh_ptr, DC, DC, DF,
                       ROWS, BLOCK_C, BLOCK_N, BLOCK_F, PRECISION, "relu")
    f = tl.arange(0, BLOCK_F)
    tl.store(g_ptr + r[:, None] * DF + f[None, :], g.to(g_ptr.dtype.element_ty),
             mask=r_ok[:, None] & (f[None, :] < DF))


@triton.jit
def _coarse_backward_kernel(slices_ptr, corner_ptr, wc_ptr, b0_ptr, w1_ptr, b1_ptr, wh_ptr,
                            dg_ptr, act_ptr, hidden_ptr, delta_ptr, dpre_ptr,
                            S, H, W, HO, WO, DC, DF,
                            ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_F: tl.constexpr,
                            BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
                            V: tl.constexpr, PRE_GIVEN: tl.constexpr):
    """Backward of :func:`_coarse_kernel` for the gradient ``dG`` (``V·S×DF`` fp32).

    Writes, per row ``V·s + t`` (all ``V·S×DC`` fp32): the first layer's activation
    ``a = relu(pre)`` (``act``), the second's ``relu(W_1 a + b1)`` (``hidden``), its
    pre-activation gradient (``delta``) and the first layer's (``dpre``)."""
    pre, r, r_ok = _coarse_input(slices_ptr, corner_ptr, wc_ptr, b0_ptr, S, H, W, HO, WO, DC,
                                 ROWS, BLOCK_C, V, PRE_GIVEN)
    f = tl.arange(0, BLOCK_F)
    gy = tl.load(dg_ptr + r[:, None] * DF + f[None, :], mask=r_ok[:, None] & (f[None, :] < DF),
                 other=0.0)
    a = tl.maximum(pre, 0.0)
    da = mlp.two_layers_backward(a, gy, w1_ptr, b1_ptr, wh_ptr, DC, DC, DF, r, r_ok,
                                 hidden_ptr, delta_ptr, ROWS, BLOCK_C, BLOCK_N, BLOCK_F,
                                 PRECISION, "relu")
    c = tl.arange(0, BLOCK_C)
    out = r[:, None] * DC + c[None, :]
    ok = r_ok[:, None] & (c[None, :] < DC)
    tl.store(act_ptr + out, a, mask=ok)
    tl.store(dpre_ptr + out, tl.where(a > 0, da, 0.0), mask=ok)  # a > 0 is pre > 0 (as above)


@triton.jit
def _fine_input(pixels_ptr, slice_ptr, g_ptr, wd_ptr, bd_ptr, P, H, W, HO, WO, DF,
                ROWS: tl.constexpr, BLOCK_F: tl.constexpr, V: tl.constexpr):
    """First fine layer's pre-activation ``Σ_t w_t G[V·slice + t] + W_d·d + b`` of the
    tile's pixels: ``(z [ROWS, BLOCK_F] fp32, pixel rows, row mask)``; with ``V = 1``
    (no slice ensemble) ``G[slice] + W_d·d + b``.

    pixels: ``P×2`` int64 (row, col); slice: ``P`` int64 index into ``G`` (``V·S×DF``);
    wd: ``DF×2``."""
    p = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    p_ok = p < P
    r = tl.load(pixels_ptr + 2 * p, mask=p_ok, other=0)
    col = tl.load(pixels_ptr + 2 * p + 1, mask=p_ok, other=0)
    hf, wf = H * 1.0, W * 1.0
    dy = (grid.centre(r, HO * 1.0) - grid.centre(grid.group_index(r, H, HO), hf)) * hf
    dx = (grid.centre(col, WO * 1.0) - grid.centre(grid.group_index(col, W, WO), wf)) * wf
    sl = tl.load(slice_ptr + p, mask=p_ok, other=0)

    f = tl.arange(0, BLOCK_F)
    f_ok = f < DF
    z = tl.zeros([ROWS, BLOCK_F], dtype=tl.float32)
    z += tl.load(bd_ptr + f, mask=f_ok, other=0.0).to(tl.float32)[None, :]
    z = mlp.add_outer(z, dy, wd_ptr, 2, f, f_ok)
    z = mlp.add_outer(z, dx, wd_ptr + 1, 2, f, f_ok)
    # A loop, not unrolled: one vertex's [ROWS, D_f] rows in flight at a time (unrolled,
    # the compiler gathers all four at once and spills at ROWS >= 32).
    if V == 1:
        z += tl.load(g_ptr + sl[:, None] * DF + f[None, :],
                     mask=p_ok[:, None] & f_ok[None, :], other=0.0).to(tl.float32)
    else:
        for t in range(4):
            # geometry.slice_ensemble_weights: bilinear weight of vertex (a, b) =
            # (t // 2, t % 2), 1 ± d as 1 + (±1)·d (the same value: the product is exact).
            wy = 1.0 + (2.0 * (t // 2) - 1.0) * dy
            wx = 1.0 + (2.0 * (t % 2) - 1.0) * dx
            g = tl.load(g_ptr + (4 * sl + t)[:, None] * DF + f[None, :],
                        mask=p_ok[:, None] & f_ok[None, :], other=0.0).to(tl.float32)
            z += (wy * wx / 4)[:, None] * g
    return z, p.to(tl.int64), p_ok


@triton.jit
def _fine_kernel(pixels_ptr, slice_ptr, g_ptr, wd_ptr, bd_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
                 out_ptr, P, H, W, HO, WO, DF, DH, NOUT,
                 ROWS: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_O: tl.constexpr, PRECISION: tl.constexpr, V: tl.constexpr):
    """Slice ensemble and fine stage of ``ROWS`` pixels:
    ``out = W_2·relu(W_1·relu(z) + b1) + b2`` (``z``: :func:`_fine_input`).

    w1: ``DH×DF``; w2: ``NOUT×DH``; out: ``P×NOUT``."""
    z, p, p_ok = _fine_input(pixels_ptr, slice_ptr, g_ptr, wd_ptr, bd_ptr, P, H, W, HO, WO,
                             DF, ROWS, BLOCK_F, V)
    rgb = mlp.two_layers(tl.maximum(z, 0.0), w1_ptr, b1_ptr, w2_ptr, DF, DH, NOUT,
                         ROWS, BLOCK_F, BLOCK_N, BLOCK_O, PRECISION, "relu")
    o = tl.arange(0, BLOCK_O)
    o_ok = o < NOUT
    rgb += tl.load(b2_ptr + o, mask=o_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + p[:, None] * NOUT + o[None, :],
             rgb.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & o_ok[None, :])


@triton.jit
def _fine_backward_kernel(pixels_ptr, slice_ptr, g_ptr, wd_ptr, bd_ptr, w1_ptr, b1_ptr, w2_ptr,
                          dout_ptr, act_ptr, hidden_ptr, delta_ptr, dz_ptr,
                          P, H, W, HO, WO, DF, DH, NOUT,
                          ROWS: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_O: tl.constexpr, PRECISION: tl.constexpr, V: tl.constexpr):
    """Backward of :func:`_fine_kernel` for ``dout`` (``P×NOUT``).

    Writes per pixel: ``u = relu(z)`` (``act``, ``P×DF``), ``relu(W_1 u + b1)``
    (``hidden``, ``P×DH``), its pre-activation gradient (``delta``, ``P×DH``) and ``z``'s
    (``dz``, ``P×DF``); all fp32."""
    z, p, p_ok = _fine_input(pixels_ptr, slice_ptr, g_ptr, wd_ptr, bd_ptr, P, H, W, HO, WO,
                             DF, ROWS, BLOCK_F, V)
    o = tl.arange(0, BLOCK_O)
    gy = tl.load(dout_ptr + p[:, None] * NOUT + o[None, :],
                 mask=p_ok[:, None] & (o[None, :] < NOUT), other=0.0).to(tl.float32)
    u = tl.maximum(z, 0.0)
    du = mlp.two_layers_backward(u, gy, w1_ptr, b1_ptr, w2_ptr, DF, DH, NOUT, p, p_ok,
                                 hidden_ptr, delta_ptr, ROWS, BLOCK_F, BLOCK_N, BLOCK_O,
                                 PRECISION, "relu")
    f = tl.arange(0, BLOCK_F)
    out = p[:, None] * DF + f[None, :]
    ok = p_ok[:, None] & (f[None, :] < DF)
    tl.store(act_ptr + out, u, mask=ok)
    # u > 0 is z > 0; z then dies when u is formed instead of living through the MLP
    # backward (at 32 rows on 4 warps: 184 B of spills before, none after).
    tl.store(dz_ptr + out, tl.where(u > 0, du, 0.0), mask=ok)


_coarse = launch.autotuned(_coarse_kernel, ["DC", "DF", "PRECISION", "V", "PRE_GIVEN"])
_coarse_backward = launch.autotuned(_coarse_backward_kernel,
                                 ["DC", "DF", "PRECISION", "V", "PRE_GIVEN"],
                                 configs=launch.BACKWARD_CONFIGS)
_fine = launch.autotuned(_fine_kernel, ["DF", "DH", "PRECISION", "V"])
_fine_backward = launch.autotuned(_fine_backward_kernel, ["DF", "DH", "PRECISION", "V"],
                               configs=launch.BACKWARD_CONFIGS)


# ----------------------------------------------------------------------------------------
# Operators
# ----------------------------------------------------------------------------------------

def _check_depths(coarse_w, fine_w):
    if len(coarse_w) != 1 or len(fine_w) != 2:
        raise ValueError("the triton DIIF decode supports the papers' depths only (coarse "
                         f"2 layers, fine 3); got {len(coarse_w) + 1} and {len(fine_w) + 1}")


def _cast(grad, like):
    """A gradient as the backward operators return it: contiguous, in ``like``'s dtype."""
    return grad.to(like.dtype).contiguous()


class _Chunk:
    """A chunk's slice table and the kernels' shared arguments.

    ``vertices``: 4 with the slice ensemble (``corner_proj`` ``B×(H+1)×(W+1)×D_c``), 1
    without it (``B×H×W×D_c``, the group's own pixel).  ``in_size``: the feature map's
    size, when ``corner_proj`` is not the code projection (DLTE passes its vertex codes
    and then sets :attr:`pre`, the coarse first layer's pre-activations)."""

    def __init__(self, corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0,
                 fine_w, fine_b, pixels, out_h, out_w, slicing, raster_start, vertices=4,
                 in_size=None):
        _check_depths(coarse_w, fine_w)
        self.vertices = vertices
        extra = 1 if vertices == 4 else 0
        self.in_size = in_size or (corner_proj.shape[1] - extra, corner_proj.shape[2] - extra)
        self.out_size = (out_h, out_w)
        if raster_start >= 0 and slicing in geometry.RASTER_SLICINGS:
            slices = geometry.raster_slices(raster_start, raster_start + pixels.shape[1],
                                            pixels.shape[0], self.in_size, self.out_size,
                                            slicing, pixels.device)
        else:
            slices = geometry.unique_slices(pixels, self.in_size, self.out_size, slicing)
        (self.group, self.pixel_slice, self.s_batch, self.s_group, self.s_first,
         self.s_last) = slices
        self.table = torch.cat([self.s_batch[:, None], self.s_group, self.s_first, self.s_last],
                               1).to(torch.int32).contiguous()
        self.pixels = pixels.reshape(-1, 2).contiguous()
        self.n_slices, self.n_pixels = self.table.shape[0], self.pixels.shape[0]
        self.dc, self.df = b0.shape[0], fine_wh.shape[0]
        self.dh, self.nout = fine_w[0].shape[0], fine_w[1].shape[0]
        (self.corner, self.wc, self.b0, self.w1, self.b1, self.wh, self.wd, self.bd, self.wf1,
         self.bf1, self.wf2, self.bf2) = [
            t.contiguous() for t in (corner_proj, w_coord, b0, coarse_w[0], coarse_b[0], fine_wh,
                                     fine_wd, fine_b0, fine_w[0], fine_b[0], fine_w[1], fine_b[1])]
        self.pre = None
        self.device = corner_proj.device
        self.meta = {"BLOCK_C": launch.block(self.dc), "BLOCK_F": launch.block(self.df),
                     "PRECISION": launch.precision(corner_proj), "V": vertices}

    @property
    def rows(self):
        """Rows of ``G``: one per slice and vertex."""
        return self.vertices * self.n_slices

    def device_guard(self):
        return (torch.cuda.device(self.device) if self.device.type == "cuda"
                else contextlib.nullcontext())

    def coarse_args(self):
        corner = self.corner if self.pre is None else self.pre
        return (self.table, corner, self.wc, self.b0, self.w1, self.b1, self.wh)

    def coarse_meta(self):
        return {**self.meta, "PRE_GIVEN": self.pre is not None}

    def fine_meta(self):
        return {"BLOCK_F": self.meta["BLOCK_F"], "BLOCK_O": launch.block(self.nout),
                "PRECISION": self.meta["PRECISION"], "V": self.vertices}

    def sizes(self):
        return (*self.in_size, *self.out_size)

    def fine_input_args(self, g):
        return (self.pixels, self.pixel_slice.contiguous(), g, self.wd, self.bd)

    def coarse_forward(self):
        """``G`` (``V·S×D_f``) in the weights' dtype: bf16/fp16 runs gather half the bytes
        per pixel and hold half the registers while the four vertices' rows are summed."""
        g = launch.empty(self.rows, self.df, device=self.device, dtype=self.w1.dtype)
        launch.launch(_coarse, self.n_slices, *self.coarse_args(), g, self.n_slices, *self.sizes(),
                      self.dc, self.df, grid_extra=(self.vertices,), **self.coarse_meta())
        return g

    def forward(self, dtype):
        """The decode's output ``B×Q×NOUT`` in ``dtype``."""
        out = launch.empty(self.n_pixels, self.nout, device=self.device, dtype=dtype)
        with self.device_guard():
            g = self.coarse_forward()
            launch.launch(_fine, self.n_pixels, *self.fine_input_args(g), self.wf1, self.bf1,
                          self.wf2, self.bf2, out, self.n_pixels, *self.sizes(), self.df, self.dh,
                          self.nout, **self.fine_meta())
        return out

    def backward(self, grad_out):
        """The chain rule through both stages for ``grad_out`` (``B×Q×NOUT``):
        ``(dpre, [dW_1, db_1, dW_h, dW_d, db_d, dW_f1, dW_f2, db_f1, db_f2])`` with
        ``dpre`` the coarse first layer's pre-activation gradient (``V·S×D_c``, rows
        ``V·s + t``), all fp32.

        The coarse forward reruns (``G``), then two backward kernels recompute each tile's
        activations and carry the chain rule through the MLPs, writing every Linear's
        input and pre-activation gradient per row (fp32); the weight gradients are then
        plain GEMMs (``dW = δᵀ·x``) and the scatter to slices ``index_add``."""
        f32 = {"device": self.device, "dtype": torch.float32}
        dout = grad_out.reshape(-1, self.nout).contiguous()
        with self.device_guard():
            g = self.coarse_forward()
            u, dz = (launch.empty(self.n_pixels, self.df, **f32) for _ in range(2))
            u1, delta1 = (launch.empty(self.n_pixels, self.dh, **f32) for _ in range(2))
            launch.launch(_fine_backward, self.n_pixels, *self.fine_input_args(g), self.wf1,
                          self.bf1, self.wf2, dout, u, u1, delta1, dz, self.n_pixels,
                          *self.sizes(), self.df, self.dh, self.nout, **self.fine_meta())
            # Slice ensemble backward: dG[4 slice + t] += w_t dz (without it dG[slice] += dz).
            d = geometry.diif_rel(self.pixels.view(1, -1, 2), self.group.reshape(1, -1, 2),
                                  self.in_size, self.out_size, torch.float32).reshape(-1, 2)
            dg = torch.zeros(self.rows, self.df, **f32)
            if self.vertices == 1:
                dg.index_add_(0, self.pixel_slice, dz)
            else:
                weights = geometry.slice_ensemble_weights(d)
                for t in range(4):
                    dg.index_add_(0, 4 * self.pixel_slice + t, weights[:, t:t + 1] * dz)
            act, hidden, delta, dpre = (launch.empty(self.rows, self.dc, **f32) for _ in range(4))
            launch.launch(_coarse_backward, self.n_slices, *self.coarse_args(), dg, act, hidden,
                          delta, dpre, self.n_slices, *self.sizes(), self.dc, self.df,
                          grid_extra=(self.vertices,), **self.coarse_meta())
        g_out = dout.to(torch.float32)
        return dpre, [delta.t() @ act, delta.sum(0), dg.t() @ hidden, dz.t() @ d, dz.sum(0),
                      delta1.t() @ u, g_out.t() @ u1, delta1.sum(0), g_out.sum(0)]


@torch.library.custom_op(OP, mutates_args=())
def diif_decode_triton(corner_proj: torch.Tensor, w_coord: torch.Tensor, b0: torch.Tensor,
                       coarse_w: list[torch.Tensor], coarse_b: list[torch.Tensor],
                       fine_wh: torch.Tensor, fine_wd: torch.Tensor, fine_b0: torch.Tensor,
                       fine_w: list[torch.Tensor], fine_b: list[torch.Tensor],
                       pixels: torch.Tensor, out_h: int, out_w: int, slicing: str,
                       raster_start: int, slice_ensemble: bool) -> torch.Tensor:
    """DIIF decode of ``pixels`` (``B×Q×2`` int64) → ``B×Q×3`` in ``corner_proj``'s dtype.

    ``raster_start ≥ 0`` says that ``pixels`` are raster positions ``raster_start …
    raster_start + Q - 1`` of every image (``geometry.raster_pixels``), so the slices are
    found arithmetically; ``-1``: any pixels.

    corner_proj ``B×(H+1)×(W+1)×D_c`` (``B×H×W×D_c`` without the slice ensemble: the
    "w/o se" ablation, one vertex per slice), w_coord ``D_c×6`` (the first coarse layer's
    coordinate columns), coarse ``[(D_c×D_c, D_c)]``, fine_wh ``D_f×D_c``, fine_wd
    ``D_f×2``, fine ``[(D_h×D_f, D_h), (3×D_h, 3)]``."""
    _check_depths(coarse_w, fine_w)
    if pixels.shape[0] * pixels.shape[1] == 0:
        return launch.empty(pixels.shape[0], pixels.shape[1], fine_w[1].shape[0],
                         device=corner_proj.device, dtype=corner_proj.dtype)
    c = _Chunk(corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0, fine_w,
               fine_b, pixels, out_h, out_w, slicing, raster_start, 4 if slice_ensemble else 1)
    return c.forward(corner_proj.dtype).view(pixels.shape[0], pixels.shape[1], -1)


@torch.library.custom_op(OP + "_backward", mutates_args=())
def diif_decode_triton_backward(
        grad_out: torch.Tensor, corner_proj: torch.Tensor, w_coord: torch.Tensor,
        b0: torch.Tensor, coarse_w: list[torch.Tensor], coarse_b: list[torch.Tensor],
        fine_wh: torch.Tensor, fine_wd: torch.Tensor, fine_b0: torch.Tensor,
        fine_w: list[torch.Tensor], fine_b: list[torch.Tensor], pixels: torch.Tensor,
        out_h: int, out_w: int, slicing: str, raster_start: int, slice_ensemble: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor],
           torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Gradients of :func:`diif_decode_triton` for ``grad_out`` (``B×Q×3``), one like each
    tensor (and list) input before ``pixels``, contiguous, in the inputs' dtypes:
    :meth:`_Chunk.backward`, then the first coarse layer's coordinate columns by a GEMM and
    the corner gradient by ``index_put``."""
    vertices = ENSEMBLE_VERTICES if slice_ensemble else OWN_PIXEL
    c = _Chunk(corner_proj, w_coord, b0, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0, fine_w,
               fine_b, pixels, out_h, out_w, slicing, raster_start, len(vertices))
    f32 = {"device": c.device, "dtype": torch.float32}
    dpre, (d_w1, d_b1, d_wh, d_wd, d_bd, d_wf1, d_wf2, d_bf1, d_bf2) = c.backward(grad_out)
    # The coarse first layer's coordinate inputs, per row V·s + t (as _corner_input).
    cell = (2 * torch.tensor(c.in_size, **f32)
            / torch.tensor(c.out_size, **f32)).expand(c.n_slices, 2)
    rel_first = geometry.diif_rel(c.s_first, c.s_group, c.in_size, c.out_size, torch.float32)
    rel_last = geometry.diif_rel(c.s_last, c.s_group, c.in_size, c.out_size, torch.float32)
    x6 = torch.stack([torch.cat([rel_first - cell.new_tensor(o), rel_last - cell.new_tensor(o),
                                 cell], 1) for _, o in vertices], 1).reshape(c.rows, 6)
    d_corner = torch.zeros(corner_proj.shape, **f32)
    for t, ((a, b), _) in enumerate(vertices):
        index = (c.s_batch, c.s_group[:, 0] + a, c.s_group[:, 1] + b)
        d_corner.index_put_(index, dpre[t::c.vertices], accumulate=True)
    return (_cast(d_corner, corner_proj), _cast(dpre.t() @ x6, w_coord), _cast(dpre.sum(0), b0),
            [_cast(d_w1, coarse_w[0])], [_cast(d_b1, coarse_b[0])], _cast(d_wh, fine_wh),
            _cast(d_wd, fine_wd), _cast(d_bd, fine_b0),
            [_cast(d_wf1, fine_w[0]), _cast(d_wf2, fine_w[1])],
            [_cast(d_bf1, fine_b[0]), _cast(d_bf2, fine_b[1])])


ops.register(OP, diif_decode_triton_backward)


def diif(feat, out_size, pixels, params, slicing):
    """Decode ``pixels`` (``B×Q×2``) of the ``out_size`` grid → ``B×Q×3`` (see the reference)."""
    return ops.decode(OP, out_size, pixels, params, slicing, -1, True)


def diif_without_ensemble(feat, out_size, pixels, params, slicing):
    """The "w/o se" ablation: ``pixels`` (``B×Q×2``) → ``B×Q×3`` (see the reference)."""
    return ops.decode(OP, out_size, pixels, params, slicing, -1, False)


def raster_diif(feat, out_size, params, slicing, chunk_size, default_chunk):
    """A grid decode's chunks (the backend hook :func:`implicit_kernels.backends.resolve_raster`):
    ``(decode, chunk_size)`` where ``decode(start, stop)`` → ``B×(stop-start)×3`` decodes
    raster positions ``[start, stop)`` of every image with the slices found arithmetically.

    ``default_chunk``: the caller left ``chunk_size`` at its default; on CUDA the chunk is
    then sized from free memory (:func:`launch.chunk_for_memory`, at least 2^20 queries over
    the batch: a 1440p decode in at most four chunks instead of 225), on CPU (and while
    ``torch.compile`` traces) it is kept."""
    inputs = ops.op_inputs(params)
    # Not while torch.compile traces: the free-memory query is no graph operation.
    if default_chunk and feat.is_cuda and not torch.compiler.is_compiling():
        tensors = [t for x in inputs for t in (x if isinstance(x, list) else [x])]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        free, _ = torch.cuda.mem_get_info(feat.device)
        chunk_size = launch.chunk_for_memory(
            _bytes_per_query(params, out_size, feat.shape[-2:], feat.element_size(), grad), free)

    def decode(start, stop):
        pixels = geometry.raster_pixels(start, stop, out_size, feat.shape[0], feat.device)
        return diif_decode_triton(*inputs, pixels, out_size[0], out_size[1], slicing, start,
                                  True)

    return decode, chunk_size


def _bytes_per_query(params, out_size, in_size, element, grad):
    """An upper bound of the device bytes one query of a chunk holds at once: its own
    index bookkeeping, output and (``grad``) the backward's per-pixel rows, plus its
    share of the slices (``W/W_out`` per query: one per output row and group column, the
    most of any slicing but ``fixed4``, bounded by 1) with ``G`` and (``grad``) the
    coarse backward's four rows of ``D_c`` per vertex."""
    d_c = params["corner_proj"].shape[-1]
    d_f, d_h = params["fine"][0][0].shape[0], params["fine"][1][0].shape[0]
    share = min(1.0, in_size[1] / out_size[1] + 0.25)
    per_pixel = 160 + 12
    per_slice = 200 + 4 * d_f * element
    if grad:
        per_pixel += 4 * (2 * d_f + 2 * d_h) + 64
        per_slice += 4 * 4 * (d_f + 4 * d_c + 6)
    return int(per_pixel + share * per_slice)
