"""Property-based fuzzing of the public ops, and of the raw compiled operators' inputs.

* Random decoder, feature maps from 1×1, independent non-integer scales up to ×31,
  float32/float64, grid and query modes, random chunk sizes: every available backend
  equals ``reference`` (within the dtype's tolerance, ``helpers.TOLERANCES``).
* A valid call with one thing broken (NaN, dtype, device, shape, size, key, option):
  every backend raises a clear exception naming it.
* Every raw ``torch.ops.implicit_kernels`` operator, recorded from real decodes, called
  with each argument broken in turn, in a subprocess: an exception is fine, a crash
  (a signal, an abort) fails the test.

``IK_FUZZ_EXAMPLES`` sets the number of examples per property (default 200: about
15 seconds in all on two cores).
"""
import os
import subprocess
import sys

import pytest
import torch
from helpers import assert_matches, mlp_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hiif import hiif_params
from test_lte_dlte import dlte_params, lte_params

import implicit_kernels.functional as F
from implicit_kernels import _extension, backends

DECODERS = ("liif", "lte", "diif", "dlte", "hiif")
FUZZ = settings(max_examples=int(os.environ.get("IK_FUZZ_EXAMPLES", "200")), deadline=None,
                database=None, suppress_health_check=[HealthCheck.too_slow])
#: Output queries per example at most (over the batch), so one example stays under ~1 s.
MAX_QUERIES = 40_000


def make_params(decoder, c, dtype):
    """Narrow random parameters of ``decoder`` for ``c`` feature channels."""
    if decoder == "liif":
        return mlp_params("imnet.layers.", [9 * c + 4, 16, 16, 3], dtype=dtype)
    if decoder == "lte":
        return lte_params(c, channels=8, hidden=16, dtype=dtype)
    if decoder == "diif":
        return {**mlp_params("coarse.layers.", [16 * c + 6, 16, 16], dtype=dtype),
                **mlp_params("fine.layers.", [18, 16, 3], dtype=dtype)}
    if decoder == "dlte":
        return dlte_params(c, channels=4, hidden=16, dtype=dtype)
    return hiif_params(c_enc=c, c_z=16, head_dim=8, hidden=16, dtype=dtype)


def decode(case, backend, **overrides):
    """Run ``case`` (a dict from :func:`cases`) through ``backend``; ``overrides``
    replace any of its inputs."""
    k = {**case, **overrides}
    decoder, feat, inp, params = k["decoder"], k["feat"], k["inp"], k["params"]
    options = {"backend": backend, "chunk_size": k["chunk_size"]}
    queries = {}
    if k["queries"] is not None:
        if decoder in ("diif", "dlte"):
            queries = {"pixels": k["queries"]}
        else:
            queries = {"coord": k["queries"], "cell": k["cell"]}
    size = k["size"] if decoder in ("diif", "dlte") or not queries else None
    if decoder == "liif":
        return F.liif_decode(feat, size, params, **queries, **options)
    if decoder == "diif":
        return F.diif_decode(feat, size, params, **queries, **options)
    fn = getattr(F, f"{decoder}_decode")
    return fn(feat, inp, size, params, **queries, **options)


@st.composite
def cases(draw):
    decoder = draw(st.sampled_from(DECODERS))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    b, c = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sy, sx = draw(st.floats(1, 31)), draw(st.floats(1, 31))
    size = (max(h, round(h * sy)), max(w, round(w * sx)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    feat = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    inp = (torch.rand(b, 3, h, w, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype)
    queries = cell = None
    total = b * size[0] * size[1]
    if draw(st.booleans()):  # query mode
        q = draw(st.integers(0, 300))
        total = b * q
        if decoder in ("diif", "dlte"):
            queries = torch.stack([torch.randint(0, size[0], (b, q), generator=gen),
                                   torch.randint(0, size[1], (b, q), generator=gen)], -1)
        else:
            queries = (torch.rand(b, q, 2, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype)
            cell = torch.tensor([2 / size[0], 2 / size[1]], dtype=dtype).expand(b, q, 2)
    total = min(total, MAX_QUERIES)
    chunk = draw(st.integers(max(1, total // 8), max(1, total) + 64))
    return {"decoder": decoder, "feat": feat, "inp": inp, "size": size, "queries": queries,
            "cell": cell, "chunk_size": chunk, "params": make_params(decoder, c, dtype)}


def _small_enough(case):
    n = (case["queries"].shape[1] if case["queries"] is not None
         else case["size"][0] * case["size"][1])
    return case["feat"].shape[0] * n <= MAX_QUERIES


@FUZZ
@given(case=cases())
def test_every_backend_equals_reference(case):
    if not _small_enough(case):
        case = {**case, "size": tuple(min(s, 120) for s in case["size"])}
        if case["queries"] is not None and case["decoder"] in ("diif", "dlte"):
            case["queries"] = case["queries"].clamp(max=torch.tensor(case["size"]) - 1)
    with torch.no_grad():
        ref = decode(case, "reference")
        status = backends.available_backends(case["decoder"], case["feat"])
        for name, (ok, _) in status.items():
            if ok and name != "reference":
                assert_matches(decode(case, name), ref, f"{case['decoder']} on {name}")


def _nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


#: One broken input each: (name, decoders it applies to, overrides from the case, exception).
BREAKAGES = [
    ("NaN feat", DECODERS, lambda k: {"feat": _nan(k["feat"])}, ValueError),
    ("integer feat", DECODERS, lambda k: {"feat": k["feat"].long()}, TypeError),
    ("3-D feat", DECODERS, lambda k: {"feat": k["feat"][0]}, ValueError),
    ("empty batch", DECODERS, lambda k: {"feat": k["feat"][:0]}, ValueError),
    ("meta feat", DECODERS, lambda k: {"feat": k["feat"].to("meta")}, ValueError),
    ("size below the input", DECODERS,
     lambda k: {"size": (k["feat"].shape[2] - 1, k["size"][1]), "queries": None}, ValueError),
    ("absurd size", DECODERS, lambda k: {"size": (10 ** 6, 10 ** 6), "queries": None}, ValueError),
    ("zero chunk", DECODERS, lambda k: {"chunk_size": 0}, ValueError),
    ("params of another dtype", DECODERS,
     lambda k: {"params": {n: v.half() for n, v in k["params"].items()}}, TypeError),
    ("a missing parameter", DECODERS,
     lambda k: {"params": dict(list(k["params"].items())[1:])}, ValueError),
    ("an unknown parameter", DECODERS,
     lambda k: {"params": {**k["params"], "extra.weight": k["feat"].new_zeros(3)}}, ValueError),
    ("NaN image", ("lte", "dlte", "hiif"), lambda k: {"inp": _nan(k["inp"])}, ValueError),
    ("image of another size", ("lte", "dlte", "hiif"),
     lambda k: {"inp": torch.nn.functional.pad(k["inp"], (0, 1))}, ValueError),
    ("NaN coord", ("liif", "lte", "hiif"),
     lambda k: {"queries": _nan(k["feat"].new_zeros(k["feat"].shape[0], 4, 2)),
                "cell": k["feat"].new_full((k["feat"].shape[0], 4, 2), 0.1)}, ValueError),
    ("coord outside [-1, 1]", ("liif", "lte", "hiif"),
     lambda k: {"queries": k["feat"].new_full((k["feat"].shape[0], 4, 2), 1.5),
                "cell": k["feat"].new_full((k["feat"].shape[0], 4, 2), 0.1)}, ValueError),
    ("pixel outside the output", ("diif", "dlte"),
     lambda k: {"queries": torch.full((k["feat"].shape[0], 2, 2), k["size"][0])}, ValueError),
    ("unknown backend", DECODERS, lambda k: {"backend": "fastest"}, ValueError),
]


@FUZZ
@given(case=cases(), breakage=st.sampled_from(BREAKAGES))
def test_broken_inputs_raise_a_clear_error(case, breakage):
    name, decoders, override, error = breakage
    if case["decoder"] not in decoders:
        return
    broken = override(case)
    if "backend" in broken:
        names = [broken.pop("backend")]
    else:
        status = backends.available_backends(case["decoder"], case["feat"])
        names = [n for n, (ok, _) in status.items() if ok]
    for backend in names:
        with pytest.raises(error) as info:
            decode(case, backend, **broken)
        assert len(str(info.value)) > 10, f"{name}: unhelpful message {info.value!r}"


RAW_FUZZ = r'''
import sys, torch
sys.path.insert(0, sys.argv[1])
from test_op_inputs import record_operator_calls

def variants(a):
    """Broken versions of one operator argument."""
    if isinstance(a, torch.Tensor):
        yield "nan", (a.clone().fill_(float("nan")) if a.is_floating_point()
                      else a.clone().fill_(-1))
        yield "int32", a.int()
        yield "half", a.half()
        yield "meta", a.to("meta")
        yield "lost dim", a.flatten()[:-1] if a.numel() else a.flatten()
        yield "extra dim", a.unsqueeze(0)
        yield "empty", a[:0] if a.dim() else a.reshape(0)
        yield "transposed", a.transpose(0, -1) if a.dim() > 1 else a.flip(0)
        yield "huge", a.clone().fill_(1e30) if a.is_floating_point() else a.clone().fill_(2 ** 40)
    elif isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
        yield "shorter list", list(a[:-1])
        yield "longer list", list(a) + [a[-1]]
        yield "empty list", []
    elif isinstance(a, int) and not isinstance(a, bool):
        for v in (0, -1, 2 ** 31, 2 ** 62):
            yield str(v), v
    elif isinstance(a, str):
        yield "bad string", "quadratic"

calls = record_operator_calls()
n = 0
for op_name, args in sorted(calls.items()):
    ops = [(op_name, args)]
    fwd = getattr(torch.ops.implicit_kernels, op_name)
    if hasattr(torch.ops.implicit_kernels, op_name + "_backward"):
        grad = torch.zeros_like(fwd(*args))
        ops.append((op_name + "_backward", (grad, *args)))
    for name, valid in ops:
        op = getattr(torch.ops.implicit_kernels, name)
        for i, a in enumerate(valid):
            for what, v in variants(a):
                broken = list(valid)
                broken[i] = v
                print(f"{name} arg {i}: {what}", flush=True)
                try:
                    op(*broken)
                except Exception:
                    pass
                n += 1
print(f"raw fuzz: {n} broken calls, no crash")
'''


@pytest.mark.skipif(not _extension.available(), reason="; ".join(_extension.reasons()))
def test_raw_operators_never_crash_on_broken_arguments(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", RAW_FUZZ, here], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = proc.stdout.strip().splitlines()[-1:] or ["(nothing)"]
    assert proc.returncode == 0, (f"crashed (exit {proc.returncode}) at: {last[0]}\n"
                                  f"{proc.stderr[-2000:]}")
    assert "no crash" in last[0] and int(last[0].split()[2]) > 500, last
