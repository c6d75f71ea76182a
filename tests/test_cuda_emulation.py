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
