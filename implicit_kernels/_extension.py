"""Lazy loader of the compiled extension ``implicit_kernels._C``.

``_C`` holds the C++/CUDA operators (``torch.ops.implicit_kernels.*``).  Nothing here
runs at import time: the library is loaded on the first call of :func:`available`,
:func:`load` and friends, and importing ``implicit_kernels`` never fails because the
extension is missing or broken.  Backends ask :func:`available` / :func:`reasons` and
fall back to pure PyTorch.

An installation without ``_C`` (made with pip's build isolation, which cannot see the
user's torch) compiles it on first use against the running torch (:mod:`._jit`).

A library built against another torch is refused with an actionable message ("built for
torch X, you have Y: reinstall with ...") instead of an undefined-symbol traceback or,
worse, a silent ABI mismatch.  The build metadata comes from the module's constants
(compiled in by ``setup.py``) and, when the library cannot even be loaded, from the
``_C_build.json`` file ``setup.py`` writes beside it.
"""
from __future__ import annotations

import importlib
import json
import os
import threading
from types import ModuleType

#: The command that rebuilds the extension against the installed torch.
REINSTALL = "pip install --no-build-isolation -e ."
_MODULE = "implicit_kernels._C"
_SIDECAR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_C_build.json")

_lock = threading.Lock()
_state: tuple[ModuleType | None, list[str]] | None = None


class ExtensionUnavailable(RuntimeError):
    """Raised by :func:`load` when ``implicit_kernels._C`` cannot be used; the message
    lists the reasons and what to do."""


def _import_c() -> ModuleType:
    # A separate function so tests can simulate a missing or broken library.
    return importlib.import_module(_MODULE)


def _read_sidecar() -> dict | None:
    try:
        with open(_SIDECAR) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _module_info(module: ModuleType) -> dict:
    return {
        "torch": getattr(module, "TORCH_VERSION", None),
        "cuda": getattr(module, "CUDA_VERSION", "") or None,
        "with_cuda": bool(getattr(module, "WITH_CUDA", 0)),
        "cuda_arch_list": getattr(module, "CUDA_ARCH_LIST", "") or None,
    }


def _mismatch(info: dict, torch) -> str | None:
    """Why a library with build metadata ``info`` cannot run with this torch, or None."""
    if info.get("torch") != torch.__version__:
        return (f"implicit_kernels._C was built for torch {info.get('torch')}, you have torch "
                f"{torch.__version__}: reinstall with `{REINSTALL}`")
    if info.get("with_cuda") and info.get("cuda") != torch.version.cuda:
        return (f"implicit_kernels._C was built for CUDA {info.get('cuda')}, your torch uses CUDA "
                f"{torch.version.cuda}: reinstall with `{REINSTALL}`")
    return None


def _try_load() -> tuple[ModuleType | None, list[str]]:
    # torch first: _C links against libtorch and its symbols must already be loaded.
    import torch

    try:
        module = _import_c()
    except ModuleNotFoundError as exc:
        if exc.name != _MODULE:
            return None, [f"implicit_kernels._C could not be imported: {exc}"]
        return _build_on_first_use(torch)
    except (ImportError, OSError) as exc:
        # Typically "undefined symbol" after torch was upgraded or replaced.
        built = _read_sidecar()
        reason = _mismatch(built, torch) if built else None
        if reason is None:
            reason = (f"implicit_kernels._C failed to load ({exc}); it was probably built against "
                      f"another torch (you have {torch.__version__}): reinstall with `{REINSTALL}`")
        return None, [reason]
    reason = _mismatch(_module_info(module), torch)
    return (None, [reason]) if reason else (module, [])


def _build_on_first_use(torch) -> tuple[ModuleType | None, list[str]]:
    """An install without ``_C`` (pip's build isolation could not see torch) compiles it
    now against the running torch (:mod:`implicit_kernels._jit`), unless ``IK_JIT=0``."""
    from . import _jit

    not_built = (f"implicit_kernels._C is not built: install the package with `{REINSTALL}` "
                 "(after `pip install -r requirements-cpu.txt` on CPU machines)")
    if not _jit.enabled():
        return None, [not_built + ", or unset IK_JIT=0 to compile it on first use"]
    try:
        module = _jit.build()
    except RuntimeError as exc:
        return None, [f"{not_built}; compiling it on first use failed: {exc}"]
    reason = _mismatch(_module_info(module), torch)
    return (None, [reason]) if reason else (module, [])


def _get_state() -> tuple[ModuleType | None, list[str]]:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _try_load()
    return _state


def _reset() -> None:
    """Forget the cached load result (tests)."""
    global _state
    with _lock:
        _state = None


def available() -> bool:
    """True if ``implicit_kernels._C`` is built for this torch and loaded (its operators
    are then registered under ``torch.ops.implicit_kernels``)."""
    return _get_state()[0] is not None


def reasons() -> list[str]:
    """Why the extension cannot be used (empty when :func:`available` is True)."""
    return list(_get_state()[1])


def load() -> ModuleType:
    """The loaded ``implicit_kernels._C`` module; raises :class:`ExtensionUnavailable`
    with the reasons otherwise."""
    module, why = _get_state()
    if module is None:
        raise ExtensionUnavailable("; ".join(why))
    return module


def with_cuda() -> bool:
    """True if the loaded extension was compiled with its CUDA kernels (``IK_WITH_CUDA``).

    Says nothing about whether a GPU is present; it is False when the extension is not
    available.
    """
    module = _get_state()[0]
    return module is not None and bool(getattr(module, "WITH_CUDA", 0))


def build_info() -> dict | None:
    """Build metadata of the extension: ``torch``, ``cuda`` (None for CPU builds),
    ``with_cuda``, ``cuda_arch_list``.

    Read from the loaded module when it is available, else from the ``_C_build.json``
    written at build time; None when neither exists.
    """
    module = _get_state()[0]
    if module is not None:
        return _module_info(module)
    return _read_sidecar()
