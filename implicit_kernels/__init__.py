"""implicit-kernels: fused decoders for implicit-image-function super-resolution.

``implicit_kernels.functional`` (also ``implicit_kernels.F``) holds the decode ops;
``implicit_kernels.backends`` lists and picks their implementations.  The application
layer (``implicit_kernels.apps``: ``weights``, ``upscale``, ``train``, ``evaluate``,
``export``, ...) and the other submodules load on first attribute access, so ``import
implicit_kernels`` stays light.
"""
from . import functional
from . import functional as F
from ._lazy import lazy_submodules

__version__ = "0.1.0"
__all__ = ["F", "functional", "__version__"]

#: Submodules imported on first access as attributes of the package.
_LAZY = ("apps", "backends", "cost", "geometry", "info")
__getattr__ = lazy_submodules(__name__, _LAZY)
