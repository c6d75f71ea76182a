"""Public decode ops (import as ``F``): each decoder as a pure function of the encoder's
feature map and the decoder's parameters.

Every op decodes either a whole output grid (``size=(H_out, W_out)``, returning
``B×3×H_out×W_out``) or a list of queries (returning ``B×Q×3``), in the normalised
colour space of docs/conventions.md (map back with ``*0.5 + 0.5`` and clamp).  Decoding runs in
chunks of at most ``chunk_size`` queries (over the whole batch) per backend call, so
memory stays bounded at any output size; chunked and unchunked results agree to rounding
(per-query decoders differ only in how matrix multiplies are blocked; HIIF adds its
attention's per-chunk sums in another order: float32 within 1e-5 relative).

``params`` maps the decoder module's state-dict names (without ``encoder.``) to tensors;
``model.decoder_params()`` returns it (key tables in ARCHITECTURE.md).

``backend``: ``"auto"`` (the fastest available), ``"reference"`` (the paper's form, the
oracle) or ``"torch"`` (exact algebraic splits); see
:func:`implicit_kernels.backends.available_backends`.
"""
from __future__ import annotations

import re

import torch

from . import _validate as check
from . import backends, geometry
from .ops import chunked

#: Default number of queries (summed over the batch) per backend call.
DEFAULT_CHUNK_SIZE = 1 << 14

__all__ = ["liif_decode", "lte_decode", "diif_decode", "dlte_decode", "hiif_decode",
           "DEFAULT_CHUNK_SIZE"]


# ----------------------------------------------------------------------------------------
# LIIF / LTE / HIIF: coordinate queries
# ----------------------------------------------------------------------------------------

def liif_decode(feat, size, params, *, coord=None, cell=None, backend="auto",
                chunk_size=DEFAULT_CHUNK_SIZE):
    """LIIF decoder (docs/liif-lte.md): 3×3 feature unfolding, MLP, 4-code local ensemble.

    Args:
        feat: ``B×C×H×W`` encoder features.
        size: ``(H_out, W_out)`` to decode a whole grid, or ``None`` with ``coord``/``cell``.
        params: ``imnet.layers.{0,2,...}.{weight,bias}``; the first layer takes ``9C + 4``.
        coord: ``B×Q×2`` query coordinates in [-1, 1], row first (query mode), in
            ``feat``'s dtype, or float32 with half-precision ``feat`` where the backend
            takes float32 positions (``backends.resolve_queries``; grid mode then makes
            them in float32).
        cell: ``B×Q×2`` output-pixel sizes ``(2/H_out, 2/W_out)`` (query mode), as coord.
        backend, chunk_size: see the module docstring.

    Returns:
        ``B×3×H_out×W_out`` (grid mode) or ``B×Q×3`` (query mode).
    """
    check.feature_map(feat)
    p = _liif_params(params, feat)
    prepare, fn, positions = backends.resolve_queries(backend, "liif", feat,
                                                      *_work(feat, size, coord, params))
    p = prepare(feat, p)
    return _decode_coords(lambda c, ce: fn(feat, c, ce, p), feat, size, coord, cell, chunk_size,
                          positions)


def lte_decode(feat, inp, size, params, *, coord=None, cell=None, backend="auto",
               chunk_size=DEFAULT_CHUNK_SIZE):
    """LTE decoder (docs/liif-lte.md): Fourier features from coefficient/frequency/phase
    estimators, MLP, local ensemble, plus the bilinearly up-sampled input.

    Args:
        feat: ``B×C×H×W`` encoder features.
        inp: ``B×3×h×w`` normalised LR image (the bilinear skip).
        size, coord, cell, backend, chunk_size: as :func:`liif_decode`.
        params: ``coef.*``, ``freq.*`` (3×3 convs), ``phase.weight``, ``imnet.layers.*``.

    Returns:
        ``B×3×H_out×W_out`` (grid mode) or ``B×Q×3`` (query mode).
    """
    check.feature_map(feat)
    check.image(inp, feat)
    p = _lte_params(params, feat)
    prepare, fn, positions = backends.resolve_queries(backend, "lte", feat,
                                                      *_work(feat, size, coord, params, inp))
    p = prepare(feat, p)
    return _decode_coords(lambda c, ce: fn(feat, inp, c, ce, p), feat, size, coord, cell,
                          chunk_size, positions)


def hiif_decode(feat, inp, size, params, *, coord=None, cell=None, normalizer="n",
                attention="global", strip_rows=None, level_codes="project", backend="auto",
                chunk_size=DEFAULT_CHUNK_SIZE):
    """HIIF decoder (docs/hiif.md): hierarchical position codes, level MLPs and multi-head
    linear attention over all queries of an image, plus the bilinear skip.

    Args:
        feat: ``B×C×H×W`` encoder features (before HIIF's own 3×3 conv, ``freq``).
        inp: ``B×3×h×w`` normalised LR image.
        size, coord, cell, backend: as :func:`liif_decode`.
        params: ``freq.*``, ``fc_layers.{l}.{norm,fc1,fc2}.*``, ``conv{i}.*`` (ARCHITECTURE.md).
        normalizer: ``"n"`` (divide ``KᵀV`` by the query count, the public code) or
            ``"sqrt_n"`` (the paper's Eq. 10).
        attention: ``"global"`` (every query of an image attends together: exact under
            chunking, by a pass per attention block) or ``"strip"`` (queries attend within
            strips of ``strip_rows`` output rows, as the public code evaluates; grid mode).
        level_codes: ``"project"`` (default: pixel centres ``-1 + (2k+1)/n``, the rule of
            every backend) or ``"public"``: LR centres, and grid-mode query positions, as
            the public HIIF code rounds them (LIIF's ``make_coord``), so its level codes,
            which break exact ties (integer scales) by that rounding, are reproduced bit
            for bit (docs/hiif.md).  ``reference``, ``torch``, ``cpu`` and ``cuda``;
            ``triton`` refuses it.
        chunk_size: queries per backend pass; the attention sums still cover the image.

    Returns:
        ``B×3×H_out×W_out`` (grid mode) or ``B×Q×3`` (query mode).
    """
    check.feature_map(feat)
    check.image(inp, feat)
    p = _hiif_params(params, feat)
    check.choice(normalizer, "normalizer", ("n", "sqrt_n"))
    check.choice(attention, "attention", ("global", "strip"))
    check.choice(level_codes, "level_codes", geometry.CENTRES)
    check.positive_int(chunk_size, "chunk_size")
    decoder = "hiif" if level_codes == "project" else "hiif_public_codes"
    name = backends.choose(backend, decoder, feat, *_work(feat, size, coord, params, inp))
    prepare, fn, positions = backends.resolve_queries(name, decoder, feat)
    raster = backends.resolve_raster(name, decoder, feat)
    p = prepare(feat, p)

    def run(c, ce):
        return fn(feat, inp, c, ce, p, chunk_size=chunk_size, normalizer=normalizer)

    def grid(size):
        return raster(feat, inp, size, p, positions, chunk_size=chunk_size,
                      normalizer=normalizer)

    if attention == "strip":
        if size is None:
            raise ValueError("attention='strip' needs grid mode (size), not coord/cell")
        check.positive_int(strip_rows, "strip_rows")
        size = check.output_size(size, feat)
        # One strip of whole output rows per call, so attention sums stay within it.
        return _decode_coords(run, feat, size, None, None, strip_rows * size[1] * feat.shape[0],
                              positions, level_codes)
    if strip_rows is not None:
        raise ValueError("strip_rows is only used with attention='strip'")
    # With global attention one call covers the whole grid: a backend with a grid hook
    # makes each chunk's positions itself, instead of whole-grid positions made here.
    return _decode_coords(run, feat, size, coord, cell, None, positions, level_codes,
                          None if raster is None else grid)


def _decode_coords(fn, feat, size, coord, cell, chunk_size, positions, centres="project",
                   grid=None):
    """Run ``fn(coord, cell) -> B×Q×3`` over a grid or a query list, in chunks of
    ``chunk_size`` queries over the batch (``None``: one call), with positions in dtype
    ``positions`` (``backends.resolve_queries``), grid positions rounded as ``centres``
    (``geometry.CENTRES``); or in grid mode, where given, ``grid(size) -> B×3×H_out×W_out``
    (a backend's grid hook, ``raster_<decoder>``) instead."""
    b = feat.shape[0]
    if size is not None:
        if coord is not None or cell is not None:
            raise ValueError("pass either size (grid mode) or coord and cell (query mode), "
                             "not both")
        size = check.output_size(size, feat)
        if grid is not None:
            return grid(size)
        return _grid(lambda start, stop: fn(*geometry.grid_positions(
            start, stop, size, b, feat.device, positions, centres)), size, b, chunk_size, feat)
    if coord is None or cell is None:
        raise ValueError("pass size=(H_out, W_out), or coord and cell for query decoding")
    coord, cell = check.queries(coord, cell, feat, positions)
    return chunked(lambda s, e: fn(coord[:, s:e], cell[:, s:e]), coord.shape[1], b,
                    chunk_size, feat)


# ----------------------------------------------------------------------------------------
# DIIF / DLTE: output pixels grouped and sliced
# ----------------------------------------------------------------------------------------

def diif_decode(feat, size, params, *, slicing="linear", slice_ensemble=True, pixels=None,
                backend="auto", chunk_size="auto"):
    """DIIF decoder (docs/diif.md): coordinate grouping and slicing, coarse MLP per slice and
    vertex on 4×4 vertex codes, slice ensemble, fine MLP per pixel.

    Args:
        feat: ``B×C×H×W`` encoder features.
        size: ``(H_out, W_out)``; each at least the feature map's (scale ≥ 1).
        params: ``coarse.layers.{0,2}.*`` (first takes ``16C + 6``), ``fine.layers.{0,2,4}.*``.
        slicing: ``"linear"`` (default, one output row of a group per slice),
            ``"constant"`` (one slice per group) or ``"fixed4"`` (raster runs of 4).
        slice_ensemble: ``False`` is the paper's "w/o se" ablation: the coarse stage reads
            the 3×3-unfolded code of the group's own LR pixel (first layer ``9C + 6``).
        pixels: optional ``B×Q×2`` int64 output pixel indices (row, col) to decode only
            those (training on random pixels); the result equals the grid's at them.
        backend, chunk_size: see the module docstring; ``"auto"`` (the default) is
            ``DEFAULT_CHUNK_SIZE``, or for a grid decode the backend's own choice where it
            has one (``triton`` on CUDA: from free memory, at least 2^20 queries).

    Returns:
        ``B×3×H_out×W_out``, or ``B×Q×3`` when ``pixels`` is given.
    """
    check.feature_map(feat)
    size = check.output_size(size, feat)
    check.choice(slicing, "slicing", geometry.SLICINGS)
    auto_chunk = isinstance(chunk_size, str) and chunk_size == "auto"
    chunk_size = DEFAULT_CHUNK_SIZE if auto_chunk else chunk_size
    check.choice(slice_ensemble, "slice_ensemble", (True, False))
    p = _diif_params(params, feat, slice_ensemble)
    decoder = "diif" if slice_ensemble else "diif_without_ensemble"
    name = backends.choose(backend, decoder, feat, *_work(feat, size, pixels, params))
    prepare, fn = backends.resolve(name, decoder, feat)
    raster = backends.resolve_raster(name, decoder, feat)
    p = prepare(feat, p)
    if raster is not None and pixels is None:
        # The backend decodes raster chunks itself (and may size them on its device).
        chunk, chunk_size = raster(feat, size, p, slicing, chunk_size, auto_chunk)
        return _grid(chunk, size, feat.shape[0], chunk_size, feat)
    return _decode_pixels(lambda pix: fn(feat, size, pix, p, slicing), feat, size, pixels,
                          chunk_size)


def dlte_decode(feat, inp, size, params, *, slicing="linear", pixels=None, backend="auto",
                chunk_size=DEFAULT_CHUNK_SIZE):
    """DLTE decoder (docs/dlte.md, *reconstructed*: the paper gives no details): DIIF's
    slicing with LTE-style Fourier vertex features, plus LTE's bilinear skip.

    Args:
        feat: ``B×C×H×W`` encoder features.
        inp: ``B×3×h×w`` normalised LR image.
        size, slicing, pixels, backend, chunk_size: as :func:`diif_decode`.
        params: ``coef.*``, ``freq.*``, ``phase.weight``, ``coarse.layers.*``, ``fine.layers.*``.

    Returns:
        ``B×3×H_out×W_out``, or ``B×Q×3`` when ``pixels`` is given.
    """
    check.feature_map(feat)
    check.image(inp, feat)
    size = check.output_size(size, feat)
    check.choice(slicing, "slicing", geometry.SLICINGS)
    p = _dlte_params(params, feat)
    prepare, fn = backends.resolve(backend, "dlte", feat, *_work(feat, size, pixels, params, inp))
    p = prepare(feat, p)
    return _decode_pixels(lambda pix: fn(feat, inp, size, pix, p, slicing), feat, size,
                          pixels, chunk_size)


def _decode_pixels(fn, feat, size, pixels, chunk_size):
    b = feat.shape[0]
    if pixels is not None:
        pixels = check.pixels(pixels, feat, size)
        return chunked(lambda s, e: fn(pixels[:, s:e]), pixels.shape[1], b, chunk_size, feat)
    return _grid(lambda s, e: fn(_grid_chunk(size, s, e, b, feat.device)), size, b,
                 chunk_size, feat)


# ----------------------------------------------------------------------------------------
# Chunking
# ----------------------------------------------------------------------------------------

def _work(feat, size, queries, params, *inputs):
    """``(queries, grad)`` of a call, for ``"auto"``'s choice: its output queries over the
    batch (``queries``' count in query mode, else the grid's), and whether autograd will
    differentiate it (grad mode on and some input or parameter requires grad)."""
    b, count = feat.shape[0], 0  # 0 for an invalid size: refused with the reason later
    if isinstance(queries, torch.Tensor) and queries.dim() == 3:
        count = b * queries.shape[1]
    elif isinstance(size, (tuple, list, torch.Size)) and len(size) == 2:
        if all(isinstance(n, int) for n in size):
            count = b * size[0] * size[1]
    tensors = [feat, *inputs, *(v for v in params.values() if isinstance(v, torch.Tensor))]
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return count, grad


def _grid_chunk(size, start, stop, batch, device):
    """Pixel indices ``batch×(stop-start)×2`` of raster positions ``[start, stop)``."""
    return geometry.raster_pixels(start, stop, size, batch, device)


def _grid(fn, size, batch, chunk_size, feat):
    """Decode every pixel of ``size`` with ``fn(start, stop)`` over raster positions;
    return ``B×3×H_out×W_out``."""
    out = chunked(fn, size[0] * size[1], batch, chunk_size, feat, channels_first=True)
    return out.view(batch, 3, size[0], size[1])


# ----------------------------------------------------------------------------------------
# Parameter checks: shapes follow from the feature channels C; hidden widths are free
# ----------------------------------------------------------------------------------------

def _layer_ids(params, prefix):
    """Indices ``0, 2, 4, ...`` of the keys ``{prefix}{i}.weight`` in ``params``: the
    Linear layers of an ``nn.Sequential`` of Linear and ReLU.  Any other numbering (a
    stray ``{prefix}20.weight``, a gap) is refused rather than read as extra layers."""
    if not hasattr(params, "keys"):
        raise TypeError(f"params must be a mapping of parameter names to tensors, "
                        f"got {type(params).__name__}")
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.weight$")
    ids = sorted(int(m.group(1)) for k in params.keys() if (m := pattern.match(k)))
    if not ids:
        raise ValueError(f"params has no {prefix}N.weight entries")
    if ids != list(range(0, 2 * len(ids), 2)):
        raise ValueError(f"params' {prefix}N layers must be numbered 0, 2, 4, ... (Linear "
                         f"layers between ReLUs), got {ids}")
    return ids


def _mlp(params, prefix, in_dim, out_dim, feat, decoder, used):
    return check.mlp(params, prefix, _layer_ids(params, prefix), in_dim, out_dim, feat, decoder,
                     used)


def _conv3x3(params, name, feat, decoder, used, out_channels=None):
    c = feat.shape[1]
    got = check.params(params, feat, {f"{name}.weight": (out_channels, c, 3, 3),
                                      f"{name}.bias": (None,)}, decoder, used)
    w, b = got[f"{name}.weight"], got[f"{name}.bias"]
    if b.shape[0] != w.shape[0]:
        raise ValueError(f"params[{name + '.bias'!r}] must have {w.shape[0]} entries")
    return w, b


def _fourier_estimators(params, feat, decoder, used):
    """LTE-style ``coef``/``freq`` 3×3 convs and ``phase`` (no bias): freq has 2 values
    (y, x) per phase channel and as many channels as coef."""
    coef = _conv3x3(params, "coef", feat, decoder, used)
    freq = _conv3x3(params, "freq", feat, decoder, used, out_channels=coef[0].shape[0])
    if freq[0].shape[0] % 2:
        raise ValueError("params['freq.weight'] must have an even number of output channels")
    return coef, freq


def _liif_params(params, feat):
    used = set()
    out = {"imnet": _mlp(params, "imnet.layers.", 9 * feat.shape[1] + 4, 3, feat, "LIIF", used)}
    check.only_known_keys(params, used, "LIIF")
    return out


def _lte_params(params, feat):
    used = set()
    coef, freq = _fourier_estimators(params, feat, "LTE", used)
    n = freq[0].shape[0] // 2
    phase = check.params(params, feat, {"phase.weight": (n, 2)}, "LTE", used)["phase.weight"]
    imnet = _mlp(params, "imnet.layers.", coef[0].shape[0], 3, feat, "LTE", used)
    check.only_known_keys(params, used, "LTE")
    return {"coef": coef, "freq": freq, "phase": phase, "imnet": imnet}


def _coarse_fine(params, coarse_in, feat, decoder, used):
    coarse = _mlp(params, "coarse.layers.", coarse_in, None, feat, decoder, used)
    fine = _mlp(params, "fine.layers.", coarse[-1][0].shape[0] + 2, 3, feat, decoder, used)
    return {"coarse": coarse, "fine": fine}


def _diif_params(params, feat, slice_ensemble=True):
    used = set()
    code = (16 if slice_ensemble else 9) * feat.shape[1]
    out = _coarse_fine(params, code + 6, feat, "DIIF", used)
    check.only_known_keys(params, used, "DIIF")
    return out


def _dlte_params(params, feat):
    used = set()
    coef, freq = _fourier_estimators(params, feat, "DLTE", used)
    pairs = 4 * freq[0].shape[0] // 2  # 2×2 vertex concatenation, read as (y, x) pairs
    phase = check.params(params, feat, {"phase.weight": (pairs, 2)}, "DLTE", used)
    out = _coarse_fine(params, 4 * coef[0].shape[0], feat, "DLTE", used)
    out.update(coef=coef, freq=freq, phase=phase["phase.weight"])
    check.only_known_keys(params, used, "DLTE")
    return out


def _hiif_params(params, feat):
    used = set()
    z = _conv3x3(params, "freq", feat, "HIIF", used)
    cz = z[0].shape[0]
    # No assignment expression inside the comprehension: torch.compile cannot trace one.
    matches = [re.match(r"fc_layers\.(\d+)\.fc1\.weight$", k) for k in params]
    levels = sorted({int(m.group(1)) for m in matches if m})
    if levels != list(range(len(levels))) or len(levels) < 2:
        raise ValueError(f"params must hold fc_layers.0..L-1 (L >= 2), found levels {levels}")
    blocks = []
    for level in levels:
        width = 4 * cz + 4 if level == 0 else cz + 2
        out_dim = 3 if level == levels[-1] else cz
        prefix = f"fc_layers.{level}."
        norm = check.params(params, feat, {prefix + "norm.weight": (width,),
                                           prefix + "norm.bias": (width,)}, "HIIF", used)
        fc1 = check.mlp(params, prefix + "fc", (1, 2), width, out_dim, feat, "HIIF", used)
        blocks.append({"norm": (norm[prefix + "norm.weight"], norm[prefix + "norm.bias"]),
                       "fc1": fc1[0], "fc2": fc1[1]})
    attention = []
    for i in range(2):
        prefix = f"conv{i}."
        qkv = check.mlp(params, prefix + "qkv_proj", ("",), cz, 3 * cz, feat, "HIIF", used)
        ln = check.params(params, feat, {prefix + "kln.weight": (None,)}, "HIIF")
        head_dim = ln[prefix + "kln.weight"].shape[0]
        if head_dim == 0 or cz % head_dim:
            raise ValueError(f"params[{prefix + 'kln.weight'!r}] width must divide {cz}")
        norms = check.params(params, feat, {prefix + f"{n}ln.{w}": (head_dim,)
                                            for n in "kv" for w in ("weight", "bias")}, "HIIF",
                             used)
        proj = [check.mlp(params, prefix + f"proj{j}", ("",), cz, cz, feat, "HIIF", used)[0]
                for j in (1, 2)]
        attention.append({"qkv": qkv[0], "heads": cz // head_dim,
                          "kln": (norms[prefix + "kln.weight"], norms[prefix + "kln.bias"]),
                          "vln": (norms[prefix + "vln.weight"], norms[prefix + "vln.bias"]),
                          "proj1": proj[0], "proj2": proj[1]})
    check.only_known_keys(params, used, "HIIF")
    return {"z": z, "levels": blocks, "attention": attention}
