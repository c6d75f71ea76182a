"""Compile the Triton DIIF kernels for sm_90 without a GPU and print registers and
spills per configuration (``python scripts/triton_compile_check.py``).

Uses ``triton.compile`` on an ``ASTSource`` for ``GPUTarget("cuda", 90, 32)``, then the
ptxas that ships with triton (``-v``) on the PTX for the resource counts: no CUDA
toolkit or GPU is needed.  Run from the repository root with ``PYTHONPATH=.`` in a
worktree (the script's own folder is first on ``sys.path``).
"""
from __future__ import annotations

import itertools
import os
import re
import subprocess
import tempfile

import triton
import triton.backends.nvidia
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from implicit_kernels.triton import diif

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"fp32": ("fp32", "ieee"), "tf32": ("fp32", "tf32"), "bf16": ("bf16", "ieee")}


def compile_kernel(fn, pointers, ints, constexprs, num_warps, num_stages):
    signature = {name: "i32" for name in ints}
    signature.update(pointers)
    signature.update({name: "constexpr" for name in constexprs})
    src = ASTSource(fn, signature, constexprs=constexprs)
    return triton.compile(src, target=TARGET,
                          options={"num_warps": num_warps, "num_stages": num_stages})


PTXAS = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "ptxas")


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


def main(width=256):
    block = diif._block(width)
    print(f"sm_90, widths {width}: kernel dtype rows BLOCK_N warps stages -> registers, spills, shared")
    for (label, (dtype, precision)), cfg in itertools.product(DTYPES.items(),
                                                              diif._gpu_configs("ROWS")):
        rows, bn = cfg.kwargs["ROWS"], cfg.kwargs["BLOCK_N"]
        coarse = compile_kernel(
            diif._coarse_kernel,
            {"slices_ptr": "*i32", "corner_ptr": f"*{dtype}", "wc_ptr": f"*{dtype}",
             "b0_ptr": f"*{dtype}", "w1_ptr": f"*{dtype}", "b1_ptr": f"*{dtype}",
             "wh_ptr": f"*{dtype}", "g_ptr": "*fp32"},
            ["S", "H", "W", "HO", "WO", "DC", "DF"],
            {"BLOCK_S": rows, "BLOCK_C": block, "BLOCK_F": block, "BLOCK_N": bn,
             "PRECISION": precision}, cfg.num_warps, cfg.num_stages)
        fine = compile_kernel(
            diif._fine_kernel,
            {"pixels_ptr": "*i64", "slice_ptr": "*i64", "g_ptr": "*fp32", "wd_ptr": f"*{dtype}",
             "bd_ptr": f"*{dtype}", "w1_ptr": f"*{dtype}", "b1_ptr": f"*{dtype}",
             "w2_ptr": f"*{dtype}", "b2_ptr": f"*{dtype}", "out_ptr": f"*{dtype}"},
            ["P", "H", "W", "HO", "WO", "DF", "DH", "NOUT"],
            {"BLOCK_P": rows, "BLOCK_F": block, "BLOCK_N": bn, "BLOCK_O": 16,
             "PRECISION": precision}, cfg.num_warps, cfg.num_stages)
        for name, k in (("coarse", coarse), ("fine", fine)):
            regs, stores, loads = resources(k)
            print(f"{name:6} {label} {rows:4} {bn:3} {cfg.num_warps} {cfg.num_stages} -> "
                  f"{regs} regs, spills {stores}/{loads} B st/ld, {k.metadata.shared} B shared")


if __name__ == "__main__":
    main()
