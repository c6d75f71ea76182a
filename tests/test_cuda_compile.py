"""CUDA sources compile for sm_80 and sm_90, without a GPU (needs only nvcc).

* every ``csrc/cuda/*.cu`` is compiled with ``-Xptxas -v`` (registers and spills are
  printed with ``pytest -s`` / on failure; no kernel may spill; ``python -m
  bench.cuda_compile`` tabulates them), and so are the CUDA emulation's test kernels
  (the nvcc form of ``IK_LAUNCH`` and ``IK_SHARED``); kernel files use those macros;
* a generated translation unit calls every ``ik/geometry.h`` function from a
  ``__global__`` kernel, proving the shared header is device code too;
* ``.cu`` files and the shared headers must not include ATen/torch/c10: the CPU torch
  wheel lacks the CUDA headers those need, and keeping kernels torch-free lets this
  check run on CPU machines;
* the CUDA tensor glue (``csrc/cuda/*.cpp``, and the operators with ``IK_WITH_CUDA``),
  built only in CUDA builds, passes the host compiler's syntax check against the
  installed torch's headers.

Skipped when nvcc is not installed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import cuda_compile

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CU_FILES = sorted((CSRC / "cuda").glob("*.cu"))
#: The CUDA emulation's test kernels (tests/test_cuda_emulation.py): IK_LAUNCH and
#: IK_SHARED (csrc/cuda/launch.h) in their nvcc form.
EMULATOR_TEST_KERNELS = ROOT / "tests" / "cuda_emulation" / "emulator_kernels.cu"
HEADERS = sorted((CSRC / "include").rglob("*.h")) + sorted((CSRC / "cuda").glob("*.h"))
#: Host sources compiled only in CUDA builds, or with CUDA-only parts (IK_WITH_CUDA):
#: the CUDA glue, the operators' orchestration (csrc/*_decode.cpp) and their host helpers.
CUDA_HOST_SOURCES = (sorted((CSRC / "cuda").glob("*.cpp")) + sorted(CSRC.glob("*_decode.cpp"))
                     + [CSRC / "liif_ensemble.cpp"])
TORCH_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](ATen|torch|c10)/', re.MULTILINE)


def find_nvcc() -> str | None:
    """nvcc from CUDA_HOME if set, else from PATH."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


NVCC = find_nvcc()


def nvcc_top(scratch: Path) -> str:
    """The toolkit directory nvcc runs from (nvcc may be a wrapper script on PATH): what
    a dry run of a compile in ``scratch`` reports as TOP."""
    source = scratch / "empty.cu"
    source.write_text("")
    proc = subprocess.run([NVCC, "--dryrun", "-c", str(source)], capture_output=True, text=True)
    match = re.search(r"^#\$ TOP=(.+)$", proc.stdout + proc.stderr, re.MULTILINE)
    return match.group(1).strip() if match else str(Path(NVCC).resolve().parents[1])
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or PATH)")

#: Device code exercising every function of ik/geometry.h for float and double.
GEOMETRY_KERNEL = r"""
#include "ik/geometry.h"

template <typename T>
__global__ void geometry_kernel(const T* coord, const long long* pixels, long long n,
                                long long* index, T* out) {
  const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  if (i >= n) return;
  const T qy = coord[2 * i], qx = coord[2 * i + 1];
  T ry[4], rx[4], w[4], sw[4];
  for (int t = 0; t < 4; ++t) {
    const ik::EnsembleMember<T> m = ik::ensemble_member(qy, qx, 48, 40, t);
    index[8 * i + 2 * t] = m.iy;
    index[8 * i + 2 * t + 1] = m.ix;
    ry[t] = m.ry;
    rx[t] = m.rx;
  }
  ik::ensemble_weights(ry, rx, w);
  ik::slice_ensemble_weights(qy, qx, sw);
  const ik::DiifSlice s = ik::diif_slice(pixels[2 * i], pixels[2 * i + 1], 48, 40, 130, 200,
                                         static_cast<ik::Slicing>(i % 3));
  const ik::GroupBounds b = ik::group_bounds(pixels[2 * i], 48, 130);
  out[i] = w[0] + sw[3] + ik::diif_rel<T>(s.first_r, s.group_r, 48, 130) +
           ik::pixel_centre<T>(s.last_c, 200) + static_cast<T>(b.first + b.last) +
           static_cast<T>(ik::nearest_index(qx, 40) + ik::group_start(s.group_c, 40, 200));
}

template __global__ void geometry_kernel<float>(const float*, const long long*, long long,
                                                long long*, float*);
template __global__ void geometry_kernel<double>(const double*, const long long*, long long,
                                                 long long*, double*);
"""


def nvcc_compile(source: Path, output: Path) -> subprocess.CompletedProcess:
    cmd = cuda_compile.nvcc_command(NVCC, source, output)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    print(" ".join(cmd), proc.stdout, proc.stderr, sep="\n")  # ptxas usage, shown with -s
    assert proc.returncode == 0, f"nvcc failed on {source.name}:\n{proc.stderr}"
    return proc


@needs_nvcc
def test_geometry_header_compiles_in_a_kernel(tmp_path):
    source = tmp_path / "geometry_kernel.cu"
    source.write_text(GEOMETRY_KERNEL)
    proc = nvcc_compile(source, tmp_path / "geometry_kernel.o")
    # Both architectures really were built (ptxas reports each).
    assert "sm_80" in proc.stderr and "sm_90" in proc.stderr


@needs_nvcc
@pytest.mark.skipif(not CU_FILES, reason="no csrc/cuda/*.cu files yet")
@pytest.mark.parametrize("source", CU_FILES + [EMULATOR_TEST_KERNELS],
                         ids=[p.name for p in CU_FILES + [EMULATOR_TEST_KERNELS]])
def test_cu_file_compiles(source, tmp_path):
    """...for both architectures, every kernel without a spill to local memory."""
    usages = cuda_compile.parse_ptxas(nvcc_compile(source, tmp_path / (source.stem + ".o")).stderr)
    assert {u.arch for u in usages} == set(cuda_compile.ARCHS)
    spilled = [f"{u.kernel} ({u.arch}): {u.spill_stores}/{u.spill_loads} B"
               for u in usages if u.spills]
    assert not spilled, "kernels spill registers: " + "; ".join(spilled)


@pytest.mark.parametrize("source", CU_FILES, ids=[p.name for p in CU_FILES])
def test_kernels_launch_and_share_through_the_macros(source):
    """Kernel files launch with IK_LAUNCH and declare shared memory with IK_SHARED
    (csrc/cuda/launch.h), the two constructs the emulated build replaces."""
    text = source.read_text()
    assert "<<<" not in text, f"{source.name}: launch with IK_LAUNCH"
    assert "__shared__" not in text, f"{source.name}: declare shared memory with IK_SHARED"


@pytest.mark.parametrize("path", CU_FILES + HEADERS,
                         ids=[str(p.relative_to(CSRC)) for p in CU_FILES + HEADERS])
def test_device_code_is_torch_free(path):
    match = TORCH_INCLUDE.search(path.read_text())
    assert match is None, f"{path.relative_to(ROOT)} includes {match.group(0).strip()!r}: " \
                          "device code and shared headers must not include ATen/torch/c10"


@needs_nvcc
@pytest.mark.parametrize("source", CUDA_HOST_SOURCES, ids=[p.name for p in CUDA_HOST_SOURCES])
def test_cuda_host_code_syntax(source, tmp_path):
    """The CPU torch wheel ships c10/cuda's headers except one generated at torch's build
    (``c10/cuda/impl/cuda_cmake_macros.h``); a stand-in for it lets the host compiler
    check the glue's syntax and types without a CUDA build of torch."""
    from torch.utils.cpp_extension import CUDA_HOME, include_paths

    stub = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("#pragma once\n")
    cuda_include = Path(CUDA_HOME or nvcc_top(tmp_path)) / "include"
    if not (cuda_include / "cuda_runtime.h").exists():
        pytest.skip(f"no CUDA runtime headers at {cuda_include}")
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-DIK_WITH_CUDA", "-I", str(tmp_path),
           "-I", str(cuda_include), "-I", str(CSRC / "include"), "-I", str(CSRC / "cuda"),
           *(f"-I{p}" for p in include_paths()), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert proc.returncode == 0 and not errors, "\n".join(errors) or proc.stderr[-3000:]


PTXAS_LOG = """\
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_80'
ptxas info    : Function properties for _Z3fooPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 360 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3barPf' for 'sm_90'
ptxas info    : Function properties for _Z3barPf
    24 bytes stack frame, 16 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers, 360 bytes cmem[0]
"""


def test_ptxas_report_is_parsed_spills_included():
    foo, bar = cuda_compile.parse_ptxas(PTXAS_LOG)
    assert (foo.kernel, foo.arch, foo.registers, foo.shared_bytes, foo.spills) == \
        ("_Z3fooPf", "sm_80", 40, 1024, False)
    assert (bar.arch, bar.registers, bar.stack_bytes, bar.spill_stores, bar.spill_loads,
            bar.spills) == ("sm_90", 255, 24, 16, 8, True)
    # 256 threads: 40 registers -> 6 blocks by registers (8 by warps); 255 -> 1.
    assert cuda_compile.blocks_per_sm(foo, 0) == 6
    assert cuda_compile.blocks_per_sm(bar, 0) == 1
    # 100 KiB of dynamic shared memory: one block on sm_80 (164 KiB), two on sm_90.
    assert cuda_compile.blocks_per_sm(foo, 100 * 1024) == 1
    bar.registers = 40
    assert cuda_compile.blocks_per_sm(bar, 100 * 1024) == 2
