"""The CUDA kernels (csrc/cuda/*.cu) run on CPU tensors through the emulation layer
(csrc/emulation, tests/emulated_build.py): every operator that launches them, forward and
backward, equals the real CPU operators (``torch.ops.implicit_kernels``, themselves tested
against the reference), for DIIF, DIIF w/o se, DLTE, LIIF, LTE and HIIF; integer,
non-integer and asymmetric scales, queries on LR pixel centres and edges, batch 2,
float32 and float64; the fused DIIF, LIIF and LTE kernels also in float16 and bfloat16
(their tensor-core path), wider and deeper, over many tiles, and row by row; the fused
DIIF backward also by a float64 gradcheck.  The emulated
build takes a few minutes on two cores, once per source change (cached).

On a machine with a GPU and a CUDA build every test runs a second time on the GPU (the
``gpu`` parameter of the ``emulated`` fixture): the same kernels, natively.

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


class OnTheGpu:
    """The real extension's operators on a GPU, with CPU arguments and results, so the
    tests of the emulated kernels check the same kernels natively on a GPU machine."""

    def __getattr__(self, name):
        op = getattr(torch.ops.implicit_kernels, name)
        return lambda *args: to_device(op(*to_device(args, "cuda")), "cpu")


def to_device(values, device):
    """``values`` (tensors, lists, tuples, other arguments) with every tensor on ``device``."""
    if isinstance(values, torch.Tensor):
        return values.to(device)
    if isinstance(values, (list, tuple)):
        return type(values)(to_device(v, device) for v in values)
    return values


@pytest.fixture(scope="module", params=["emulated", "gpu"])
def emulated(request):
    """The operators with CUDA kernels, taking and returning CPU tensors:
    ``torch.ops.implicit_kernels_emulated`` (the kernels compiled by the host compiler
    against the emulation) or, on a machine with a GPU and a CUDA build, the real
    extension's operators run on the GPU."""
    if request.param == "gpu":
        if not (torch.cuda.is_available() and _extension.with_cuda()):
            pytest.skip("needs a GPU and the extension built with CUDA")
        return OnTheGpu()
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


def query_decoder_op(decoder, feat, coord, cell, **widths):
    """LIIF or LTE with random parameters of ``feat``'s dtype and ``widths``
    (``make_params``): ``(operator name, arguments)``."""
    params = make_params(decoder, c=CHANNELS, dtype=feat.dtype, **widths)
    if decoder == "liif":
        p = liif.prepare_liif(feat, F._liif_params(params, feat))
        return "liif_decode", (*liif.op_inputs(p), coord, cell)
    p = lte.prepare_lte(feat, F._lte_params(params, feat))
    return "lte_decode", (*lte.op_inputs(p), coord, cell)


def query_ops(decoder, case, dtype, feat):
    """LIIF, LTE and HIIF: ``[(operator name, arguments)]``; HIIF's are the operators with
    CUDA kernels (level 0, the later levels, the codes)."""
    coord, cell = queries(case, dtype)
    if decoder in ("liif", "lte"):
        return [query_decoder_op(decoder, feat, coord, cell, hidden=8)]
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


# The fused LIIF and LTE forward (csrc/cuda/liif_fused.cu): on the CUDA kernels,
# liif_decode and lte_decode are one kernel per call when every width, padded to 16, is
# at most 256 (the forward of the tests above runs it too, in float32 and float64).

#: Half types against the float32 CPU operator on the same (rounded) inputs: the fused
#: kernels round each layer's activations (DIIF's G too) and the output to the half type,
#: accumulating in float.  Largest differences measured on these tests' outputs (|out| <
#: 0.45) over seeds and cases: float16 2e-4, bfloat16 1.3e-3 (the output's own rounding is
#: up to 1e-3); the bounds are about four to six times that, absolute and relative.
HALF_TOLERANCES = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def cast(values, dtype):
    """``values`` (tensors, lists, tuples, other arguments) with every floating tensor cast
    to ``dtype``."""
    if isinstance(values, torch.Tensor):
        return values.to(dtype) if values.is_floating_point() else values
    if isinstance(values, (list, tuple)):
        return type(values)(cast(v, dtype) for v in values)
    return values


def assert_forward_equals_cpu(emulated, name, args):
    """The emulated (fused) forward on ``args`` equals the CPU operator's: to the dtype's
    tolerance for float32/float64; for a half type, within HALF_TOLERANCES of the float32
    operator on the same values."""
    got = getattr(emulated, name)(*args)
    dtype = args[0].dtype
    if dtype in HALF_TOLERANCES:
        expected = getattr(torch.ops.implicit_kernels, name)(*cast(args, torch.float32))
        assert got.dtype == dtype and torch.isfinite(got).all(), name
        tol = HALF_TOLERANCES[dtype]
        torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol)
    else:
        assert_matches(got, getattr(torch.ops.implicit_kernels, name)(*args), name)
    return got


# The fused DIIF forward (csrc/cuda/diif_fused.cu): the plain diif_decode on the emulated
# kernels runs it for decoders at most 256 wide (test_emulated_kernels_equal_cpu_operators
# covers its cases at width 8); these cover wider and deeper decoders, tiles of rows, pixel
# subsets and the half types' tensor-core path.


def diif_args(slice_ensemble, case, feat, hidden=8, coarse_layers=2, slicing=None):
    """``diif_decode``'s arguments for the case's output grid, with random parameters of
    ``feat``'s dtype: ``coarse_layers`` coarse Linears of width ``hidden``; the case's
    slicing unless given."""
    size = CASES[case]
    raw = diif_params(CHANNELS, hidden, feat.dtype, slice_ensemble, coarse_layers)
    params = F._diif_params(raw, feat, slice_ensemble)
    prepare = diif.prepare_diif if slice_ensemble else diif.prepare_diif_without_ensemble
    if slicing is None:
        slicing = geometry.SLICINGS[list(CASES).index(case) % len(geometry.SLICINGS)]
    return (*diif.op_inputs(prepare(feat, params)), geometry.grid_pixels(size, BATCH), *size,
            slicing, slice_ensemble)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("slice_ensemble", [True, False], ids=["diif", "without_ensemble"])
@pytest.mark.parametrize("hidden, coarse_layers", [(48, 2), (64, 1), (24, 3)])
def test_fused_forward_wide_and_deep_decoders(emulated, slice_ensemble, hidden, coarse_layers,
                                              dtype):
    """Widths that are not multiples of 16 (padded), one to three coarse layers, more rows
    and pixels than one tile (×2.3 over batch 2: 198 pixels, 90 slices)."""
    with torch.no_grad():
        feat = torch.randn(BATCH, CHANNELS, *LR, dtype=dtype)
        args = diif_args(slice_ensemble, "x2.3", feat, hidden, coarse_layers)
        assert_matches(emulated.diif_decode(*args), torch.ops.implicit_kernels.diif_decode(*args))


@pytest.mark.parametrize("slice_ensemble", [True, False], ids=["diif", "without_ensemble"])
@pytest.mark.parametrize("case, slicing", [("x1", "linear"), ("x3", "constant")])
def test_fused_forward_of_a_pixel_subset_equals_the_full_call(emulated, slice_ensemble, case,
                                                              slicing):
    """Each pixel's output depends only on its own slice's rows, whichever tile they fall in:
    the pixels of a random half of the LR rows, shuffled, give bit for bit the rows of the
    whole grid.  Whole groups keep the pixels per slice, so both calls blend on the same
    side: in H's space at ×1 (a pixel per slice, 4 vertices), after fine_wh at ×3 (9)."""
    with torch.no_grad():
        feat = torch.randn(BATCH, CHANNELS, *LR)
        args = diif_args(slice_ensemble, case, feat, hidden=24, slicing=slicing)
        full = emulated.diif_decode(*args)
        pixels, scale = args[10], CASES[case][0] // LR[0]
        lr_rows = torch.randperm(LR[0])[:LR[0] // 2]
        keep = torch.isin(pixels[0, :, 0] // scale, lr_rows).nonzero()[:, 0]
        keep = keep[torch.randperm(len(keep))]
        subset = emulated.diif_decode(*args[:10], pixels[:, keep].contiguous(), *args[11:])
        assert torch.equal(subset, full[:, keep])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("decoder", ["liif", "lte"])
def test_fused_liif_lte_forward_half_types(emulated, decoder, case, dtype):
    """Tensor-core (WMMA) forward: float16/bfloat16 maps, parameters and queries."""
    torch.manual_seed(0)
    with torch.no_grad():
        feat = torch.randn(BATCH, CHANNELS, *LR)
        coord, cell = queries(case, torch.float32)
        name, args = query_decoder_op(decoder, feat, coord, cell, hidden=8)
        assert_forward_equals_cpu(emulated, name, cast(args, dtype))


#: Wider and deeper than the tests above: every width a multiple of 16 or not, hidden
#: layers of 48 (three 16-column tiles), LTE's input 24 wide (padded to 32).
WIDE = {"liif": {"hidden": 48, "layers": 3}, "lte": {"hidden": 48, "channels": 24}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("decoder", ["liif", "lte"])
def test_fused_forward_wide_over_tiles(emulated, decoder, dtype):
    """Hidden 48, 70 queries per image of batch 2 (18 tiles of 8 queries, the last one
    half filled), queries on LR centres and edges."""
    torch.manual_seed(1)
    with torch.no_grad():
        feat = torch.randn(BATCH, CHANNELS, *LR)
        coord, cell = tie_queries(BATCH, 70, *LR)
        name, args = query_decoder_op(decoder, feat, coord, cell, **WIDE[decoder])
        assert_forward_equals_cpu(emulated, name, cast(args, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("decoder", ["liif", "lte"])
def test_fused_forward_rows_are_independent(emulated, decoder, dtype):
    """A subset of the queries, in another order, gives exactly the same rows as the full
    call: a query's output does not depend on the others in its tile."""
    torch.manual_seed(2)
    with torch.no_grad():
        feat = torch.randn(BATCH, CHANNELS, *LR, dtype=dtype)
        coord, cell = cast(tie_queries(BATCH, 60, *LR), dtype)
        name, args = query_decoder_op(decoder, feat, coord, cell, hidden=16)
        op = getattr(emulated, name)
        full = op(*args)
        rows = torch.randperm(60)[:21]
        part = op(*args[:-2], coord[:, rows].contiguous(), cell[:, rows].contiguous())
        assert torch.equal(part, full[:, rows])


@pytest.mark.parametrize("decoder", ["liif", "lte"])
def test_wider_than_fused_kernel_runs_unfused(emulated, decoder):
    """A hidden width over 256 (272 after padding) takes the unfused path: same values."""
    torch.manual_seed(3)
    with torch.no_grad():
        feat = torch.randn(BATCH, CHANNELS, *LR)
        coord, cell = tie_queries(BATCH, 54, *LR)
        name, args = query_decoder_op(decoder, feat, coord, cell, hidden=257)
        assert_forward_equals_cpu(emulated, name, args)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("slice_ensemble", [True, False], ids=["diif", "without_ensemble"])
def test_fused_diif_forward_half_types(emulated, slice_ensemble, case, dtype):
    """The tensor-core path against the CPU float32 operator on the same inputs rounded to
    ``dtype``: each layer's activations are rounded to ``dtype`` (G too), so the outputs
    (about 0.3 in size) agree to HALF_TOLERANCES, absolute and relative: about 6 times
    the largest difference seen over seeds and cases."""
    with torch.no_grad():
        feat = torch.randn(BATCH, CHANNELS, *LR)
        assert_forward_equals_cpu(emulated, "diif_decode",
                                  cast(diif_args(slice_ensemble, case, feat, hidden=24), dtype))


# --- The fused DIIF backward (csrc/cuda/diif_fused_backward.cu) --------------------------

#: Decoder shapes of the fused backward's cases: the first layer's width, the coarse
#: layers' widths, then the fine stage's first width and its layers' widths (last: RGB).
DIIF_SHAPES = {
    "narrow": (8, (8, 8), (8, 8, 8, 3)),
    "no_coarse_layers_deep_fine": (8, (), (16, 8, 8, 8, 8, 3)),
    "wide": (48, (64, 48), (48, 64, 48, 3)),
    "wider_than_tiles": (8, (264,), (16, 16, 3)),
}


def diif_backward_args(shape, size, dtype, slice_ensemble, slicing="linear", shuffle=False,
                       active=False):
    """Random ``diif_decode`` arguments of ``DIIF_SHAPES[shape]`` decoding ``size`` for a
    batch of BATCH (all pixels; ``shuffle``: in random order with repeats).  ``active``:
    every ReLU's input positive, far from 0 (non-negative weights, positive biases and
    inputs), so that rounding never flips a ReLU."""
    width, coarse, fine = DIIF_SHAPES[shape]
    border = 1 if slice_ensemble else 0

    def layer(n_out, n_in):
        if active:
            return (torch.rand(n_out, n_in, dtype=dtype) / n_in,
                    0.5 + torch.rand(n_out, dtype=dtype))
        return (torch.randn(n_out, n_in, dtype=dtype) / n_in ** 0.5,
                0.3 * torch.randn(n_out, dtype=dtype))

    def scaled(sizes, scale):
        return (torch.rand(*sizes, dtype=dtype) if active
                else torch.randn(*sizes, dtype=dtype)) * scale

    corner_proj = scaled((BATCH, LR[0] + border, LR[1] + border, width), 1)
    w_coord, b0 = layer(width, 6)
    if active:
        w_coord = 0.05 * (2 * w_coord - 1 / 6)  # |w_coord·coords| < 0.5 < b0
    dims = [width, *coarse]
    coarse_layers = [layer(o, i) for i, o in zip(dims[:-1], dims[1:])]
    fine_wh, fine_b0 = layer(fine[0], dims[-1])
    fine_wd = 0.1 * (2 * scaled((fine[0], 2), 1) - 1) if active else scaled((fine[0], 2), 1)
    fine_layers = [layer(o, i) for i, o in zip(fine[:-1], fine[1:])]
    pixels = geometry.grid_pixels(size, BATCH).contiguous()
    if shuffle:
        pick = torch.randint(0, pixels.shape[1], (BATCH, 2 * pixels.shape[1]))
        pixels = torch.gather(pixels, 1, pick.unsqueeze(-1).expand(-1, -1, 2)).contiguous()
    return (corner_proj, w_coord, b0, [w for w, _ in coarse_layers], [b for _, b in coarse_layers],
            fine_wh, fine_wd, fine_b0, [w for w, _ in fine_layers], [b for _, b in fine_layers],
            pixels, *size, slicing, slice_ensemble)


def emulated_backward_fused(emulated, grad_out, args):
    """The emulated ``diif_decode_backward``, asserting it ran the fused kernels: the
    unfused backward takes each ReLU's gradient with ``threshold_backward``, the fused one
    on chip."""
    with torch.profiler.profile() as prof:
        grads = emulated.diif_decode_backward(grad_out, *args)
    assert "aten::threshold_backward" not in {e.name for e in prof.events()}, "not fused"
    return grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("slice_ensemble", [True, False], ids=["diif", "without_se"])
@pytest.mark.parametrize("shape,case", [("narrow", c) for c in CASES]
                         + [("no_coarse_layers_deep_fine", "x2.3"), ("wide", "x2_by_x3")])
def test_emulated_fused_diif_backward(emulated, shape, case, slice_ensemble, dtype):
    """The fused backward equals the CPU operator's, every gradient, on the file's cases
    (pixels in random order with repeats on the non-integer one), other layer counts and a
    decoder 48-64 wide over more rows than a tile."""
    slicing = geometry.SLICINGS[list(CASES).index(case) % len(geometry.SLICINGS)]
    args = diif_backward_args(shape, CASES[case], dtype, slice_ensemble, slicing,
                              shuffle=case == "x2.3")
    out = torch.ops.implicit_kernels.diif_decode(*args)
    grad_out = torch.randn_like(out)
    # The question a decode asks before keeping a record says so too; the CPU operator
    # never fuses.
    assert emulated.diif_decode_backward_is_fused(*args)
    assert not torch.ops.implicit_kernels.diif_decode_backward_is_fused(*args)
    assert_same_results(emulated_backward_fused(emulated, grad_out, args),
                        torch.ops.implicit_kernels.diif_decode_backward(grad_out, *args),
                        "diif_decode_backward")


def test_emulated_diif_backward_wider_than_tiles_keeps_the_stages(emulated):
    """A layer wider than the tiles (256) keeps the unfused backward (and says so, so that
    its decodes keep their record), with the same gradients as the CPU operator."""
    args = diif_backward_args("wider_than_tiles", CASES["x2.3"], torch.float64, True)
    assert not emulated.diif_decode_backward_is_fused(*args)  # so the decode keeps a record
    grad_out = torch.randn_like(torch.ops.implicit_kernels.diif_decode(*args))
    with torch.profiler.profile() as prof:
        got = emulated.diif_decode_backward(grad_out, *args)
    assert "aten::threshold_backward" in {e.name for e in prof.events()}
    assert_same_results(got, torch.ops.implicit_kernels.diif_decode_backward(grad_out, *args),
                        "diif_decode_backward")


#: Tolerances of the half types' fused backward against the fp32 CPU one on the rounded
#: inputs, relative to each gradient's largest magnitude: the kernels round every
#: activation and every layer's gradient to the half type (products accumulate in fp32),
#: so errors are a few of the type's rounding steps; bias gradients sum the rounded
#: gradients of every row (measured: fp16 below 3e-3, bf16 below 3e-2).
BACKWARD_HALF_TOLERANCES = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("slice_ensemble", [True, False], ids=["diif", "without_se"])
@pytest.mark.parametrize("shape,case", [("narrow", "x2.3"), ("no_coarse_layers_deep_fine", "x2"),
                                        ("wide", "x2_by_x3")])
def test_emulated_fused_diif_backward_half_types(emulated, shape, case, slice_ensemble, dtype):
    """fp16 and bf16 (tensor-core products) against the fp32 CPU backward on the same,
    rounded inputs, with every ReLU's input kept away from 0 (``active``): rounding that
    flipped a ReLU would change a gradient by a whole term, not a rounding error."""
    args = diif_backward_args(shape, CASES[case], dtype, slice_ensemble, shuffle=case == "x2.3",
                              active=True)
    ref = cast(args, torch.float32)
    grad_out = torch.randn_like(torch.ops.implicit_kernels.diif_decode(*ref)).to(dtype)
    got = emulated_backward_fused(emulated, grad_out, args)
    expected = torch.ops.implicit_kernels.diif_decode_backward(grad_out.float(), *ref)
    tol = BACKWARD_HALF_TOLERANCES[dtype]
    for i, (g, e) in enumerate(zip(flat(got), flat(expected), strict=True)):
        assert g.dtype == dtype, f"gradient {i}: dtype {g.dtype}"
        scale = max(1.0, float(e.abs().max()))
        torch.testing.assert_close(g.float(), e, rtol=tol, atol=tol * scale,
                                   msg=lambda m, i=i: f"gradient {i}: {m}")


def test_emulated_fused_diif_gradcheck(emulated):
    """float64 gradcheck of the emulated forward with the fused backward as its gradient,
    on a tiny decoder at a non-integer scale with the slice ensemble."""
    size, n_coarse, n_fine = (3, 5), 1, 2
    corner_proj = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    tensors = [corner_proj, torch.randn(4, 6, dtype=torch.float64),
               torch.randn(4, dtype=torch.float64)]
    tensors += [torch.randn(4, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    tensors += [torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64),
                torch.randn(4, dtype=torch.float64)]
    tensors += [torch.randn(4, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64),
                torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    pixels = geometry.grid_pixels(size, 1).contiguous()

    def op_args(t):
        i = 3 + 2 * n_coarse
        return (*t[:3], list(t[3:3 + n_coarse]), list(t[3 + n_coarse:i]), *t[i:i + 3],
                list(t[i + 3:i + 3 + n_fine]), list(t[i + 3 + n_fine:]), pixels, *size, "linear",
                True)

    class Decode(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *t):
            ctx.save_for_backward(*t)
            return emulated.diif_decode(*op_args(t))

        @staticmethod
        def backward(ctx, grad):
            return tuple(flat(emulated.diif_decode_backward(grad.contiguous(),
                                                            *op_args(ctx.saved_tensors))))

    leaves = [t.requires_grad_() for t in tensors]
    emulated_backward_fused(emulated, torch.randn(1, 15, 3, dtype=torch.float64), op_args(leaves))
    assert torch.autograd.gradcheck(Decode.apply, leaves, eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=True)
