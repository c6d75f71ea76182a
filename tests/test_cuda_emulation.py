"""The CUDA emulation layer (csrc/emulation) on its own test kernels
(tests/cuda_emulation): barriers, shared memory and warp shuffles behave as on a GPU, and
the bugs a GPU would hide or garble fail with a message (a missing __syncthreads(), an
out-of-range shared index, a thread leaving while its block waits at a barrier).

Skipped without a host C++ compiler."""
import subprocess

import numpy as np
import pytest
import torch
from emulated_build import emulator_driver, host_compiler

pytestmark = pytest.mark.skipif(host_compiler() is None, reason="no host C++ compiler")

#: x[i] of the driver's inputs (run_case.cpp): integers, so every float sum is exact.
INPUTS = np.array([i % 7 - 3 + (10 if i % 5 == 0 else 0) for i in range(1000)], np.float32)


@pytest.fixture(scope="module")
def driver():
    return emulator_driver()


def run(driver, *args) -> subprocess.CompletedProcess:
    """The driver's result for a case: its output lines and exit status."""
    return subprocess.run([str(driver), *args], capture_output=True, text=True, timeout=120)


def test_shared_memory_reduction_with_barriers(driver):
    proc = run(driver, "block_sum")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert float(proc.stdout) == INPUTS.sum()


def test_missing_barrier_fails(driver):
    """Thread 0 reads what thread 128 stores before the barrier that was left out."""
    proc = run(driver, "missing_barrier")
    assert proc.returncode == 1
    assert "thread (0, 0, 0) of block (0, 0, 0) reads partial[128]" in proc.stdout


def test_shared_index_out_of_range_fails(driver):
    proc = run(driver, "out_of_range")
    assert proc.returncode == 1
    assert "indexes shared memory partial[256] out of range [0, 256)" in proc.stdout


def test_exit_while_block_waits_at_barrier_fails(driver):
    proc = run(driver, "early_exit")
    assert proc.returncode == 1
    assert "thread (0, 0, 0) of block (0, 0, 0) exited while 63 threads" in proc.stdout


def test_warp_shuffle_reduction(driver):
    proc = run(driver, "warp_sum")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = INPUTS[:128].reshape(4, 32).sum(1)
    assert [float(v) for v in proc.stdout.split()] == list(np.repeat(expected, 2))


def test_half_conversions_round_to_nearest_even(driver, tmp_path):
    """__half and __nv_bfloat16 round as torch's float16 and bfloat16 (and CUDA's): ties,
    subnormals, overflow, signed zeros, infinities."""
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(-2**31, 2**31, (20000,), generator=gen, dtype=torch.int64)
    special = torch.tensor([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e-8, 2.0**-25, 3 * 2.0**-26,
                            2.0**-24 * 1.5, 1 + 2.0**-11, 1 + 3 * 2.0**-11, float("inf"),
                            -float("inf"), 1 + 2.0**-8, 1 + 3 * 2.0**-8, 3.4e38])
    x = torch.cat([bits.to(torch.int32).view(torch.float32), special,
                   torch.randn(5000, generator=gen) * 1e-5])
    x = x[~torch.isnan(x)]  # NaN payloads may differ
    source, result = tmp_path / "x.bin", tmp_path / "rounded.bin"
    source.write_bytes(x.numpy().tobytes())
    proc = run(driver, "convert", str(source), str(result))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rounded = torch.from_numpy(np.fromfile(result, np.float32)).view(2, -1)
    for got, dtype in zip(rounded, (torch.float16, torch.bfloat16)):
        expected = x.to(dtype).float()
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32)), dtype


def test_global_read_past_the_end_fails(driver):
    """A GlobalPtr access one past its array's end fails the launch, naming the index."""
    proc = run(driver, "global_overrun")
    assert proc.returncode == 1
    assert ("thread (231, 0, 0) of block (3, 0, 0) accesses global memory at index 1000, "
            "outside the array's range [0, 1000)") in proc.stdout


def test_dynamic_shared_regions(driver):
    """A float and an int region of the dynamic shared memory, written and read back."""
    proc = run(driver, "dynamic_regions")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t = np.arange(256)
    expected = INPUTS[:256][::-1] * ((t + 1) % 256 % 3 + 1)
    assert [float(v) for v in proc.stdout.split()] == list(expected)


def test_dynamic_shared_region_past_the_launch_bytes_fails(driver):
    proc = run(driver, "dynamic_too_small")
    assert proc.returncode == 1
    assert ("dynamic shared region 'factors' [1024, 2048) ends past the launch's 2000 bytes"
            in proc.stdout)


def test_dynamic_shared_over_48_kib_needs_the_opt_in(driver):
    """Like CUDA: over 48 KiB of dynamic shared memory only after cudaFuncSetAttribute,
    which accepts at most 227 KiB."""
    assert run(driver, "dynamic_opt_in").returncode == 0
    proc = run(driver, "dynamic_no_opt_in")
    assert proc.returncode == 1
    assert "asks for 65536 bytes of dynamic shared memory, over 49152" in proc.stdout
    proc = run(driver, "dynamic_opt_in_too_large")
    assert proc.returncode == 1 and "invalid argument" in proc.stdout


def gemm_reference(a, b, c):
    """c + a·b in float32, the products (exact) added in k order as the emulated WMMA adds
    them."""
    d = c.clone()
    for k in range(a.shape[1]):
        d += torch.outer(a[:, k], b[k])
    return d


def gemm_inputs(dtype, seed):
    """a (32 × 48), b (48 × 32) rounded to dtype, c (32 × 32), as float32."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(32, 48, generator=gen).to(dtype).float()
    b = torch.randn(48, 32, generator=gen).to(dtype).float()
    return a, b, torch.randn(32, 32, generator=gen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("layouts", ["row row row", "col row col", "row col row", "col col col",
                                     "row row col", "col col row"])
def test_wmma_gemm(driver, tmp_path, dtype, layouts):
    """d = c + a·b by 4 warps of WMMA fragments, with a from static shared memory, b and c
    from global memory, each warp's accumulator stored to and reloaded from dynamic shared
    memory at every k step (a warp reusing its own tile is no race): every layout of a, b
    and the accumulator, K of three 16-steps, equal to the float reference."""
    a, b, c = gemm_inputs(dtype, seed=sum(map(ord, layouts)))
    source, result = tmp_path / "abc.bin", tmp_path / "d.bin"
    source.write_bytes(torch.cat([a.flatten(), b.flatten(), c.flatten()]).numpy().tobytes())
    name = "float16" if dtype == torch.float16 else "bfloat16"
    proc = run(driver, "wmma", name, *layouts.split(), "sync", str(source), str(result))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    d = torch.from_numpy(np.fromfile(result, np.float32)).view(32, 32)
    expected = gemm_reference(a, b, c)
    assert torch.equal(d, expected), (d - expected).abs().max()


def test_wmma_store_read_without_barrier_fails(driver, tmp_path):
    """A warp's stored tile read by other threads with no __syncthreads() between."""
    a, b, c = gemm_inputs(torch.float16, seed=0)
    source = tmp_path / "abc.bin"
    source.write_bytes(torch.cat([a.flatten(), b.flatten(), c.flatten()]).numpy().tobytes())
    proc = run(driver, "wmma", "float16", "row", "row", "row", "nosync", str(source),
               str(tmp_path / "d.bin"))
    assert proc.returncode == 1
    assert "reads d_tile[" in proc.stdout


def test_wmma_misaligned_pointer_fails(driver):
    proc = run(driver, "wmma_misaligned")
    assert proc.returncode == 1
    assert ("load_matrix_sync: the pointer to element 8 of shared 'tile' is not 32-byte aligned"
            in proc.stdout)
