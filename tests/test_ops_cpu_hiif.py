"""The fused HIIF operators on CPU (the "cpu" backend): another depth and "auto", the
hierarchical codes bit for bit, opcheck of each operator, input checks, refused coordinate
gradients (values, gradients, chunking, gradcheck and compile are the conformance
suite's, tests/test_conformance.py)."""
import pytest
import torch
from helpers import assert_matches
from test_hiif import hiif_params, inputs, random_queries

import implicit_kernels.functional as F
from implicit_kernels import _extension, geometry
from implicit_kernels.reference.hiif import hierarchical_code, local_coord

pytestmark = pytest.mark.skipif(not _extension.available(), reason="; ".join(_extension.reasons()))

ops = torch.ops.implicit_kernels

# Output sizes for the 6×7 feature map of test_hiif.inputs.
SIZES = {"x1": (6, 7), "x2.7": (16, 19), "x3_by_x5": (18, 35), "x3_ties": (18, 21),
         "x8": (48, 56)}


def test_hiif_other_depth_and_auto():
    feat, inp = inputs()
    params = hiif_params(levels=3, c_z=16, head_dim=4, hidden=24)
    ref = F.hiif_decode(feat, inp, (13, 15), params, backend="reference")
    assert_matches(F.hiif_decode(feat, inp, (13, 15), params, backend="cpu"), ref)
    from implicit_kernels import backends
    assert backends.auto_choice("hiif", feat) == "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hiif_codes_bit_exact(dtype):
    """Every level's bits equal the reference's, on random queries and on the exact ties
    of odd integer scales (×3, ×5) and dyadic ones (×2, ×4)."""
    h, w, levels = 6, 7, 6
    coords = [torch.rand(500, 2, dtype=dtype) * 2 - 1]
    for scale in (2, 3, 4, 5):
        coords.append(geometry.make_coord((h * scale, w * scale), dtype=dtype).reshape(-1, 2))
    coord = torch.cat(coords)
    rel = geometry.ensemble_neighbours(coord, (h, w))[0][1] * 0.5
    local = local_coord(rel, (h, w))
    expected = torch.stack([hierarchical_code(local, level) for level in range(levels)], dim=-2)
    assert torch.equal(ops.hiif_codes(coord, h, w, levels), expected)


def _op_samples():
    """Arguments of every operator, as the backend builds them on a small decode."""
    from implicit_kernels.ops.hiif import _features, prepare_hiif
    feat, _ = inputs(b=2, c=4, h=3, w=4)
    params = hiif_params(c_enc=4, c_z=8, head_dim=4, hidden=8, levels=3)
    p = prepare_hiif(feat, F._hiif_params(params, feat))
    coord, cell = random_queries(2, 10)
    level0 = p["level0"]
    block = p["attention"][0]
    x = _features(coord, cell, p, [], 0, 10, centres=(False,)).detach()
    mat = ops.hiif_attention_stats(x, *block["qkv"], *block["kln"], *block["vln"], block["heads"])
    levels = p["levels"][1:]
    lists = [[blk[key][i] for blk in levels] for key in ("norm", "fc1", "fc2") for i in (0, 1)]
    return {
        "hiif_level0": (level0["maps"], level0["row_sums"], level0["w_extra"], level0["bias"],
                        *p["levels"][0]["fc2"], coord, cell, level0["channels"], False),
        "hiif_attention_stats": (x, *block["qkv"], *block["kln"], *block["vln"], block["heads"]),
        "hiif_attention_apply": (x, mat / 10, *block["qkv"], *block["proj1"], *block["proj2"]),
        "hiif_levels": (x, coord, *lists, 3, 4, False),
        "hiif_levels_train": (x, coord, *lists, 3, 4, False),
        "hiif_attention_stats_train": (x, *block["qkv"], *block["kln"], *block["vln"],
                                       block["heads"]),
        "hiif_attention_apply_train": (x, mat / 10, *block["qkv"], *block["proj1"],
                                       *block["proj2"]),
    }


def _leaves(args, skip=()):
    """Detached copies; floating tensors (but those at ``skip``) require grad."""
    out = []
    for i, a in enumerate(args):
        if isinstance(a, list):
            out.append([t.detach().clone().requires_grad_() for t in a])
        elif isinstance(a, torch.Tensor) and a.is_floating_point():
            out.append(a.detach().clone().requires_grad_(i not in skip))
        else:
            out.append(a)
    return tuple(out)


def _non_contiguous(t):
    """The same values in a transposed (dense, not contiguous) layout."""
    if not isinstance(t, torch.Tensor) or t.dim() < 2:
        return t
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


# Positions (coord, cell) are inputs the operators do not differentiate.
POSITIONS = {"hiif_level0": (6, 7), "hiif_levels": (1,), "hiif_levels_train": (1,)}


@pytest.mark.parametrize("name", ["hiif_level0", "hiif_attention_stats", "hiif_attention_apply",
                                  "hiif_levels", "hiif_levels_train",
                                  "hiif_attention_stats_train", "hiif_attention_apply_train"])
def test_hiif_opcheck(name):
    args = _op_samples()[name]
    for sample in (args, tuple(_non_contiguous(a) for a in args)):
        torch.library.opcheck(getattr(ops, name), _leaves(sample, POSITIONS.get(name, ())))
    torch.library.opcheck(ops.hiif_codes, (torch.rand(5, 3, 2) * 2 - 1, 3, 4, 6))


def _differentiable(args):
    """The tensors of ``_leaves(args)`` that require grad, lists flattened."""
    flat = [t for a in args for t in (a if isinstance(a, list) else [a])]
    return [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]


@pytest.mark.parametrize("name,records", [("hiif_levels", 3), ("hiif_attention_stats", 2),
                                          ("hiif_attention_apply", 2)])
def test_hiif_train_matches_plain(name, records):
    """A ``_train`` operator (the cpu backend's with gradients, whose backward reads the
    activations it kept) gives the plain operator's values and gradients; its
    ``_backward_saved`` refuses a record of another length or shape."""
    args = _op_samples()[name]
    skip = POSITIONS.get(name, ())
    plain, kept = _leaves(args, skip), _leaves(args, skip)
    out = getattr(ops, name)(*plain)
    out_kept, saved = getattr(ops, name + "_train")(*kept)
    assert_matches(out_kept, out)
    assert len(saved) == records
    grad = torch.randn_like(out)
    expected = torch.autograd.grad(out, _differentiable(plain), grad)
    got = torch.autograd.grad(out_kept, _differentiable(kept), grad)
    assert len(got) == len(expected)
    for g, want in zip(got, expected):
        assert_matches(g, want)
    backward_saved = getattr(ops, name + "_backward_saved")
    with pytest.raises(RuntimeError, match="saved must hold"):
        backward_saved(grad, saved[1:], *args)
    with pytest.raises(RuntimeError, match="saved must have shape"):
        backward_saved(grad, [saved[0][1:], *saved[1:]], *args)


def test_hiif_ops_reject_bad_input():
    args = _op_samples()
    level0 = list(args["hiif_level0"])
    cases = [
        (ops.hiif_level0, level0, 0, level0[0][..., :2, :], r"maps must be \(B, H, W, 4"),
        (ops.hiif_level0, level0, 1, level0[1].double(), "row_sums must have dtype"),
        (ops.hiif_level0, level0, 2, level0[2].t(), r"w_extra must have shape \[8, 4\]"),
        (ops.hiif_level0, level0, 6, level0[6][:1], r"coord must be \(B, m, 2\) with B = 2"),
        (ops.hiif_level0, level0, 7, level0[7][:, :3], "cell must have coord's shape"),
        (ops.hiif_level0, level0, 8, 0, r"channels must be in \[1, 2\^28\)"),
        (ops.hiif_attention_stats, list(args["hiif_attention_stats"]), 7, 3,
         r"heads \(3\) must divide C = 8"),
        (ops.hiif_attention_stats, list(args["hiif_attention_stats"]), 3, torch.ones(3),
         r"kln weight and bias must be \(4,\)"),
        (ops.hiif_attention_apply, list(args["hiif_attention_apply"]), 1,
         args["hiif_attention_apply"][1][:1], r"mat must be \(B, heads, d, d\)"),
        (ops.hiif_attention_apply, list(args["hiif_attention_apply"]), 4,
         args["hiif_attention_apply"][4][:, :5], r"proj1 weight must be \(out, 8\)"),
        (ops.hiif_levels, list(args["hiif_levels"]), 1, args["hiif_levels"][1][:, :4],
         "coord must have x's 10 queries"),
        (ops.hiif_levels, list(args["hiif_levels"]), 3, [], "one entry per level"),
        (ops.hiif_levels, list(args["hiif_levels"]), 8, 0, r"feature map size \(0, 4\)"),
        (ops.hiif_codes, [torch.zeros(4, 2), 3, 4, 6], 0, torch.zeros(4, 3),
         r"coord must be \(\.\.\., 2\)"),
        (ops.hiif_codes, [torch.zeros(4, 2), 3, 4, 6], 0, torch.zeros(4, 2, dtype=torch.half),
         "float32 or float64"),
    ]
    for op, base, index, value, match in cases:
        bad = list(base)
        bad[index] = value
        with pytest.raises(RuntimeError, match=match):
            op(*bad)


def test_hiif_refuses_coordinate_gradients():
    """The fused ops do not differentiate coord/cell: asking for it is an error, never a
    silently missing gradient."""
    feat, inp = inputs(b=1, c=2, h=3, w=3)
    params = hiif_params(c_enc=2, c_z=8, head_dim=4, hidden=8, levels=3)
    coord, cell = random_queries(1, 5)
    with pytest.raises(RuntimeError, match="does not differentiate coord or cell"):
        F.hiif_decode(feat, inp, None, params, coord=coord.requires_grad_(), cell=cell,
                      backend="cpu")


def test_hiif_cpu_reruns_give_the_same_bits():
    """With two threads, the per-thread attention sums and parameter gradients cover fixed
    blocks of tiles: reruns give identical outputs and gradients (a shared tile queue gave
    scheduling-dependent last bits)."""
    feat, inp = inputs(b=2, h=12, w=13)
    params = {k: v.requires_grad_() for k, v in hiif_params(c_z=64, head_dim=16,
                                                            hidden=64).items()}
    feat.requires_grad_()
    leaves = [feat, *params.values()]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(4):
            out = F.hiif_decode(feat, inp, (60, 65), params, backend="cpu")
            runs.append([out.detach()] + list(torch.autograd.grad(out.square().sum(), leaves)))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


@pytest.fixture
def one_thread():
    """One thread: the operators' attention sums are then added in a fixed order, so two
    decodes of the same queries agree bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("level_codes,dtype", [("project", torch.float32),
                                               ("public", torch.float32),
                                               ("project", torch.float64)])
def test_hiif_grid_hook_equals_whole_grid_queries(one_thread, level_codes, dtype):
    """The grid hook (positions made per chunk, results written channels-first) gives the
    query decode of the whole grid's positions bit for bit, over chunks that end inside a
    row (the old path of grid mode)."""
    feat, inp = inputs(dtype=dtype)
    params = hiif_params(dtype=dtype)
    size = SIZES["x3_by_x5"]
    coord = geometry.make_coord(size, dtype=dtype, centres=level_codes).reshape(1, -1, 2)
    coord = coord.expand(feat.shape[0], -1, -1)
    cell = torch.tensor([2 / size[0], 2 / size[1]], dtype=dtype).expand_as(coord)
    for chunk_size in (None, 2 * 101):
        kw = dict(level_codes=level_codes, backend="cpu", chunk_size=chunk_size or 1 << 14)
        queries = F.hiif_decode(feat, inp, None, params, coord=coord, cell=cell, **kw)
        grid = F.hiif_decode(feat, inp, size, params, **kw)
        assert torch.equal(grid, queries.transpose(1, 2).reshape(grid.shape))


@pytest.mark.parametrize("centres", geometry.CENTRES)
def test_grid_positions_are_the_whole_grids(centres):
    size = (7, 11)
    whole = geometry.make_coord(size, centres=centres).reshape(-1, 2)
    coord, cell = geometry.grid_positions(20, 53, size, 2, centres=centres)
    assert torch.equal(coord, whole[20:53].expand(2, -1, -1))
    assert torch.equal(cell, torch.tensor([2 / 7, 2 / 11]).expand(2, 33, 2))


def test_hiif_prepared_maps_are_the_torch_maps_stacked():
    from implicit_kernels.ops.hiif import prepare_hiif
    from implicit_kernels.torch_impl.hiif import prepare_hiif as torch_prepare
    feat, _ = inputs()
    params = F._hiif_params(hiif_params(), feat)
    maps = torch_prepare(feat, params)["level0"]["maps"]
    assert torch.equal(prepare_hiif(feat, params)["level0"]["maps"],
                       torch.stack(maps, dim=-1).permute(0, 2, 3, 4, 1))


def test_hiif_grid_decode_makes_no_whole_grid_tensor():
    """Grid mode with global attention holds nothing of the grid's size but the output:
    no whole-grid positions, no queries-last result or channels-first copy (every tensor
    an operator makes, counted by a dispatch mode)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    self.sizes.append((storage.nbytes(), storage.data_ptr()))
            return out

    feat, inp = inputs()
    params = hiif_params()
    size = (96, 112)  # ×16: the grid's positions are larger than the prepared maps
    with torch.no_grad(), Largest() as mode:
        out = F.hiif_decode(feat, inp, size, params, backend="cpu", chunk_size=256)
    grid_positions = feat.shape[0] * size[0] * size[1] * 2 * feat.element_size()
    large = {ptr for nbytes, ptr in mode.sizes if nbytes >= grid_positions}
    assert large == {out.untyped_storage().data_ptr()}


@pytest.mark.parametrize("chunk_size", [1 << 14, 70])
def test_hiif_decode_without_grad_reuses_one_buffer_with_the_same_bits(chunk_size):
    """Without autograd the cpu decode writes every chunk's level 0 and attention blocks into
    one buffer (hiif_level0_out, hiif_attention_apply_; batch 2 and a short last chunk):
    the same bits as the operators that return new tensors."""
    feat, inp = inputs(b=2, h=5, w=6)
    params = hiif_params(c_z=32, head_dim=8, hidden=32)
    with torch.no_grad():
        in_place = F.hiif_decode(feat, inp, (17, 13), params, backend="cpu",
                                 chunk_size=chunk_size)
    functional = F.hiif_decode(feat, inp, (17, 13), params, backend="cpu", chunk_size=chunk_size)
    assert torch.equal(in_place, functional)


def test_hiif_in_place_operators_opcheck_and_refuse_bad_outputs():
    args = _op_samples()
    level0, apply = args["hiif_level0"], args["hiif_attention_apply"]
    expected = ops.hiif_level0(*level0)
    out = torch.empty_like(expected)
    torch.library.opcheck(ops.hiif_level0_out, (*level0, out))
    ops.hiif_level0_out(*level0, out)
    assert torch.equal(out, expected)
    x = apply[0].clone()
    torch.library.opcheck(ops.hiif_attention_apply_, (x.clone(), *apply[1:]))
    ops.hiif_attention_apply_(x, *apply[1:])
    assert torch.equal(x, ops.hiif_attention_apply(*apply))
    with pytest.raises(RuntimeError, match="out must be contiguous with shape"):
        ops.hiif_level0_out(*level0, out[:, :-1])
    with pytest.raises(RuntimeError, match="out must be"):
        ops.hiif_level0_out(*level0, out.double())
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        ops.hiif_attention_apply_(x.transpose(0, 1), *apply[1:])


@pytest.mark.parametrize("size", ["x2.7", "x3_by_x5"])
def test_hiif_tile_kernel_sizes_match_reference(size):
    """HIIF calls of at least two tiles of rows (2 images x 304 or 630 queries, the C = 32
    decoder's widths multiples of 16) run their fp32 layers on the tile GEMM
    (csrc/cpu/tile_gemm.h); values and every gradient equal the reference's at a
    non-integer and an asymmetric scale."""
    torch.manual_seed(7)
    feat, inp = inputs()
    params = hiif_params()
    grad_out = None
    results = {}
    for backend in ("reference", "cpu"):
        f = feat.clone().requires_grad_()
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        out = F.hiif_decode(f, inp, SIZES[size], p, backend=backend)
        if grad_out is None:
            grad_out = torch.randn_like(out)
        grads = torch.autograd.grad(out, [f, *p.values()], grad_out)
        results[backend] = (out, grads)
    assert results["cpu"][0].shape[0] * SIZES[size][0] * SIZES[size][1] >= 512
    assert_matches(results["cpu"][0], results["reference"][0])
    for name, got, want in zip(["feat", *params], results["cpu"][1], results["reference"][1]):
        assert_matches(got, want, name)
