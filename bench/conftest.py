"""pytest glue of the benchmarks: the ``bench_models`` marker that parametrises a test's
``case``, the report header, the ``bench_case`` fixture and the benchmarks' torch settings.

``pytest bench/`` times every case (pytest-benchmark); ``pytest bench --benchmark-disable``
runs each once, as a test (what CI runs); ``--benchmark-json out.json`` keeps the results
for ``python -m bench.report out.json``.  The case grid is bench/cases.py, what a case
runs bench/workload.py, the timing protocol and the recorded ``extra_info``
bench/timing.py.
"""
from __future__ import annotations

import pytest
import torch

import models

from .cases import FULL, SWEEP_INPUT, decoder_cases, encoder_cases
from .timing import THREADS, device_name, run_case


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "bench_models(*names): benchmark these decoders or encoders; "
                   "bench/conftest.py parametrises the test's `case` argument")


def pytest_generate_tests(metafunc):
    """Parametrise ``case`` from the test's ``bench_models`` marker."""
    marker = metafunc.definition.get_closest_marker("bench_models")
    if marker is None or "case" not in metafunc.fixturenames:
        return
    names = marker.args
    if all(n in models.ENCODERS for n in names):
        params = encoder_cases(names)
    elif all(n in models.DECODERS for n in names):
        params = decoder_cases(names)
    else:
        raise ValueError(f"bench_models takes decoders or encoders, not a mix: {names}")
    metafunc.parametrize("case", params)


def pytest_report_header(config):
    grid = "full (IK_BENCH_FULL=1)" if FULL else "reduced default (IK_BENCH_FULL=1: full)"
    return [f"implicit-kernels bench: device {device_name()}, {grid} grid, "
            f"sweep input {SWEEP_INPUT}, torch {torch.__version__}"]


@pytest.fixture
def bench_case(benchmark):
    """``bench_case(case)`` benchmarks one :class:`bench.cases.Case`."""
    return lambda case: run_case(benchmark, case)


@pytest.fixture(autouse=True)
def _bench_settings():
    """``THREADS`` intra-op threads (tests/conftest.py pins one for the session when both
    directories run together), and no TF32 on CUDA: float32 means float32."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    torch.set_num_threads(threads)
