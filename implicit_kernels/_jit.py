"""Build ``implicit_kernels._C`` on first use, against the running torch.

An install made with pip's build isolation (``pip install -e .``) cannot see the user's
torch at build time, so it ships no compiled extension; :mod:`implicit_kernels._extension`
then calls :func:`build` the first time an operator is needed.  The build is cached per
torch version and source fingerprint (``$IK_CACHE_DIR``, default
``~/.cache/implicit_kernels``): later processes load it at once, a torch upgrade or an
edited source builds anew.  ``IK_JIT=0`` turns it off (the pure-PyTorch backends remain).

``python -m implicit_kernels build`` runs it ahead of time, with the compiler's progress.
Sources and flags are those of ``setup.py`` (:mod:`implicit_kernels._build_config`).
"""
from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType

from . import _build_config as config


def enabled() -> bool:
    """Whether a missing extension may be compiled on first use (``IK_JIT`` is not 0)."""
    return os.environ.get("IK_JIT", "1") != "0"


def cache_root() -> str:
    return os.environ.get("IK_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "implicit_kernels")


def build(verbose: bool = False) -> ModuleType:
    """Compile (or find in the cache) and load the extension; returns the module,
    registered as ``implicit_kernels._C``.

    Raises:
        RuntimeError: the sources are not shipped with this installation, or the
            compiler failed (its message included).
    """
    import torch
    from torch.utils import cpp_extension

    root = config.project_root()
    if root is None:
        raise RuntimeError("the C++ sources (csrc/) are not part of this installation: install "
                           "from a source checkout with `pip install --no-build-isolation -e .`")
    mode = os.environ.get("IK_CUDA", "").strip()
    release, _ = (None, []) if mode == "0" else config.cuda_decision(torch, cpp_extension.CUDA_HOME)
    arch_list = ""
    if release:
        arch_list = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", config.DEFAULT_ARCH_LIST)
    info = config.build_info(torch, release, arch_list, debug=False)
    openmp = config.openmp_flags(torch)
    cflags = config.cxx_flags(False, openmp) + (["-DIK_WITH_CUDA"] if release else [])
    cuda_flags = config.nvcc_flags(False) + ["-DIK_WITH_CUDA"]
    folder = os.path.join(cache_root(), f"torch-{torch.__version__}-"
                          f"{config.fingerprint(root, info, cflags + cuda_flags)}")
    generated = os.path.join(folder, "generated")
    config.write_build_info_header(generated, info)
    if not os.path.exists(os.path.join(folder, "_C.so")):
        print(f"implicit-kernels: compiling the C++ extension for torch {torch.__version__} "
              f"(once per torch version and source change; a few minutes) in {folder}",
              file=sys.stderr, flush=True)
    try:
        module = cpp_extension.load(
            name="_C", sources=config.sources(root, release is not None),
            extra_include_paths=config.include_dirs(root, generated), extra_cflags=cflags,
            extra_cuda_cflags=cuda_flags if release else None, extra_ldflags=openmp,
            build_directory=folder, with_cuda=release is not None, verbose=verbose)
    except (RuntimeError, OSError, ImportError) as exc:
        raise RuntimeError(f"compiling implicit_kernels._C failed: {exc}") from exc
    sys.modules["implicit_kernels._C"] = module
    return module


def main(argv=None) -> int:
    """``python -m implicit_kernels build``: build (or find) the extension now."""
    parser = argparse.ArgumentParser(
        prog="python -m implicit_kernels build",
        description="Compile implicit_kernels._C against the installed torch ahead of first "
                    "use (an install made with pip's build isolation ships none). Cached in "
                    f"{cache_root()} (IK_CACHE_DIR).")
    parser.parse_args(argv)
    from . import _extension

    if _extension.available():
        print(f"implicit_kernels._C is ready: {_extension.load().__file__}")
        return 0
    try:
        module = build(verbose=True)
    except RuntimeError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    _extension._reset()
    if not _extension.available():
        print("; ".join(_extension.reasons()), file=sys.stderr)
        return 1
    print(f"implicit_kernels._C is ready: {module.__file__}")
    return 0
