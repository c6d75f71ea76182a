"""Runs tests/test_triton.py under Triton's interpreter (CPU tensors) in a subprocess:
``TRITON_INTERPRET=1`` must be set before triton is imported, which this process
may already have done."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_pass_under_the_interpreter():
    root = pathlib.Path(__file__).resolve().parent.parent
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-m", "pytest", "tests/test_triton.py", "-q",
                          "-p", "no:cacheprovider"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
