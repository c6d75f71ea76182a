"""``geometry.raster_slices`` (a grid chunk's slices from its start and stop, no sort)
equals ``geometry.unique_slices`` of the chunk's pixels: the same tensors, bit for bit,
over random sizes, scales and chunk boundaries; and the GPU chunk-size arithmetic."""
from __future__ import annotations

import os
import random

import pytest
import torch

from implicit_kernels import geometry as G

#: Random cases per test; raise it for a longer hunt (e.g. IK_RAND_SWEEP=5000).
SWEEP = int(os.environ.get("IK_RAND_SWEEP", "300"))


def assert_same_slices(start, stop, batch, in_size, out_size, slicing):
    pixels = G.raster_pixels(start, stop, out_size, batch)
    expected = G.unique_slices(pixels, in_size, out_size, slicing)
    got = G.raster_slices(start, stop, batch, in_size, out_size, slicing)
    names = ("group", "pixel_slice", "s_batch", "s_group", "s_first", "s_last")
    case = f"{in_size}->{out_size} [{start}, {stop}) batch {batch} {slicing}"
    for name, a, b in zip(names, got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{name} of {case}: {a.shape} {b.shape}"
        assert torch.equal(a, b), f"{name} of {case}"


def random_case(rng, scale_kind):
    h, w = rng.randint(1, 14), rng.randint(1, 14)
    if scale_kind == "integer":
        sy = sx = rng.randint(1, 30)
    elif scale_kind == "asymmetric":
        sy, sx = rng.randint(1, 30), rng.randint(1, 30)
    else:  # non-integer, up to x30 on each axis independently
        sy, sx = 1 + 29 * rng.random(), 1 + 29 * rng.random()
    out_size = (max(h, round(h * sy)), max(w, round(w * sx)))
    area = out_size[0] * out_size[1]
    # Chunk boundaries: anywhere, or one pixel / one row either side of a row end.
    start = rng.choice([rng.randrange(area), (rng.randrange(out_size[0]) * out_size[1]) % area])
    length = rng.choice([1, 2, out_size[1], out_size[1] + 1, rng.randint(1, area)])
    return (h, w), out_size, start, min(area, start + length), rng.randint(1, 3)


@pytest.mark.parametrize("slicing", G.RASTER_SLICINGS)
@pytest.mark.parametrize("scale_kind", ["integer", "non-integer", "asymmetric"])
def test_equals_unique_slices_random(slicing, scale_kind):
    rng = random.Random(f"{slicing}{scale_kind}")
    for _ in range(SWEEP):
        in_size, out_size, start, stop, batch = random_case(rng, scale_kind)
        assert_same_slices(start, stop, batch, in_size, out_size, slicing)


@pytest.mark.parametrize("slicing", G.RASTER_SLICINGS)
@pytest.mark.parametrize("chunk", [1, 7, 64, 500])
def test_every_chunk_of_a_grid(slicing, chunk):
    """All chunks of grids at x1, x3 (ties), x2.7 and x30 by x3."""
    for in_size, out_size in [((4, 5), (4, 5)), ((5, 7), (15, 21)), ((5, 7), (14, 19)),
                              ((2, 3), (60, 9))]:
        area = out_size[0] * out_size[1]
        for start in range(0, area, chunk):
            assert_same_slices(start, min(area, start + chunk), 2, in_size, out_size, slicing)


def test_constant_chunk_across_a_row_end_meets_two_runs():
    # x3: the group row 0 holds output rows 0-2; pixels (0, 8) and (1, 0) meet group
    # columns 2 and 0 of it, not 1: two runs of slice numbers, ranked without a gap.
    assert G._slice_ranges(8, 10, (3, 3), (9, 9), "constant") == [[0, 1], [2, 3]]
    assert_same_slices(8, 10, 1, (3, 3), (9, 9), "constant")


def test_no_sort_no_unique(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("raster_slices called torch.unique")

    monkeypatch.setattr(torch, "unique", refuse)
    group, pixel_slice, *_ = G.raster_slices(10, 200, 2, (5, 7), (14, 19), "linear")
    assert pixel_slice.shape == (380,) and group.shape == (2, 190, 2)


def test_fixed4_is_refused():
    # fixed4 runs interleave the groups of a group row: no run structure; unique_slices.
    with pytest.raises(ValueError, match="slicing"):
        G.raster_slices(0, 10, 1, (2, 2), (8, 8), "fixed4")


def test_chunk_for_memory():
    pytest.importorskip("triton")
    from implicit_kernels.triton import launch

    # Half of 64 GiB at 8 KiB per query: 2^22 queries, a power of two.
    assert launch.chunk_for_memory(8 << 10, 64 << 30) == 1 << 22
    assert launch.chunk_for_memory(3000, 10 ** 10) == 1 << 20  # 1.67 M fit: down to 2^20
    assert launch.chunk_for_memory(8 << 10, 1 << 30) == launch.MIN_GPU_CHUNK  # never below it
