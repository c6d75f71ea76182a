"""Trainable parameters and multiply-accumulates (MACs) of the models, counted analytically.

Counting rule (docs/cost-model.md#counting-rule): a plain count of the multiplies of every
Linear and Conv layer (``in_features × out_features`` per row, ``C_in × C_out × k²`` per
output pixel) -- what ``thop`` counts: no biases, activations, norms or other element-wise
work.
Units follow each layer's real call count: per LR pixel (encoders, 3×3 estimators), per
slice and vertex (DIIF/DLTE coarse stage), per output pixel and ensemble member.

The DIIF paper's tables print these counts with a unit slip
(docs/cost-model.md#printing-convention): values ``thop`` printed in T were used as is,
values printed in G were divided by 1024 and called "T", and decoder parameter counts in M
were multiplied by 1024 and called "K".
:func:`paper_tera` and :func:`paper_kilo` apply that convention, so our plain counts can be
compared with the printed tables; :class:`Cost` reports both.

Widths are the papers' defaults (64 encoder channels, 256 hidden); the architectures
are those of docs/ (docs/conventions.md, docs/liif-lte.md, docs/diif.md, docs/dlte.md,
docs/hiif.md).  No module is built, so the package does not depend on ``models``.

Example::

    >>> c = count("edsr-baseline-diif", (90, 160), 16)
    >>> c.macs, round(c.paper_tera_macs, 3)
    (808850534400, 0.79)
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass

import torch

from . import geometry
from .functional import DEFAULT_CHUNK_SIZE

#: Encoder output channels and decoder hidden width used by every paper.
FEAT_CHANNELS = 64
HIDDEN = 256
#: HIIF's attention heads and number of levels (docs/hiif.md#what-the-paper-fixes).
HIIF_HEADS, HIIF_LEVELS = 16, 6

ENCODERS = ("edsr-baseline", "rdn", "swinir")
DECODERS = ("liif", "lte", "diif", "dlte", "hiif")

__all__ = ["Cost", "count", "diif_slice_count", "fused_macs", "fused_mac_terms", "paper_tera",
           "paper_kilo", "ENCODERS", "DECODERS"]


# ----------------------------------------------------------------------------------------
# Layer arithmetic: each helper returns (trainable parameters, MACs per call)
# ----------------------------------------------------------------------------------------

def _linear(fan_in: int, fan_out: int, bias: bool = True):
    return fan_in * fan_out + (fan_out if bias else 0), fan_in * fan_out


def _conv(c_in: int, c_out: int, k: int):
    """A ``k×k`` convolution with bias; MACs per output pixel."""
    return _linear(c_in * k * k, c_out)


def _mlp(dims):
    """A chain of Linear layers ``dims[0] -> dims[1] -> ...``."""
    return _total(_linear(a, b) for a, b in zip(dims[:-1], dims[1:]))


def _layer_norm(width: int):
    return 2 * width, 0


def _total(pairs):
    params = macs = 0
    for p, m in pairs:
        params += p
        macs += m
    return params, macs


# ----------------------------------------------------------------------------------------
# Encoders (docs/conventions.md#encoders): parameters and MACs per LR pixel
# ----------------------------------------------------------------------------------------

def _edsr_baseline():
    """Head Conv3×3(3→64); 16 residual blocks of two Conv3×3(64→64); one more Conv3×3.
    (The frozen mean-shift 1×1 convolutions are not trainable and never run.)"""
    return _total([_conv(3, 64, 3)] + [_conv(64, 64, 3)] * (2 * 16 + 1))


def _rdn():
    """RDN config B: G0 = 64, D = 16 blocks of C = 8 densely connected Conv3×3(·→64)
    layers, each block closed by a 1×1 fusion; global 1×1 + 3×3 fusion."""
    g0, d, c, g = 64, 16, 8, 64
    block = [_conv(g0 + i * g, g, 3) for i in range(c)] + [_conv(g0 + c * g, g0, 1)]
    return _total([_conv(3, g0, 3), _conv(g0, g0, 3)] + block * d
                  + [_conv(d * g0, g0, 1), _conv(g0, g0, 3)])


#: SwinIR classical-SR configuration (LTE's SwinIR-LIIF/LTE encoder): width, stages,
#: layers per stage, window, MLP ratio, output channels.
SWINIR_DIM, SWINIR_STAGES, SWINIR_DEPTH, SWINIR_WINDOW, SWINIR_MLP = 180, 6, 6, 8, 2
SWINIR_HEADS = 6


def _swinir():
    """SwinIR without up-sampler: Conv3×3(3→180); 6 stages × 6 Swin layers (LayerNorms,
    qkv Linear 180→540, relative-position bias table, proj 180→180, MLP 180→360→180) each
    closed by a Conv3×3(180→180); patch and final LayerNorms; Conv3×3(180→180) and
    Conv3×3(180→64).  MACs per (padded) pixel add the window products ``QKᵀ`` and ``AV``
    (``2·window²·180``), which thop would not see."""
    dim, window = SWINIR_DIM, SWINIR_WINDOW
    table = (2 * window - 1) ** 2 * SWINIR_HEADS, 0
    layer = _total([_layer_norm(dim), _linear(dim, 3 * dim), table, _linear(dim, dim),
                    _layer_norm(dim), _linear(dim, SWINIR_MLP * dim),
                    _linear(SWINIR_MLP * dim, dim), (0, 2 * window * window * dim)])
    stage = _total([layer] * SWINIR_DEPTH + [_conv(dim, dim, 3)])
    return _total([_conv(3, dim, 3), _layer_norm(dim)] + [stage] * SWINIR_STAGES
                  + [_layer_norm(dim), _conv(dim, dim, 3), _conv(dim, FEAT_CHANNELS, 3)])


def _swinir_pixels(in_size) -> int:
    """SwinIR runs on the input padded to window multiples."""
    return _pixels(tuple(-(-n // SWINIR_WINDOW) * SWINIR_WINDOW for n in in_size))


_ENCODER_COST = {"edsr-baseline": _edsr_baseline, "rdn": _rdn, "swinir": _swinir}
#: Pixels an encoder runs on for an input size (default: the input's).
_ENCODER_PIXELS = {"swinir": _swinir_pixels}


# ----------------------------------------------------------------------------------------
# DIIF slicing: exact counts from the group arithmetic of implicit_kernels.geometry
# ----------------------------------------------------------------------------------------

def _group_sizes(n_in: int, n_out: int) -> Counter:
    """``{group size: number of LR groups of that size}`` along one axis."""
    groups = geometry.group_index(torch.arange(n_out), n_in, n_out)
    return Counter(torch.bincount(groups, minlength=n_in).tolist())


def diif_slice_count(in_size, out_size, slicing: str = "linear") -> int:
    """Number of DIIF slices (coarse-stage passes per vertex) for one image.

    Args:
        in_size: ``(H, W)`` of the LR feature map.
        out_size: ``(H_out, W_out)``, each at least the input's.
        slicing: ``"linear"`` (one output row of a group: ``H_out·W``), ``"constant"``
            (one per group: ``H·W``) or ``"fixed4"`` (``ceil(group pixels / 4)`` per group).
    """
    (h, w), (ho, wo) = in_size, out_size
    if slicing == "linear":
        return ho * w
    if slicing == "constant":
        return h * w
    if slicing == "fixed4":
        rows, cols = _group_sizes(h, ho), _group_sizes(w, wo)
        return sum(nr * nc * -(-(gh * gw) // 4)
                   for gh, nr in rows.items() for gw, nc in cols.items())
    raise ValueError(f"slicing must be one of {geometry.SLICINGS}, got {slicing!r}")


# ----------------------------------------------------------------------------------------
# Decoders: (params, MACs) for a C-channel feature map of in_size decoded to out_size
# ----------------------------------------------------------------------------------------

def _liif(c, in_size, out_size, slicing):
    """docs/liif-lte.md#liif: MLP [9C+4, 256×4, 3] on each of 4 ensemble members per output
    pixel."""
    params, per_member = _mlp([9 * c + 4] + [HIDDEN] * 4 + [3])
    return params, 4 * per_member * _pixels(out_size), ""


def _fourier_estimators(c, channels):
    """LTE-style coefficient and frequency Conv3×3(C→channels) and phase Linear(2→128, no bias)."""
    convs = _total([_conv(c, channels, 3)] * 2)
    return convs, _linear(2, HIDDEN // 2, bias=False)


def _lte(c, in_size, out_size, slicing):
    """docs/liif-lte.md#parameters-and-macs: two 3×3 estimators per LR pixel; per output
    pixel and member, the phase Linear and the MLP [256, 256×3, 3]."""
    convs, phase = _fourier_estimators(c, HIDDEN)
    imnet = _mlp([HIDDEN] * 4 + [3])
    params = convs[0] + phase[0] + imnet[0]
    macs = convs[1] * _pixels(in_size) + 4 * (phase[1] + imnet[1]) * _pixels(out_size)
    return params, macs, ""


def _fine():
    """DIIF/DLTE fine stage [256 + 2, 256, 256, 3], once per output pixel."""
    return _mlp([HIDDEN + 2, HIDDEN, HIDDEN, 3])


def _diif(c, in_size, out_size, slicing):
    """docs/diif.md#mac-formula: coarse [16C+6, 256, 256] per slice and vertex, fine per
    pixel."""
    coarse, fine = _mlp([16 * c + 6, HIDDEN, HIDDEN]), _fine()
    slices = diif_slice_count(in_size, out_size, slicing)
    macs = 4 * slices * coarse[1] + _pixels(out_size) * fine[1]
    return coarse[0] + fine[0], macs, ""


def _diif_without_ensemble(c, in_size, out_size, slicing):
    """docs/diif.md#ablation-variants ("w/o se"): coarse [9C+6, 256, 256] once per slice,
    fine per pixel."""
    coarse, fine = _mlp([9 * c + 6, HIDDEN, HIDDEN]), _fine()
    slices = diif_slice_count(in_size, out_size, slicing)
    macs = slices * coarse[1] + _pixels(out_size) * fine[1]
    return coarse[0] + fine[0], macs, "DIIF without slice ensemble (the paper's w/o se ablation)"


def _dlte(c, in_size, out_size, slicing):
    """docs/dlte.md#numbers-that-pin-it (reconstructed): Conv3×3(C→64) estimators per LR
    pixel; per slice and vertex the phase Linear and the coarse [256, 256, 256]; fine per
    pixel."""
    convs, phase = _fourier_estimators(c, FEAT_CHANNELS)
    coarse, fine = _mlp([4 * FEAT_CHANNELS, HIDDEN, HIDDEN]), _fine()
    slices = diif_slice_count(in_size, out_size, slicing)
    params = convs[0] + phase[0] + coarse[0] + fine[0]
    macs = (convs[1] * _pixels(in_size) + 4 * slices * (phase[1] + coarse[1])
            + _pixels(out_size) * fine[1])
    return params, macs, "DLTE is reconstructed (docs/dlte.md)"


def _hiif(c, in_size, out_size, slicing):
    """docs/hiif.md#parameters-per-layer (our count): Conv3×3(C→256) per LR pixel; per
    query six level blocks (LayerNorm, Linear, GELU, Linear) and two attention blocks
    (Linear 256→768, per-head K/V LayerNorms, two 256→256 Linears), plus the attention
    products ``KᵀV`` and ``Q·M`` (``2·256·16`` MACs per block), which thop would not see."""
    conv = _conv(c, HIDDEN, 3)
    widths = [4 * HIDDEN + 4] + [HIDDEN + 2] * (HIIF_LEVELS - 1)
    outs = [HIDDEN] * (HIIF_LEVELS - 1) + [3]
    levels = _total(_total([_layer_norm(w), _linear(w, HIDDEN), _linear(HIDDEN, o)])
                    for w, o in zip(widths, outs))
    head = HIDDEN // HIIF_HEADS
    attention = _total([_linear(HIDDEN, 3 * HIDDEN), _layer_norm(head), _layer_norm(head),
                        _linear(HIDDEN, HIDDEN), _linear(HIDDEN, HIDDEN)])
    products = 2 * HIDDEN * head  # KᵀV accumulation and Q·M, per query and block
    params = conv[0] + levels[0] + 2 * attention[0]
    per_query = levels[1] + 2 * (attention[1] + products)
    macs = conv[1] * _pixels(in_size) + per_query * _pixels(out_size)
    note = (f"HIIF: our count of the derivative layout (docs/hiif.md#parameters-per-layer); "
            f"decoder params include the 3×3 conv ({conv[0]:,}) the paper counts with the "
            f"encoder, and MACs the attention products ({2 * products:,} per query)")
    return params, macs, note


_DECODER_COST = {"liif": _liif, "lte": _lte, "diif": _diif, "dlte": _dlte, "hiif": _hiif}


def _pixels(size) -> int:
    return size[0] * size[1]


# ----------------------------------------------------------------------------------------
# The split forms the fused `cpu` backend runs: MACs per forward, by term
# ----------------------------------------------------------------------------------------

def fused_mac_terms(decoder: str, in_size, out_size, *, slicing: str = "linear",
                    chunk: int | None = DEFAULT_CHUNK_SIZE, slice_ensemble: bool = True) -> dict:
    """The multiply-adds the ``cpu`` backend's split forms perform in one forward decode of
    a whole ``out_size`` grid from a 64-channel ``in_size`` feature map (batch 1, the
    papers' widths), by term: ``{description: MACs}``.

    Counted: every product of a weight, or of a blend weight, with a value -- the dense
    layers and convolutions (ATen), and the small linear steps the C++ kernels run element
    by element: LIIF's four coordinate columns per member, LTE's and DLTE's Fourier phases
    (two frequency and two phase products per pair), DIIF's and DLTE's per-pixel blend of
    the vertices' rows and offset columns, HIIF's level-0 sum (three 4-term sums per
    channel), the area-weighted blend of LIIF's and LTE's member outputs.  Not counted:
    biases, activations, LayerNorm statistics, sines and cosines, the Fourier features'
    coefficient products, gathers and the bilinear skip.

    Work depends on how the output is cut into backend calls: ``chunk`` queries per call
    (``F``'s ``chunk_size``; ``None``: one call).  DIIF and DLTE find the slices of each
    call's raster run, so a slice cut by a chunk boundary runs its coarse stage twice;
    HIIF with more than one call runs one pass per attention block plus one, each pass
    recomputing level 0 and the blocks whose sums are complete (``ops.hiif.decode``).

    DIIF and DLTE can form the fine stage's first layer two ways (the same result): ``G_t
    = W_h·H_t`` per slice and vertex, blended per pixel; or ``z = W_h·Σ_t w_t H_t``, the
    hidden rows blended per pixel and then multiplied, cheaper where a call has fewer
    pixels than slices × vertices.  Each call is counted with the cheaper of the two (the
    form a backend choosing per call runs; both are counted under one term).

    Args:
        decoder: one of :data:`DECODERS`.
        in_size, out_size: ``(H, W)`` and ``(H_out, W_out)``, row first.
        slicing: DIIF/DLTE slicing (:data:`implicit_kernels.geometry.SLICINGS`).
        chunk: queries per backend call.
        slice_ensemble: ``False``: DIIF's "w/o se" ablation (one vertex, a 3×3 code).

    Returns:
        ``{term: MACs}``, plain integers; :func:`fused_macs` is their sum.  A backward pass
        is not counted (timing reports take it as twice the forward).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if not slice_ensemble and decoder != "diif":
        raise ValueError(f"slice_ensemble=False applies to DIIF only, not {decoder!r}")
    if decoder not in ("diif", "dlte") and slicing != "linear":
        raise ValueError(f"slicing applies to DIIF and DLTE only, not {decoder!r}")
    in_size, out_size = tuple(int(n) for n in in_size), tuple(int(n) for n in out_size)
    if min(in_size) < 1 or out_size[0] < in_size[0] or out_size[1] < in_size[1]:
        raise ValueError(f"output size {out_size} must be at least the input size {in_size}")
    calls = _calls(_pixels(out_size), chunk)
    return _FUSED_TERMS[decoder](in_size, out_size, calls, slicing, slice_ensemble)


def fused_macs(decoder: str, in_size, out_size, **options) -> int:
    """Total of :func:`fused_mac_terms` (same arguments): the ``cpu`` backend's MACs for one
    forward decode."""
    return sum(fused_mac_terms(decoder, in_size, out_size, **options).values())


def _calls(queries: int, chunk):
    """``[start, stop)`` raster runs of the backend calls (``F``'s chunking, batch 1)."""
    step = queries if chunk is None else max(1, int(chunk))
    return [(s, min(queries, s + step)) for s in range(0, queries, step)]


def _member_terms(p, first_name, first_per_member, imnet_dims):
    """LIIF/LTE per query: four members' first step and MLP, then the output blend."""
    mlp = _mlp(imnet_dims)[1]
    return {first_name: 4 * p * first_per_member,
            "MLP layers, per member": 4 * p * mlp,
            "area-weighted blend of the members' outputs": 4 * p * imnet_dims[-1]}


def _fused_liif(in_size, out_size, calls, slicing, slice_ensemble):
    c, d = FEAT_CHANNELS, HIDDEN
    return {"3×3 feature projection, per LR pixel": _pixels(in_size) * 9 * c * d,
            **_member_terms(_pixels(out_size), "coordinate columns (rel, cell), per member",
                            4 * d, [d] * 4 + [3])}


def _fused_lte(in_size, out_size, calls, slicing, slice_ensemble):
    c, d = FEAT_CHANNELS, HIDDEN
    pairs = d // 2
    return {"coefficient and frequency 3×3 estimators, per LR pixel":
            _pixels(in_size) * 2 * 9 * c * d,
            **_member_terms(_pixels(out_size), "Fourier phases, per member", 4 * pairs,
                            [d] * 4 + [3])}


def _chunk_slices(in_size, out_size, slicing, start, stop) -> int:
    """Distinct slices among raster positions ``[start, stop)`` of one image."""
    if slicing in geometry.RASTER_SLICINGS:
        return sum(hi - lo for lo, hi in
                   geometry._slice_ranges(start, stop, in_size, out_size, slicing))
    pixels = geometry.raster_pixels(start, stop, out_size, 1)
    return geometry.unique_slices(pixels, in_size, out_size, slicing)[3].shape[0]


def _slice_stage_terms(in_size, out_size, calls, slicing, vertices, first_per_row,
                       first_name):
    """The DIIF family's per-call work: the coarse stage per slice and vertex (its first
    step ``first_per_row``, then 256×256), the cheaper form of the fine stage's first layer
    with the per-pixel blend, the offset columns and the fine layers after it."""
    d = df = HIDDEN
    rows = pixels = first_layer = 0
    for start, stop in calls:
        n = vertices * _chunk_slices(in_size, out_size, slicing, start, stop)
        p = stop - start
        rows += n
        pixels += p
        # G_t = W_h·H_t per row, blended per pixel; or z = W_h·Σ_t w_t H_t per pixel.
        first_layer += min(n * d * df + p * vertices * df, p * vertices * d + p * d * df)
    return {first_name: rows * first_per_row,
            "coarse layer 256×256, per slice and vertex": rows * d * d,
            "fine layer 1 hidden part and vertex blend (cheaper form per call)": first_layer,
            "fine layer 1 offset columns, per pixel": pixels * 2 * df,
            "fine layers 256×256 and 256×3, per pixel": pixels * _mlp([df, df, 3])[1]}


def _fused_diif(in_size, out_size, calls, slicing, slice_ensemble):
    c, d = FEAT_CHANNELS, HIDDEN
    (h, w), k = in_size, (4 if slice_ensemble else 3)
    positions = (h + 1) * (w + 1) if slice_ensemble else h * w
    return {f"{k}×{k} code projection, per LR-grid {'corner' if slice_ensemble else 'pixel'}":
            positions * k * k * c * d,
            **_slice_stage_terms(in_size, out_size, calls, slicing, 4 if slice_ensemble else 1,
                                 6 * d, "coarse coordinate columns, per slice and vertex")}


def _fused_dlte(in_size, out_size, calls, slicing, slice_ensemble):
    c, d, k = FEAT_CHANNELS, HIDDEN, FEAT_CHANNELS
    pairs = 2 * k  # a vertex code holds the 2×2 LR values of each of the K channels
    return {"coefficient and frequency 3×3 estimators, per LR pixel":
            _pixels(in_size) * 2 * 9 * c * k,
            **_slice_stage_terms(in_size, out_size, calls, slicing, 4, 4 * pairs + 4 * k * d,
                                 "Fourier phases and coarse layer 4K×256, per slice and "
                                 "vertex")}


def _fused_hiif(in_size, out_size, calls, slicing, slice_ensemble):
    """Level 0's first layer is folded per LR pixel (``ops.hiif.prepare_hiif``); each
    attention block's sums take the whole qkv projection, its application only q."""
    c, d = FEAT_CHANNELS, HIDDEN
    head, blocks, q = HIDDEN // HIIF_HEADS, 2, _pixels(out_size)
    passes = blocks + 1 if len(calls) > 1 else 1
    # Block i is applied in the passes after its sums are complete, and in the last one.
    applied = sum(blocks - i for i in range(blocks)) if passes > 1 else blocks
    levels = sum(_mlp([d + 2, d, o])[1] for o in [d] * (HIIF_LEVELS - 2) + [3])
    return {"3×3 conv, per LR pixel": _pixels(in_size) * 9 * c * d,
            "level 0 folded first layer: four 1×1 maps per LR pixel, and its bias":
            _pixels(in_size) * 4 * d * d + (4 * d + 4) * d,
            "level 0 sum and fc2, per query and pass": passes * q * (12 * d + d * d),
            "attention qkv and Σ k̂ᵀv̂, per query and block": blocks * q * (3 * d * d + d * head),
            "attention q, q·M, proj1, proj2, per query and application":
            applied * q * (3 * d * d + d * head),
            "levels 1..5, per query": q * levels}


_FUSED_TERMS = {"liif": _fused_liif, "lte": _fused_lte, "diif": _fused_diif,
                "dlte": _fused_dlte, "hiif": _fused_hiif}


# ----------------------------------------------------------------------------------------
# Paper convention and the public result
# ----------------------------------------------------------------------------------------

def paper_tera(macs: int) -> float:
    """The DIIF paper's "T" for a plain MAC count: ``macs / 1e12`` from 1e12 up (thop
    printed T), otherwise ``macs / 1e9 / 1024`` (thop printed G, read as T by dividing by
    1024; docs/cost-model.md#printing-convention)."""
    return macs / 1e12 if macs >= 1e12 else macs / 1e9 / 1024


def paper_kilo(params: int) -> float:
    """The DIIF paper's "K" for a parameter count: millions × 1024
    (docs/cost-model.md#printing-convention)."""
    return params / 1e6 * 1024


@dataclass(frozen=True)
class Cost:
    """Counts for one model at one input and output size (sizes ``(H, W)``, row first).

    ``*_macs`` are plain decimal multiply-accumulate counts for a batch of one image;
    ``paper_*`` give the DIIF paper's printed convention for comparison.
    """
    model: str
    in_size: tuple
    out_size: tuple
    slicing: str | None
    encoder_params: int
    decoder_params: int
    encoder_macs: int
    decoder_macs: int
    note: str = ""

    @property
    def params(self) -> int:
        return self.encoder_params + self.decoder_params

    @property
    def macs(self) -> int:
        return self.encoder_macs + self.decoder_macs

    @property
    def paper_tera_macs(self) -> float:
        """Total MACs as the paper prints them ("T")."""
        return paper_tera(self.macs)

    @property
    def paper_kilo_decoder_params(self) -> float:
        """Decoder parameters as the paper's "w/o encoder" column prints them ("K")."""
        return paper_kilo(self.decoder_params)

    def __str__(self) -> str:
        (h, w), (ho, wo) = self.in_size, self.out_size
        slicing = f", {self.slicing} slicing" if self.slicing else ""
        lines = [
            f"{self.model}: {h}x{w} -> {ho}x{wo} (HxW{slicing})",
            f"  params  {self.params:,} = encoder {self.encoder_params:,} + decoder "
            f"{self.decoder_params:,}   [paper convention, decoder: "
            f"{self.paper_kilo_decoder_params:.1f}K]",
            f"  MACs    {_giga(self.macs)} = encoder {_giga(self.encoder_macs)} + decoder "
            f"{_giga(self.decoder_macs)}   [paper convention: {self.paper_tera_macs:.3f}T]",
        ]
        if self.note:
            lines.append(f"  note    {self.note}")
        return "\n".join(lines)


def _giga(macs: int) -> str:
    return f"{macs / 1e9:,.2f} G"


def _parse(model: str):
    """``(encoder or None, decoder or None)`` from ``"<encoder>-<decoder>"``, an encoder
    name, or a decoder name (then the features are assumed to have 64 channels)."""
    if model in ENCODERS:
        return model, None
    if model in DECODERS:
        return None, model
    encoder, _, decoder = model.rpartition("-")
    if encoder in ENCODERS and decoder in DECODERS:
        return encoder, decoder
    raise ValueError(f"unknown model {model!r}: expected <encoder>-<decoder>, <encoder> or "
                     f"<decoder> with encoders {ENCODERS} and decoders {DECODERS}")


def _out_size(in_size, scale, out_size):
    if out_size is not None:
        if scale is not None:
            raise ValueError("pass either scale or out_size, not both")
        return tuple(int(n) for n in out_size)
    if scale is None:
        return tuple(in_size)
    scales = (scale, scale) if isinstance(scale, (int, float)) else tuple(scale)
    if len(scales) != 2:
        raise ValueError(f"scale must be a number or a (row, column) pair, got {scale!r}")
    # LIIF's test protocol: the output side is the LR side times the scale, rounded.
    return tuple(int(math.floor(n * s + 0.5)) for n, s in zip(in_size, scales))


def count(model: str, in_size, scale=None, *, out_size=None, slicing: str = "linear",
          slice_ensemble: bool = True) -> Cost:
    """Count the trainable parameters and MACs of ``model`` for one image.

    Args:
        model: ``"<encoder>-<decoder>"`` (e.g. ``"edsr-baseline-diif"``, ``"rdn-lte"``), an
            encoder alone (``"edsr-baseline"``, ``"rdn"``, ``"swinir"``) or a decoder alone
            (on 64-channel features, encoder counted as zero).
        in_size: ``(H, W)`` of the LR input (row first: a 160×90 image is ``(90, 160)``).
        scale: a number or ``(s_y, s_x)``; the output side is ``round(side · s)``.
        out_size: ``(H_out, W_out)`` instead of ``scale``; neither means the input size.
        slicing: DIIF/DLTE slicing (``"linear"``, ``"constant"``, ``"fixed4"``).
        slice_ensemble: ``False`` counts DIIF's "w/o se" ablation.

    Returns:
        A :class:`Cost`; ``str(cost)`` is a readable summary with the paper convention.
    """
    encoder, decoder = _parse(model)
    in_size = tuple(int(n) for n in in_size)
    if len(in_size) != 2 or min(in_size) < 1:
        raise ValueError(f"in_size must be (H, W) with positive sides, got {in_size}")
    size = _out_size(in_size, scale, out_size)
    if len(size) != 2 or size[0] < in_size[0] or size[1] < in_size[1]:
        raise ValueError(f"output size {size} must be at least the input size {in_size}")
    if decoder not in ("diif", "dlte"):
        if slicing != "linear":
            raise ValueError(f"slicing applies to DIIF and DLTE only, not {model!r}")
        slicing = None
    enc_params, enc_per_pixel = _ENCODER_COST[encoder]() if encoder else (0, 0)
    if not slice_ensemble and decoder != "diif":
        raise ValueError(f"slice_ensemble=False applies to DIIF only, not {model!r}")
    decoder_cost = _DECODER_COST.get(decoder) if slice_ensemble else _diif_without_ensemble
    dec_params, dec_macs, note = (decoder_cost(FEAT_CHANNELS, in_size, size, slicing)
                                  if decoder else (0, 0, ""))
    enc_pixels = _ENCODER_PIXELS.get(encoder, _pixels)(in_size)
    return Cost(model, in_size, size, slicing, enc_params, dec_params,
                enc_per_pixel * enc_pixels, dec_macs, note)


def main(argv=None) -> int:
    """``python -m implicit_kernels cost MODEL HxW SCALE [--slicing S]``: print a :class:`Cost`."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m implicit_kernels cost",
                                description="Parameters and MACs of a model (plain counts and "
                                            "the DIIF paper's printing convention).")
    p.add_argument("model", help="e.g. edsr-baseline-diif, rdn-lte, swinir-lte, edsr-baseline")
    p.add_argument("size", help="LR input size HxW, e.g. 90x160 for a 160x90 image")
    p.add_argument("scale", nargs="?", default=None,
                   help="scale S or AxB (rows x A, columns x B); default 1")
    p.add_argument("--slicing", default="linear", choices=geometry.SLICINGS)
    args = p.parse_args(argv)
    try:
        in_size = tuple(int(n) for n in args.size.lower().split("x"))
        scale = (None if args.scale is None
                 else tuple(float(s) for s in args.scale.lower().split("x")))
        if scale is not None and len(scale) == 1:
            scale = scale * 2
        print(count(args.model, in_size, scale, slicing=args.slicing))
    except ValueError as exc:
        print(f"cost failed: {exc}", file=sys.stderr)
        return 1
    return 0
