"""The C++ geometry (csrc/include/ik/geometry.h, through the CPU ops) equals
implicit_kernels/geometry.py exactly: same indices, same float bits.

The fused CPU and CUDA kernels share that header, so this pins down their index
arithmetic: nearest-code ties, group boundaries at integer and non-integer scales, the
fixed4 virtual coordinate.  Skipped when the extension is not built.
"""
from __future__ import annotations

import itertools
import os

import pytest
import torch

from implicit_kernels import _extension
from implicit_kernels import geometry as G

if not _extension.available():
    pytest.skip("implicit_kernels._C is not available: " + "; ".join(_extension.reasons()),
                allow_module_level=True)

ops = torch.ops.implicit_kernels

#: Random cases per sweep; raise it for a longer hunt (e.g. IK_RAND_SWEEP=1000).
SWEEP = int(os.environ.get("IK_RAND_SWEEP", "20"))

#: (in_size, out_size) pairs: x1, integer scales (x3 and x5 with exact ties), non-integer
#: (x2.7, x2.5, x3.69), asymmetric (x3 by x5), x30, one-pixel and odd sizes.
SCALES = [
    ((4, 4), (4, 4)),
    ((5, 6), (10, 12)),
    ((3, 7), (9, 21)),
    ((7, 5), (21, 25)),
    ((10, 10), (27, 27)),
    ((4, 4), (12, 20)),
    ((6, 4), (15, 18)),
    ((13, 11), (48, 33)),
    ((3, 2), (90, 60)),
    ((1, 1), (7, 30)),
    ((1, 3), (1, 3)),
]


def exact(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Bitwise equality (dtype, shape and every value), with the first mismatch shown."""
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    if not torch.equal(actual, expected):
        bad = (actual != expected).nonzero()[0].tolist()
        pytest.fail(f"{name}: first mismatch at {bad}: {actual[tuple(bad)].item()!r} != "
                    f"{expected[tuple(bad)].item()!r}")


# ----------------------------------------------------------------------------------------
# DIIF groups and slices
# ----------------------------------------------------------------------------------------


def check_slices(pixels, in_size, out_size, slicing):
    group, first, last = ops.diif_slices(pixels, list(in_size), list(out_size), slicing)
    rg, rf, rl = G.diif_slices(pixels, in_size, out_size, slicing)
    exact(group, rg, f"group {in_size}->{out_size} {slicing}")
    exact(first, rf, f"first {in_size}->{out_size} {slicing}")
    exact(last, rl, f"last {in_size}->{out_size} {slicing}")


@pytest.mark.parametrize("slicing", G.SLICINGS)
@pytest.mark.parametrize("in_size,out_size", SCALES, ids=[f"{a}->{b}" for a, b in SCALES])
def test_diif_slices_every_pixel(in_size, out_size, slicing):
    # Every output pixel, borders included; grid_pixels is an expanded (stride-0) view.
    pixels = G.grid_pixels(out_size, batch=2)
    check_slices(pixels, in_size, out_size, slicing)


@pytest.mark.parametrize("slicing", G.SLICINGS)
def test_diif_slices_random_sizes(slicing):
    gen = torch.Generator().manual_seed(1)
    for _ in range(SWEEP):
        h, w = torch.randint(1, 40, (2,), generator=gen).tolist()
        sy, sx = (1 + 30 * torch.rand(2, generator=gen, dtype=torch.float64)).tolist()
        out_size = (max(h, round(h * sy)), max(w, round(w * sx)))
        pixels = torch.stack([torch.randint(0, n, (3, 50), generator=gen) for n in out_size], -1)
        check_slices(pixels, (h, w), out_size, slicing)


def test_diif_slices_layouts():
    in_size, out_size = (7, 5), (19, 13)
    pixels = G.grid_pixels(out_size, batch=1)[0]
    check_slices(pixels.t().contiguous().t(), in_size, out_size, "fixed4")  # column-major
    check_slices(pixels[::3], in_size, out_size, "linear")  # strided
    check_slices(pixels[5], in_size, out_size, "constant")  # a single pixel, shape (2,)
    check_slices(pixels[:0], in_size, out_size, "linear")  # empty


def test_diif_slices_fixed4_virtual_coordinate():
    # x3: groups are 3 x 3 = 9 pixels; the third run of a group is pixel 8 plus three
    # virtual ones, ending on raster position 11 = row 3 of the group (past its last row).
    group, first, last = ops.diif_slices(torch.tensor([[2, 2]]), [2, 2], [6, 6], "fixed4")
    assert first.tolist() == [[2, 2]] and last.tolist() == [[3, 2]]


def test_diif_slices_errors():
    pixels = torch.zeros(3, 2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="slicing must be one of"):
        ops.diif_slices(pixels, [2, 2], [4, 4], "cubic")
    with pytest.raises(RuntimeError, match="must be int64"):
        ops.diif_slices(pixels.int(), [2, 2], [4, 4], "linear")
    with pytest.raises(RuntimeError, match=r"shape \(\.\.\., 2\)"):
        ops.diif_slices(torch.zeros(3, 3, dtype=torch.long), [2, 2], [4, 4], "linear")
    with pytest.raises(RuntimeError, match="in_size must have 2 entries"):
        ops.diif_slices(pixels, [2], [4, 4], "linear")
    with pytest.raises(RuntimeError, match=r"out_size entries must be in \[1, 2\^31\)"):
        ops.diif_slices(pixels, [2, 2], [0, 4], "linear")
    with pytest.raises(RuntimeError, match=r"pixels must lie in \[0, 4\) x \[0, 4\)"):
        ops.diif_slices(torch.tensor([[0, 4]]), [2, 2], [4, 4], "linear")
    with pytest.raises(RuntimeError, match=r"pixels must lie in"):
        ops.diif_slices(torch.tensor([[-1, 0]]), [2, 2], [4, 4], "linear")


# ----------------------------------------------------------------------------------------
# LIIF nearest codes, ensemble offsets and weights
# ----------------------------------------------------------------------------------------


def check_neighbours(coord, size):
    index, rel = ops.ensemble_neighbours(coord, list(size))
    ref = G.ensemble_neighbours(coord, size)
    exact(index, torch.stack([i for i, _ in ref], dim=-2), f"index {size} {coord.dtype}")
    exact(rel, torch.stack([r for _, r in ref], dim=-2), f"rel {size} {coord.dtype}")
    return rel


def adversarial_axis(n: int, dtype) -> torch.Tensor:
    """Coordinates where the nearest-code choice is decided by rounding: LR pixel edges and
    centres, the image borders, the clamp bounds, and their float neighbours."""
    k = torch.arange(n + 1, dtype=torch.float64)
    points = torch.cat([
        -1 + 2 * k / n,  # pixel edges, borders included
        -1 + (2 * k[:-1] + 1) / n,  # pixel centres
        torch.tensor([0.0, -1 + 1e-6, 1 - 1e-6, -1.5, 1.5, -1e-6, 1e-6]),
    ]).to(dtype)
    inf = torch.tensor(float("inf"), dtype=dtype)
    return torch.cat([points, torch.nextafter(points, inf), torch.nextafter(points, -inf)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("in_size,out_size", SCALES, ids=[f"{a}->{b}" for a, b in SCALES])
def test_ensemble_neighbours_output_grids(in_size, out_size, dtype):
    # Output pixel centres: at integer scales many lie exactly on ties of the shifted query.
    check_neighbours(G.make_coord(out_size, dtype=dtype), in_size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 7), (48, 48), (90, 160)])
def test_ensemble_neighbours_adversarial(size, dtype):
    ys, xs = adversarial_axis(size[0], dtype), adversarial_axis(size[1], dtype)
    coord = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)
    check_neighbours(coord, size)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ensemble_neighbours_random(dtype):
    gen = torch.Generator().manual_seed(2)
    for _ in range(SWEEP):
        size = tuple(torch.randint(1, 200, (2,), generator=gen).tolist())
        coord = (torch.rand(4, 257, 2, generator=gen, dtype=torch.float64) * 2.2 - 1.1).to(dtype)
        check_neighbours(coord, size)


def test_ensemble_neighbours_layouts():
    coord = G.make_coord((9, 11))
    check_neighbours(coord.transpose(0, 1), (4, 5))  # non-contiguous
    check_neighbours(coord[0, 0], (4, 5))  # shape (2,)
    check_neighbours(coord[:0], (4, 5))  # empty
    check_neighbours(coord[:1, :1].expand(3, 4, 2), (4, 5))  # stride 0


def test_ensemble_neighbours_errors():
    with pytest.raises(RuntimeError, match="must be float32 or float64"):
        ops.ensemble_neighbours(torch.zeros(3, 2, dtype=torch.float16), [2, 2])
    with pytest.raises(RuntimeError, match=r"shape \(\.\.\., 2\)"):
        ops.ensemble_neighbours(torch.zeros(3, 1), [2, 2])
    with pytest.raises(RuntimeError, match="size must have 2 entries"):
        ops.ensemble_neighbours(torch.zeros(3, 2), [2, 2, 2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("in_size,out_size", [((5, 6), (10, 12)), ((10, 10), (27, 27)),
                                              ((3, 2), (90, 60))])
def test_ensemble_weights(in_size, out_size, dtype):
    rel = check_neighbours(G.make_coord(out_size, dtype=dtype), in_size)
    expected = G.ensemble_weights([rel[..., t, :] for t in range(4)])
    exact(ops.ensemble_weights(rel), expected, "ensemble weights")
    # A (4, 2) slice of a bigger tensor, not contiguous.
    exact(ops.ensemble_weights(rel.transpose(0, 1)), expected.transpose(0, 1), "transposed")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_slice_ensemble_weights(dtype):
    gen = torch.Generator().manual_seed(3)
    d = (torch.rand(64, 33, 2, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype)
    grid = torch.tensor(list(itertools.product([-1.0, -0.5, 0.0, 1 / 3, 0.5, 1.0], repeat=2)),
                        dtype=dtype)
    for x in (d, grid, d.transpose(0, 1)):
        exact(ops.slice_ensemble_weights(x), G.slice_ensemble_weights(x), "slice weights")
    with pytest.raises(RuntimeError, match=r"shape \(\.\.\., 2\)"):
        ops.slice_ensemble_weights(torch.zeros(3, 4, dtype=dtype))
