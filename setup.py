"""Build script of implicit-kernels.

Builds the extension ``implicit_kernels._C`` against the torch installed in the build
environment, so it must run without pip's build isolation::

    pip install -r requirements-cpu.txt          # CPU machines: torch==2.13.0 and friends
    pip install --no-build-isolation -e .

* CPU C++ sources (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always built.
* CUDA sources (``csrc/cuda/*.cu`` and the ``csrc/cuda/*.cpp`` glue) are added, with the
  macro ``IK_WITH_CUDA``, when torch is a CUDA build and nvcc is found.  The decision
  never asks for a GPU (``torch.cuda.is_available()``): build machines need none.

Environment variables (README "Build flags"):

``IK_CUDA``               unset: CUDA when possible; ``0``: never; ``1``: always, fail if impossible
``TORCH_CUDA_ARCH_LIST``  CUDA architectures, default ``8.0;9.0+PTX``
``CUDA_HOME``             CUDA toolkit holding ``bin/nvcc`` (else nvcc on ``PATH``)
``MAX_JOBS``              parallel compile jobs, default from cores and free memory
``IK_DEBUG``              ``1``: ``-O0 -g`` host code, ``-lineinfo`` device code
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
REINSTALL = "pip install --no-build-isolation -e ."
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"

try:
    import torch
except ImportError:
    # pip's default build isolation builds in a fresh environment without torch.  torch is
    # deliberately not a build requirement: pip would then build against whatever torch it
    # downloads (an unpinned torch is a multi-GB CUDA wheel) instead of the installed one.
    sys.exit(
        "implicit-kernels compiles a C++ extension against the installed torch, but torch "
        "cannot be imported by this build.\n"
        "Install the dependencies first, then build without build isolation:\n"
        "    pip install -r requirements-cpu.txt      # CPU machines (torch==2.13.0)\n"
        f"    {REINSTALL}\n"
        "(--no-build-isolation lets the build see the torch you installed.)"
    )

from torch.utils.cpp_extension import (  # noqa: E402  (needs torch, checked above)
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)


def log(msg):
    """Print a build message that pip shows with ``-v`` (and always on failure)."""
    print(f"[implicit-kernels] {msg}", flush=True)


def fail(msg):
    """Stop the build with a message (no traceback)."""
    sys.exit(f"[implicit-kernels] error: {msg}")


def rel_glob(pattern):
    """Sorted source paths matching ``pattern``, relative to the project root (setuptools
    wants relative paths in ``sources``)."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def nvcc_path():
    """The nvcc that torch's build will call (``CUDA_HOME/bin/nvcc``), or None.

    torch leaves its CUDA_HOME unset when torch itself is a CPU build; the fallback only
    serves the messages then (the build is CPU-only anyway).
    """
    home = CUDA_HOME or os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        path = os.path.join(home, "bin", "nvcc")
        return path if os.path.exists(path) else None
    return shutil.which("nvcc")


def nvcc_version(nvcc):
    """``(major, minor)`` of an nvcc executable, from ``nvcc --version``."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release (\d+)\.(\d+)", out)
    if match is None:
        fail(f"cannot read the CUDA version from `{nvcc} --version`:\n{out}")
    return int(match.group(1)), int(match.group(2))


def want_cuda():
    """Decide whether to build the CUDA sources; returns ``(with_cuda, nvcc_release)``."""
    mode = os.environ.get("IK_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        fail(f"IK_CUDA must be 0, 1 or unset, got {mode!r}")
    if mode == "0":
        log("IK_CUDA=0: building the CPU extension only")
        return False, None
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)")
    nvcc = nvcc_path()
    if nvcc is None:
        problems.append("nvcc not found: set CUDA_HOME to the CUDA toolkit or put nvcc on PATH")
    if problems:
        if mode == "1":
            fail("IK_CUDA=1 but the CUDA extension cannot be built:\n  - " + "\n  - ".join(problems))
        log("skipping CUDA (not an error; the CPU extension is built): " + "; ".join(problems))
        return False, None
    major, minor = nvcc_version(nvcc)
    torch_major = int(torch.version.cuda.split(".")[0])
    if major != torch_major:
        # Mixing CUDA majors fails at link or load time with obscure errors; stop here.
        fail(
            f"nvcc at {nvcc} is CUDA {major}.{minor} but torch {torch.__version__} was built "
            f"with CUDA {torch.version.cuda}; the majors must agree. Point CUDA_HOME at a CUDA "
            f"{torch_major}.x toolkit, install a torch built for CUDA {major}, or set IK_CUDA=0 "
            "to build the CPU extension only."
        )
    return True, f"{major}.{minor}"


def openmp_flags():
    """OpenMP compile flags when torch's own parallel backend is OpenMP.

    at::parallel_for is inlined into our code; without -fopenmp its `#pragma omp` is
    ignored and every loop runs on one thread.
    """
    info = torch.__config__.parallel_info()
    if "backend: OpenMP" in info and "OpenMP not found" not in info and sys.platform != "darwin":
        return ["-fopenmp"]
    log("torch does not use OpenMP here: CPU kernels use torch's native thread pool")
    return []


def default_max_jobs(with_cuda):
    """Parallel compile jobs: one per core, fewer if memory is short (nvcc jobs can take
    several GiB each; an OOM-killed compile looks like a random failure)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    gib_per_job = 4 if with_cuda else 2
    try:
        with open("/proc/meminfo") as f:
            meminfo = dict(line.split(":", 1) for line in f)
        free_gib = int(meminfo["MemAvailable"].split()[0]) / 2**20
        return max(1, min(cores, int(free_gib // gib_per_job)))
    except (OSError, KeyError, ValueError):
        return cores


def write_if_changed(path, text):
    """Write ``text`` to ``path`` unless it already holds it (keeps ninja from rebuilding
    on every ``setup.py`` invocation pip makes)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except OSError:
        pass
    with open(path, "w") as f:
        f.write(text)


def c_string(value):
    """A C string literal for ``value`` (ASCII; JSON escaping is valid C here)."""
    return json.dumps(value or "", ensure_ascii=True)


WITH_CUDA, NVCC_RELEASE = want_cuda()
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
    # torch would otherwise target the visible GPU, or every arch it knows without one.
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
ARCH_LIST = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if WITH_CUDA else ""
os.environ.setdefault("MAX_JOBS", str(default_max_jobs(WITH_CUDA)))
DEBUG = os.environ.get("IK_DEBUG", "0") == "1"

BUILD_INFO = {
    "torch": torch.__version__,
    "cuda": torch.version.cuda if WITH_CUDA else None,
    "with_cuda": WITH_CUDA,
    "nvcc": NVCC_RELEASE,
    "cuda_arch_list": ARCH_LIST or None,
    "python": "{}.{}".format(*sys.version_info[:2]),
    "debug": DEBUG,
}

# The metadata is compiled into _C (module constants read by implicit_kernels/_extension.py)
# through a generated header: a -D"..." string would lose its quotes in ninja's shell.
GENERATED = os.path.join(ROOT, "build", "generated")
write_if_changed(
    os.path.join(GENERATED, "ik_build_info.h"),
    "// Generated by setup.py: the build that produced implicit_kernels._C.\n"
    "#pragma once\n"
    f"#define IK_BUILD_TORCH_VERSION {c_string(BUILD_INFO['torch'])}\n"
    f"#define IK_BUILD_CUDA_VERSION {c_string(BUILD_INFO['cuda'])}\n"
    f"#define IK_BUILD_CUDA_ARCH_LIST {c_string(ARCH_LIST)}\n",
)

# Python's own CFLAGS (which torch's build passes first) hold -g: debug information for
# code that instantiates ATen's templates more than doubles the compile time, so release
# builds turn it off again (the last -g option wins).
cxx_flags = ["-O0", "-g"] if DEBUG else ["-O3", "-g0"]
# Index geometry must match torch's float rounding exactly: no FMA contraction.
cxx_flags += ["-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas"] + openmp_flags()
nvcc_flags = ["-O3", "-lineinfo", "-Xcompiler", "-ffp-contract=off"]
if DEBUG:
    nvcc_flags = ["-O0", "-lineinfo", "-Xcompiler", "-ffp-contract=off"]

sources = rel_glob("csrc/*.cpp") + rel_glob("csrc/cpu/*.cpp")
ext_kwargs = dict(
    name="implicit_kernels._C",
    sources=sources,
    include_dirs=[os.path.join(ROOT, "csrc", "include"), GENERATED],
    extra_compile_args={"cxx": cxx_flags},
    extra_link_args=openmp_flags(),
)
if WITH_CUDA:
    ext_kwargs["sources"] = sources + rel_glob("csrc/cuda/*.cu") + rel_glob("csrc/cuda/*.cpp")
    ext_kwargs["extra_compile_args"]["nvcc"] = nvcc_flags
    ext_kwargs["define_macros"] = [("IK_WITH_CUDA", None)]
    extension = CUDAExtension(**ext_kwargs)
    log(f"building with CUDA {NVCC_RELEASE} for TORCH_CUDA_ARCH_LIST={ARCH_LIST}")
else:
    extension = CppExtension(**ext_kwargs)
log(f"torch {torch.__version__}, MAX_JOBS={os.environ['MAX_JOBS']}, debug={DEBUG}")


class BuildWithInfo(BuildExtension):
    """torch's BuildExtension that also writes ``_C_build.json`` beside the built library.

    The loader reads that file when ``_C`` fails to load (an undefined symbol after a
    torch upgrade), to say which torch it was built for.
    """

    def run(self):
        super().run()
        target = os.path.join(os.path.dirname(self.get_ext_fullpath(extension.name)), "_C_build.json")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            json.dump(BUILD_INFO, f, indent=1, sort_keys=True)
            f.write("\n")


setup(
    name="implicit-kernels",
    version="0.1.0",
    description="Fused kernels for implicit-image-function super-resolution (LIIF, LTE, DIIF, DLTE, HIIF)",
    python_requires=">=3.10",
    # Only `implicit_kernels` and the reference models; `models` is a generic top-level
    # name, shipped explicitly; implicit_kernels imports it only in its command-line demo.
    packages=find_packages(
        where=ROOT, include=["implicit_kernels", "implicit_kernels.*", "models", "models.*"]
    ),
    package_data={"implicit_kernels": ["_C_build.json", "data/*.png", "data/README.md",
                                       "weights/*.safetensors", "weights/*.yaml", "weights/*.md"]},
    entry_points={"console_scripts": ["implicit-sr = implicit_kernels.__main__:main"]},
    # No version pin beyond the API floor: the GPU machine has 2.11, CPU machines 2.13,
    # and pip must never replace the torch the extension is built against.
    # pypng and tifffile: 16-bit colour PNG and TIFF, which Pillow reads at 8 bits.
    install_requires=["torch>=2.6", "pillow", "safetensors", "numpy", "pypng", "tifffile"],
    extras_require={
        "test": ["pytest", "hypothesis", "pytest-benchmark", "numpy", "pillow", "pyyaml", "tqdm"],
        "train": ["pyyaml", "tqdm"],
        "eval": ["scikit-image", "tqdm"],  # scikit-image: only `eval --data skimage`
        "triton": ["triton"],  # CPU machines: triton==3.7.1, paired with torch 2.13
        # ONNX export (dynamo exporter: onnxscript) and checking it with onnxruntime.
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
    },
    ext_modules=[extension],
    cmdclass={"build_ext": BuildWithInfo},
    zip_safe=False,
)
