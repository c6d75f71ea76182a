"""bench/gpu_prediction.py: the roofline prediction's arithmetic."""
import pytest

from bench import gpu_prediction as gp


def test_diif_headline_floor_is_the_split_forms_macs_at_the_bf16_peak():
    p = gp.predict("diif", (90, 160), 16, "bf16", gp.DEVICES[0])
    assert p.gmac == pytest.approx(376.1, abs=0.1)
    assert p.floor_ms == pytest.approx(2 * p.gmac * 1e9 / 989.4e12 * 1e3)
    assert p.floor_ms == pytest.approx(0.76, abs=0.01)


def test_larger_tiles_cut_the_l2_term_in_proportion():
    small, large = (gp.predict("diif", (90, 160), 16, "bf16", gp.DEVICES[0], rows)
                    for rows in (32, 128))
    assert small.l2_ms == pytest.approx(4 * large.l2_ms, rel=1e-3)
    assert (small.bound, large.bound) == ("L2", "issue")
    assert large.predicted_ms == large.issue_ms > large.floor_ms


def test_the_table_has_every_case_dtype_and_device():
    rows = gp.table().splitlines()[2:]
    assert len(rows) == len(gp.CASES) * 2 * len(gp.DEVICES)
