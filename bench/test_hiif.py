"""HIIF (global attention, the public code's normaliser): scale sweep and headline
decode, every backend, dtype and pass (grid and sizes: bench/cases.py; protocol:
bench/timing.py)."""
import pytest


@pytest.mark.bench_models("hiif")
def test_hiif(case, bench_case):
    bench_case(case)
