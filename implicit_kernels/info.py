"""Environment report: ``python -m implicit_kernels.info``.

Prints the versions that matter (Python, torch, CUDA, triton), whether the compiled
extension ``implicit_kernels._C`` loads and with which build metadata, the GPU if one is
visible, and which backends can run.  Paste its output into bug reports.
"""
from __future__ import annotations

import importlib.metadata
import platform
import sys


def _package_version() -> str:
    try:
        return importlib.metadata.version("implicit-kernels")
    except importlib.metadata.PackageNotFoundError:
        return "not installed (running from a source tree)"


def _triton_version() -> str:
    try:
        import triton
    except Exception as exc:  # ImportError, or a broken install raising anything
        return f"not available ({type(exc).__name__}: {exc})"
    return triton.__version__


def _backend_lines() -> list[str]:
    """One line per backend from implicit_kernels.backends.available_backends, if present."""
    try:
        from implicit_kernels import backends
    except Exception as exc:  # the report must not die with the package it diagnoses
        return [f"  (implicit_kernels.backends failed to import: {type(exc).__name__}: {exc})"]
    report = getattr(backends, "available_backends", None)
    if report is None:
        return ["  (implicit_kernels.backends has no available_backends())"]
    lines = []
    for decoder in getattr(backends, "DECODERS", (None,)):
        try:
            result = report(decoder) if decoder is not None else report()
        except Exception as exc:
            lines.append(f"  {decoder}: error: {type(exc).__name__}: {exc}")
            continue
        if decoder is not None:
            lines.append(f"  {decoder}:")
        for name, (ok, why) in result.items():
            status = "yes" if ok else "no: " + "; ".join(why)
            lines.append(f"    {name:<10} {status}")
    return lines


def report() -> str:
    """The report as text (what ``python -m implicit_kernels.info`` prints)."""
    import torch

    from implicit_kernels import _extension

    lines = [
        f"implicit-kernels {_package_version()}",
        f"python           {platform.python_version()} ({sys.executable})",
        f"torch            {torch.__version__} (CUDA {torch.version.cuda or 'none: CPU build'})",
        f"triton           {_triton_version()}",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            lines.append(f"gpu {i}            {torch.cuda.get_device_name(i)} (sm_{major}{minor})")
    else:
        lines.append("gpu              none visible")

    if _extension.available():
        info = _extension.build_info() or {}
        if _extension.with_cuda():
            cuda = f"with CUDA {info.get('cuda')} kernels, archs {info.get('cuda_arch_list')}"
        else:
            cuda = "CPU kernels only (no CUDA)"
        lines.append(f"extension _C     built for torch {info.get('torch')}, {cuda}")
    else:
        lines.append("extension _C     not available: " + "; ".join(_extension.reasons()))

    lines.append("backends (per decoder):")
    lines.extend(_backend_lines())
    return "\n".join(lines)


def main(argv=None) -> int:
    """Print the report (``argv``: no options are taken); exit status 0 even when pieces
    are missing, since it is a report."""
    if argv:
        print(f"info takes no arguments, got {argv}", file=sys.stderr)
        return 2
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
