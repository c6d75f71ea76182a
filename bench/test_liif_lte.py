"""LIIF and LTE: scale sweep and headline decode, every backend, dtype and pass (grid
and sizes: bench/cases.py; protocol: bench/timing.py)."""
import pytest


@pytest.mark.bench_models("liif", "lte")
def test_liif_lte(case, bench_case):
    bench_case(case)
