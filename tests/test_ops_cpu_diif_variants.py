"""The fused C++ operators on CPU for DLTE and DIIF's "w/o se" ablation: "auto" picks
them, input checks (values, gradients, chunking, gradcheck, opcheck and compile are the
conformance suite's, tests/test_conformance.py)."""
import pytest
import torch
from diif_variants import params_for

import implicit_kernels.functional as F
from implicit_kernels import _extension, backends, geometry

pytestmark = pytest.mark.skipif(not _extension.available(), reason="; ".join(_extension.reasons()))

# Output sizes for a 5×7 feature map.
SIZES = {"x1": (5, 7), "x3_odd": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35),
         "x12": (60, 84)}


def op_and_args(variant, feat, params, pixels, size, slicing="linear"):
    """The operator and its arguments for a decode, as the backend builds them."""
    from implicit_kernels.ops import diif, dlte
    if variant == "dlte":
        p = dlte.prepare_dlte(feat, F._dlte_params(params, feat))
        return torch.ops.implicit_kernels.dlte_decode, (*dlte.op_inputs(p), pixels, *size,
                                                        slicing)
    p = diif.prepare_diif_without_ensemble(feat, F._diif_params(params, feat, False))
    return torch.ops.implicit_kernels.diif_decode, (*diif.op_inputs(p), pixels, *size, slicing,
                                                    False)


def test_auto_picks_cpu():
    feat = torch.randn(1, 4, 5, 7)
    for decoder in ("dlte", "diif_without_ensemble"):
        assert backends.auto_choice(decoder, feat) == "cpu"


def test_ops_reject_bad_input():
    feat = torch.randn(1, 3, 3, 4)
    pixels = geometry.grid_pixels((7, 9), 1).contiguous()
    op, args = op_and_args("diif_without_ensemble", feat, params_for("diif_without_ensemble", 3, 8),
                           pixels, (7, 9))
    # The (B, H, W, D) projection without the slice ensemble: H = 3.
    with pytest.raises(RuntimeError, match=r"\(2, 9\) must be at least the feature map's \(3, 4\)"):
        op(*args[:11], 2, *args[12:])
    dlte_op, dlte_args = op_and_args("dlte", feat, params_for("dlte", 3, 8, channels=4), pixels,
                                     (7, 9))
    cases = [
        (1, dlte_args[1][..., :-1], "freq must have coef's shape"),
        (2, dlte_args[2][:-1], r"phase must be \(8, 2\)"),
        (3, dlte_args[3][:, :-1], r"coarse layer 0 weight must be \(D, 16\)"),
        (12, pixels + 100, "pixels must index inside"),
        (15, "cubic", "slicing must be one of"),
        (0, dlte_args[0].double(), "dtype"),
    ]
    for index, value, match in cases:
        bad = list(dlte_args)
        bad[index] = value
        with pytest.raises(RuntimeError, match=match):
            dlte_op(*bad)
