"""DIIF: the reference against a loop-by-loop reading of docs/diif.md, pixel queries equal
the grid, slices partition the groups (backends against the reference:
tests/test_conformance.py)."""
import math

import pytest
import torch
from helpers import assert_matches, diif_params

import implicit_kernels.functional as F
from implicit_kernels import geometry

SIZES = {  # feature map 5×7 → output
    "x1": (5, 7), "x2": (10, 14), "x3_odd": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35),
}


def loop_oracle(feat, out_size, params, slicing, slice_ensemble=True):
    """docs/diif.md's forward pass for one image, pixel by pixel with Python integers; without
    the slice ensemble, docs/diif.md#ablation-variants (the group pixel's 3×3 code, weight 1)."""
    _, c, h, w = feat.shape
    ho, wo = out_size

    def relu_mlp(x, prefix, n, relu_last):
        for i in range(n):
            x = params[f"{prefix}{2 * i}.weight"] @ x + params[f"{prefix}{2 * i}.bias"]
            if relu_last or i < n - 1:
                x = torch.relu(x)
        return x

    def group(idx, n_in, n_out):  # the LR pixel whose square holds the centre
        return min(math.floor((idx + 0.5) * n_in / n_out), n_in - 1)

    def members(n_in, n_out, g):
        return [k for k in range(n_out) if group(k, n_in, n_out) == g]

    def code(a, b, k=4):  # k×k features from (a - k//2, b - k//2), zero outside
        z = torch.zeros(c, k, k, dtype=feat.dtype)
        for dy in range(k):
            for dx in range(k):
                y, x = a - k // 2 + dy, b - k // 2 + dx
                if 0 <= y < h and 0 <= x < w:
                    z[:, dy, dx] = feat[0, :, y, x]
        return z.reshape(-1)

    out = torch.empty(3, ho, wo, dtype=feat.dtype)
    for r in range(ho):
        for col in range(wo):
            i, j = group(r, h, ho), group(col, w, wo)
            rows, cols = members(h, ho, i), members(w, wo, j)
            if slicing == "linear":
                first, last = (r, cols[0]), (r, cols[-1])
            elif slicing == "constant":
                first, last = (rows[0], cols[0]), (rows[-1], cols[-1])
            else:  # fixed4: raster runs of 4, the last continued past the group
                k = (r - rows[0]) * len(cols) + col - cols[0]
                k0 = k // 4 * 4
                first = (rows[0] + k0 // len(cols), cols[0] + k0 % len(cols))
                last = (rows[0] + (k0 + 3) // len(cols), cols[0] + (k0 + 3) % len(cols))

            def coord(p):
                return torch.tensor([-1 + (2 * p[0] + 1) / ho, -1 + (2 * p[1] + 1) / wo],
                                    dtype=feat.dtype)

            scale = torch.tensor([h, w], dtype=feat.dtype)
            cell = torch.tensor([2 / ho, 2 / wo], dtype=feat.dtype) * scale
            centre = torch.tensor([-1 + (2 * i + 1) / h, -1 + (2 * j + 1) / w], dtype=feat.dtype)
            d = (coord((r, col)) - centre) * scale
            blended = 0
            if not slice_ensemble:
                x = torch.cat([code(i, j, 3), (coord(first) - centre) * scale,
                               (coord(last) - centre) * scale, cell])
                blended = relu_mlp(x, "coarse.layers.", 2, True)
            for a in (0, 1) if slice_ensemble else ():
                for b in (0, 1):
                    v = torch.tensor([-1 + 2 * (i + a) / h, -1 + 2 * (j + b) / w], dtype=feat.dtype)
                    x = torch.cat([code(i + a, j + b), (coord(first) - v) * scale,
                                   (coord(last) - v) * scale, cell])
                    hidden = relu_mlp(x, "coarse.layers.", 2, True)
                    # area between the pixel and the diagonally opposite corner, over 4
                    opposite = torch.tensor([1 - 2 * a, 1 - 2 * b], dtype=feat.dtype)
                    weight = ((d - opposite).abs().prod()) / 4
                    blended = blended + weight * hidden
            out[:, r, col] = relu_mlp(torch.cat([blended, d]), "fine.layers.", 3, False)
    return out.unsqueeze(0)


@pytest.mark.parametrize("slice_ensemble", [True, False])
@pytest.mark.parametrize("slicing", geometry.SLICINGS)
@pytest.mark.parametrize("size", [(6, 8), (8, 11), (12, 10)])
def test_reference_equals_loop_oracle(slicing, size, slice_ensemble):
    feat = torch.randn(1, 3, 3, 4, dtype=torch.float64)
    params = diif_params(3, hidden=8, dtype=torch.float64, slice_ensemble=slice_ensemble)
    got = F.diif_decode(feat, size, params, slicing=slicing, slice_ensemble=slice_ensemble,
                        backend="reference")
    assert_matches(got, loop_oracle(feat, size, params, slicing, slice_ensemble))


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_pixel_queries_equal_grid(backend):
    feat = torch.randn(2, 4, 5, 7)
    params = diif_params(4)
    size = (14, 19)
    grid = F.diif_decode(feat, size, params, backend=backend)
    pixels = torch.stack([torch.randint(0, size[0], (2, 50)),
                          torch.randint(0, size[1], (2, 50))], -1)
    got = F.diif_decode(feat, size, params, pixels=pixels, backend=backend)
    batch = torch.arange(2).unsqueeze(1)
    expected = grid.permute(0, 2, 3, 1)[batch, pixels[..., 0], pixels[..., 1]]
    assert_matches(got, expected)


def test_slices_partition_groups():
    """Linear slices are whole rows of a group; constant slices whole groups; groups
    tile the output with ⌊s⌋ or ⌈s⌉ pixels per axis."""
    in_size, out_size = (5, 7), (14, 19)
    pix = geometry.grid_pixels(out_size, 1)[0]
    group, first, last = geometry.diif_slices(pix, in_size, out_size, "linear")
    heights = torch.bincount(group[:, 0]) // 19
    widths = torch.bincount(group[:, 1]) // 14
    assert set(heights.tolist()) <= {2, 3} and set(widths.tolist()) <= {2, 3}
    assert (first[:, 0] == pix[:, 0]).all() and (last[:, 0] == pix[:, 0]).all()
    assert (first[:, 1] <= pix[:, 1]).all() and (pix[:, 1] <= last[:, 1]).all()
    assert (geometry.diif_slices(first, in_size, out_size, "linear")[0] == group).all()
    assert (geometry.diif_slices(last, in_size, out_size, "linear")[0] == group).all()
    _, cf, cl = geometry.diif_slices(pix, in_size, out_size, "constant")
    assert (cf <= pix).all() and (pix <= cl).all()
