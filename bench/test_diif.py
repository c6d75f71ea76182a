"""DIIF and its LTE variant DLTE: scale sweep and headline decode, every backend, dtype
and pass (grid and sizes: bench/cases.py; protocol: bench/timing.py)."""
import pytest


@pytest.mark.bench_models("diif", "dlte")
def test_diif(case, bench_case):
    bench_case(case)
