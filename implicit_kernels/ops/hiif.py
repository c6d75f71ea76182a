"""HIIF's operator interface, shared by the C++ operators (csrc/hiif_decode.cpp,
``implicit_kernels::hiif_<part>``) and the Triton ones (``implicit_kernels::hiif_<part>_triton``,
the same schemas): preparation, the chunked multi-pass orchestration (:func:`decode`),
fake implementations and autograd (:func:`register`).

The maths is the reference's (``reference/hiif.py``); the split of level 0's first layer
is the torch backend's (``torch_impl/hiif.py``), whose preparation :func:`prepare_hiif`
reuses, laying its per-LR-pixel maps out so a query's four member rows are contiguous.
Per chunk of queries, the operators do the work:

* ``hiif_level0``: the four codes' gather with their area weights, the level-0 bits,
  LayerNorm from the per-pixel statistics, fc1, GELU, fc2;
* ``hiif_attention_stats``: per image and head, ``Σ k̂ᵀv̂`` over the chunk (the attention's
  global reduction, as its own pass);
* ``hiif_attention_apply``: ``x + proj2(GELU(proj1(x + q·M)))`` with the complete sums M;
* ``hiif_levels``: levels 1..L-1 with their bits generated in the kernel.

On the CPU with gradients each of these but level 0 runs its ``_train`` operator, which
also returns the activations its backward (``_backward_saved``) would otherwise recompute,
up to ``RECORD_MAX_QUERIES`` queries a decode (:func:`implicit_kernels.ops.keeps_record`;
about 17 KB a query in one pass at the papers' widths, docs/hiif.md).

A call that fits one chunk runs one pass (each block uses the chunk's own sums);
otherwise pass ``k`` recomputes every chunk through the blocks before ``k`` and
accumulates block ``k``'s sums over all chunks, and a last pass decodes.  The sums are
accumulated by PyTorch from the operators' outputs, so autograd carries every chunk's
gradient through them exactly.  The bilinear skip is PyTorch's ``grid_sample``
(``reference.lte.bilinear_skip``), not fused.  Positions (coord, cell) are not
differentiated.
"""
from __future__ import annotations

import math

import torch

from .. import _validate as check
from .. import geometry
from ..reference.lte import bilinear_skip
from ..torch_impl import hiif as torch_hiif
from . import chunk_bounds, chunked, keeps_record, whole_decode
from .liif import check_coordinates_constant

NS = "implicit_kernels::"
_ops = torch.ops.implicit_kernels


def prepare_hiif(feat, params):
    """The torch backend's preparation, with level 0's maps as one contiguous
    ``B×H×W×4×(hidden+2)`` tensor (member ``t``'s row of each LR pixel)."""
    level0, member_projection, mean, sq = torch_hiif.fold_level0(feat, params)
    b, hidden = mean.shape[0], level0["row_sums"].shape[1]
    maps = mean.new_empty(b, *mean.shape[-2:], 4, hidden + 2)
    # Each member's projection is written into place as it is made: no list of the four
    # maps, stack or permuted copy beside the result (each the size of the maps).
    for t in range(4):
        maps[..., t, :hidden] = member_projection(t).permute(0, 2, 3, 1)
        maps[..., t, hidden] = mean[:, 0]
        maps[..., t, hidden + 1] = sq[:, 0]
    return {**params, "level0": {**level0, "maps": maps}}


#: The public-centres mode needs only the feature-map preparation.
prepare_hiif_public_codes = prepare_hiif


def decode(feat, inp, coord, cell, params, chunk_size=None, normalizer="n", suffix="",
           centres=()):
    """Decode queries with attention over all ``Q`` queries of each image (arguments as
    ``torch_impl.hiif.hiif``; ``params`` prepared by :func:`prepare_hiif`) → ``B×Q×3``,
    through the operators ``implicit_kernels::hiif_<part><suffix>``; ``centres`` is their
    trailing centre-rounding argument (``(public_centres,)``; empty for operators without
    one)."""
    check_coordinates_constant(coord, cell,
                               f"implicit_kernels::hiif_level0{suffix}/hiif_levels{suffix}")
    b, n = coord.shape[:2]
    if n == 0:
        return torch_hiif.empty_output(coord, feat, inp, params)
    return _decode_chunks(lambda s, e: (coord[:, s:e], cell[:, s:e]), n, feat, inp, params,
                          chunk_size, normalizer, suffix, centres)


def decode_grid(feat, inp, size, params, positions, chunk_size=None, normalizer="n",
                suffix="", public_centres=False):
    """:func:`decode` of every pixel of the grid ``size = (H_out, W_out)`` →
    ``B×3×H_out×W_out``, its positions in dtype ``positions``, rounded as the operators'
    ``public_centres`` flag rounds the LR centres (``geometry.CENTRES``).

    Each pass makes a chunk's positions from the grid (``geometry.grid_positions``, the
    whole grid's bit for bit) and the results go channels-first into the output: at ×30
    whole-grid coordinates and a queries-last output (then a channels-first copy) would
    each be the size of the output or more."""
    b = feat.shape[0]
    rounding = "public" if public_centres else "project"
    return _decode_chunks(
        lambda s, e: geometry.grid_positions(s, e, size, b, feat.device, positions, rounding),
        size[0] * size[1], feat, inp, params, chunk_size, normalizer, suffix, (public_centres,),
        channels_first=True).view(b, 3, *size)


def _decode_chunks(chunk_positions, n, feat, inp, params, chunk_size, normalizer, suffix,
                   centres, channels_first=False):
    """:func:`decode`'s passes over ``n ≥ 1`` queries an image, ``chunk_positions(s, e)``
    giving queries ``[s, e)``'s ``(coord, cell)`` (``B×(e-s)×2`` each) → ``B×n×3``, or
    ``B×3×n`` when ``channels_first``."""
    b = feat.shape[0]
    chunks = chunk_bounds(n, b, chunk_size)
    norm = n if normalizer == "n" else math.sqrt(n)
    size = feat.shape[-2:]
    mats = []
    # The first chunk is the largest.
    buffer = _activation_buffer(feat, params, b * (chunks[0][1] - chunks[0][0]), suffix)
    with whole_decode(b * n):
        _attention_sums(chunk_positions, params, chunks, mats, norm, suffix, centres, buffer)

    def decode_chunk(s, e):
        coord, cell = chunk_positions(s, e)
        return (_decode(coord, cell, params, mats, norm, size, suffix, centres, buffer)
                + bilinear_skip(inp, coord))

    # Each chunk's result, skip included, goes straight into the output: no list of chunk
    # results, concatenation or whole-output skip beside it (at ×30 each would be the
    # size of the output).
    return chunked(decode_chunk, n, b, chunk_size, feat, channels_first)


def _activation_buffer(feat, params, rows, suffix):
    """For a decode without autograd on CPU tensors (C++ operators, not traced), one buffer
    for ``rows`` activation rows that every chunk's level 0 and attention blocks write into
    (``hiif_level0_out``, ``hiif_attention_apply_``): ``buffer(B, m) -> B×m×C``, a view of
    its start.  A fresh ``B×m×C`` per operator and chunk cost the memory of two and, at
    ×30, glibc handed them back and faulted them in again for every chunk (~7 % of the
    time).  ``None`` otherwise."""
    if (suffix or feat.device.type != "cpu" or torch.is_grad_enabled()
            or torch.compiler.is_compiling()):
        return None
    width = params["levels"][0]["fc2"][0].shape[0]
    storage = feat.new_empty(rows * width)
    return lambda b, m: storage[:b * m * width].view(b, m, width)


def _attention_sums(chunk_positions, params, chunks, mats, norm, suffix, centres, buffer):
    """:func:`decode`'s first passes: each attention block's sums over every chunk, appended
    to ``mats`` (a single chunk takes its own sums on the way instead)."""
    if len(chunks) > 1:
        for k, block in enumerate(params["attention"]):
            # Summed as the chunks come (no list of every chunk's sums, which pinned heap
            # pages between the chunks' temporaries), in fp32 at least: a half-precision
            # running sum loses the later chunks' bits (float64 stays float64).
            total = 0
            for s, e in chunks:
                part = _stats(_features(*chunk_positions(s, e), params, mats, k, norm, suffix,
                                        centres, buffer), block, suffix)
                total = total + part.to(torch.promote_types(part.dtype, torch.float32))
            mats.append((total / norm).to(part.dtype))


def _op(part, suffix):
    return getattr(_ops, f"hiif_{part}{suffix}")


def _stats(x, block, suffix=""):
    args = (x, *block["qkv"], *block["kln"], *block["vln"], block["heads"])
    if _keeps_record("attention_stats", suffix, x, args[1:-1]):
        return _ops.hiif_attention_stats_train(*args)[0]
    return _op("attention_stats", suffix)(*args)


def _keeps_record(part, suffix, x, params):
    """Whether the cpu backend's ``hiif_<part>`` call on ``x`` (``B×m×C``) runs its
    ``_train`` operator (:func:`implicit_kernels.ops.keeps_record`)."""
    return suffix == "" and x.device.type == "cpu" and keeps_record(
        NS + "hiif_" + part, x.shape[0] * x.shape[1], [x, *params])


def _features(coord, cell, params, mats, stop, norm, suffix="", centres=(), buffer=None):
    """Level 0 then attention blocks ``0..stop-1`` for a chunk (``B×m×C``), in ``buffer``'s
    view where given (:func:`_activation_buffer`).  Blocks without a complete sum in
    ``mats`` use this chunk's (valid for a single chunk)."""
    level0 = params["level0"]
    args = (level0["maps"], level0["row_sums"], level0["w_extra"], level0["bias"],
            *params["levels"][0]["fc2"], coord, cell, level0["channels"], *centres)
    if buffer is None:
        x = _op("level0", suffix)(*args)
    else:
        x = buffer(*coord.shape[:2])
        _ops.hiif_level0_out(*args, x)
    for i, block in enumerate(params["attention"][:stop]):
        mat = mats[i] if i < len(mats) else _stats(x, block, suffix) / norm
        weights = (*block["qkv"], *block["proj1"], *block["proj2"])
        if _keeps_record("attention_apply", suffix, x, (mat, *weights)):
            x = _ops.hiif_attention_apply_train(x, mat, *weights)[0]
        elif buffer is None:
            x = _op("attention_apply", suffix)(x, mat, *weights)
        else:
            _ops.hiif_attention_apply_(x, mat, *weights)
    return x


def level_lists(params):
    """Levels 1..L-1's parameters as the six lists of ``hiif_levels``: norm weight and
    bias, fc1 weight and bias, fc2 weight and bias."""
    levels = params["levels"][1:]
    return [[blk[key][i] for blk in levels] for key in ("norm", "fc1", "fc2") for i in (0, 1)]


def _decode(coord, cell, params, mats, norm, size, suffix="", centres=(), buffer=None):
    """The whole decoder but the skip, for a chunk: ``B×m×3``."""
    x = _features(coord, cell, params, mats, len(params["attention"]), norm, suffix, centres,
                  buffer)
    lists = level_lists(params)
    if _keeps_record("levels", suffix, x, lists):
        return _ops.hiif_levels_train(x, coord, *lists, size[0], size[1], *centres)[0]
    return _op("levels", suffix)(x, coord, *lists, size[0], size[1], *centres)


# ----------------------------------------------------------------------------------------
# Fake implementations and autograd
# ----------------------------------------------------------------------------------------

def _like(*ts):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in ts)


def fake_codes(coord, h, w, levels, public_centres=False):
    """Fake implementation of ``implicit_kernels::hiif_codes`` (the C++ operator giving the
    level codes, ``B×Q×levels×2``)."""
    return coord.new_empty(*coord.shape[:-1], levels, 2)


# Operators of this layout may end with options after ``channels`` (``h, w``): the C++
# ones take ``public_centres``.

def _fake_level0(maps, row_sums, w_extra, bias, fc2_w, fc2_b, coord, cell, channels, *options):
    return maps.new_empty(coord.shape[0], coord.shape[1], fc2_w.shape[0])


def _fake_level0_backward(grad_out, maps, row_sums, w_extra, bias, fc2_w, fc2_b, coord, cell,
                          channels, *options):
    check.grad_out(grad_out, maps, (*coord.shape[:2], fc2_w.shape[0]), NS + "hiif_level0_backward")
    return _like(maps, row_sums, w_extra, bias, fc2_w, fc2_b)


def _setup_level0(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8])
    ctx.options = inputs[8:]  # channels, ...


def _backward_level0(backward_op):
    def backward(ctx, grad_out):
        grads = backward_op(grad_out, *ctx.saved_tensors, *ctx.options)
        return (*grads, None, None, *[None] * len(ctx.options))
    return backward


def _fake_stats(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads):
    d = x.shape[-1] // heads
    return x.new_empty(x.shape[0], heads, d, d)


def _fake_stats_backward(grad_out, x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads):
    d = x.shape[-1] // heads
    check.grad_out(grad_out, x, (x.shape[0], heads, d, d), NS + "hiif_attention_stats_backward")
    return _like(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b)


def _setup_stats(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7])
    ctx.heads = inputs[7]


def _backward_stats(backward_op):
    def backward(ctx, grad_out):
        grads = backward_op(grad_out, *ctx.saved_tensors, ctx.heads)
        return (*grads, None)
    return backward


def _fake_apply(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _fake_apply_backward(grad_out, *inputs):
    check.grad_out(grad_out, inputs[0], inputs[0].shape, NS + "hiif_attention_apply_backward")
    return _like(*inputs)


def _setup_apply(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward_apply(backward_op):
    def backward(ctx, grad_out):
        return backward_op(grad_out, *ctx.saved_tensors)
    return backward


def _fake_levels(x, coord, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b, h, w, *options):
    return x.new_empty(x.shape[0], x.shape[1], fc2_w[-1].shape[0])


def _fake_levels_backward(grad_out, x, coord, *lists_and_size):
    lists = lists_and_size[:6]
    check.grad_out(grad_out, x, (*x.shape[:2], lists[5][-1].shape[0]), NS + "hiif_levels_backward")
    return (*_like(x), *[list(_like(*ts)) for ts in lists])


def _setup_levels(ctx, inputs, output):
    x, coord, *rest = inputs
    lists, ctx.options = rest[:6], rest[6:]  # (h, w, ...)
    ctx.count = len(lists[0])
    ctx.save_for_backward(x, coord, *[t for ts in lists for t in ts])


def _backward_levels(backward_op):
    def backward(ctx, grad_out):
        x, coord, *flat = ctx.saved_tensors
        n = ctx.count
        lists = [flat[i * n:(i + 1) * n] for i in range(6)]
        grads = backward_op(grad_out, x, coord, *lists, *ctx.options)
        return (grads[0], None, *grads[1:], *[None] * len(ctx.options))
    return backward


def _fake_levels_train(x, coord, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b, h, w, *options):
    rows = x.shape[0] * x.shape[1]
    saved = [x.new_empty(rows, t.shape[0]) for t in [*fc2_w[:-1], *fc1_w]]
    return _fake_levels(x, coord, norm_w, norm_b, fc1_w, fc1_b, fc2_w, fc2_b, h, w), saved


def _fake_levels_backward_saved(grad_out, saved, x, coord, *lists_and_size):
    return _fake_levels_backward(grad_out, x, coord, *lists_and_size)


def _fake_stats_train(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads):
    rows, c = x.shape[0] * x.shape[1], x.shape[-1]
    record = [x.new_empty(rows, 2 * c), x.new_empty(rows, 2 * heads)]
    return _fake_stats(x, qkv_w, qkv_b, kln_w, kln_b, vln_w, vln_b, heads), record


def _fake_stats_backward_saved(grad_out, saved, *inputs):
    return _fake_stats_backward(grad_out, *inputs)


def _fake_apply_train(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b):
    rows = x.shape[0] * x.shape[1]
    record = [x.new_empty(rows, x.shape[-1]), x.new_empty(rows, proj1_w.shape[0])]
    return _fake_apply(x, mat, qkv_w, qkv_b, proj1_w, proj1_b, proj2_w, proj2_b), record


def _fake_apply_backward_saved(grad_out, saved, *inputs):
    return _fake_apply_backward(grad_out, *inputs)


def register_train():
    """Fake implementations of the cpu backend's ``_train`` operators
    (``implicit_kernels::hiif_attention_stats_train``, ``hiif_attention_apply_train``,
    ``hiif_levels_train``: the C++ operators keeping their activations for their
    ``_backward_saved`` operators; CPU only) and of those.  Their autograd is C++
    (csrc/hiif_autograd.cpp): registered from Python it cost ~0.14 ms a call."""
    for name, fake, fake_backward in [
            ("hiif_attention_stats", _fake_stats_train, _fake_stats_backward_saved),
            ("hiif_attention_apply", _fake_apply_train, _fake_apply_backward_saved),
            ("hiif_levels", _fake_levels_train, _fake_levels_backward_saved)]:
        torch.library.register_fake(NS + name + "_train")(fake)
        torch.library.register_fake(NS + name + "_backward_saved")(fake_backward)


def register_in_place():
    """Fake implementations of the decode's in-place C++ operators without gradients
    (:func:`_activation_buffer`): ``hiif_level0_out`` and ``hiif_attention_apply_`` return
    nothing."""
    for name in ("hiif_level0_out", "hiif_attention_apply_"):
        torch.library.register_fake(NS + name)(lambda *args: None)


#: The C++ operators of this interface whose autograd is registered in C++
#: (csrc/hiif_autograd.cpp): :func:`register` gives them fakes only.
CXX_AUTOGRAD = ("hiif_level0",)


def register(suffix=""):
    """Fake implementations and autograd of the four operators
    ``implicit_kernels::hiif_<part><suffix>`` and of their ``_backward`` operators (defined
    with the C++ operators' schemas); autograd in Python but for ``CXX_AUTOGRAD``."""
    for name, fake, fake_backward, setup, backward in [
            ("hiif_level0", _fake_level0, _fake_level0_backward, _setup_level0, _backward_level0),
            ("hiif_attention_stats", _fake_stats, _fake_stats_backward, _setup_stats,
             _backward_stats),
            ("hiif_attention_apply", _fake_apply, _fake_apply_backward, _setup_apply,
             _backward_apply),
            ("hiif_levels", _fake_levels, _fake_levels_backward, _setup_levels,
             _backward_levels)]:
        name += suffix
        torch.library.register_fake(NS + name)(fake)
        torch.library.register_fake(NS + name + "_backward")(fake_backward)
        if name not in CXX_AUTOGRAD:
            torch.library.register_autograd(NS + name, backward(getattr(_ops, name + "_backward")),
                                            setup_context=setup)

