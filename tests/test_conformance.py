"""One conformance suite for every registered backend against the ``reference`` backend.

The axes come from the registry (``implicit_kernels.backends``): every registered backend
but the oracle, every decoder and variant its modules implement, the dtypes it declares;
a backend that cannot run here (no GPU, no extension, no Triton) is skipped with the
registry's reasons.  Registering a backend gives it every check below:

* ``test_values_and_gradients``: backend × decoder × mode (grid, query) × dtype × scale
  kind: the forward values and EVERY gradient (features, LR image where read, each
  parameter), the backend chunked (several calls, cut mid-row and mid-slice) against the
  reference unchunked; fp32/fp64 within ``helpers.TOLERANCES``; fp16/bf16 (CUDA only)
  against the fp32 reference with ``helpers.assert_half_precision_close``;
* ``test_chunked_equals_unchunked`` (the reference included);
* ``test_gradcheck_float64`` where the backend takes float64;
* ``test_opcheck``: ``torch.library.opcheck`` of each ``implicit_kernels`` operator a
  public call dispatches, forward and backward (recorded by a dispatch mode, so the test
  needs no operator names), as called and with non-contiguous tensors;
* ``test_compiles_fullgraph``: ``torch.compile(fullgraph=True)``, values and gradients;
* ``test_poisoned_outputs_are_written``: with ``IK_POISON=1`` (tests/conftest.py) every
  operator output starts as NaN; no NaN reaches any operator's output or gradient;
* ``test_empty_queries``.

The ``triton`` backend on CPU needs ``TRITON_INTERPRET=1`` before triton is imported:
tests/test_triton_interpreter.py runs this file in its own process with it set, and then
only the backends that the variable makes available run (those the main process skips).
Half precision and the large scale run on a GPU only (the interpreter's bf16 ``tl.dot``
is not the GPU's, and it is too slow for large grids): skipped as "needs a CUDA GPU".
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field, replace

import pytest
import torch
from helpers import (
    assert_compiles_fullgraph,
    assert_half_precision_close,
    assert_matches,
    conv_params,
    hiif_params,
    linear,
    mlp_params,
)
from torch.utils._python_dispatch import TorchDispatchMode

import implicit_kernels.functional as F
from implicit_kernels import backends, geometry

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
GPU_ONLY = "needs a CUDA GPU"

#: Decoders and variants, as the registry names them (``backends.DECODERS`` + ``VARIANTS``).
DECODERS = backends.DECODERS + tuple(backends.VARIANTS)
#: Decoders that read the LR image (the bilinear skip).
READS_IMAGE = {"lte", "dlte", "hiif", "hiif_public_codes"}
#: Decoders of output pixel indices (query mode = ``pixels``; they take slicing).
PIXEL_DECODERS = {"diif", "diif_without_ensemble", "dlte"}
MODES = ("grid", "query")
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HALF = (torch.float16, torch.bfloat16)

#: The LR feature map of every case (B = 2).
LR = (4, 6)
#: Output sizes for the LR map by scale kind.  ``integer``: ×3 (odd, so output pixel
#: centres fall on LR centres: LIIF/LTE nearest-code ties); ``non_integer``: ×2.75 by
#: ×2.67; ``asymmetric``: ×3 by ×5; ``edge_ties``: ×1.5, output centres on LR pixel
#: edges (nearest-code and DIIF group ties), and in query mode every LR centre, LR pixel
#: border and corner of [-1, 1]²; ``unit``: ×1; ``large``: ×12, from a 2×3 map (GPU only
#: for triton).
KINDS = {"integer": (12, 18), "non_integer": (11, 16), "asymmetric": (12, 30),
         "edge_ties": (6, 9), "unit": (4, 6), "large": (24, 36)}
#: The LR map of a kind, where not ``LR``.
KIND_LR = {"large": (2, 3)}
#: Query-mode queries per image.
QUERIES = 64


#: Backends that run on CPU only under TRITON_INTERPRET=1 (set before triton is imported):
#: tests/test_triton_interpreter.py runs this file for them in a process of their own,
#: which runs nothing else (the main process runs the rest, and skips these without a GPU).
INTERPRETER_BACKENDS = ("triton",)
#: Scale kinds left to a GPU under the interpreter (its cost is per program instance).
INTERPRETER_GPU_ONLY_KINDS = ("unit", "large")
BACKENDS = [name for name in backends.BACKENDS if name != "reference"
            and (not INTERPRETED or name in INTERPRETER_BACKENDS)]


def device_of(backend: str, dtype=torch.float32) -> str:
    """The device a backend's cases run on: its registered device type, CPU for a backend
    that takes any device (the reference runs on the same device), CUDA for half
    precision."""
    dev = backends.BACKENDS[backend].device_type
    if dtype in HALF:
        return "cuda"
    return dev or "cpu"


def dtypes_of(backend: str):
    return backends.BACKENDS[backend].dtypes or ALL_DTYPES


def skip_unless_runs(backend, decoder, dtype=torch.float32, kind="non_integer"):
    """Skips with the registry's reasons where ``backend`` cannot run ``decoder`` here."""
    device = device_of(backend, dtype)
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(GPU_ONLY)
    if kind in INTERPRETER_GPU_ONLY_KINDS and INTERPRETED:
        pytest.skip(f"{kind} grid under the interpreter (seconds per case): {GPU_ONLY}")
    probe = torch.zeros(1, 1, 1, 1, dtype=dtype, device=device)
    reasons = backends.unavailable_reasons(backend, decoder, probe)
    if reasons:
        pytest.skip("; ".join(reasons))


def seed_of(*parts) -> int:
    """A seed per case: with one seed for all, a ReLU pre-activation of some case sits
    within rounding of 0, where the reference's gradient is a coin flip."""
    return zlib.crc32(repr(parts).encode())


# ------------------------------------------------------------------------------------------
# Problems: leaves and a decode by backend
# ------------------------------------------------------------------------------------------

def params_of(decoder, c, hidden, dtype, gen):
    """Narrow parameters at the papers' depths (the fused kernels' depth): widths are read
    from the tensors.  ``hidden`` 12 stands for 16 with HIIF's operator-check widths."""
    hidden, hiif_hidden = (16, hidden) if hidden == 12 else (hidden, hidden)
    fine = mlp_params("fine.layers.", [hidden + 2, hidden, hidden, 3], dtype=dtype, gen=gen)
    if decoder == "liif":
        return mlp_params("imnet.layers.", [9 * c + 4] + [hidden] * 4 + [3], dtype=dtype, gen=gen)
    if decoder == "lte":
        channels = hidden // 2
        return {**conv_params("coef", channels, c, dtype=dtype, gen=gen),
                **conv_params("freq", channels, c, dtype=dtype, gen=gen),
                "phase.weight": linear(channels // 2, 2, dtype, gen)[0],
                **mlp_params("imnet.layers.", [channels] + [hidden] * 3 + [3], dtype=dtype,
                             gen=gen)}
    if decoder in ("diif", "diif_without_ensemble"):
        code = (16 if decoder == "diif" else 9) * c
        return {**mlp_params("coarse.layers.", [code + 6, hidden, hidden], dtype=dtype, gen=gen),
                **fine}
    if decoder == "dlte":
        channels = max(2, hidden // 4)
        return {**conv_params("coef", channels, c, dtype=dtype, gen=gen),
                **conv_params("freq", channels, c, dtype=dtype, gen=gen),
                "phase.weight": linear(2 * channels, 2, dtype, gen)[0],
                **mlp_params("coarse.layers.", [4 * channels, hidden, hidden], dtype=dtype,
                             gen=gen),
                **fine}
    # HIIF: C = 32 in 4 heads of 8, hidden 32, the paper's 6 levels (narrower heads make
    # fp32 gradients too ill-conditioned for 1e-5 at ×8); gradcheck: C = 8, 2 heads of 4.
    # Operator checks (``hidden`` 12): C = 16 in 4 heads of 4, hidden 16, 3 levels (opcheck
    # compares fp32 gradients at 1e-5: wider ones round more).
    seed = int(torch.randint(0, 2 ** 30, (1,), generator=gen))
    if hiif_hidden >= 16:
        return hiif_params(c_enc=c, c_z=32, head_dim=8, hidden=32, dtype=dtype, seed=seed)
    if hiif_hidden >= 12:
        return hiif_params(c_enc=c, c_z=16, head_dim=4, hidden=16, levels=3, dtype=dtype,
                           seed=seed)
    return hiif_params(c_enc=c, c_z=8, head_dim=4, hidden=8, levels=3, dtype=dtype, seed=seed)


@dataclass
class Problem:
    """One decode: the leaves requiring grad (``feat``, ``inp`` where read, each parameter
    by its state-dict name), the output size, and the query arguments."""
    decoder: str
    mode: str
    leaves: dict
    size: tuple | None
    query: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    @property
    def queries(self) -> int:
        """Output queries over the batch."""
        if self.query:
            return next(iter(self.query.values())).shape[:2].numel()
        return self.leaves["feat"].shape[0] * self.size[0] * self.size[1]

    def decode(self, backend, leaves=None, chunk_size=None):
        """``F``'s decode of this problem on ``leaves`` (default: its own)."""
        t = self.leaves if leaves is None else leaves
        params = {k: v for k, v in t.items() if k not in ("feat", "inp")}
        kw = dict(self.query, **self.options, backend=backend)
        # Unchunked: one call (DIIF's default, "auto", may be the backend's own choice).
        kw["chunk_size"] = 10 ** 9 if chunk_size is None else chunk_size
        d = self.decoder
        if d == "liif":
            return F.liif_decode(t["feat"], self.size, params, **kw)
        if d == "lte":
            return F.lte_decode(t["feat"], t["inp"], self.size, params, **kw)
        if d in ("diif", "diif_without_ensemble"):
            return F.diif_decode(t["feat"], self.size, params,
                                 slice_ensemble=d == "diif", **kw)
        if d == "dlte":
            return F.dlte_decode(t["feat"], t["inp"], self.size, params, **kw)
        return F.hiif_decode(t["feat"], t["inp"], self.size, params,
                             level_codes="public" if d == "hiif_public_codes" else "project",
                             **kw)

    def chunk(self) -> int:
        """A chunk size that cuts the call into at least three calls (over the batch)."""
        return max(7, self.queries // 3 + 1)


def problem(decoder, mode, kind="non_integer", dtype=torch.float32, device="cpu", *, lr=LR,
            b=None, c=4, hidden=16, queries=QUERIES, seed=0) -> Problem:
    b = b or 2
    gen = torch.Generator().manual_seed(seed)
    if lr == LR:
        lr, out = KIND_LR.get(kind, LR), KINDS[kind]
    else:
        out = tuple(n * 5 // 2 for n in lr)
    h, w = lr
    feat = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    leaves = {"feat": feat}
    if decoder in READS_IMAGE:
        leaves["inp"] = torch.rand(b, 3, h, w, generator=gen, dtype=torch.float64) * 2 - 1
    leaves = {k: v.to(dtype) for k, v in leaves.items()}
    leaves.update(params_of(decoder, c, hidden, dtype, gen))
    leaves = {k: v.to(device).requires_grad_() for k, v in leaves.items()}
    kinds = list(KINDS)
    options = {}
    if decoder in PIXEL_DECODERS:
        options["slicing"] = geometry.SLICINGS[kinds.index(kind) % len(geometry.SLICINGS)]
    if decoder.startswith("hiif"):
        options["normalizer"] = ("n", "sqrt_n")[kinds.index(kind) % 2]
    if mode == "grid":
        return Problem(decoder, mode, leaves, out, {}, options)
    positions = dtype if dtype not in HALF else torch.float32
    if decoder in PIXEL_DECODERS:
        pixels = torch.stack([torch.randint(0, n, (b, queries), generator=gen) for n in out], -1)
        return Problem(decoder, mode, leaves, out, {"pixels": pixels.to(device)}, options)
    # The kind's pixel centres (as the public code rounds them for its level codes), in
    # a random order per image; for edge ties also every LR centre, LR border and corner.
    centres = "public" if decoder == "hiif_public_codes" else "project"
    grid = geometry.make_coord(out, dtype=torch.float64, centres=centres).reshape(-1, 2)
    picks = torch.stack([torch.randperm(len(grid), generator=gen)[:queries] for _ in range(b)])
    if 0 < picks.shape[1] < queries:  # fewer pixels than queries: some twice
        picks = picks.repeat(1, -(-queries // picks.shape[1]))[:, :queries]
    coord = grid[picks]
    cell = torch.tensor([2 / out[0], 2 / out[1]], dtype=torch.float64).expand(b, queries, 2)
    if kind == "edge_ties":
        ys, xs = (geometry.axis_centres(n, dtype=torch.float64) for n in lr)
        borders = torch.stack(torch.meshgrid(torch.linspace(-1, 1, h + 1, dtype=torch.float64),
                                             torch.linspace(-1, 1, w + 1, dtype=torch.float64),
                                             indexing="ij"), -1).reshape(-1, 2)
        special = torch.cat([torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]],
                                          dtype=torch.float64),
                             torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2),
                             borders])[:queries]
        coord = coord.clone()
        coord[:, :len(special)] = special
        cell = (torch.rand(b, queries, 2, generator=gen, dtype=torch.float64) * 0.5 + 0.01)
    query = {"coord": coord.to(positions).to(device), "cell": cell.to(positions).to(device)}
    return Problem(decoder, mode, leaves, None, query, options)


def values_and_grads(p: Problem, backend, upstream, chunk_size=None):
    out = p.decode(backend, chunk_size=chunk_size)
    return out.detach(), torch.autograd.grad(out, list(p.leaves.values()), upstream)


def assert_equals_reference(p: Problem, backend, chunk_size):
    """Values and the gradient of every leaf: ``backend`` chunked, reference unchunked."""
    upstream_shape = p.decode("reference").shape
    upstream = torch.randn(upstream_shape, generator=torch.Generator().manual_seed(7),
                           dtype=torch.float64).to(p.leaves["feat"])
    got = values_and_grads(p, backend, upstream, chunk_size)
    ref = values_and_grads(p, "reference", upstream)
    assert_matches(got[0], ref[0])
    for key, g, g_ref in zip(p.leaves, got[1], ref[1]):
        assert_matches(g, g_ref, f"grad of {key}")


# ------------------------------------------------------------------------------------------
# Values and gradients
# ------------------------------------------------------------------------------------------

#: Half-precision output tolerance against the fp32 reference, relative to its largest
#: magnitude (tests/test_ops_cuda*.py, tests/test_triton_*.py): 1e-2, HIIF on "cuda" 2e-2.
HALF_OUT_TOL = {("cuda", "hiif"): 2e-2, ("cuda", "hiif_public_codes"): 2e-2}


#: Cases whose fp32 gradients are too ill-conditioned for 1e-5 against the fp32 reference:
#: HIIF's parameter and feature gradients on the large grid are sums over its ~1,700
#: queries through LayerNorms and the attention sums, and round (in the reference as in
#: any backend) by up to 1e-4 of their scale.  They run in float64 (1e-10).
FP32_ILL_CONDITIONED = {("large", torch.float32, d) for d in ("hiif", "hiif_public_codes")}


def _value_cases():
    for backend in BACKENDS:
        for dtype in dtypes_of(backend):
            for decoder in DECODERS:
                for mode in MODES:
                    # Half precision: one scale kind (the fp32 cases cover the geometry).
                    for kind in KINDS if dtype not in HALF else ("non_integer",):
                        if (kind, dtype, decoder) in FP32_ILL_CONDITIONED:
                            continue
                        slicings = (geometry.SLICINGS if decoder in PIXEL_DECODERS
                                    and mode == "grid" and dtype not in HALF else (None,))
                        for slicing in slicings:
                            yield pytest.param(
                                backend, decoder, mode, dtype, kind, slicing,
                                id=f"{backend}-{decoder}-{mode}-{str(dtype)[6:]}-{kind}"
                                   + (f"-{slicing}" if slicing else ""))


@pytest.mark.parametrize("backend,decoder,mode,dtype,kind,slicing", list(_value_cases()))
def test_values_and_gradients(backend, decoder, mode, dtype, kind, slicing):
    skip_unless_runs(backend, decoder, dtype, kind)
    device = device_of(backend, dtype)
    seed = seed_of(backend, decoder, mode, dtype, kind, slicing)
    if dtype in HALF:
        p = problem(decoder, mode, kind, torch.float32, device, seed=seed)
        # Positions exactly representable in dtype, so that the fp32 reference and the
        # half-precision decode see the same queries (a rounded position can pick another
        # nearest code or hierarchy bit); they enter as leaves that take no gradient.
        positions = {k: v.to(dtype).float() for k, v in p.query.items() if k != "pixels"}

        def decode(t, name):
            t = dict(t)
            query = {k: t.pop(k) for k in positions} or p.query
            return replace(p, query=query).decode(name, t, chunk_size=p.chunk())

        upstream = torch.randn(p.decode("reference").shape, device=device)
        assert_half_precision_close(decode, {**p.leaves, **positions}, upstream, dtype,
                                    HALF_OUT_TOL.get((backend, decoder), 1e-2), backend=backend)
        return
    p = problem(decoder, mode, kind, dtype, device, seed=seed)
    if slicing is not None:
        p.options["slicing"] = slicing
    assert_equals_reference(p, backend, p.chunk())


def _all_backend_cases(*modes, with_reference=False):
    names = (["reference"] if with_reference and not INTERPRETED else []) + BACKENDS
    return [pytest.param(backend, decoder, mode, id=f"{backend}-{decoder}-{mode}")
            for backend in names for decoder in DECODERS for mode in modes]


def assert_chunks_agree(backend, decoder, device, chunked, full):
    """Chunked == unchunked as the backend guarantees it: bit for bit for the fused
    LIIF/LTE on CPU and Triton's on CUDA (rows decode independently of their chunk);
    within 1e-6 absolute for the PyTorch DIIF/LTE/DLTE; else the fp32 tolerance (HIIF's
    attention sums add per chunk; the interpreter's numpy matmul rounds a row by its
    place in the tile)."""
    if decoder in ("liif", "lte") and (backend == "cpu"
                                       or (backend == "triton" and device == "cuda")):
        assert torch.equal(chunked, full)
    elif backend in ("reference", "torch") and not decoder.startswith("hiif"):
        torch.testing.assert_close(chunked, full, rtol=0, atol=1e-6)
    else:
        assert_matches(chunked, full)


@pytest.mark.parametrize("chunk_size", [1, "third"])
@pytest.mark.parametrize("backend,decoder,mode", _all_backend_cases(*MODES, with_reference=True))
def test_chunked_equals_unchunked(backend, decoder, mode, chunk_size):
    skip_unless_runs(backend, decoder)
    device = device_of(backend)
    lr, queries = ((2, 3), 9) if chunk_size == 1 else (LR, QUERIES)
    p = problem(decoder, mode, "asymmetric", device=device, lr=lr, queries=queries,
                seed=seed_of(backend, decoder, mode, chunk_size))
    with torch.no_grad():
        full = p.decode(backend)
        chunked = p.decode(backend, chunk_size=1 if chunk_size == 1 else p.chunk())
    assert_chunks_agree(backend, decoder, device, chunked, full)


#: gradcheck's tolerances where the defaults are too tight for float64 rounding: HIIF's
#: LayerNorms and attention (tests/test_ops_cpu_hiif.py, tests/test_hiif.py).
GRADCHECK = {"hiif": dict(eps=1e-6, atol=1e-6, rtol=1e-5),
             "hiif_public_codes": dict(eps=1e-6, atol=1e-6, rtol=1e-5)}


#: The mode of each decoder's gradcheck: a grid, or query lists for HIIF (whose every
#: query attends to every other: a grid's Jacobian is the costliest).  The other mode's
#: float64 gradients are test_values_and_gradients' against the reference's autograd.
GRADCHECK_MODE = {"hiif": "query", "hiif_public_codes": "query"}


GRADCHECK_CASES = [pytest.param(b, d, id=f"{b}-{d}") for b in BACKENDS for d in DECODERS
                   if torch.float64 in dtypes_of(b)]


#: The skip where no backend under test takes float64 (the interpreter's process;
#: tests/test_triton_interpreter.py accepts exactly this reason besides GPU-only ones).
NO_FLOAT64 = "no backend under test takes float64"


@pytest.mark.parametrize("backend,decoder", GRADCHECK_CASES or [pytest.param(
    None, None, marks=pytest.mark.skip(reason=NO_FLOAT64))])
def test_gradcheck_float64(backend, decoder):
    skip_unless_runs(backend, decoder, torch.float64)
    mode = GRADCHECK_MODE.get(decoder, "grid")
    p = problem(decoder, mode, dtype=torch.float64, device=device_of(backend, torch.float64),
                lr=(2, 3), b=1, c=2, hidden=4, queries=9, seed=seed_of(backend, decoder))
    keys = list(p.leaves)

    def fn(*values):
        return p.decode(backend, dict(zip(keys, values)), chunk_size=13)

    assert torch.autograd.gradcheck(fn, tuple(p.leaves.values()), **GRADCHECK.get(decoder, {}))


# ------------------------------------------------------------------------------------------
# Operators: opcheck, torch.compile, poisoned outputs
# ------------------------------------------------------------------------------------------

def _snapshot(a, grad):
    if isinstance(a, torch.Tensor):
        t = a.detach().clone()
        return t.requires_grad_(grad and a.requires_grad and a.is_floating_point())
    if isinstance(a, (list, tuple)):
        return type(a)(_snapshot(x, grad) for x in a)
    return a


class RecordOps(TorchDispatchMode):
    """Records each ``implicit_kernels`` operator a call dispatches: ``(op, args, kwargs,
    outputs, phase)``, arguments copied (as leaves requiring grad where the originals did,
    in the forward phase; the backward phase's are not differentiated again)."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.phase = "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        record = func.namespace == "implicit_kernels"
        if record:
            grad = self.phase == "forward"
            saved = (_snapshot(list(args), grad), _snapshot(dict(kwargs), grad))
        out = func(*args, **kwargs)
        if record:
            self.calls.append((func, tuple(saved[0]), saved[1], out, self.phase))
        return out


def record(p: Problem, backend, chunk_size=None):
    """The operators the decode of ``p`` and its backward dispatch, and their outputs."""
    rec = RecordOps()
    with rec:
        out = p.decode(backend, chunk_size=chunk_size)
        rec.phase = "backward"
        grads = torch.autograd.grad(out, list(p.leaves.values()), torch.ones_like(out))
    return rec.calls, out.detach(), grads


def _flags(args):
    """The non-tensor arguments of a call: calls differing in them (a raster start, a
    ``public_centres`` flag) take different paths and are checked separately."""
    return tuple(a for a in args if not isinstance(a, (torch.Tensor, list, tuple)))


def _non_contiguous(a):
    """Tensors of two or more dimensions in a transposed (dense, not contiguous) layout."""
    if isinstance(a, torch.Tensor) and a.dim() >= 2 and a.shape[-1] > 1 and a.shape[-2] > 1:
        t = a.detach().transpose(-1, -2).contiguous().transpose(-1, -2)
        return t.requires_grad_(a.requires_grad)
    return a


def test_recorder_sees_the_operators():
    """The dispatch mode sees the fused operators (else opcheck below would check none): a
    small decode with gradients runs the forward that keeps its record, and the backward
    from that record."""
    skip_unless_runs("cpu", "liif")
    calls, _, _ = record(problem("liif", "grid", lr=(2, 3), hidden=12), "cpu")
    names = {c[0].name() for c in calls}
    assert {"implicit_kernels::liif_decode_train",
            "implicit_kernels::liif_decode_backward_saved"} <= names


@pytest.mark.parametrize("backend,decoder", [
    pytest.param(b, d, id=f"{b}-{d}") for b in BACKENDS for d in DECODERS])
def test_opcheck(backend, decoder):
    """Each operator the decode and its backward dispatch in grid and query mode (once per
    operator and non-tensor arguments), as called and with non-contiguous tensors."""
    skip_unless_runs(backend, decoder)
    calls = []
    for mode in MODES:
        p = problem(decoder, mode, device=device_of(backend), lr=(3, 4), c=3, hidden=12,
                    queries=20, seed=seed_of(backend, decoder, mode))
        calls += record(p, backend, chunk_size=p.chunk())[0]
    if not calls:
        pytest.skip(f"backend {backend!r} dispatches no custom operator for {decoder}")
    checked = set()
    for op, args, kwargs, _, _ in calls:
        key = (op, _flags(args))
        if key in checked:
            continue
        checked.add(key)
        for sample in (args, tuple(_non_contiguous(a) for a in args)):
            torch.library.opcheck(op, sample, kwargs)


@pytest.mark.parametrize("backend,decoder,mode", _all_backend_cases("grid"))
def test_compiles_fullgraph(backend, decoder, mode):
    """``torch.compile(fullgraph=True)`` of a chunked grid decode (the public call's
    validation, chunking and reshaping; query mode reaches the same operators)."""
    skip_unless_runs(backend, decoder)
    p = problem(decoder, mode, device=device_of(backend), lr=(3, 4), c=3, hidden=12,
                queries=20, seed=seed_of(backend, decoder, mode))
    chunk = p.chunk()
    if not record(p, backend, chunk)[0]:
        # Plain PyTorch (tens of seconds of tracing per decoder on two cores): this check
        # is of the custom operators' fake and autograd registrations.
        pytest.skip(f"backend {backend!r} dispatches no custom operator for {decoder}")

    def run(leaves):
        return p.decode(backend, leaves, chunk_size=chunk)

    torch._dynamo.reset()  # every case compiles ``run``: no recompilation limit
    assert_compiles_fullgraph(run, p.leaves)


@pytest.mark.parametrize("backend,decoder,mode", _all_backend_cases(*MODES))
def test_poisoned_outputs_are_written(backend, decoder, mode):
    """Every operator output (forward and backward) and every gradient is finite, though
    the kernels' outputs start as NaN (``IK_POISON=1``)."""
    assert os.environ.get("IK_POISON") == "1", "tests/conftest.py sets IK_POISON=1"
    skip_unless_runs(backend, decoder)
    p = problem(decoder, mode, "edge_ties", device=device_of(backend), hidden=12,
                seed=seed_of(backend, decoder, mode))
    calls, out, grads = record(p, backend, chunk_size=p.chunk())
    if not calls:
        pytest.skip(f"backend {backend!r} has no fused kernels for {decoder}")
    for op, _, _, result, phase in calls:
        for i, t in enumerate(result if isinstance(result, (list, tuple)) else [result]):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                assert torch.isfinite(t).all(), f"{op} ({phase}) output {i} has NaN/inf"
    assert torch.isfinite(out).all()
    for key, g in zip(p.leaves, grads):
        assert torch.isfinite(g).all(), f"grad of {key}"


@pytest.mark.parametrize("backend,decoder", [
    pytest.param(b, d, id=f"{b}-{d}") for b in BACKENDS for d in DECODERS])
def test_empty_queries(backend, decoder):
    """No queries: a ``B×0×3`` output, and zero gradients where it is differentiable (HIIF's
    is not, but the reference's)."""
    skip_unless_runs(backend, decoder)
    p = problem(decoder, "query", device=device_of(backend), lr=(3, 4), hidden=12, queries=0)
    out = p.decode(backend)
    assert out.shape == (2, 0, 3)
    if out.requires_grad:
        grads = torch.autograd.grad(out.sum(), list(p.leaves.values()), allow_unused=True)
        assert all(g is None or not g.any() for g in grads)
