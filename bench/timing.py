"""The timing protocol of the benchmarks (:func:`run_case`) and the ``extra_info`` it
records for bench/report.py.

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
* Runs rotate among ``workload.INPUT_SETS`` inputs, so repeats do not time a cache warm with
  one input.
* CPU threads: torch's default intra-op count; ``IK_BENCH_THREADS=n`` overrides it (on a
  machine busy with other jobs, 1 thread avoids threads spinning at barriers while
  their partner waits for a core).
* Every float32 case also checks its output against the ``reference`` backend (the
  demo's tolerance) where ``max_diff`` is computed: a fast wrong kernel fails here.

``extra_info`` of every benchmark (read by ``bench/report.py``): ``suite`` (``sweep``,
``headline``, ``encoder``), ``model``, ``backend``, ``in_size``, ``scale``,
``out_size``, ``dtype``, ``pass``, ``macs`` (of one forward, from
:func:`implicit_kernels.cost.count`: the papers' count, the same for every backend, so
``gflops`` compares backends on one scale), ``flop`` (2·MACs, ×3 for fwd+bwd: a
backward costs about two forwards), ``gflops`` (flop over the median time; on CUDA the
device-event median), ``peak_bytes`` (growth during one run, see ``PeakMemory``),
``max_diff`` (largest |difference| of the output from the ``reference`` backend run in
float32 on the same rounded weights and inputs, where the output has at most
``workload.DIFF_MAX_PIXELS`` pixels; ``None`` otherwise), ``device``, ``torch``, ``triton``,
``cuda``, ``threads``, ``rounds`` and, on CUDA, ``device_median_s``.
"""
from __future__ import annotations

import itertools
import math
import os
import statistics
import time

import torch

from implicit_kernels import cost
from implicit_kernels.apps.demo import PeakMemory

from . import workload
from .cases import COMPILE, DEVICE, ON_CUDA, Case, dtype_text

#: Intra-op threads of the benchmarks: ``IK_BENCH_THREADS``, else torch's default (as
#: when this module was imported, before any test ran).
THREADS = int(os.environ.get("IK_BENCH_THREADS") or torch.get_num_threads())


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


def runner(case: Case, fn, params):
    """``(target, setup, device_times)`` for pytest-benchmark's pedantic mode (and the
    runs of bench/cpu_headline.py).

    ``setup`` (untimed) picks the next input set and clears gradients; ``target`` runs
    one pass and waits for the device; on CUDA it appends each run's event pair to
    ``device_times``."""
    backward = case.pass_ == "fwd+bwd"
    sets = workload.input_sets(case.in_size, case.dtype)
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



def run_case(benchmark, case: Case) -> None:
    """Benchmark one case with pytest-benchmark's ``benchmark`` fixture (module docstring)
    and fill its ``extra_info``."""
    benchmark.group = (f"{case.suite} {case.model} {'x'.join(map(str, case.in_size))} "
                       f"{dtype_text(case.dtype)} {case.pass_}")
    model = workload.seeded_model(workload.model_name(case), case.dtype)
    if case.backend == COMPILE:
        torch._dynamo.reset()  # compile afresh: no recompile limit across sizes and cases
        fn = torch.compile(workload.forward(case, model, "torch"), dynamic=False)
    else:
        fn = workload.forward(case, model, case.backend)
    params = list(model.parameters())
    target, setup, device_times = runner(case, fn, params)
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
        max_diff = workload.max_diff(case, out)
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
