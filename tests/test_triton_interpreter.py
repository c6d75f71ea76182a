"""Runs each tests/test_triton_<decoder>.py, and tests/test_conformance.py (in shards) for
the backends that need it, under Triton's interpreter (CPU tensors) in a subprocess:
``TRITON_INTERPRET=1`` must be set before triton is imported, which this process may
already have done."""
import concurrent.futures
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: Not kernel tests: this file, and the GPU compilation check (which must not run under
#: the interpreter).
NOT_INTERPRETED = {pathlib.Path(__file__).name, "test_triton_compile.py"}
#: The conformance suite (which, under the interpreter, runs only the backends the variable
#: makes available: tests/test_conformance.py) in shards by decoder, so the longest run is
#: no longer than the other files' and the runs share the cores evenly.
CONFORMANCE_SHARDS = ("triton-liif or triton-lte", "triton-diif", "triton-dlte",
                      "triton-hiif")
#: Each run: a name and its pytest arguments (the Triton files, then the shards).
RUNS = {**{p.name: [f"tests/{p.name}"]
           for p in sorted((ROOT / "tests").glob("test_triton_*.py"))
           if p.name not in NOT_INTERPRETED},
        **{f"test_conformance.py[{k}]": ["tests/test_conformance.py", "-k", k]
           for k in CONFORMANCE_SHARDS}}
FILES = list(RUNS)


def _run(name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", *RUNS[name], "-q", "-rs",
                           "-p", "no:cacheprovider"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs():
    """Every file's run, started together on as many processes as there are cores: each
    is one interpreter process, so on two cores the set takes about half as long."""
    workers = max(1, min(len(FILES), len(os.sched_getaffinity(0))))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {name: pool.submit(_run, name) for name in FILES}
        yield futures


@pytest.mark.interpreter
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("name", FILES)
def test_triton_kernels_pass_under_the_interpreter(runs, name):
    run = runs[name].result()
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert " passed" in run.stdout, run.stdout[-2000:]
    # The only skips allowed are the GPU-only checks (half precision, real sizes), and the
    # conformance suite's float64 gradcheck (Triton takes no float64).
    skips = [line for line in run.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all(line.endswith(("needs a CUDA GPU", "no backend under test takes float64"))
               for line in skips), "\n".join(skips)
