"""The encoders, for context: what EDSR-baseline and RDN cost at the decoders' input
sizes, eager and under torch.compile (grid and sizes: bench/cases.py; protocol:
bench/timing.py)."""
import pytest


@pytest.mark.bench_models("edsr-baseline", "rdn")
def test_encoders(case, bench_case):
    bench_case(case)
