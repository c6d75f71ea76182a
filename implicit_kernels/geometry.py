"""Coordinate and index geometry shared by every decoder (docs/conventions.md, docs/diif.md).

Conventions: an image of ``n`` samples along an axis has pixel-centre coordinates
``-1 + (2k + 1) / n``; coordinate pairs are ``(y, x)``, row first.  "LIIF units" measure
offsets so that one LR pixel is 2 units wide: ``rel = (q - v) * (H, W)``.

Everything here is plain PyTorch on index tensors; the fused kernels re-implement the
same arithmetic and are tested against these functions.
"""
from __future__ import annotations

import torch

#: LIIF's tie-breaking shift and border clamp for nearest-code look-ups.
ENSEMBLE_EPS = 1e-6
#: The four local-ensemble shifts, in LIIF's order (row shift, column shift).
ENSEMBLE_SHIFTS = ((-1, -1), (-1, 1), (1, -1), (1, 1))


#: How pixel centres are rounded: ``"project"`` computes ``-1 + (2k + 1) / n`` (one
#: rounding of the exact value, the same in every backend); ``"public"`` computes LIIF's
#: ``make_coord`` formula ``(-1 + r) + 2r·k`` with ``r = 1/n`` (float32 in the public code),
#: which HIIF's public code uses and which differs from it in the last bit for most ``n``.
CENTRES = ("project", "public")


def make_coord(shape, device=None, dtype=torch.float32, centres: str = "project") -> torch.Tensor:
    """Pixel-centre coordinates of a ``(H, W)`` grid, as an ``(H, W, 2)`` tensor, row first
    (rounded as ``centres``, see :data:`CENTRES`)."""
    axes = [axis_centres(n, device=device, dtype=dtype, centres=centres) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def axis_centres(n: int, device=None, dtype=torch.float32,
                 centres: str = "project") -> torch.Tensor:
    """Centres of the ``n`` pixels of one axis: ``-1 + (2k + 1) / n`` (``centres="project"``)
    or LIIF's ``(-1 + r) + 2r·k`` (``"public"``)."""
    return _centres_of(torch.arange(n, device=device, dtype=dtype), n, centres)


def _centres_of(k: torch.Tensor, n, centres: str) -> torch.Tensor:
    """Centres of float indices ``k`` on axes of ``n`` pixels (``"public"``: ``n`` a
    number; ``"project"``: a number or a tensor broadcasting against ``k``)."""
    if centres == "project":
        return -1 + (2 * k + 1) / n
    if centres == "public":
        r = 2 / (2 * n)
        return (-1 + r) + (2 * r) * k
    raise ValueError(f"centres must be one of {CENTRES}, got {centres!r}")


def pixel_coord(pixels: torch.Tensor, size, dtype=torch.float32,
                centres: str = "project") -> torch.Tensor:
    """Centres of integer pixel indices ``(..., 2)`` (row, col) of a ``size = (H, W)`` grid
    (rounded as ``centres``)."""
    if centres == "public":
        axes = [_centres_of(pixels[..., i].to(dtype), n, centres) for i, n in enumerate(size)]
        return torch.stack(axes, dim=-1)
    n = torch.tensor(size, device=pixels.device, dtype=dtype)
    return _centres_of(pixels.to(dtype), n, centres)


def grid_pixels(size, batch: int, device=None) -> torch.Tensor:
    """Every pixel of a ``(H, W)`` grid in raster order, as a ``(batch, H*W, 2)`` int64 view."""
    h, w = size
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.stack([rows, cols], dim=-1).unsqueeze(0).expand(batch, h * w, 2)


def nearest_index(q: torch.Tensor, n: int) -> torch.Tensor:
    """Index of the LR pixel that ``grid_sample(mode='nearest', align_corners=False)``
    picks at normalised coordinate ``q`` on an axis of ``n`` pixels.

    Uses the same float operations as ``grid_sample`` (unnormalise, round half to even),
    so ties resolve identically.
    """
    return torch.round(((q + 1) * n - 1) / 2).clamp_(0, n - 1).long()


def ensemble_neighbours(coord: torch.Tensor, size, centres: str = "project"):
    """The four local-ensemble codes of each query (docs/conventions.md#local-ensemble,
    LIIF's procedure).

    Args:
        coord: ``(..., 2)`` query coordinates, row first.
        size: ``(H, W)`` of the feature map.
        centres: how the LR pixel centres are rounded (:data:`CENTRES`).

    Returns:
        A list of four ``(index, rel)`` pairs in LIIF's shift order, where ``index`` is the
        ``(..., 2)`` int64 (row, col) of the chosen LR pixel and ``rel`` the ``(..., 2)``
        offset ``(q - v) * (H, W)`` of the *unshifted* query from that pixel's centre.
    """
    h, w = size
    centres_y = axis_centres(h, coord.device, coord.dtype, centres)
    centres_x = axis_centres(w, coord.device, coord.dtype, centres)
    out = []
    for vy, vx in ENSEMBLE_SHIFTS:
        # One scalar added once, as LIIF does, so exact ties round the same way.
        qy = (coord[..., 0] + (vy / h + ENSEMBLE_EPS)).clamp(-1 + ENSEMBLE_EPS, 1 - ENSEMBLE_EPS)
        qx = (coord[..., 1] + (vx / w + ENSEMBLE_EPS)).clamp(-1 + ENSEMBLE_EPS, 1 - ENSEMBLE_EPS)
        iy, ix = nearest_index(qy, h), nearest_index(qx, w)
        centre = torch.stack([centres_y[iy], centres_x[ix]], dim=-1)
        rel = coord - centre
        rel = torch.stack([rel[..., 0] * h, rel[..., 1] * w], dim=-1)
        out.append((torch.stack([iy, ix], dim=-1), rel))
    return out


def ensemble_weights(rels) -> torch.Tensor:
    """LIIF's area weights for the four members: ``(..., 4)``, summing to 1.

    Member ``t`` is weighted by the area between the query and the diagonally opposite
    member (``3 - t``), divided by the total area.
    """
    areas = torch.stack([(r[..., 0] * r[..., 1]).abs() + 1e-9 for r in rels], dim=-1)
    return areas.flip(-1) / areas.sum(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------
# DIIF: coordinate grouping and slicing (docs/diif.md#forward-pass, grouping and slicing)
# ----------------------------------------------------------------------------------------

#: Slicing modes: linear order (one output row of a group), constant order (the whole
#: group), fixed (raster runs of 4 pixels inside a group).
SLICINGS = ("linear", "constant", "fixed4")
#: The four vertices of a group's square, ``(a, b)``; vertex offset from the group centre
#: in LIIF units is ``(2a - 1, 2b - 1)``.
VERTICES = ((0, 0), (0, 1), (1, 0), (1, 1))


def group_index(idx: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """LR index of the group that output index ``idx`` belongs to:
    ``floor((2idx+1) n_in / (2 n_out))``."""
    return ((2 * idx + 1) * n_in).div(2 * n_out, rounding_mode="floor").clamp_(0, n_in - 1)


def group_start(g: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """First output index of LR group ``g``: the smallest ``r`` with ``group_index(r) == g``."""
    num = 2 * g * n_out - n_in
    return (-((-num).div(2 * n_in, rounding_mode="floor"))).clamp_(min=0)


def group_bounds(idx: torch.Tensor, n_in: int, n_out: int):
    """``(group, first, last)`` output indices of the group holding output index ``idx``."""
    g = group_index(idx, n_in, n_out)
    first = group_start(g, n_in, n_out)
    last = torch.where(g == n_in - 1, torch.full_like(g, n_out - 1),
                       group_start(g + 1, n_in, n_out) - 1)
    return g, first, last


def diif_slices(pixels: torch.Tensor, in_size, out_size, slicing: str):
    """Group and slice of each output pixel (docs/diif.md#forward-pass, grouping and slicing).

    Args:
        pixels: ``(..., 2)`` int64 output pixel indices (row, col).
        in_size: ``(H, W)`` of the LR feature map.
        out_size: ``(H_out, W_out)``.
        slicing: one of :data:`SLICINGS`.

    Returns:
        ``(group, first, last)``: the ``(..., 2)`` LR index of the pixel's group and the
        ``(..., 2)`` output indices of its slice's first and last coordinate.  For
        ``"fixed4"`` the last run of a group may end on a virtual coordinate past the
        group (the raster continued), as the paper pads it.
    """
    (h, w), (ho, wo) = in_size, out_size
    r, c = pixels[..., 0], pixels[..., 1]
    gi, r0, r1 = group_bounds(r, h, ho)
    gj, c0, c1 = group_bounds(c, w, wo)
    if slicing == "linear":
        first = torch.stack([r, c0], dim=-1)
        last = torch.stack([r, c1], dim=-1)
    elif slicing == "constant":
        first = torch.stack([r0, c0], dim=-1)
        last = torch.stack([r1, c1], dim=-1)
    elif slicing == "fixed4":
        gw = c1 - c0 + 1
        k0 = ((r - r0) * gw + (c - c0)).div(4, rounding_mode="floor") * 4
        k1 = k0 + 3
        first = torch.stack([r0 + k0.div(gw, rounding_mode="floor"), c0 + k0 % gw], dim=-1)
        last = torch.stack([r0 + k1.div(gw, rounding_mode="floor"), c0 + k1 % gw], dim=-1)
    else:
        raise ValueError(f"slicing must be one of {SLICINGS}, got {slicing!r}")
    return torch.stack([gi, gj], dim=-1), first, last


def unique_slices(pixels: torch.Tensor, in_size, out_size, slicing: str):
    """The distinct slices among output pixels ``pixels`` (``B×Q×2``).

    Returns:
        ``(group, pixel_slice, s_batch, s_group, s_first, s_last)``: each pixel's ``B×Q×2``
        group and its slice's index (``B·Q``, raster over the batch), then per slice
        (``S``) its image, group and first and last output pixels (``S×2``).
    """
    bsz = pixels.shape[0]
    area = out_size[0] * out_size[1]
    group, first, _ = diif_slices(pixels, in_size, out_size, slicing)
    batch = torch.arange(bsz, device=pixels.device).unsqueeze(1)
    # Slices partition every group, so an image and a first pixel name one slice.
    key = batch * area + first[..., 0] * out_size[1] + first[..., 1]
    key, pixel_slice = torch.unique(key.reshape(-1), return_inverse=True)
    s_batch, flat = key.div(area, rounding_mode="floor"), key % area
    s_first = torch.stack([flat.div(out_size[1], rounding_mode="floor"), flat % out_size[1]], -1)
    s_group, _, s_last = diif_slices(s_first, in_size, out_size, slicing)
    return group, pixel_slice, s_batch, s_group, s_first, s_last


#: Slicings whose slices :func:`raster_slices` finds arithmetically: those whose slices,
#: in the order of their first pixels, are numbered ``row_unit · W + column group`` (one
#: output row, or one group row, by one group column).  A ``"fixed4"`` run's order
#: interleaves the groups of a group row, so it keeps :func:`unique_slices`.
RASTER_SLICINGS = ("linear", "constant")


def _index(i: int, n_in: int, n_out: int) -> int:
    """:func:`group_index` of one Python integer (a CPU tensor: no device sync)."""
    return int(group_index(torch.tensor(i), n_in, n_out))


def _slice_ranges(start: int, stop: int, in_size, out_size, slicing: str):
    """Disjoint, sorted ``[lo, hi)`` ranges of the slice numbers
    ``unit(r) · W + group_index(c)`` met by raster positions ``[start, stop)`` of one
    image (``unit``: the row for ``"linear"``, its group row for ``"constant"``).

    The chunk is at most a partial first row, whole rows, and a partial last row; each
    meets one run of numbers (the whole rows one run over consecutive units, as every
    group holds at least one output row at scale ≥ 1).  Runs are merged where they touch.
    """
    (h, w), (ho, wo) = in_size, out_size

    def unit(r):
        return r if slicing == "linear" else _index(r, h, ho)

    (r0, c0), (r1, c1) = divmod(start, wo), divmod(stop - 1, wo)
    runs = [(unit(r0) * w + _index(c0, w, wo),
             unit(r0) * w + _index(c1 if r1 == r0 else wo - 1, w, wo))]
    if r1 - r0 >= 2:
        runs.append((unit(r0 + 1) * w, unit(r1 - 1) * w + w - 1))
    if r1 > r0:
        runs.append((unit(r1) * w, unit(r1) * w + _index(c1, w, wo)))
    merged = []
    for lo, hi in sorted(runs):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi + 1)
        else:
            merged.append([lo, hi + 1])
    return merged


def raster_slices(start: int, stop: int, batch: int, in_size, out_size, slicing: str,
                  device=None):
    """:func:`unique_slices` of raster positions ``[start, stop)`` of every image
    (the pixels :func:`raster_pixels` makes), found arithmetically: no sort, no
    ``unique``, no device-to-host copy; the same tensors, in the same order, bit for bit.

    Slices are numbered ``unit · W + group column`` (:func:`_slice_ranges`), an order
    that is the order of their first pixels (the sort key of :func:`unique_slices`); the
    chunk meets a few runs of numbers, known on the host from ``start`` and ``stop``, so
    each pixel's slice is its number's rank among the runs.

    Args:
        start, stop: raster positions ``0 ≤ start < stop ≤ H_out·W_out``.
        batch: images ``B``; every image decodes the same positions.
        slicing: one of :data:`RASTER_SLICINGS`.

    Returns:
        As :func:`unique_slices`: ``(group B×Q×2, pixel_slice B·Q, s_batch S,
        s_group S×2, s_first S×2, s_last S×2)`` with ``Q = stop - start``.
    """
    if slicing not in RASTER_SLICINGS:
        raise ValueError(f"raster_slices takes slicing in {RASTER_SLICINGS}, got {slicing!r}")
    (h, w), (ho, wo) = in_size, out_size
    ranges = _slice_ranges(start, stop, in_size, out_size, slicing)
    pixels = raster_pixels(start, stop, out_size, batch, device)[0]
    group = torch.stack([group_index(pixels[:, 0], h, ho), group_index(pixels[:, 1], w, wo)], -1)
    unit = pixels[:, 0] if slicing == "linear" else group[:, 0]
    number = unit * w + group[:, 1]
    # Rank of each pixel's number among the runs (runs are sorted and disjoint).
    rank, offset = number - ranges[0][0], 0
    for (lo, hi), (next_lo, _) in zip(ranges, ranges[1:]):
        offset += hi - lo
        rank = torch.where(number >= next_lo, number - next_lo + offset, rank)
    per_image = sum(hi - lo for lo, hi in ranges)
    images = torch.arange(batch, device=device)
    pixel_slice = (images[:, None] * per_image + rank).reshape(-1)

    numbers = torch.cat([torch.arange(lo, hi, device=device) for lo, hi in ranges])
    s_unit, s_col = numbers.div(w, rounding_mode="floor"), numbers % w
    first_row = s_unit if slicing == "linear" else group_start(s_unit, h, ho)
    s_first = torch.stack([first_row, group_start(s_col, w, wo)], -1).repeat(batch, 1)
    s_group, _, s_last = diif_slices(s_first, in_size, out_size, slicing)
    s_batch = images.repeat_interleave(per_image)
    return group.expand(batch, -1, 2), pixel_slice, s_batch, s_group, s_first, s_last


def raster_pixels(start: int, stop: int, size, batch: int, device=None) -> torch.Tensor:
    """Pixel indices ``batch×(stop-start)×2`` (row, col) of raster positions
    ``[start, stop)`` of a ``size = (H, W)`` grid (an expanded view over the batch)."""
    flat = torch.arange(start, stop, device=device)
    pix = torch.stack([flat.div(size[1], rounding_mode="floor"), flat % size[1]], dim=-1)
    return pix.unsqueeze(0).expand(batch, -1, 2)


def grid_positions(start: int, stop: int, size, batch: int, device=None,
                   dtype=torch.float32, centres: str = "project"):
    """Query positions ``(coord, cell)`` of raster positions ``[start, stop)`` of every image
    of a ``size = (H, W)`` grid: the pixel centres (rounded as ``centres``) and the
    output-pixel size ``(2/H, 2/W)``, each ``batch×(stop-start)×2`` (``cell`` an expanded
    view).  A chunk's positions are the whole grid's at those positions, bit for bit."""
    coord = pixel_coord(raster_pixels(start, stop, size, batch, device), size, dtype, centres)
    cell = torch.tensor([2 / size[0], 2 / size[1]], device=device, dtype=dtype)
    return coord, cell.expand_as(coord)


def diif_rel(pixels: torch.Tensor, group: torch.Tensor, in_size, out_size, dtype) -> torch.Tensor:
    """Offset ``(x - v*) * (H, W)`` of output pixels from their group's LR centre (LIIF units)."""
    q = pixel_coord(pixels, out_size, dtype)
    v = pixel_coord(group, in_size, dtype)
    return (q - v) * torch.tensor(in_size, device=pixels.device, dtype=dtype)


def slice_ensemble_weights(d: torch.Tensor) -> torch.Tensor:
    """Bilinear weights ``(..., 4)`` of a pixel at offset ``d`` inside its group's square,
    for the vertices in :data:`VERTICES` order (area to the diagonally opposite vertex / 4)."""
    wy = torch.stack([1 - d[..., 0], 1 + d[..., 0]], dim=-1)
    wx = torch.stack([1 - d[..., 1], 1 + d[..., 1]], dim=-1)
    return (wy.unsqueeze(-1) * wx.unsqueeze(-2)).flatten(-2) / 4
