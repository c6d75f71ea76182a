"""Test-session setup: environment for the compiled kernels, and fixtures (seeds, one
intra-op thread, exact fp32 CUDA matmuls, a malicious pickle).  Shared helpers
(tolerances, random parameters, opcheck/compile assertions) are in tests/helpers.py."""
from __future__ import annotations

import os

# Compiled kernels fill their outputs with NaN before writing them (read once, when the
# extension first allocates), so an element a kernel forgets stays NaN and fails a test.
os.environ.setdefault("IK_POISON", "1")
# A checkout without the built extension skips its tests instead of compiling it on first
# use (tests/test_install.py exercises that path in its own environment).
os.environ.setdefault("IK_JIT", "0")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Test tensors are tiny: intra-op threads only add barrier waits (seconds per test
    on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def exact_fp32_matmul():
    """CUDA matmuls in full fp32 (no TF32) for the test, so fp32 comparisons at 1e-5 hold."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: a harmless stand-in for a payload."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def evil_pickle(tmp_path):
    """``make(path) -> marker``: write a torch file at ``path`` whose unpickling creates
    ``marker`` (checked to work: ``weights_only=False`` does create it)."""

    def make(path, marker=None):
        marker = tmp_path / f"pwned-{os.path.basename(str(path))}" if marker is None else marker
        torch.save({"format": "implicit-kernels-weights/1", "payload": _CreatesFile(marker)}, path)
        torch.load(path, weights_only=False)  # the payload works ...
        assert os.path.exists(marker)
        os.remove(marker)                     # ... and the test starts without its file
        return marker

    return make
