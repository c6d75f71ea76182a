"""DIIF and its LTE variant DLTE: scale sweep and headline decode, every backend, dtype
and pass (grid, sizes and protocol: bench/conftest.py)."""
import pytest


@pytest.mark.bench_models("diif", "dlte")
def test_diif(case, bench_case):
    bench_case(case)
