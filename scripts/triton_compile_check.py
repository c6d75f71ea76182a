"""Compile every Triton kernel of the decoders for sm_90 without a GPU and print registers,
spills and shared memory per configuration
(``python scripts/triton_compile_check.py [decoder ...] [--quick]``).

The interpreter (``TRITON_INTERPRET=1``, how the kernels are tested on CPU) is lax about
types and layouts; a real GPU compilation is not.  The kernels' signatures come from
real launches: a subprocess under the interpreter runs each decoder's forward and
backward through :mod:`implicit_kernels.functional` (``backend="triton"``, the papers'
widths from the ``models`` defaults, tiny inputs) with fp32 and with bf16 inputs, recording every
:func:`implicit_kernels.triton.launch.launch` (:func:`record`).  This process then
compiles each recorded kernel with ``triton.compile`` on an ``ASTSource`` for
``GPUTarget("cuda", 90, 32)`` over each kernel's autotuning list (``launch.CONFIGS``, or
``launch.BACKWARD_CONFIGS`` for a backward kernel) and the dtypes fp32 (IEEE
``tl.dot``), tf32 (fp32 inputs) and bf16, and runs the ptxas that ships with triton
(``-v``) on the PTX for the resource counts: no CUDA toolkit or GPU is needed.
``--quick``: the first configuration (ROWS 16, BLOCK_N 32, 4 warps, 2 stages), tf32
and bf16 only (tests/test_triton_compile.py).

Each argument is compiled with the specialisation the recorded launch would get from
``triton.jit`` (:func:`specialization`): pointers whose address is a multiple of 16 and
integers that are multiples of 16 carry ``tt.divisibility = 16`` (what lets the
compiler use vector loads of weights and rows), integers equal to 1 become constants.
The recording decodes 64 queries per image, a multiple of 16 like a full chunk.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.backends.nvidia.compiler  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from implicit_kernels.triton import grid  # noqa: E402
from implicit_kernels.triton import launch as triton_launch  # noqa: E402

DECODERS = ("diif", "liif", "lte", "hiif")
TARGET = GPUTarget("cuda", 90, 32)
#: Table label → (dtype of the recorded inputs, ``tl.dot`` input precision).
DTYPES = {"fp32": ("fp32", "ieee"), "tf32": ("fp32", "tf32"), "bf16": ("bf16", "ieee")}
QUICK_DTYPES = ("bf16", "tf32")
#: The decoders' input dtypes for the recording.
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: The backend whose ``parse_attr`` turns a specialisation into compile attributes.
BACKEND = triton.backends.nvidia.compiler.CUDABackend
PTXAS = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "ptxas")


# ----------------------------------------------------------------------------------------
# Recording (in a subprocess under the interpreter)
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel as a decoder launched it with ``dtype`` (``"fp32"``/``"bf16"``) inputs.

    ``types``: the launcher's type of each runtime argument (``*bf16``, ``*i64``,
    ``i32``, ``fp32``...; ``constexpr`` for an integer equal to 1); ``attrs``: its
    specialisation (``"D"``: divisible by 16, ``""``: none; ``None`` for floats; the value
    for a ``constexpr`` one); ``constexprs``: the values of the others, but ``ROWS`` and
    ``BLOCK_N``, which :func:`triton_launch.launch` sets from the configuration;
    ``options``: compile options such as ``enable_fp_fusion``."""
    decoder: str
    dtype: str
    module: str
    name: str
    types: dict
    attrs: dict
    constexprs: dict
    options: dict

    @property
    def kernel(self):
        """The ``triton.jit`` function, looked up by module and name in this process."""
        return getattr(importlib.import_module(self.module), self.name)

    def key(self):
        """What makes two launches compile alike (runtime scalars' values do not)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _python_function(kernel):
    """The Python function under a launched kernel: an ``InterpretedFunction`` under the
    interpreter, a ``JITFunction`` or an ``Autotuner`` around one on GPU (each has
    ``.fn``)."""
    while hasattr(kernel, "fn"):
        kernel = kernel.fn
    return kernel


def specialization(arg):
    """``(type, specialisation)`` of a launch argument as ``triton.jit`` computes it for
    its cache key and compile attributes (the C++ ``native_specialize_impl`` of triton
    3.7, with alignment specialisation on, as for an unannotated argument)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    return tuple(native_specialize_impl(BaseBackend, arg, False, True, True))


@contextlib.contextmanager
def _recording(decoder, dtype, launches):
    """Within: each :func:`triton_launch.launch` is appended to ``launches`` (as a
    :class:`Launch` of ``decoder`` with ``dtype`` inputs), then run with the options that
    are no kernel argument (the GPU's ``grid.NO_FMA``) left out, as the interpreter takes
    none."""
    # The launcher's own type names, and triton's own reading of the annotations (an
    # InterpretedFunction has no parameter list).
    from triton.runtime.jit import JITFunction

    real_launch = triton_launch.launch

    def launch(kernel, n_rows, *args, **meta):
        fn = _python_function(kernel)
        params = JITFunction(fn).params
        names = [p.name for p in params]
        options = {k: meta.pop(k) for k in list(meta) if k not in names and k != "grid_extra"}
        given = {**dict(zip(names, args)), **{k: v for k, v in meta.items() if k in names}}
        specs = {p.name: specialization(given[p.name]) for p in params if not p.is_constexpr}
        constexprs = {p.name: given[p.name] for p in params
                      if p.is_constexpr and p.name in given}
        launches.append(Launch(decoder, dtype, fn.__module__, fn.__name__,
                               {k: v[0] for k, v in specs.items()},
                               {k: v[1] for k, v in specs.items()}, constexprs, options))
        real_launch(kernel, n_rows, *args, **meta)

    triton_launch.launch = launch  # the decoders look launch.launch up at each call
    try:
        yield
    finally:
        triton_launch.launch = real_launch


def _decode(decoder, dtype):
    """Forward and backward of ``decoder`` through its ``models`` decode (which calls
    :mod:`implicit_kernels.functional`; the models' defaults are the papers' widths) on a
    3×4 feature map of 4 channels decoded to 8×8 (64 queries: row counts divisible by
    16, as a full chunk's), all inputs ``dtype``."""
    import models

    model = models.make(f"edsr-baseline-{decoder}",
                        encoder_kwargs={"n_resblocks": 1, "n_feats": 4}).to(dtype)
    feat = torch.randn(1, 4, 3, 4, dtype=dtype, requires_grad=True)
    inp = torch.randn(1, 3, 3, 4, dtype=dtype, requires_grad=True)
    out = model.decode(feat, inp, (8, 8), backend="triton")
    out.backward(torch.randn_like(out))


def _record_in_process(decoders, no_fma):
    """Every launch of :func:`_decode` for ``decoders`` and both dtypes, once each (this
    process must run under the interpreter)."""
    assert triton_launch.INTERPRET, "recording runs the kernels under TRITON_INTERPRET=1"
    grid.NO_FMA = no_fma  # the call sites read it at each launch
    launches = []
    for decoder in decoders:
        for dtype in ("fp32", "bf16"):
            with _recording(decoder, dtype, launches):
                _decode(decoder, TORCH_DTYPES[dtype])
    unique = {launch.key(): launch for launch in launches}
    return list(unique.values())


def record(decoders=DECODERS):
    """The distinct launches of ``decoders`` (forward and backward, fp32 and bf16
    inputs), recorded in a subprocess under the interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        run = subprocess.run([sys.executable, __file__, "--record", out.name,
                              json.dumps(grid.NO_FMA), *decoders],
                             env=env, cwd=ROOT, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"recording the launches failed:\n{run.stderr[-4000:]}")
        return [Launch(**fields) for fields in json.load(out)]


# ----------------------------------------------------------------------------------------
# Compiling (in a normal process)
# ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Build:
    """One compilation: a recorded launch with a table dtype's ``tl.dot`` precision and an
    autotuning configuration."""
    launch: Launch
    label: str
    config: triton.Config

    def compile(self):
        """The kernel compiled for sm_90 as a launch would compile it: the recorded
        argument types, specialisations and constexprs, the configuration's tile, warps
        and stages, the label's precision, the launch's options."""
        kernel = self.launch.kernel
        constexprs = {**self.launch.constexprs, **self.config.kwargs,
                      "PRECISION": DTYPES[self.label][1]}
        signature, attrs = {}, {}
        for i, p in enumerate(kernel.params):
            kind = "constexpr" if p.is_constexpr else self.launch.types[p.name]
            signature[p.name] = kind
            spec = self.launch.attrs.get(p.name)
            if kind == "constexpr" and not p.is_constexpr:  # an integer equal to 1
                constexprs[p.name] = spec
            elif isinstance(spec, str):
                attrs[(i,)] = BACKEND.parse_attr(spec)
        options = {"num_warps": self.config.num_warps, "num_stages": self.config.num_stages,
                   **self.launch.options}
        return triton.compile(ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs),
                              target=TARGET, options=options)

    def title(self):
        cfg = self.config
        return (f"{self.launch.decoder + '.' + self.launch.name:32} {self.label} "
                f"{cfg.kwargs['ROWS']:4} {cfg.kwargs['BLOCK_N']:3} {cfg.num_warps} "
                f"{cfg.num_stages}")


def builds(launches, quick=False, labels=None):
    """The compilations of ``launches``, by kernel (in launch order), table dtype (each
    from the launches with its input dtype) and configuration: every configuration of the
    kernel's autotuning list and every dtype, or (``quick``) the first configuration in bf16
    and tf32;
    ``labels`` narrows the dtypes."""
    kernels = list(dict.fromkeys((launch.decoder, launch.name) for launch in launches))
    labels = labels or (QUICK_DTYPES if quick else tuple(DTYPES))
    return [Build(launch, label, config)
            for kernel in kernels for label in labels for launch in launches
            if (launch.decoder, launch.name) == kernel and launch.dtype == DTYPES[label][0]
            for config in triton_launch.gpu_configs(
                triton_launch.tuned_for(launch.kernel).configs)[:1 if quick else None]]


def resources(compiled):
    """``(registers, spill store bytes, spill load bytes)`` from ``ptxas -v`` on the PTX."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(compiled.asm["ptx"])
        ptx.flush()
        log = subprocess.run([PTXAS, "-v", "--gpu-name", "sm_90a", ptx.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    stores, loads = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads",
                                       log).groups())
    return regs, stores, loads


def check(build):
    """Compile ``build``: ``(registers, table line)``, or ``(None, line with the error)``
    when it does not compile."""
    try:
        compiled = build.compile()
    except Exception as error:  # noqa: BLE001 -- every compile error is a finding
        # A CompilationError in a called jit function is the cause of one at each call
        # site: the innermost has the reason and the offending source.
        while error.__cause__ is not None:
            error = error.__cause__
        return None, f"{build.title()} -> FAILED: {type(error).__name__} {error}"
    regs, stores, loads = resources(compiled)
    return regs, (f"{build.title()} -> {regs} regs, spills {stores}/{loads} B st/ld, "
                  f"{compiled.metadata.shared} B shared")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("decoders", nargs="*", metavar="decoder",
                        help=f"any of {', '.join(DECODERS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="the first configuration only, bf16 and tf32 only")
    parser.add_argument("--dtype", action="append", choices=tuple(DTYPES),
                        help="only these table dtypes (repeatable; default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.decoders) - set(DECODERS)
    if unknown:
        parser.error(f"unknown decoders {sorted(unknown)}; choose from {', '.join(DECODERS)}")
    print("sm_90, widths 256: kernel dtype ROWS BLOCK_N warps stages -> registers, spills, "
          "shared", flush=True)
    failed = False
    for build in builds(record(args.decoders or DECODERS), args.quick, args.dtype):
        regs, line = check(build)
        failed |= regs is None
        print(line, flush=True)
    return int(failed)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--record"]:  # the subprocess of record(): OUT NO_FMA DECODER...
        found = _record_in_process(sys.argv[4:], json.loads(sys.argv[3]))
        with open(sys.argv[2], "w") as out:
            json.dump([dataclasses.asdict(launch) for launch in found], out)
    else:
        sys.exit(main())
