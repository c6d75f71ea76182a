"""``python -m bench.cuda_compile``: the compile report of the CUDA kernels, without a GPU.

Every ``csrc/cuda/*.cu`` is compiled by nvcc for sm_80 and sm_90 with ``-Xptxas -v``
(the flags of tests/test_cuda_compile.py, which also fails on any spill); for each kernel
and architecture the report gives registers, static shared memory, stack frame, spills,
the dynamic shared memory its launch asks for at the papers' width (256) and the
theoretical occupancy those imply for 256-thread blocks:

    blocks/SM = min(warp slots, register file, shared memory, 32)

with registers allocated per warp in units of 256 and 1 KiB of shared memory reserved
per block (CUDA's occupancy rules for compute capability 8.0 and 9.0).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
ARCHS = ("sm_80", "sm_90")
ARCH_FLAGS = [flag for arch in ARCHS
              for flag in ("-gencode", f"arch=compute_{arch[3:]},code={arch}")]
#: Per multiprocessor: shared memory for blocks (bytes), register file, warp slots.
SHARED_PER_SM = {"sm_80": 164 * 1024, "sm_90": 228 * 1024}
REGISTERS_PER_SM = 65536
WARPS_PER_SM = 64
BLOCK_THREADS = 256
#: The fused kernels' tiles (csrc/cuda/tile_sizes.h): rows per tile, and the row stride
#: of a 256-wide activation tile (tile_ld: 8 elements of padding).
TILE_ROWS, TILE_LD = 32, 256 + 8
ELEMENT_BYTES = {"float": 4, "double": 8, "__half": 2, "__nv_bfloat16": 2}


def nvcc_command(nvcc: str, source: Path, output: Path) -> list[str]:
    """The compile-check command of ``source`` (both architectures, ptxas usage)."""
    return [nvcc, "-std=c++17", "-I", str(CSRC / "include"), "-I", str(CSRC), *ARCH_FLAGS,
            "-Xptxas", "-v", "-c", str(source), "-o", str(output)]


@dataclass
class Usage:
    """One kernel's resources on one architecture, as ptxas reports them."""
    kernel: str  # mangled name
    arch: str
    registers: int = 0
    shared_bytes: int = 0  # static
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0

    @property
    def spills(self) -> bool:
        return bool(self.spill_stores or self.spill_loads)


_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?, (\d+) bytes smem)?")


def parse_ptxas(text: str) -> list[Usage]:
    """The kernels (entry functions) of a ``-Xptxas -v`` log, in order."""
    usages, current = [], None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = Usage(m.group(1), m.group(2))
            usages.append(current)
        elif current is None:
            continue
        elif m := _FRAME.search(line):
            current.stack_bytes, current.spill_stores, current.spill_loads = map(int, m.groups())
        elif m := _USED.search(line):
            current.registers = int(m.group(1))
            current.shared_bytes = int(m.group(2) or 0)
            current = None  # the entry's report is complete
    return usages


def demangle(names: list[str]) -> list[str]:
    """Readable kernel names (``c++filt``; the mangled names where it is missing)."""
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                             text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names
    # void ik::diif::(anonymous namespace)::coarse_kernel<float, float>(...)
    #   -> coarse_kernel<float, float>
    short = [re.sub(r"\(.*$", "", n.replace("(anonymous namespace)::", "")).split("::")[-1]
             for n in out]
    return short if len(short) == len(names) else names


def dynamic_bytes(kernel: str) -> int:
    """Dynamic shared memory the launch of a fused kernel asks for at width 256: its
    activation tile (the storage type) and accumulator tile (float for the half types);
    0 for the element-wise kernels."""
    if "fused" not in kernel and not kernel.startswith(("coarse", "fine")):
        return 0
    args = re.search(r"<([^,>]+)", kernel)
    storage = ELEMENT_BYTES.get(args.group(1).strip() if args else "", 4)
    accumulate = 4 if storage == 2 else storage
    act = -(-TILE_ROWS * TILE_LD * storage // 128) * 128
    return act + TILE_ROWS * TILE_LD * accumulate


def blocks_per_sm(u: Usage, dynamic: int) -> int:
    warps = BLOCK_THREADS // 32
    per_warp_registers = -(-max(u.registers, 1) * 32 // 256) * 256
    by_registers = REGISTERS_PER_SM // (per_warp_registers * warps)
    by_shared = SHARED_PER_SM[u.arch] // (u.shared_bytes + dynamic + 1024)
    return min(WARPS_PER_SM // warps, by_registers, by_shared, 32)


def report(nvcc: str, sources: list[Path]) -> str:
    """The markdown table of every kernel of ``sources``."""
    lines = ["| file | kernel | arch | registers | static smem | dynamic smem (width 256) | "
             "stack | spills | blocks/SM | occupancy |", "|" + "---|" * 10]
    with tempfile.TemporaryDirectory() as scratch:
        for source in sources:
            proc = subprocess.run(nvcc_command(nvcc, source, Path(scratch) / "k.o"),
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"nvcc failed on {source.name}:\n{proc.stderr[-3000:]}")
            usages = parse_ptxas(proc.stderr)
            for u, name in zip(usages, demangle([u.kernel for u in usages])):
                dyn = dynamic_bytes(name)
                blocks = blocks_per_sm(u, dyn)
                spills = f"{u.spill_stores}/{u.spill_loads} B" if u.spills else "0"
                lines.append(f"| {source.name} | `{name}` | {u.arch} | {u.registers} | "
                             f"{u.shared_bytes:,} | {dyn:,} | {u.stack_bytes} | {spills} | "
                             f"{blocks} | {blocks * BLOCK_THREADS // 32 / WARPS_PER_SM:.0%} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nvcc", default="nvcc")
    parser.add_argument("sources", nargs="*", type=Path,
                        default=sorted((CSRC / "cuda").glob("*.cu")))
    args = parser.parse_args(argv)
    print(report(args.nvcc, args.sources))


if __name__ == "__main__":
    main()
