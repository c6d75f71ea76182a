"""The benchmark case grid: :class:`Case` and the pytest params of the decoder and encoder
benchmarks (:func:`decoder_cases`, :func:`encoder_cases`), read by bench/conftest.py.

Each bench/test_*.py parametrises over backend, scale (``SCALES``: integers, ×2.7 and
(2.5, 4)), dtype (float32; on CUDA also bfloat16 and float16) and pass (``PASSES``).
Backends are read from ``backends.BACKENDS`` at collection, so backends registered later
are benchmarked without editing this file, plus ``"torch+compile"``: ``torch.compile`` of
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
"""
from __future__ import annotations

import importlib.util
import itertools
import math
import os
import shutil
from dataclasses import dataclass

import pytest
import torch

from implicit_kernels import backends, cost

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
FEAT_CHANNELS = cost.FEAT_CHANNELS


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
