"""DLTE decode in Triton: the operator ``implicit_kernels::dlte_decode_triton``.

The C++ operator's argument layout (:func:`implicit_kernels.ops.dlte.op_inputs`): the
estimators' 2×2 vertex codes at every LR-grid corner (``B×(H+1)×(W+1)×4K``, channels last,
:func:`prepare_dlte`, differentiated by PyTorch).  Per chunk, DIIF's slices
(:class:`.diif._Chunk`), then:

* on the host (PyTorch, inside the operator): each slice and vertex's LTE-style Fourier
  feature ``coef ⊙ [cos πφ, sin πφ]`` (the slice's first and last pixel as the two
  offsets, docs/dlte.md) and the first coarse layer's pre-activation ``W_0·x + b_0``,
  ``4S×D_c`` rows;
* the Triton DIIF kernels from there: ``_coarse_kernel`` reading those rows
  (``PRE_GIVEN``) for the 256×256 layer and ``G = W_h·H``, and ``_fine_kernel`` (slice
  ensemble, fine stage, RGB).

Backward (``implicit_kernels::dlte_decode_triton_backward``): :meth:`.diif._Chunk.backward`
gives the pre-activation gradient; the first coarse layer's and the Fourier step's
gradients (coefficients, frequencies, phase weight) follow on the host, the vertex codes'
by ``index_put`` over the slices' corners.  The bilinear skip of the LR image is added in
PyTorch (:func:`implicit_kernels.ops.dlte.decode`).

Not fused: the Fourier feature and first coarse layer (host GEMM over ``4S`` rows, held
in memory per chunk) and their backward.
"""
from __future__ import annotations

import math

import torch

from .. import geometry
from ..ops import dlte as ops
from ..ops.dlte import prepare_dlte
from .diif import _cast, _check_depths, _Chunk
from .launch import empty

__all__ = ["dlte", "prepare_dlte"]

OP = "implicit_kernels::dlte_decode_triton"


def _chunk(coef_corners, w0, b0, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0, fine_w, fine_b,
           pixels, out_h, out_w, slicing):
    # The kernels read the pre-activations set later (PRE_GIVEN): w_coord is unused.
    return _Chunk(coef_corners, w0, b0, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0, fine_w,
                  fine_b, pixels, out_h, out_w, slicing, -1)


class _Fourier:
    """The Fourier vertex features of a chunk's slices, rows ``4s + t`` (fp32)."""

    def __init__(self, c, coef_corners, freq_corners, phase):
        f32 = {"device": c.device, "dtype": torch.float32}

        def at_vertices(corners):  # S×4×4K
            return torch.stack([corners[c.s_batch, c.s_group[:, 0] + a, c.s_group[:, 1] + b]
                                for a, b in geometry.VERTICES], 1).to(torch.float32)

        self.coef, freq = at_vertices(coef_corners), at_vertices(freq_corners)
        offsets = 2 * torch.tensor(geometry.VERTICES, **f32) - 1
        # (x - v_t)·(H, W) = (x - v*)·(H, W) - o_t: S×4×2 (first, last)×2 (y, x).
        self.ends = torch.stack(
            [geometry.diif_rel(e, c.s_group, c.in_size, c.out_size, torch.float32).unsqueeze(1)
             - offsets for e in (c.s_first, c.s_last)], dim=-2)
        self.cell = 2 * torch.tensor(c.in_size, **f32) / torch.tensor(c.out_size, **f32)
        # Frequency channel 4k + 2p + j is component j of pair 2k + p, dotted with end p.
        phi = ((freq.unflatten(-1, (-1, 2, 2)) * self.ends.unsqueeze(-3)).sum(-1).flatten(-2)
               + phase.to(torch.float32) @ self.cell)
        self.cos, self.sin = torch.cos(math.pi * phi), torch.sin(math.pi * phi)
        self.x = (self.coef * torch.cat([self.cos, self.sin], -1)).flatten(0, 1)  # 4S×4K

    def backward(self, dx):
        """``(d coef, d freq, d phase)`` for ``dx`` (``4S×4K``): the vertex codes'
        gradients per slice and vertex (``S×4×4K``) and the phase weight's."""
        dx = dx.view(self.coef.shape)
        n = self.cos.shape[-1]
        d_coef = dx * torch.cat([self.cos, self.sin], -1)
        dphi = math.pi * (dx[..., n:] * self.coef[..., n:] * self.cos
                          - dx[..., :n] * self.coef[..., :n] * self.sin)  # S×4×2K
        d_freq = (dphi.unflatten(-1, (-1, 2)).unsqueeze(-1) * self.ends.unsqueeze(-3)).flatten(-3)
        d_phase = dphi.reshape(-1, n).sum(0)[:, None] * self.cell[None, :]
        return d_coef, d_freq, d_phase


@torch.library.custom_op(OP, mutates_args=())
def dlte_decode_triton(coef_corners: torch.Tensor, freq_corners: torch.Tensor,
                       phase: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor,
                       coarse_w: list[torch.Tensor], coarse_b: list[torch.Tensor],
                       fine_wh: torch.Tensor, fine_wd: torch.Tensor, fine_b0: torch.Tensor,
                       fine_w: list[torch.Tensor], fine_b: list[torch.Tensor],
                       pixels: torch.Tensor, out_h: int, out_w: int,
                       slicing: str) -> torch.Tensor:
    """DLTE decode without the skip, of ``pixels`` (``B×Q×2`` int64) → ``B×Q×3`` in
    ``coef_corners``' dtype.

    coef_corners, freq_corners ``B×(H+1)×(W+1)×4K``; phase ``2K×2``; w0 ``D_c×4K``;
    coarse ``[(D_c×D_c, D_c)]``, fine_wh ``D_f×D_c``, fine_wd ``D_f×2``,
    fine ``[(D_h×D_f, D_h), (3×D_h, 3)]``."""
    _check_depths(coarse_w, fine_w)
    if pixels.shape[0] * pixels.shape[1] == 0:
        return empty(pixels.shape[0], pixels.shape[1], fine_w[1].shape[0],
                     device=coef_corners.device, dtype=coef_corners.dtype)
    c = _chunk(coef_corners, w0, b0, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0, fine_w,
               fine_b, pixels, out_h, out_w, slicing)
    x = _Fourier(c, coef_corners, freq_corners, phase).x
    c.pre = torch.addmm(b0.to(torch.float32), x, w0.to(torch.float32).t()).contiguous()
    return c.forward(coef_corners.dtype).view(pixels.shape[0], pixels.shape[1], -1)


@torch.library.custom_op(OP + "_backward", mutates_args=())
def dlte_decode_triton_backward(
        grad_out: torch.Tensor, coef_corners: torch.Tensor, freq_corners: torch.Tensor,
        phase: torch.Tensor, w0: torch.Tensor, b0: torch.Tensor, coarse_w: list[torch.Tensor],
        coarse_b: list[torch.Tensor], fine_wh: torch.Tensor, fine_wd: torch.Tensor,
        fine_b0: torch.Tensor, fine_w: list[torch.Tensor], fine_b: list[torch.Tensor],
        pixels: torch.Tensor, out_h: int, out_w: int, slicing: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor,
           list[torch.Tensor], list[torch.Tensor]]:
    """Gradients of :func:`dlte_decode_triton` for ``grad_out`` (``B×Q×3``), one like each
    tensor (and list) input before ``pixels``, contiguous, in the inputs' dtypes."""
    c = _chunk(coef_corners, w0, b0, coarse_w, coarse_b, fine_wh, fine_wd, fine_b0, fine_w,
               fine_b, pixels, out_h, out_w, slicing)
    fourier = _Fourier(c, coef_corners, freq_corners, phase)
    w0_32 = w0.to(torch.float32)
    c.pre = torch.addmm(b0.to(torch.float32), fourier.x, w0_32.t()).contiguous()
    dpre, (d_w1, d_b1, d_wh, d_wd, d_bd, d_wf1, d_wf2, d_bf1, d_bf2) = c.backward(grad_out)
    d_coef_v, d_freq_v, d_phase = fourier.backward(dpre @ w0_32)
    corners = []
    for per_vertex, like in ((d_coef_v, coef_corners), (d_freq_v, freq_corners)):
        grad = torch.zeros(like.shape, device=c.device, dtype=torch.float32)
        for t, (a, b) in enumerate(geometry.VERTICES):
            index = (c.s_batch, c.s_group[:, 0] + a, c.s_group[:, 1] + b)
            grad.index_put_(index, per_vertex[:, t], accumulate=True)
        corners.append(grad)
    return (_cast(corners[0], coef_corners), _cast(corners[1], freq_corners),
            _cast(d_phase, phase), _cast(dpre.t() @ fourier.x, w0), _cast(dpre.sum(0), b0),
            [_cast(d_w1, coarse_w[0])], [_cast(d_b1, coarse_b[0])], _cast(d_wh, fine_wh),
            _cast(d_wd, fine_wd), _cast(d_bd, fine_b0),
            [_cast(d_wf1, fine_w[0]), _cast(d_wf2, fine_w[1])],
            [_cast(d_bf1, fine_b[0]), _cast(d_bf2, fine_b[1])])


ops.register(OP, dlte_decode_triton_backward)


def dlte(feat, inp, out_size, pixels, params, slicing):
    """Decode ``pixels`` (``B×Q×2``) of the ``out_size`` grid → ``B×Q×3`` (see the reference)."""
    return ops.decode(OP, feat, inp, out_size, pixels, params, slicing)
