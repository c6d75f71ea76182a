"""Host-compiler builds of the CUDA sources against the emulation layer (``csrc/emulation``),
for the tests:

* :func:`emulator_driver`: the emulator's own test kernels (``tests/cuda_emulation``) as a
  plain executable;
* :func:`emulated_operators`: the extension's operators with every element-wise step on
  the CUDA kernels (``csrc/cuda/*.cu`` compiled as C++, ``-DIK_EMULATE_CUDA``), run on CPU
  tensors and registered as ``torch.ops.implicit_kernels_emulated`` beside the real
  extension's.  Never part of the package or its install.

Both are cached under ``$IK_CACHE_DIR`` (default ``~/.cache/implicit_kernels``): the driver
in a folder named by a hash of its sources and flags; the operators in one folder per
checkout, torch version and flags, where ninja rebuilds only what a source change touches
(it tracks every object's headers).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from implicit_kernels import _build_config as config

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
EMULATION = CSRC / "emulation"
TEST_KERNELS = ROOT / "tests" / "cuda_emulation"
NAMESPACE = "implicit_kernels_emulated"
#: The emulation's headers come first, so the kernels' <cuda_runtime.h> is its stand-in.
INCLUDES = [EMULATION / "include", CSRC / "include", CSRC]
DEFINES = ["-DIK_EMULATE_CUDA"]


def host_compiler() -> str | None:
    """The C++ compiler (``$CXX``, else ``g++`` or ``c++`` on PATH), or None."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def cache_folder(kind: str, files: list[Path], flags: list[str], with_headers=True) -> Path:
    """``$IK_CACHE_DIR/emulated-<kind>-<hash>``, the hash of ``files``, (``with_headers``)
    every header of csrc and tests/cuda_emulation, and ``flags``."""
    headers = (sorted(CSRC.rglob("*.h")) + sorted(CSRC.rglob("*.cuh"))
               + sorted(TEST_KERNELS.glob("*.h"))) if with_headers else []
    digest = hashlib.sha256(" ".join(flags).encode())
    for path in files + headers:
        digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    root = os.environ.get("IK_CACHE_DIR") or Path.home() / ".cache" / "implicit_kernels"
    return Path(root) / f"emulated-{kind}-{digest.hexdigest()[:16]}"


def emulator_driver() -> Path:
    """The executable ``run_case`` of ``tests/cuda_emulation`` (built once per source hash)."""
    sources = [TEST_KERNELS / "emulator_kernels.cu", TEST_KERNELS / "run_case.cpp",
               EMULATION / "runtime.cpp"]
    flags = ["-std=c++17", "-O1", "-Wall", *DEFINES, *(f"-I{p}" for p in INCLUDES)]
    folder = cache_folder("driver", sources, flags)
    driver = folder / "run_case"
    if not driver.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / "run_case.partial"
        # -x c++ makes the .cu a C++ source; -x none restores detection by extension.
        proc = subprocess.run([host_compiler(), *flags, "-x", "c++", str(sources[0]), "-x",
                               "none", *map(str, sources[1:]), "-o", str(partial)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling the emulator's test driver failed:\n{proc.stderr}")
        partial.rename(driver)
    return driver


def emulated_operators():
    """``torch.ops.implicit_kernels_emulated``, built on first call (a few minutes on two
    cores; then cached)."""
    import torch
    from torch.utils import cpp_extension

    cpp = [Path(p) for p in config.sources(str(ROOT), with_cuda=True)
           if p.endswith(".cpp") and Path(p).name != "module.cpp"]
    cu = sorted((CSRC / "cuda").glob("*.cu"))
    # The release flags but -O1 (the last -O wins): a test build, compiled in CI's time.
    flags = config.cxx_flags(False, config.openmp_flags(torch)) + ["-O1", *DEFINES,
                                                                   f"-DIK_NAMESPACE={NAMESPACE}"]
    # Named by the checkout and flags, not the sources: ninja rebuilds incrementally.
    folder = cache_folder(f"ops-torch-{torch.__version__}", [], flags + [str(ROOT)],
                          with_headers=False)
    folder.mkdir(parents=True, exist_ok=True)
    # torch's builder hands .cu files to nvcc: each is compiled through a C++ file
    # including it.
    wrappers = []
    for path in cu:
        wrapper = folder / f"{path.stem}_cu.cpp"
        config.write_if_changed(str(wrapper), f'#include "{path}"\n')
        wrappers.append(str(wrapper))
    cpp_extension.load(
        name="ik_emulated_ops", sources=[*map(str, cpp), *wrappers, str(EMULATION / "runtime.cpp")],
        extra_include_paths=[str(p) for p in INCLUDES], extra_cflags=flags,
        extra_ldflags=config.openmp_flags(torch), build_directory=str(folder), with_cuda=False,
        is_python_module=False, verbose=False)
    return getattr(torch.ops, NAMESPACE)
