"""LIIF and LTE: scale sweep and headline decode, every backend, dtype and pass (grid,
sizes and protocol: bench/conftest.py)."""
import pytest


@pytest.mark.bench_models("liif", "lte")
def test_liif_lte(case, bench_case):
    bench_case(case)
