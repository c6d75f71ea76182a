"""The fused DIIF operator on CPU (the "cpu" backend): other depths, pixel queries and
"auto", input checks (values, gradients, gradcheck, opcheck and compile are the
conformance suite's, tests/test_conformance.py)."""
import pytest
import torch
from helpers import assert_matches, diif_params

import implicit_kernels.functional as F
from implicit_kernels import _extension, geometry

pytestmark = pytest.mark.skipif(not _extension.available(), reason="; ".join(_extension.reasons()))

SIZES = {"x1": (5, 7), "x3_odd": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35),
         "x12": (60, 84)}


def op_args(feat, params, pixels, size, slicing="linear"):
    """The operator's arguments for a decode, as the backend builds them."""
    from implicit_kernels.ops.diif import op_inputs, prepare_diif
    structured = F._diif_params(params, feat)
    return (*op_inputs(prepare_diif(feat, structured)), pixels, size[0], size[1], slicing, True)


@pytest.mark.parametrize("coarse_layers", [1, 3])
def test_diif_other_depths(coarse_layers):
    feat = torch.randn(1, 3, 4, 4)
    params = diif_params(3, 16, coarse_layers=coarse_layers)
    ref = F.diif_decode(feat, (10, 11), params, backend="reference")
    assert_matches(F.diif_decode(feat, (10, 11), params, backend="cpu"), ref)


def test_diif_pixel_queries_and_auto():
    feat = torch.randn(2, 4, 5, 7)
    params = diif_params()
    pixels = torch.stack([torch.randint(0, 14, (2, 300)), torch.randint(0, 19, (2, 300))], -1)
    ref = F.diif_decode(feat, (14, 19), params, pixels=pixels, backend="reference")
    assert_matches(F.diif_decode(feat, (14, 19), params, pixels=pixels, backend="cpu"), ref)
    from implicit_kernels import backends
    assert backends.auto_choice("diif", feat) == "cpu"


def test_diif_op_rejects_bad_input():
    feat = torch.randn(1, 3, 3, 4)
    params = diif_params(3, 8)
    pixels = geometry.grid_pixels((7, 9), 1).contiguous()
    args = list(op_args(feat, params, pixels, (7, 9)))
    op = torch.ops.implicit_kernels.diif_decode
    cases = [
        (10, pixels.int(), "pixels must be int64"),
        (10, pixels + 100, "pixels must index inside"),
        (1, args[1].double(), "dtype"),
        (0, args[0].half(), "float32 or float64"),
        (11, 2, "output size"),
        (13, "cubic", "slicing must be one of"),
        (1, args[1][:, :5], r"coordinate part\) weight must be \(8, 6\)"),
    ]
    for index, value, match in cases:
        bad = list(args)
        bad[index] = value
        if index == 0 and value.dtype == torch.half:
            bad = [a.half() if isinstance(a, torch.Tensor) and a.is_floating_point() else
                   [t.half() for t in a] if isinstance(a, list) else a for a in args]
        with pytest.raises(RuntimeError, match=match):
            op(*bad)
