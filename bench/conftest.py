"""Shared machinery of the benchmarks: the case grid, the timing protocol and the
``extra_info`` columns.

``pytest bench/`` times every case (pytest-benchmark); ``pytest bench --benchmark-disable``
runs each once, as a test (what CI runs); ``--benchmark-json out.json`` keeps the results
for ``python -m bench.report out.json``.

What is timed
-------------
Decoder benchmarks time the decoder alone (``model.decode``, i.e. the
:mod:`implicit_kernels.functional` op) on fixed random 64-channel feature maps, with the
papers' widths and seeded random weights from ``models.make("edsr-baseline-<decoder>")``.
Encoders are timed on their own (``test_encoders.py``). ``fwd`` runs under
``torch.no_grad()``; ``fwd+bwd`` decodes with gradients on the feature map and the
parameters and back-propagates a fixed random output gradient (gradients are cleared
between runs, outside the timed region).

Protocol (docs/cost-model.md, "Timing protocol")
------------------------------------------------
* Device: CUDA when visible, else CPU. On CUDA every run ends with
  ``torch.cuda.synchronize()``, so pytest-benchmark's wall clock covers the device work,
  and CUDA events around each run give ``device_median_s``; float32 means float32 (TF32
  off), as the float32 ``reference`` baseline of docs/cost-model.md ("Timing protocol").
* Warm-up is excluded: one untimed run (compilation, lazy loading, allocator growth), one
  untimed run inside :class:`~implicit_kernels.apps.demo.PeakMemory` for the peak memory, on
  CUDA further untimed warm-up runs, then the timed rounds (counts in :func:`_rounds`).
* Runs rotate among ``INPUT_SETS`` inputs, so repeats do not time a cache warm with one
  input.
* CPU threads: torch's default intra-op count; ``IK_BENCH_THREADS=n`` overrides it (on a
  machine busy with other jobs, 1 thread avoids threads spinning at barriers while
  their partner waits for a core).
* Every float32 case also checks its output against the ``reference`` backend (the
  demo's tolerance) where ``max_diff`` is computed: a fast wrong kernel fails here.

Grid
----
Each file parametrises over backend, scale (``SCALES``: integers, ×2.7 and (2.5, 4)),
dtype (float32; on CUDA also bfloat16 and float16) and pass (``PASSES``). Backends are
read from ``backends.BACKENDS`` at collection, so backends registered later are
benchmarked without editing this file, plus ``"torch+compile"``: ``torch.compile`` of
the ``"torch"`` backend's call, compiled afresh for each case. A backend that cannot run
a decoder on this device and dtype appears once, skipped with its reasons.

Sizes (H×W): on CUDA the papers' (scale sweep from 180×320, headline 90×160 → ×16,
encoders at both); on CPU small ones so ``pytest bench/`` fits a 2-core machine (sweep
from 4×6, headline 9×16 → ×16, encoders at 24×24).

The default grid leaves out, unless ``IK_BENCH_FULL=1``:

* the headline on CPU: from 9×16 it decodes more pixels than the sweep's ×30 (the
  papers' 90×160 input is the GPU's), so it would add a fifth of the time and no
  information.
* ``reference`` in the sweep beyond ×4 on CPU and ×12 on CUDA: it is the oracle,
  written for clarity, and the slowest (LIIF's 580-wide input per query and shift).
* ``fwd+bwd`` beyond ×4 and in the headline: training decodes at ×1–×4, and
  back-propagating a whole large output keeps every query's activations.
* ``torch+compile`` on CPU except DIIF ×4 forward (each case compiles anew: 10–45 s on
  two cores), and encoders under ``torch.compile`` on CPU.

``extra_info`` of every benchmark (read by ``bench/report.py``): ``suite`` (``sweep``,
``headline``, ``encoder``), ``model``, ``backend``, ``in_size``, ``scale``,
``out_size``, ``dtype``, ``pass``, ``macs`` (of one forward, from
:func:`implicit_kernels.cost.count`: the papers' count, the same for every backend, so
``gflops`` compares backends on one scale), ``flop`` (2·MACs, ×3 for fwd+bwd: a
backward costs about two forwards), ``gflops`` (flop over the median time; on CUDA the
device-event median), ``peak_bytes`` (growth during one run, see ``PeakMemory``),
``max_diff`` (largest |difference| of the output from the ``reference`` backend run in
float32 on the same rounded weights and inputs, where the output has at most
``DIFF_MAX_PIXELS`` pixels; ``None`` otherwise), ``device``, ``torch``, ``triton``,
``cuda``, ``threads``, ``rounds`` and, on CUDA, ``device_median_s``.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import itertools
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass

import pytest
import torch

import models
from implicit_kernels import backends, cost
from implicit_kernels.apps import demo
from implicit_kernels.apps.demo import PeakMemory

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_CUDA = DEVICE.type == "cuda"
FULL = os.environ.get("IK_BENCH_FULL", "") == "1"

#: The benchmark name of ``torch.compile`` around the ``"torch"`` backend.
COMPILE = "torch+compile"
#: Backends of the encoder benchmarks (the encoders are plain modules).
ENCODER_BACKENDS = ("eager", COMPILE)
PASSES = ("fwd", "fwd+bwd")
DTYPES = (torch.float32, torch.bfloat16, torch.float16) if ON_CUDA else (torch.float32,)
#: (row, column) scales of the sweep: the DIIF paper's, ×30, a non-integer and an
#: asymmetric one.
SCALES = ((2, 2), (2.7, 2.7), (3, 3), (4, 4), (6, 6), (12, 12), (18, 18), (24, 24),
          (30, 30), (2.5, 4))
SWEEP_INPUT = (180, 320) if ON_CUDA else (4, 6)
HEADLINE_INPUT = (90, 160) if ON_CUDA else (9, 16)
HEADLINE_SCALE = (16, 16)
ENCODER_INPUTS = ((180, 320), (90, 160)) if ON_CUDA else ((24, 24),)
#: Largest sweep scale of the reference backend in the default grid.
REFERENCE_MAX_SCALE = 12 if ON_CUDA else 4
#: Largest scale of fwd+bwd in the default grid.
BACKWARD_MAX_SCALE = 4
#: Output pixels up to which the reference runs for ``max_diff``.
DIFF_MAX_PIXELS = 2_100_000 if ON_CUDA else 40_000
INPUT_SETS = 3
FEAT_CHANNELS = cost.FEAT_CHANNELS

#: Intra-op threads of the benchmarks: ``IK_BENCH_THREADS``, else torch's default (as
#: when this module was imported, before any test ran).
_THREADS = int(os.environ.get("IK_BENCH_THREADS") or torch.get_num_threads())


# ----------------------------------------------------------------------------------------
# Cases and the grid
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One benchmark: ``model`` (a decoder or encoder name) under ``backend``, from an
    ``in_size`` (H, W) input at ``scale`` (rows, columns; (1, 1) for encoders)."""
    suite: str
    model: str
    backend: str
    in_size: tuple
    scale: tuple
    dtype: torch.dtype
    pass_: str

    @property
    def out_size(self) -> tuple:
        # LIIF's test protocol, as cost.count and the demo: side × scale, rounded.
        return tuple(int(math.floor(n * s + 0.5)) for n, s in zip(self.in_size, self.scale))

    @property
    def id(self) -> str:
        parts = [self.model, self.backend]
        if self.suite != "sweep":
            parts.insert(0, self.suite)
            parts.append("x".join(map(str, self.in_size)))
        if self.suite != "encoder":
            parts.append(scale_text(self.scale))
        return "-".join(parts + [dtype_text(self.dtype), self.pass_])


def scale_text(scale) -> str:
    """``(2.7, 2.7)`` -> ``"x2.7"``, ``(2.5, 4)`` -> ``"x2.5x4"``."""
    y, x = (f"{s:g}" for s in scale)
    return f"x{y}" if y == x else f"x{y}x{x}"


def dtype_text(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _in_default_grid(case: Case) -> bool:
    """Whether the reduced default grid keeps ``case`` (module docstring)."""
    top = max(case.scale)
    if case.pass_ == "fwd+bwd" and (top > BACKWARD_MAX_SCALE or case.suite == "headline"):
        return False
    if case.suite == "headline" and not ON_CUDA:
        return False
    if case.backend == "reference" and case.suite == "sweep" and top > REFERENCE_MAX_SCALE:
        return False
    if case.backend == COMPILE and not ON_CUDA:
        return (case.suite, case.model, case.scale, case.pass_) == ("sweep", "diif", (4, 4), "fwd")
    return True


def _compile_reasons() -> list:
    """Why ``torch.compile`` cannot run here (empty list: it can)."""
    if not torch._dynamo.is_dynamo_supported():
        return ["torch.compile (dynamo) is not supported on this Python/platform"]
    if ON_CUDA:
        if importlib.util.find_spec("triton") is None:  # Inductor's CUDA code generator
            return ["torch.compile on CUDA needs triton (not installed)"]
    elif not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")):
        return ["torch.compile on CPU needs a C++ compiler (g++, c++ or $CXX) for Inductor"]
    return []


def _decoder_reasons(decoder: str, backend: str, dtype: torch.dtype) -> list:
    """Why ``backend`` cannot run ``decoder`` on DEVICE in ``dtype`` (empty: it can)."""
    probe = torch.zeros(1, FEAT_CHANNELS, 2, 2, device=DEVICE, dtype=dtype)
    if backend == COMPILE:
        return _compile_reasons() + backends.unavailable_reasons("torch", decoder, probe)
    return backends.unavailable_reasons(backend, decoder, probe)


def _skipped(case_id: str, backend: str, reasons) -> pytest.param:
    return pytest.param(None, id=case_id,
                        marks=pytest.mark.skip(reason=f"{backend}: {'; '.join(reasons)}"))


def decoder_cases(decoders) -> list:
    """pytest params of the sweep and headline cases of ``decoders``, ordered so that
    consecutive cases share an output size (the reference output is cached per size)."""
    params = []
    for decoder, dtype in itertools.product(decoders, DTYPES):
        names = []
        for backend in [*backends.BACKENDS, COMPILE]:
            reasons = _decoder_reasons(decoder, backend, dtype)
            if reasons:
                params.append(_skipped(f"{decoder}-{backend}-{dtype_text(dtype)}", backend,
                                       reasons))
            else:
                names.append(backend)
        configs = ([("sweep", SWEEP_INPUT, s) for s in SCALES]
                   + [("headline", HEADLINE_INPUT, HEADLINE_SCALE)])
        for (suite, in_size, scale), pass_, backend in itertools.product(configs, PASSES, names):
            case = Case(suite, decoder, backend, in_size, scale, dtype, pass_)
            if FULL or _in_default_grid(case):
                params.append(pytest.param(case, id=case.id))
    return params


def encoder_cases(encoders) -> list:
    """pytest params of the encoder cases (eager and compiled)."""
    params = []
    reasons = _compile_reasons()
    for encoder, dtype in itertools.product(encoders, DTYPES):
        if reasons:
            params.append(_skipped(f"encoder-{encoder}-{COMPILE}-{dtype_text(dtype)}",
                                   COMPILE, reasons))
        for in_size, pass_, backend in itertools.product(ENCODER_INPUTS, PASSES,
                                                         ENCODER_BACKENDS):
            if backend == COMPILE and (reasons or not (FULL or ON_CUDA)):
                continue
            case = Case("encoder", encoder, backend, in_size, (1, 1), dtype, pass_)
            params.append(pytest.param(case, id=case.id))
    return params


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "bench_models(*names): benchmark these decoders or encoders; "
                   "bench/conftest.py parametrises the test's `case` argument")


def pytest_generate_tests(metafunc):
    """Parametrise ``case`` from the test's ``bench_models`` marker."""
    marker = metafunc.definition.get_closest_marker("bench_models")
    if marker is None or "case" not in metafunc.fixturenames:
        return
    names = marker.args
    if all(n in models.ENCODERS for n in names):
        params = encoder_cases(names)
    elif all(n in models.DECODERS for n in names):
        params = decoder_cases(names)
    else:
        raise ValueError(f"bench_models takes decoders or encoders, not a mix: {names}")
    metafunc.parametrize("case", params)


def pytest_report_header(config):
    grid = "full (IK_BENCH_FULL=1)" if FULL else "reduced default (IK_BENCH_FULL=1: full)"
    return [f"implicit-kernels bench: device {device_name()}, {grid} grid, "
            f"sweep input {SWEEP_INPUT}, torch {torch.__version__}"]


# ----------------------------------------------------------------------------------------
# Models and inputs (cached across cases)
# ----------------------------------------------------------------------------------------

def _model_name(case: Case) -> str:
    return case.model if case.suite == "encoder" else f"edsr-baseline-{case.model}"


@functools.lru_cache(maxsize=None)
def _model(name: str, dtype: torch.dtype) -> torch.nn.Module:
    """``models.make(name)`` with seeded random weights on DEVICE; other dtypes are the
    float32 model's weights rounded."""
    if dtype != torch.float32:
        return copy.deepcopy(_model(name, torch.float32)).to(dtype)
    torch.manual_seed(0)
    return models.make(name).eval().to(DEVICE)


@functools.lru_cache(maxsize=None)
def _upcast_model(name: str, dtype: torch.dtype) -> torch.nn.Module:
    """The ``dtype`` model's (rounded) weights in float32: the reference's model."""
    if dtype == torch.float32:
        return _model(name, dtype)
    return copy.deepcopy(_model(name, dtype)).float()


@functools.lru_cache(maxsize=4)
def _inputs(in_size: tuple, dtype: torch.dtype) -> tuple:
    """``INPUT_SETS`` pairs (feature map ``1×64×H×W``, normalised image ``1×3×H×W``),
    seeded, on DEVICE in ``dtype``."""
    gen = torch.Generator().manual_seed(1)
    sets = []
    for _ in range(INPUT_SETS):
        feat = torch.randn(1, FEAT_CHANNELS, *in_size, generator=gen)
        img = torch.rand(1, 3, *in_size, generator=gen) * 2 - 1
        sets.append((feat.to(DEVICE, dtype), img.to(DEVICE, dtype)))
    return tuple(sets)


def _forward(case: Case, model, backend: str):
    """``fn(feat, img) -> output`` of the case's model (encoders ignore ``feat``)."""
    if case.suite == "encoder":
        return lambda feat, img: model(img)
    size = case.out_size

    def decode(feat, img):
        return model.decode(feat, img, size, backend=backend)
    return decode


#: Reference outputs (float32, on the host) by case key; cases are ordered so that only the
#: latest few keys are still needed.
_REFERENCE_OUTPUTS: dict = {}
_REFERENCE_KEEP = 4


def _reference_output(case: Case, out: torch.Tensor) -> torch.Tensor:
    """The reference's output for the case's first input set: ``out`` itself when the
    case is the float32 reference (the ``reference`` backend, eager for encoders), else
    the reference run in float32 on the case's rounded weights and inputs."""
    key = (case.suite, case.model, case.in_size, case.scale, case.dtype)
    if key not in _REFERENCE_OUTPUTS:
        reference = "eager" if case.suite == "encoder" else "reference"
        if case.backend == reference and case.dtype == torch.float32:
            ref = out.cpu()
        else:
            fn = _forward(case, _upcast_model(_model_name(case), case.dtype), reference)
            feat, img = _inputs(case.in_size, case.dtype)[0]
            with torch.no_grad():
                ref = fn(feat.float(), img.float()).cpu()
        _REFERENCE_OUTPUTS[key] = ref
        while len(_REFERENCE_OUTPUTS) > _REFERENCE_KEEP:
            del _REFERENCE_OUTPUTS[next(iter(_REFERENCE_OUTPUTS))]
    return _REFERENCE_OUTPUTS[key]


# ----------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------

def device_name() -> str:
    """The GPU's name, or the CPU model with its core count."""
    if ON_CUDA:
        return torch.cuda.get_device_name(DEVICE)
    name = None
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), None)
    except OSError:
        pass
    return f"{name or 'CPU'} ({os.cpu_count()} cores)"


def _versions() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"device": device_name(), "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "threads": torch.get_num_threads()}


def _rounds(seconds: float) -> tuple:
    """``(warm-up, timed)`` rounds after the two untimed runs, for a run of ``seconds``.
    CUDA: up to 10 warm-ups and 50 timed runs (docs/cost-model.md, "Timing protocol"),
    fewer (at least 2 and 10) when a run takes over 0.1 s. CPU: 3 to 20 timed runs, about
    0.5 s in all."""
    seconds = max(seconds, 1e-6)
    if ON_CUDA:
        return (min(10, max(2, math.ceil(1.0 / seconds))),
                min(50, max(10, math.ceil(5.0 / seconds))))
    return 0, min(20, max(3, math.ceil(0.5 / seconds)))


def _runner(case: Case, fn, params):
    """``(target, setup, device_times)`` for pytest-benchmark's pedantic mode.

    ``setup`` (untimed) picks the next input set and clears gradients; ``target`` runs
    one pass and waits for the device; on CUDA it appends each run's event pair to
    ``device_times``."""
    backward = case.pass_ == "fwd+bwd"
    sets = _inputs(case.in_size, case.dtype)
    if backward and case.suite != "encoder":
        sets = [(feat.detach().clone().requires_grad_(), img) for feat, img in sets]
    counter = itertools.count()
    grads = {}
    device_times = []

    def setup():
        args = sets[next(counter) % len(sets)]
        if backward:
            for t in (*params, *args):
                t.grad = None
        return args, {}

    def target(feat, img):
        if ON_CUDA:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
        with torch.set_grad_enabled(backward):
            out = fn(feat, img)
            if backward:
                if out.shape not in grads:  # first (warm-up) run: fix the output gradient
                    gen = torch.Generator().manual_seed(2)
                    grads[out.shape] = torch.randn(out.shape, generator=gen).to(out)
                out.backward(grads[out.shape])
        if ON_CUDA:
            end.record()
            torch.cuda.synchronize(DEVICE)
            device_times.append((start, end))
        return out.detach()

    return target, setup, device_times


def _max_diff(case: Case, out: torch.Tensor):
    """Largest |out - reference| (``None`` when the reference is too costly here); fails
    a float32 case beyond the demo's tolerance."""
    if case.out_size[0] * case.out_size[1] > DIFF_MAX_PIXELS:
        return None
    ref = _reference_output(case, out)
    diff = float((out.float().cpu() - ref).abs().max())
    if case.dtype == torch.float32:
        tolerance = demo.TOLERANCE * max(1.0, float(ref.abs().max()))
        assert diff <= tolerance, (f"{case.id}: differs from the reference by {diff:.3g} "
                                   f"(tolerance {tolerance:.3g})")
    return diff


def run_case(benchmark, case: Case) -> None:
    """Benchmark one case with pytest-benchmark's ``benchmark`` fixture (module docstring)
    and fill its ``extra_info``."""
    benchmark.group = (f"{case.suite} {case.model} {'x'.join(map(str, case.in_size))} "
                       f"{dtype_text(case.dtype)} {case.pass_}")
    model = _model(_model_name(case), case.dtype)
    if case.backend == COMPILE:
        torch._dynamo.reset()  # compile afresh: no recompile limit across sizes and cases
        fn = torch.compile(_forward(case, model, "torch"), dynamic=False)
    else:
        fn = _forward(case, model, case.backend)
    params = list(model.parameters())
    target, setup, device_times = _runner(case, fn, params)
    try:
        if benchmark.disabled:
            with PeakMemory(DEVICE) as mem:
                out = benchmark.pedantic(target, setup=setup, rounds=1)
            warmup = rounds = 0
        else:
            args, _ = setup()
            out = target(*args)  # first run, untimed: compilation and lazy initialisation
            args, _ = setup()
            with PeakMemory(DEVICE) as mem:
                start = time.perf_counter()
                target(*args)
                seconds = time.perf_counter() - start
            warmup, rounds = _rounds(seconds)
            device_times.clear()
            benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup)
        max_diff = _max_diff(case, out)
    finally:
        for p in params:
            p.grad = None
    _record(benchmark, case, mem.peak, max_diff, rounds, device_times[warmup:])


def _record(benchmark, case: Case, peak, max_diff, rounds, device_times) -> None:
    if case.suite == "encoder":
        macs = cost.count(case.model, case.in_size).encoder_macs
    else:
        macs = cost.count(case.model, case.in_size, out_size=case.out_size).decoder_macs
    flop = 2 * macs * (3 if case.pass_ == "fwd+bwd" else 1)
    median = None
    if rounds:
        median = benchmark.stats.stats.median
        if device_times:
            device_median = statistics.median(s.elapsed_time(e) / 1e3 for s, e in device_times)
            benchmark.extra_info["device_median_s"] = device_median
            median = device_median
    benchmark.extra_info.update(
        suite=case.suite, model=case.model, backend=case.backend, in_size=list(case.in_size),
        scale=list(case.scale), out_size=list(case.out_size), dtype=dtype_text(case.dtype),
        **{"pass": case.pass_}, macs=macs, flop=flop,
        gflops=flop / median / 1e9 if median else None, peak_bytes=peak, max_diff=max_diff,
        rounds=rounds, **_versions())


@pytest.fixture
def bench_case(benchmark):
    """``bench_case(case)`` benchmarks one :class:`Case`."""
    return lambda case: run_case(benchmark, case)


@pytest.fixture(autouse=True)
def _bench_settings():
    """``_THREADS`` intra-op threads (tests/conftest.py pins one for the session when both
    directories run together), and no TF32 on CUDA: float32 means float32."""
    threads = torch.get_num_threads()
    torch.set_num_threads(_THREADS)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    torch.set_num_threads(threads)
