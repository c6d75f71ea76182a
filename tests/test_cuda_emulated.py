"""The CUDA kernels (csrc/cuda/*.cu) run on CPU tensors through the emulation layer
(csrc/emulation, tests/emulated_build.py): every operator that launches them, forward and
backward, equals the real CPU operators (``torch.ops.implicit_kernels``, themselves tested
against the reference), for DIIF, DIIF w/o se, DLTE, LIIF, LTE and HIIF; integer,
non-integer and asymmetric scales, queries on LR pixel centres and edges, batch 2,
float32 and float64.  The emulated build takes a few minutes on two cores, once per
source change (cached).

Skipped without a host C++ compiler or without the real extension."""
import pytest
import torch
from diif_variants import params_for
from helpers import assert_matches, diif_params
from test_hiif import hiif_params
from test_ops_cpu_liif_lte import make_params, tie_queries

import implicit_kernels.functional as F
from implicit_kernels import _extension, geometry
from implicit_kernels.ops import diif, dlte, hiif, liif, lte

pytestmark = [
    pytest.mark.skipif(not _extension.available(), reason="; ".join(_extension.reasons())),
]

BATCH, CHANNELS, LR = 2, 3, (4, 5)
#: Output grids of the LR map: integer scales (×3: output centres on LR centres; ×2:
#: output pixel edges on LR edges), a non-integer and an asymmetric one.  "edges": the
#: query decoders' queries on every LR centre and edge (tie_queries); DIIF decodes pixels,
#: so its "edges" is the ×2 grid.
CASES = {"x1": (4, 5), "x2": (8, 10), "x3": (12, 15), "x2.3": (9, 11), "x2_by_x3": (8, 15),
         "edges": (8, 10)}
DECODERS = ("diif", "diif_without_ensemble", "dlte", "liif", "lte", "hiif")


@pytest.fixture(scope="module")
def emulated():
    """``torch.ops.implicit_kernels_emulated``: the operators on the emulated CUDA kernels."""
    from emulated_build import emulated_operators, host_compiler
    if host_compiler() is None:
        pytest.skip("no host C++ compiler")
    return emulated_operators()


def queries(case, dtype):
    """``coord, cell`` (``B×Q×2``): the case's output grid, or its LR edges and centres."""
    if case == "edges":
        coord, cell = tie_queries(BATCH, 60, *LR)
        return coord.to(dtype), cell.to(dtype)
    size = CASES[case]
    coord = geometry.make_coord(size, dtype=dtype).view(1, -1, 2).expand(BATCH, -1, -1)
    cell = torch.tensor([2 / size[0], 2 / size[1]], dtype=dtype).expand_as(coord)
    return coord.contiguous(), cell.contiguous()


def diif_family_ops(decoder, case, dtype, feat):
    """DIIF, its w/o se ablation and DLTE: ``[(operator name, arguments)]``."""
    size = CASES[case]
    pixels = geometry.grid_pixels(size, BATCH).contiguous()
    slicing = geometry.SLICINGS[list(CASES).index(case) % len(geometry.SLICINGS)]
    if decoder == "dlte":
        p = dlte.prepare_dlte(feat, F._dlte_params(params_for("dlte", CHANNELS, 8, dtype), feat))
        return [("dlte_decode", (*dlte.op_inputs(p), pixels, *size, slicing))]
    if decoder == "diif":
        p = diif.prepare_diif(feat, F._diif_params(diif_params(CHANNELS, 8, dtype), feat))
        return [("diif_decode", (*diif.op_inputs(p), pixels, *size, slicing, True))]
    params = F._diif_params(params_for(decoder, CHANNELS, 8, dtype), feat, False)
    p = diif.prepare_diif_without_ensemble(feat, params)
    return [("diif_decode", (*diif.op_inputs(p), pixels, *size, slicing, False))]


def query_ops(decoder, case, dtype, feat):
    """LIIF, LTE and HIIF: ``[(operator name, arguments)]``; HIIF's are the operators with
    CUDA kernels (level 0, the later levels, the codes)."""
    coord, cell = queries(case, dtype)
    if decoder == "liif":
        p = liif.prepare_liif(feat, F._liif_params(make_params("liif", c=CHANNELS, hidden=8,
                                                               dtype=dtype), feat))
        return [("liif_decode", (*liif.op_inputs(p), coord, cell))]
    if decoder == "lte":
        p = lte.prepare_lte(feat, F._lte_params(make_params("lte", c=CHANNELS, hidden=8,
                                                             dtype=dtype), feat))
        return [("lte_decode", (*lte.op_inputs(p), coord, cell))]
    params = hiif_params(c_enc=CHANNELS, c_z=8, head_dim=4, hidden=8, levels=3, dtype=dtype)
    p = hiif.prepare_hiif(feat, F._hiif_params(params, feat))
    level0 = p["level0"]
    public = case == "x3"
    x = torch.randn(BATCH, coord.shape[1], 8, dtype=dtype)
    return [("hiif_level0", (level0["maps"], level0["row_sums"], level0["w_extra"],
                             level0["bias"], *p["levels"][0]["fc2"], coord, cell,
                             level0["channels"], public)),
            ("hiif_levels", (x, coord, *hiif.level_lists(p), *LR, public)),
            ("hiif_codes", (coord, *LR, 3, public))]


def flat(values):
    """Tensors of an operator's result (a tensor, a tuple, lists inside)."""
    if isinstance(values, torch.Tensor):
        return [values]
    return [t for v in values for t in flat(v)]


def assert_same_results(got, expected, what):
    for i, (g, e) in enumerate(zip(flat(got), flat(expected), strict=True)):
        if e.is_floating_point():
            assert_matches(g, e, f"{what}[{i}]")
        else:
            assert torch.equal(g, e), f"{what}[{i}]"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("decoder", DECODERS)
def test_emulated_kernels_equal_cpu_operators(emulated, decoder, case, dtype):
    torch.manual_seed(0)
    with torch.no_grad():
        feat = torch.randn(BATCH, CHANNELS, *LR, dtype=dtype)
        build = query_ops if decoder in ("liif", "lte", "hiif") else diif_family_ops
        for name, args in build(decoder, case, dtype, feat):
            out = getattr(torch.ops.implicit_kernels, name)(*args)
            assert_same_results(getattr(emulated, name)(*args), out, name)
            backward = name + "_backward"
            if hasattr(torch.ops.implicit_kernels, backward):
                grad_out = torch.randn_like(out)
                assert_same_results(getattr(emulated, backward)(grad_out, *args),
                                    getattr(torch.ops.implicit_kernels, backward)(grad_out, *args),
                                    backward)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", ["x1", "x2.3", "x2_by_x3"])
@pytest.mark.parametrize("decoder", ["diif", "diif_without_ensemble", "dlte"])
def test_emulated_train_variants_equal_cpu_operators(emulated, decoder, case, dtype):
    """The ``_train`` operators (forward with its record) and the backward from that record
    on the emulated CUDA path equal the CPU operators', each backward from its own record
    (the layouts may differ: the CPU tiles blend in H's space where that is cheaper)."""
    torch.manual_seed(0)
    with torch.no_grad():
        feat = torch.randn(BATCH, CHANNELS, *LR, dtype=dtype)
        for name, args in diif_family_ops(decoder, case, dtype, feat):
            out, record = getattr(torch.ops.implicit_kernels, name + "_train")(*args)
            got, got_record = getattr(emulated, name + "_train")(*args)
            assert_matches(got, out, name + "_train")
            grad_out = torch.randn_like(out)
            backward = name + "_backward_saved"
            assert_same_results(getattr(emulated, backward)(grad_out, got_record, *args),
                                getattr(torch.ops.implicit_kernels, backward)(grad_out, record,
                                                                              *args),
                                backward)
