"""implicit-kernels: fused decoders for implicit-image-function super-resolution.

``implicit_kernels.functional`` (also ``implicit_kernels.F``) holds the decode ops;
``implicit_kernels.backends`` lists and picks their implementations.  The application
layer (``implicit_kernels.apps``: ``weights``, ``upscale``, ``train``, ``evaluate``,
``export``, ...) and the other submodules load on first attribute access, so ``import
implicit_kernels`` stays light.
"""
import importlib

from . import functional
from . import functional as F

__version__ = "0.1.0"
__all__ = ["F", "functional", "__version__"]

#: Submodules imported on first access as attributes of the package.
_LAZY = ("apps", "backends", "cost", "geometry", "info")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
