"""HIIF's Triton operators ``implicit_kernels::hiif_<part>_triton`` (the C++ operators'
schemas; fakes, autograd and the chunked orchestration: :mod:`implicit_kernels.ops.hiif`),
their backward operators, and the backend functions.

Each backward operator launches its kernel, which writes per row what the weight
gradients need (each Linear's input and pre-activation gradient ``δ``, fp32, bounded by
the chunk), so those are GEMMs (``dW = δᵀ·x``) here; per-tile partial sums are summed by
PyTorch.
"""
from __future__ import annotations

import contextlib

import torch
import triton

from ...ops import hiif as hiif_ops
from ...ops.hiif import prepare_hiif, prepare_hiif_public_codes
from .. import grid, launch
from . import attention, level0, levels, query_geometry

__all__ = ["hiif", "hiif_public_codes", "prepare_hiif", "prepare_hiif_public_codes"]

SUFFIX = "_triton"
NS = "implicit_kernels::"
#: The widest channel or hidden width held as one register row tile.
MAX_WIDTH = 1024
_F32 = torch.float32


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
        launch.launch(level0.forward, b * m,
                      *_contiguous(maps, row_sums, w_extra, bias, fc2_w, fc2_b, coord, cell),
                      out, b * m, m, h, w, channels, hid,
                      *query_geometry.launch_args(h, w, public_centres),
                      BLOCK_C=launch.block(channels), PRECISION=launch.precision(maps),
                      **grid.NO_FMA)
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
            launch.launch(level0.backward, n,
                          *_contiguous(maps, row_sums, w_extra, bias, fc2_w, coord, cell, grad_out),
                          dmaps, hidden, delta, dev, ed, n, m, h, w, channels, hid,
                          *query_geometry.launch_args(h, w, public_centres),
                          BLOCK_C=launch.block(channels), PRECISION=launch.precision(maps),
                          **grid.NO_FMA)
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
            launch.launch(attention.stats, m,
                          *_contiguous(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b),
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
            launch.launch(attention.stats_backward, m,
                          *_contiguous(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, grad_out),
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
            launch.launch(attention.apply, m,
                          *_contiguous(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b),
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
            launch.launch(attention.apply_backward, m,
                          *_contiguous(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, grad_out),
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
    packed = _Levels(norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b)
    n = b * m
    if n:
        with _device(x):
            launch.launch(levels.forward, n, *_contiguous(x, coord), *packed.tensors, out, n, h, w,
                          c, packed.hidden, packed.nout, packed.count,
                          *query_geometry.launch_args(h, w, public_centres),
                          **packed.meta(x))
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
    packed = _Levels(norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b)
    count, hid, n = packed.count, packed.hidden, b * m
    f32 = {"device": x.device, "dtype": _F32}
    dx = torch.zeros(n, c, **f32)
    inputs = launch.empty(count, n, c, **f32)
    ln_out = launch.empty(count, n, c + 2, **f32)
    hidden, delta = (launch.empty(count, n, hid, **f32) for _ in range(2))
    dlevel_out = launch.empty(max(count - 1, 1), n, c, **f32)
    dnorm = torch.zeros(_tiles(n), count, 2, c + 2, **f32)
    if n:
        with _device(x):
            launch.launch(levels.backward, n, *_contiguous(x, coord), *packed.tensors[:-1],
                          grad_out.contiguous(), dx, inputs, ln_out, hidden, delta, dlevel_out,
                          dnorm, n, h, w, c, hid, packed.nout, count,
                          *query_geometry.launch_args(h, w, public_centres),
                          **packed.meta(x))
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


hiif_ops.register(SUFFIX)


def hiif(feat, inp, coord, cell, params, chunk_size=None, normalizer="n"):
    """Decode queries with attention over all ``Q`` queries of each image (arguments as
    ``torch_impl.hiif.hiif``; ``params`` prepared by :func:`prepare_hiif`) → ``B×Q×3``."""
    return _decode(feat, inp, coord, cell, params, chunk_size, normalizer, False)


def hiif_public_codes(feat, inp, coord, cell, params, chunk_size=None, normalizer="n"):
    """:func:`hiif` with the public code's LR pixel centres (``level_codes="public"``;
    ``reference.hiif.hiif_public_codes``): the operators' ``public_centres`` flag."""
    return _decode(feat, inp, coord, cell, params, chunk_size, normalizer, True)


def _decode(feat, inp, coord, cell, params, chunk_size, normalizer, public_centres):
    _check_widths(channels=params["level0"]["channels"],
                  hidden=params["levels"][0]["fc1"][0].shape[0])
    _check_level_widths([level["fc1"][0] for level in params["levels"][1:]])
    _check_offsets(coord, chunk_size, params)
    return hiif_ops.decode(feat, inp, coord, cell, params, chunk_size, normalizer, SUFFIX,
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
