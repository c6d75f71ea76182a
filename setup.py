"""Build script of implicit-kernels.

With torch importable (``--no-build-isolation``), builds the extension
``implicit_kernels._C`` ahead of time against that torch::

    pip install -r requirements-cpu.txt          # CPU machines: torch==2.13.0 and friends
    pip install --no-build-isolation -e .

With pip's default build isolation torch is not importable here (it is deliberately not a
build requirement: pip would compile against a torch of its choosing), so ``pip install
-e .`` installs the Python package alone and the extension compiles against the running
torch on first use (``implicit_kernels/_jit.py``; ``python -m implicit_kernels build``).

* CPU C++ sources (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always built.
* CUDA sources (``csrc/cuda/*.cu`` and the ``csrc/cuda/*.cpp`` glue) are added, with the
  macro ``IK_WITH_CUDA``, when torch is a CUDA build and nvcc is found.  The decision
  never asks for a GPU (``torch.cuda.is_available()``): build machines need none.
* Sources and flags: ``implicit_kernels/_build_config.py`` (shared with the build on
  first use).

Environment variables (README "Build flags"):

``IK_CUDA``               unset: CUDA when possible; ``0``: never; ``1``: always, fail if impossible
``TORCH_CUDA_ARCH_LIST``  CUDA architectures, default ``8.0;9.0+PTX``
``CUDA_HOME``             CUDA toolkit holding ``bin/nvcc`` (else nvcc on ``PATH``)
``MAX_JOBS``              parallel compile jobs, default from cores and free memory
``IK_DEBUG``              ``1``: ``-O0 -g`` host code, ``-lineinfo`` device code
"""
import importlib.util
import json
import os
import sys
import time

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
REINSTALL = "pip install --no-build-isolation -e ."


def log(msg):
    """Print a build message that pip shows with ``-v`` (and always on failure)."""
    print(f"[implicit-kernels] {msg}", flush=True)


def tell(msg):
    """A progress line the user sees while pip runs the build: pip captures this
    process's output (shown only with ``-v``), so the line also goes to the terminal
    directly when there is one."""
    log(msg)
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(f"[implicit-kernels] {msg}\n")
    except OSError:
        pass


def fail(msg):
    """Stop the build with a message (no traceback)."""
    sys.exit(f"[implicit-kernels] error: {msg}")


def load_build_config():
    """implicit_kernels/_build_config.py, by path: importing the package would import torch."""
    path = os.path.join(ROOT, "implicit_kernels", "_build_config.py")
    spec = importlib.util.spec_from_file_location("ik_build_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


config = load_build_config()

try:
    import torch
except ImportError:
    # pip's default build isolation builds in a fresh environment without torch.  torch is
    # deliberately not a build requirement: pip would then build against whatever torch it
    # downloads (an unpinned torch is a multi-GB CUDA wheel) instead of the installed one.
    # So the package installs without `_C`, which compiles against the running torch on
    # first use (implicit_kernels/_jit.py).
    torch = None
    log("torch is not importable in this build environment (pip's build isolation): "
        "installing without the compiled extension. It compiles against your torch on first "
        "use, or ahead of time with `python -m implicit_kernels build`; "
        f"`{REINSTALL}` compiles it now instead.")


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


def want_cuda(cuda_home):
    """The nvcc release to build the CUDA sources with, or None (CPU extension only)."""
    mode = os.environ.get("IK_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        fail(f"IK_CUDA must be 0, 1 or unset, got {mode!r}")
    if mode == "0":
        log("IK_CUDA=0: building the CPU extension only")
        return None
    try:
        release, problems = config.cuda_decision(torch, cuda_home)
    except RuntimeError as exc:
        fail(str(exc))
    if problems:
        if mode == "1":
            fail("IK_CUDA=1 but the CUDA extension cannot be built:\n  - "
                 + "\n  - ".join(problems))
        log("skipping CUDA (not an error; the CPU extension is built): " + "; ".join(problems))
    return release


def make_extension():
    """The ``implicit_kernels._C`` extension and the metadata it records."""
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    release = want_cuda(CUDA_HOME)
    if release and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # torch would otherwise target the visible GPU, or every arch it knows without one.
        os.environ["TORCH_CUDA_ARCH_LIST"] = config.DEFAULT_ARCH_LIST
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if release else ""
    os.environ.setdefault("MAX_JOBS", str(default_max_jobs(release is not None)))
    debug = os.environ.get("IK_DEBUG", "0") == "1"
    info = config.build_info(torch, release, arch_list, debug)
    generated = os.path.join(ROOT, "build", "generated")
    config.write_build_info_header(generated, info)
    openmp = config.openmp_flags(torch)
    if not openmp:
        log("torch does not use OpenMP here: CPU kernels use torch's native thread pool")
    kwargs = dict(
        name="implicit_kernels._C",
        # setuptools wants paths relative to the project.
        sources=[os.path.relpath(p, ROOT) for p in config.sources(ROOT, release is not None)],
        include_dirs=config.include_dirs(ROOT, generated),
        extra_compile_args={"cxx": config.cxx_flags(debug, openmp)},
        extra_link_args=openmp,
    )
    if release:
        kwargs["extra_compile_args"]["nvcc"] = config.nvcc_flags(debug)
        kwargs["define_macros"] = [("IK_WITH_CUDA", None)]
        log(f"building with CUDA {release} for TORCH_CUDA_ARCH_LIST={arch_list}")
    log(f"torch {torch.__version__}, MAX_JOBS={os.environ['MAX_JOBS']}, debug={debug}")
    return (CUDAExtension if release else CppExtension)(**kwargs), info


def build_ext_command(extension, info):
    """torch's BuildExtension that also writes ``_C_build.json`` beside the built library.

    The loader reads that file when ``_C`` fails to load (an undefined symbol after a
    torch upgrade), to say which torch it was built for.
    """
    from torch.utils.cpp_extension import BuildExtension

    class BuildWithInfo(BuildExtension):
        def run(self):
            start = time.monotonic()
            tell(f"compiling the C++ extension: {len(extension.sources)} sources on "
                 f"{os.environ['MAX_JOBS']} jobs (a few minutes; `pip install -v` shows each file)")
            super().run()
            tell(f"compiled the C++ extension in {time.monotonic() - start:.0f} s")
            target = os.path.join(os.path.dirname(self.get_ext_fullpath(extension.name)),
                                  "_C_build.json")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                json.dump(info, f, indent=1, sort_keys=True)
                f.write("\n")

    return BuildWithInfo


if torch is not None:
    EXTENSION, INFO = make_extension()
    BUILD = {"ext_modules": [EXTENSION],
             "cmdclass": {"build_ext": build_ext_command(EXTENSION, INFO)}}
else:
    BUILD = {}

setup(
    name="implicit-kernels",
    version="0.1.0",
    description=("Fused kernels for implicit-image-function super-resolution "
                 "(LIIF, LTE, DIIF, DLTE, HIIF)"),
    python_requires=">=3.10",
    license="MIT",
    # Only `implicit_kernels` and the reference models; `models` is a generic top-level
    # name, shipped explicitly; only the application layer, implicit_kernels.apps, imports it.
    packages=find_packages(
        where=ROOT, include=["implicit_kernels", "implicit_kernels.*", "models", "models.*"]
    ),
    package_data={"implicit_kernels": ["_C_build.json"],
                  "implicit_kernels.apps": ["assets/*.png", "assets/README.md"],
                  "implicit_kernels.apps.weights": ["*.safetensors", "*.yaml", "*.md"]},
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
    zip_safe=False,
    **BUILD,
)
