"""The CPU tiles' dense layer (csrc/cpu/tiles.h, linear_tile) on our fp32 kernel
(csrc/cpu/tile_gemm.h) against a float64 reference: every row remainder of its 6-row
blocks, panel and narrow (RGB-head) widths, inner sizes off the vector width, bias and
ReLU, NaN, and the widths it leaves to ATen's GEMM."""

import pathlib

import pytest
import torch

import implicit_kernels  # noqa: F401  (loads the operators)

ops = torch.ops.implicit_kernels


def _cpu_has_avx2_fma():
    try:
        flags = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


AVX2 = _cpu_has_avx2_fma()


def _reference(a, w, b, relu):
    ref = a.double() @ w.double().t()
    if b is not None:
        ref = ref + b.double()
    return ref.relu() if relu else ref


def _error_bound(a, w, b):
    """|fp32 sum of `in` products - exact| <= in·u·Σ|terms| (u = 2^-24), per element."""
    mag = a.double().abs() @ w.double().abs().t()
    if b is not None:
        mag = mag + b.double().abs()
    return (a.shape[1] + 1) * 2.0**-24 * mag + 1e-30


@pytest.mark.parametrize("rows", [1, 2, 5, 6, 7, 13, 256, 301])
@pytest.mark.parametrize("inner", [1, 3, 8, 13, 256])
@pytest.mark.parametrize("out", [1, 3, 16, 48, 256])
def test_tile_linear_matches_float64(rows, inner, out):
    gen = torch.Generator().manual_seed(rows * 1000 + inner * 10 + out)
    a = torch.randn(rows, inner, generator=gen)
    w = torch.randn(out, inner, generator=gen)
    b = torch.randn(out, generator=gen)
    for bias, relu in ((b, True), (b, False), (None, True), (None, False)):
        c, on_kernel = ops.tile_linear(a, w, bias, relu)
        assert on_kernel == AVX2
        ref = _reference(a, w, bias, relu)
        err = (c.double() - ref).abs()
        assert bool((err <= _error_bound(a, w, bias)).all()), float(err.max())


def test_tile_linear_strided_and_wide_inputs_and_nan():
    """A non-contiguous input, a wide odd inner size, and NaN kept by the ReLU (as torch.relu)."""
    a = torch.randn(40, 1030)[:, 3:1027]
    w = torch.randn(32, 1024)
    c, _ = ops.tile_linear(a, w, None, True)
    err = (c.double() - _reference(a, w, None, True)).abs()
    assert bool((err <= _error_bound(a, w, None)).all())
    a = torch.randn(9, 16)
    a[4, 2] = float("nan")
    for out in (3, 32):
        c, _ = ops.tile_linear(a, torch.randn(out, 16), torch.randn(out), True)
        assert bool(c[4].isnan().all()) and not bool(c[torch.arange(9) != 4].isnan().any())


def test_tile_linear_leaves_other_widths_to_aten():
    """Widths above a panel that are not a multiple of 16 run on ATen's GEMM, same values."""
    a, w, b = torch.randn(70, 24), torch.randn(20, 24), torch.randn(20)
    c, on_kernel = ops.tile_linear(a, w, b, True)
    assert not on_kernel
    torch.testing.assert_close(c, torch.relu(a @ w.t() + b), rtol=1e-5, atol=1e-5)


def test_tile_linear_refuses_bad_inputs():
    with pytest.raises(RuntimeError, match="float32"):
        ops.tile_linear(torch.randn(4, 8, dtype=torch.float64), torch.randn(16, 8), None, False)
    with pytest.raises(RuntimeError, match="expected"):
        ops.tile_linear(torch.randn(4, 8), torch.randn(16, 9), None, False)
    with pytest.raises(RuntimeError, match="bias"):
        ops.tile_linear(torch.randn(4, 8), torch.randn(16, 8), torch.randn(15), False)
