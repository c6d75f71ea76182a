"""The application layer, built on the kernel package and the repository's ``models``.

- ``train``, ``evaluate``, ``upscale``, ``demo``, ``export``: the commands of
  ``python -m implicit_kernels`` (``implicit_kernels/__main__.py`` dispatches to them);
- ``data``: image folders, photo reading and writing, LR/HR training pairs;
- ``image16``: 16-bit colour PNG and TIFF, which Pillow reads at 8 bits;
- ``weights``: the shipped weights (``.safetensors`` with their training configs) and
  loading a model by name or path;
- ``assets/``: the bundled photograph (``assets/README.md``).

The kernel package (``implicit_kernels.functional``, the backends, ``geometry``, ``cost``)
never imports this package.  Its modules load on first attribute access, as the kernel
package's do.
"""
from .._lazy import lazy_submodules

try:
    import models  # noqa: F401  (the check; each module imports what it uses)
except ImportError as exc:
    raise ImportError("implicit_kernels.apps needs the repository's `models` package "
                      f"(pip install the repository, or run from its root): {exc}") from exc

#: Submodules imported on first access as attributes of the package.
_LAZY = ("data", "demo", "evaluate", "export", "image16", "train", "upscale", "weights")
__getattr__ = lazy_submodules(__name__, _LAZY)
