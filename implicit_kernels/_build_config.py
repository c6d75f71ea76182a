"""What the compiled extension ``implicit_kernels._C`` is built from, and with which flags:
one list shared by ``setup.py`` (a build ahead of time) and :mod:`implicit_kernels._jit`
(a build on first use).

This module imports neither torch nor the rest of the package: ``setup.py`` loads it by
file path, in build environments where torch may be missing.  Functions that need torch
take it as an argument.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

#: CUDA architectures built when ``TORCH_CUDA_ARCH_LIST`` is unset (A100, H100/H200 + PTX).
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"


def project_root() -> str | None:
    """The folder holding ``csrc/`` beside this package (a source checkout or an editable
    install), or None where the sources are not shipped."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return root if os.path.isdir(os.path.join(root, "csrc")) else None


def sources(root: str, with_cuda: bool) -> list[str]:
    """Absolute paths of the extension's sources: the C++ operators and CPU kernels, plus
    the CUDA kernels and their glue when ``with_cuda``."""
    patterns = ["csrc/*.cpp", "csrc/cpu/*.cpp"]
    if with_cuda:
        patterns += ["csrc/cuda/*.cu", "csrc/cuda/*.cpp"]
    return [p for pattern in patterns for p in sorted(glob.glob(os.path.join(root, pattern)))]


def headers(root: str) -> list[str]:
    """Every header the sources include (part of a build's identity)."""
    return sorted(glob.glob(os.path.join(root, "csrc", "**", "*.h"), recursive=True))


def include_dirs(root: str, generated: str) -> list[str]:
    return [os.path.join(root, "csrc", "include"), generated]


def cxx_flags(debug: bool, openmp: list[str]) -> list[str]:
    """Host compiler flags.  Python's own CFLAGS (passed first by torch's build) hold -g:
    debug information for code that instantiates ATen's templates more than doubles the
    compile time, so release builds turn it off again (the last -g option wins)."""
    flags = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    # Index geometry must match torch's float rounding exactly: no FMA contraction.
    return flags + ["-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas"] + openmp


def nvcc_flags(debug: bool) -> list[str]:
    return ["-O0" if debug else "-O3", "-lineinfo", "-Xcompiler", "-ffp-contract=off"]


def openmp_flags(torch) -> list[str]:
    """``-fopenmp`` when torch's own parallel backend is OpenMP: at::parallel_for is
    inlined into our code, and without it its ``#pragma omp`` is ignored (one thread)."""
    info = torch.__config__.parallel_info()
    if "backend: OpenMP" in info and "OpenMP not found" not in info and sys.platform != "darwin":
        return ["-fopenmp"]
    return []


def nvcc_path(cuda_home: str | None) -> str | None:
    """The nvcc torch's build calls (``CUDA_HOME/bin/nvcc``, else on ``PATH``), or None."""
    home = cuda_home or os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        path = os.path.join(home, "bin", "nvcc")
        return path if os.path.exists(path) else None
    return shutil.which("nvcc")


def nvcc_release(nvcc: str) -> tuple[int, int] | None:
    """``(major, minor)`` from ``nvcc --version``, or None if it cannot be read."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def cuda_decision(torch, cuda_home: str | None) -> tuple[str | None, list[str]]:
    """Whether the CUDA sources can be built here: ``(nvcc release "M.m", [])``, or
    ``(None, reasons)``.  Asks for no GPU: build machines need none.  Raises
    ``RuntimeError`` for a toolkit whose CUDA major differs from torch's (that would fail
    at link or load time with obscure errors)."""
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build "
                        "(torch.version.cuda is None)")
    nvcc = nvcc_path(cuda_home)
    if nvcc is None:
        problems.append("nvcc not found: set CUDA_HOME to the CUDA toolkit or put nvcc on PATH")
    if problems:
        return None, problems
    release = nvcc_release(nvcc)
    if release is None:
        raise RuntimeError(f"cannot read the CUDA version from `{nvcc} --version`")
    torch_major = int(torch.version.cuda.split(".")[0])
    if release[0] != torch_major:
        raise RuntimeError(
            f"nvcc at {nvcc} is CUDA {release[0]}.{release[1]} but torch {torch.__version__} was "
            f"built with CUDA {torch.version.cuda}; the majors must agree. Point CUDA_HOME at a "
            f"CUDA {torch_major}.x toolkit, install a torch built for CUDA {release[0]}, or set "
            "IK_CUDA=0 to build the CPU extension only.")
    return f"{release[0]}.{release[1]}", []


def build_info(torch, cuda_release: str | None, arch_list: str, debug: bool) -> dict:
    """The metadata a build records (``_C_build.json`` and the module's constants)."""
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda_release else None,
        "with_cuda": cuda_release is not None,
        "nvcc": cuda_release,
        "cuda_arch_list": arch_list or None,
        "python": "{}.{}".format(*sys.version_info[:2]),
        "debug": debug,
    }


def write_build_info_header(generated: str, info: dict) -> None:
    """``ik_build_info.h``: the metadata compiled into ``_C`` (module constants read by
    :mod:`implicit_kernels._extension`).  A header rather than ``-D"..."``: a string
    define would lose its quotes in ninja's shell."""
    def c_string(value):
        return json.dumps(value or "", ensure_ascii=True)  # JSON escaping is valid C here

    write_if_changed(
        os.path.join(generated, "ik_build_info.h"),
        "// Generated at build time: the build that produced implicit_kernels._C.\n"
        "#pragma once\n"
        f"#define IK_BUILD_TORCH_VERSION {c_string(info['torch'])}\n"
        f"#define IK_BUILD_CUDA_VERSION {c_string(info['cuda'])}\n"
        f"#define IK_BUILD_CUDA_ARCH_LIST {c_string(info['cuda_arch_list'])}\n")


def write_if_changed(path: str, text: str) -> None:
    """Write ``text`` to ``path`` unless it already holds it (keeps ninja from rebuilding
    everything on each invocation)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)


def fingerprint(root: str, info: dict, flags: list[str]) -> str:
    """A hash of everything a build depends on: sources, headers, flags and metadata."""
    digest = hashlib.sha256(json.dumps([info, flags], sort_keys=True).encode())
    for path in sources(root, info["with_cuda"]) + headers(root):
        digest.update(os.path.relpath(path, root).encode())
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]
