"""Compile the Triton kernels for sm_90 without a GPU and print registers and spills per
configuration (``python scripts/triton_compile_check.py [decoder ...]``).

Uses ``triton.compile`` on an ``ASTSource`` for ``GPUTarget("cuda", 90, 32)``, then the
ptxas that ships with triton (``-v``) on the PTX for the resource counts: no CUDA
toolkit or GPU is needed.  Run from the repository root with ``PYTHONPATH=.`` in a
worktree (the script's own folder is first on ``sys.path``).  Widths are the papers'
(256); each kernel's signature is listed in :data:`KERNELS`.
"""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.backends.nvidia
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from implicit_kernels.triton import diif, mlp

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"fp32": ("fp32", "ieee"), "tf32": ("fp32", "tf32"), "bf16": ("bf16", "ieee")}
PTXAS = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "ptxas")
WIDTH = mlp.block(256)


def _pointers(names, dtype, exceptions):
    """``*dtype`` for each pointer name, ``exceptions`` overriding (e.g. int tables)."""
    return {name: exceptions.get(name, f"*{dtype}") for name in names}


# Per kernel: (decoder, kernel, pointer names, fixed pointer types, int arguments,
# constexprs besides ROWS/BLOCK_N/PRECISION).
_DIIF_COARSE = ["slices_ptr", "corner_ptr", "wc_ptr", "b0_ptr", "w1_ptr", "b1_ptr", "wh_ptr"]
_DIIF_FINE = ["pixels_ptr", "slice_ptr", "g_ptr", "wd_ptr", "bd_ptr", "w1_ptr", "b1_ptr", "w2_ptr"]
_DIIF_TYPES = {"slices_ptr": "*i32", "pixels_ptr": "*i64", "slice_ptr": "*i64", "g_ptr": "*fp32",
               "dg_ptr": "*fp32", "act_ptr": "*fp32", "hidden_ptr": "*fp32",
               "delta_ptr": "*fp32", "dpre_ptr": "*fp32", "dz_ptr": "*fp32"}
_DIIF_COARSE_INTS = ["S", "H", "W", "HO", "WO", "DC", "DF"]
_DIIF_FINE_INTS = ["P", "H", "W", "HO", "WO", "DF", "DH", "NOUT"]
KERNELS = {
    "diif_coarse": ("diif", diif._coarse_kernel, _DIIF_COARSE + ["g_ptr"], _DIIF_TYPES,
                    _DIIF_COARSE_INTS, {"BLOCK_C": WIDTH, "BLOCK_F": WIDTH}),
    "diif_fine": ("diif", diif._fine_kernel, _DIIF_FINE + ["b2_ptr", "out_ptr"], _DIIF_TYPES,
                  _DIIF_FINE_INTS, {"BLOCK_F": WIDTH, "BLOCK_O": 16}),
    "diif_coarse_bwd": ("diif", diif._coarse_backward_kernel,
                        _DIIF_COARSE + ["dg_ptr", "act_ptr", "hidden_ptr", "delta_ptr", "dpre_ptr"],
                        _DIIF_TYPES, _DIIF_COARSE_INTS, {"BLOCK_C": WIDTH, "BLOCK_F": WIDTH}),
    "diif_fine_bwd": ("diif", diif._fine_backward_kernel,
                      _DIIF_FINE + ["dout_ptr", "act_ptr", "hidden_ptr", "delta_ptr", "dz_ptr"],
                      _DIIF_TYPES, _DIIF_FINE_INTS, {"BLOCK_F": WIDTH, "BLOCK_O": 16}),
}


def compile_kernel(fn, pointers, ints, constexprs, num_warps, num_stages):
    signature = {name: "i32" for name in ints}
    signature.update(pointers)
    signature.update({name: "constexpr" for name in constexprs})
    src = ASTSource(fn, signature, constexprs=constexprs)
    return triton.compile(src, target=TARGET,
                          options={"num_warps": num_warps, "num_stages": num_stages})


def resources(kernel):
    """``(registers, spill store bytes, spill load bytes)`` from ``ptxas -v`` on the PTX."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(kernel.asm["ptx"])
        ptx.flush()
        log = subprocess.run([PTXAS, "-v", "--gpu-name", "sm_90a", ptx.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    stores, loads = map(int, re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads",
                                       log).groups())
    return regs, stores, loads


def main(decoders):
    print("sm_90, widths 256: kernel dtype ROWS BLOCK_N warps stages -> registers, spills, shared")
    for name, (decoder, fn, pointers, types, ints, constexprs) in KERNELS.items():
        if decoders and decoder not in decoders:
            continue
        for (label, (dtype, precision)), cfg in itertools.product(DTYPES.items(), mlp.gpu_configs()):
            rows, bn = cfg.kwargs["ROWS"], cfg.kwargs["BLOCK_N"]
            k = compile_kernel(fn, _pointers(pointers, dtype, types), ints,
                               {**constexprs, "ROWS": rows, "BLOCK_N": bn, "PRECISION": precision},
                               cfg.num_warps, cfg.num_stages)
            regs, stores, loads = resources(k)
            print(f"{name:16} {label} {rows:4} {bn:3} {cfg.num_warps} {cfg.num_stages} -> "
                  f"{regs} regs, spills {stores}/{loads} B st/ld, {k.metadata.shared} B shared",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
