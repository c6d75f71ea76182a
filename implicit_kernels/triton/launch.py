"""Launching the decoders' Triton kernels: the autotuning lists (:data:`CONFIGS`,
:data:`BACKWARD_CONFIGS`), a configuration pinned by ``IK_TRITON_CONFIG`` or by tests
(:func:`pinned`, :func:`tuning`), autotuned kernels (:class:`Tuned`) and their launch
(:func:`launch`: autotuned on GPU, one fixed configuration under the interpreter), and the
host-side sizes and outputs of a launch: register blocks, chunk sizes, NaN-poisoned
outputs, ``tl.dot`` precision.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

#: The autotuning list, ``(ROWS, BLOCK_N, num_warps, num_stages)``.  Short on purpose:
#: each entry compiles once per kernel, dtype and argument specialisation (1–17 s each for
#: sm_90), and each (key, size bucket) benchmarks all of them.  A tile's activations are
#: ``[ROWS, 256]`` fp32 in registers, so the warps grow with the rows; the 64- and
#: 128-row tiles feed Hopper's ``wgmma`` (ROWS % 64 == 0), whose warp groups of 4 take
#: 64 rows each: 8 warps on 64 rows duplicate operands and spill, 4 or 16 do not
#: (scripts/triton_compile_check.py prints registers and spills; bench/NOTES.md).
CONFIGS = ((16, 32, 4, 2), (32, 32, 4, 2), (64, 32, 4, 2), (128, 32, 16, 2))
#: The backward kernels' list: :data:`CONFIGS` with the 128-row tile replaced by 64 rows on
#: 8 warps.  A backward tile holds at least its input and the input's gradient as
#: ``[ROWS, 256]`` fp32: at 128 rows that is 256 KB, the whole register file of an SM, so
#: it spills at any warp count; at 64 rows on 8 warps the two take 64 registers per thread
#: each (DIIF coarse backward: no spill).  As long as :data:`CONFIGS`, so that the
#: autotuning tests' timer (which picks the n-th benchmarked configuration) fits both.
BACKWARD_CONFIGS = CONFIGS[:3] + ((64, 32, 8, 2),)
#: The interpreter's tile when nothing is pinned (it runs each program in Python: few,
#: large programs).
INTERPRETER_CONFIG = (64, 32, 4, 2)
#: ``IK_TRITON_CONFIG="ROWS,BLOCK_N,WARPS,STAGES"`` pins one configuration for every launch
#: (no autotuning: tests and first GPU runs compile one configuration per kernel).
PIN_VARIABLE = "IK_TRITON_CONFIG"

_pin = None        # set by pinned(): the tests' override of the environment's pin
_do_bench = None   # set by tuning(): the autotuner's timing function (None: the GPU's)
_tuned = []        # every Tuned, so tuning() can forget their choices


def _parse_pin(text):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise ValueError(f"{PIN_VARIABLE} must be four positive integers "
                         f"ROWS,BLOCK_N,WARPS,STAGES (e.g. 32,32,8,2); got {text!r}")
    return values


def pinned_config():
    """The pinned ``(ROWS, BLOCK_N, num_warps, num_stages)``: :func:`pinned`'s, else
    ``IK_TRITON_CONFIG``'s (read at each launch), else ``None``."""
    if _pin is not None:
        return _pin
    text = os.environ.get(PIN_VARIABLE)
    return _parse_pin(text) if text else None


def fixed_config():
    """The configuration of every launch when none is autotuned: the pinned one, else the
    interpreter's under ``TRITON_INTERPRET=1``; ``None`` on GPU without a pin (autotune).
    Within :func:`tuning` only :func:`pinned` counts (an environment pin would make the
    autotuning tests test nothing)."""
    if _do_bench is not None:
        return _pin
    pin = pinned_config()
    return INTERPRETER_CONFIG if pin is None and INTERPRET else pin


def smallest_rows():
    """The smallest ``ROWS`` a launch may use (listed, pinned or the interpreter's): per-tile
    partial buffers have ``cdiv(n, smallest_rows())`` slots."""
    fixed = fixed_config()
    return min([c[0] for c in CONFIGS + BACKWARD_CONFIGS] + ([fixed[0]] if fixed else []))


def listed_configs():
    """Every configuration of :data:`CONFIGS` and :data:`BACKWARD_CONFIGS`, once each."""
    return tuple(dict.fromkeys(CONFIGS + BACKWARD_CONFIGS))


def gpu_configs(configs=CONFIGS):
    """``configs`` as ``triton.Config`` objects."""
    return [_triton_config(c) for c in configs]


def _triton_config(config):
    rows, block_n, warps, stages = config
    return triton.Config({"ROWS": rows, "BLOCK_N": block_n}, num_warps=warps,
                         num_stages=stages)


def size_bucket(n_rows):
    """The problem-size part of an autotuning key: ``n_rows`` rounded up to a power of 4
    within ``[4^5, 4^10]`` (one choice for a tiny test grid, another for a 2^14 or a 2^20
    chunk)."""
    exponent = (max(int(n_rows), 1) - 1).bit_length()
    return 4 ** min(10, max(5, (exponent + 1) // 2))


class Tuned:
    """A kernel (``fn``, a ``triton.jit`` function) with its autotuning key (argument names,
    plus the row count's :func:`size_bucket`) and the buffers to zero before each
    benchmarked configuration (``reset_to_zero``: buffers it adds into, or whose slots a
    configuration with larger tiles leaves unwritten)."""

    def __init__(self, fn, key, reset_to_zero=(), configs=CONFIGS):
        self.fn, self.key, self.reset_to_zero = fn, list(key), list(reset_to_zero)
        self.configs = configs
        self.tuners = {}
        _tuned.append(self)

    def tuner(self, n_rows):
        """The ``triton.autotune`` wrapper for ``n_rows``'s size bucket."""
        bucket = size_bucket(n_rows)
        if bucket not in self.tuners:
            self.tuners[bucket] = triton.autotune(
                gpu_configs(self.configs), key=self.key, reset_to_zero=self.reset_to_zero or None,
                do_bench=_do_bench)(self.fn)
        return self.tuners[bucket]


def autotuned(kernel, key, reset_to_zero=(), configs=CONFIGS):
    """``kernel`` autotuned over ``configs`` (:data:`CONFIGS`, or :data:`BACKWARD_CONFIGS`
    for a backward kernel) with ``key`` (see :class:`Tuned`)."""
    return Tuned(kernel, key, reset_to_zero, configs)


def tuned_for(fn):
    """The :class:`Tuned` of ``triton.jit`` function ``fn`` (``None`` if it has none)."""
    return next((t for t in _tuned if t.fn is fn), None)


@contextlib.contextmanager
def pinned(config):
    """Within: every launch uses ``config`` ``(ROWS, BLOCK_N, num_warps, num_stages)``."""
    global _pin
    saved, _pin = _pin, tuple(config)
    try:
        yield
    finally:
        _pin = saved


@contextlib.contextmanager
def tuning(do_bench):
    """Within: launches are autotuned, also under the interpreter, timing each
    configuration with ``do_bench(kernel_call, quantiles)`` (triton's interface), with
    every earlier choice forgotten on entry and exit."""
    global _do_bench
    saved, _do_bench = _do_bench, do_bench
    for tuned in _tuned:
        tuned.tuners.clear()
    try:
        yield
    finally:
        _do_bench = saved
        for tuned in _tuned:
            tuned.tuners.clear()


def block(width):
    """Register block for a width: the next power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(width))


def launch(kernel, n_rows, *args, **meta):
    """Launch ``kernel`` (a :class:`Tuned`) over ``cdiv(n_rows, ROWS)`` programs (times any
    extra grid axes given as ``grid_extra``) with the :func:`fixed_config`, or autotuned."""
    extra = meta.pop("grid_extra", ())
    fixed = fixed_config()
    if fixed is None:
        kernel.tuner(n_rows)[lambda m: (triton.cdiv(n_rows, m["ROWS"]), *extra)](*args, **meta)
    else:
        rows, block_n, warps, stages = fixed
        kernel.fn[(triton.cdiv(n_rows, rows), *extra)](
            *args, ROWS=rows, BLOCK_N=block_n, num_warps=warps, num_stages=stages, **meta)


#: The least queries per chunk :func:`chunk_for_memory` picks: enough to fill a GPU for
#: many waves and to make a 1440p decode a handful of chunks (the per-chunk host work is
#: then negligible against the kernels).
MIN_GPU_CHUNK = 1 << 20


def chunk_for_memory(bytes_per_query, free_bytes, least=MIN_GPU_CHUNK):
    """Queries per chunk for a device with ``free_bytes`` free: the largest power of two
    whose chunk (``bytes_per_query`` each) takes at most half of it, but at least
    ``least`` (smaller chunks would make the decode host-bound)."""
    fits = max(1, free_bytes // 2 // max(1, bytes_per_query))
    return max(least, 1 << (fits.bit_length() - 1))


def empty(*shape, device, dtype):
    """``torch.empty`` for a kernel's output, poisoned when ``IK_POISON=1`` (as the C++
    operators' outputs; tests/conftest.py sets it): NaN, or -1 for integer indices, so an
    element a kernel forgets fails the tests instead of passing with stale memory."""
    out = torch.empty(*shape, device=device, dtype=dtype)
    if os.environ.get("IK_POISON") == "1":
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def precision(tensor):
    """``tl.dot`` input precision: tf32 for fp32 CUDA tensors when PyTorch allows it."""
    tf32 = (tensor.dtype == torch.float32 and tensor.is_cuda
            and torch.backends.cuda.matmul.allow_tf32)
    return "tf32" if tf32 else "ieee"
