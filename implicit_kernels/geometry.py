"""Coordinate and index geometry shared by every decoder (SPEC.md §1 and §3).

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


def axis_centres(n: int, device=None, dtype=torch.float32, centres: str = "project") -> torch.Tensor:
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
    """The four local-ensemble codes of each query (SPEC.md §1, LIIF's procedure).

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
# DIIF: coordinate grouping and slicing (SPEC.md §3, steps 1-2)
# ----------------------------------------------------------------------------------------

#: Slicing modes: linear order (one output row of a group), constant order (the whole
#: group), fixed (raster runs of 4 pixels inside a group).
SLICINGS = ("linear", "constant", "fixed4")
#: The four vertices of a group's square, ``(a, b)``; vertex offset from the group centre
#: in LIIF units is ``(2a - 1, 2b - 1)``.
VERTICES = ((0, 0), (0, 1), (1, 0), (1, 1))


def group_index(idx: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """LR index of the group that output index ``idx`` belongs to: ``floor((2idx+1) n_in / (2 n_out))``."""
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
    """Group and slice of each output pixel (SPEC.md §3, steps 1-2).

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
