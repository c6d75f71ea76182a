"""The fused C++ operators on CPU (the "cpu" backend) against the reference: values and
gradients, float64 gradcheck, opcheck, torch.compile, and input checks."""
import pytest
import torch
from conftest import assert_compiles_fullgraph, assert_matches, mlp_params, opcheck_layouts

import implicit_kernels.functional as F
from implicit_kernels import _extension, geometry

pytestmark = pytest.mark.skipif(not _extension.available(), reason="; ".join(_extension.reasons()))

SIZES = {"x1": (5, 7), "x3_odd": (15, 21), "x2.7": (14, 19), "x3_by_x5": (15, 35),
         "x12": (60, 84)}


def diif_params(c=4, hidden=24, dtype=torch.float32, coarse_layers=2):
    return {**mlp_params("coarse.layers.", [16 * c + 6] + [hidden] * coarse_layers, dtype=dtype),
            **mlp_params("fine.layers.", [hidden + 2, hidden, hidden, 3], dtype=dtype)}


def op_args(feat, params, pixels, size, slicing="linear"):
    """The operator's arguments for a decode, as the backend builds them."""
    from implicit_kernels.ops.diif import op_inputs, prepare_diif
    structured = F._diif_params(params, feat)
    return (*op_inputs(prepare_diif(feat, structured)), pixels, size[0], size[1], slicing, True)


@pytest.mark.parametrize("slicing", geometry.SLICINGS)
@pytest.mark.parametrize("name", list(SIZES))
def test_diif_values_and_grads_equal_reference(name, slicing):
    feat = torch.randn(2, 4, 5, 7, requires_grad=True)
    params = {k: v.requires_grad_() for k, v in diif_params().items()}
    upstream = torch.randn(2, 3, *SIZES[name])
    results = {}
    for backend in ("reference", "cpu"):
        out = F.diif_decode(feat, SIZES[name], params, slicing=slicing, backend=backend,
                            chunk_size=500)
        results[backend] = (out.detach(),
                            torch.autograd.grad(out, [feat, *params.values()], upstream))
    assert_matches(results["cpu"][0], results["reference"][0])
    for key, g, g_ref in zip(["feat", *params], results["cpu"][1], results["reference"][1]):
        assert_matches(g, g_ref, f"grad of {key}")


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


@pytest.mark.parametrize("slicing", geometry.SLICINGS)
def test_diif_gradcheck_float64(slicing):
    feat = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    params = {k: v.requires_grad_() for k, v in diif_params(2, 4, torch.float64).items()}
    keys = list(params)

    def fn(f, *ps):
        return F.diif_decode(f, (5, 7), dict(zip(keys, ps)), slicing=slicing, backend="cpu",
                             chunk_size=13)

    assert torch.autograd.gradcheck(fn, (feat, *params.values()))


def test_diif_opcheck():
    feat = torch.randn(2, 3, 3, 4)
    params = diif_params(3, 8)
    pixels = geometry.grid_pixels((7, 9), 2).contiguous()
    opcheck_layouts(torch.ops.implicit_kernels.diif_decode,
                    op_args(feat, params, pixels, (7, 9)))


def test_diif_compiles_without_graph_breaks():
    feat = torch.randn(1, 3, 3, 4, requires_grad=True)
    params = {k: v.requires_grad_() for k, v in diif_params(3, 8).items()}

    def decode(f, p):
        return F.diif_decode(f, (7, 9), p, backend="cpu")

    assert_compiles_fullgraph(decode, feat, params)


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


def test_diif_empty_and_poisoned_outputs_are_written():
    feat = torch.randn(2, 3, 3, 4)
    params = diif_params(3, 8)
    empty = F.diif_decode(feat, (7, 9), params, pixels=torch.zeros(2, 0, 2, dtype=torch.long),
                          backend="cpu")
    assert empty.shape == (2, 0, 3)
    # tests/conftest.py sets IK_POISON=1: kernels' outputs start as NaN, so any element
    # a kernel failed to write would surface here.
    out = F.diif_decode(feat, (7, 9), params, backend="cpu")
    assert torch.isfinite(out).all()
